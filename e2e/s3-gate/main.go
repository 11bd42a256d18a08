// Command e2e-s3-gate makes the test bed's S3 server's conditional writes atomic.
//
// s3s-fs checks If-None-Match and If-Match, then writes: two PUTs of one key that both carry
// If-None-Match: * can both pass the check, and the second silently replaces the first. Real S3
// (and GCS and Azure) decide and write atomically, and SlateDB's manifest compare-and-swap relies
// on it: with two writers of one database, one checkpoint was lost. The gate sits in front of
// s3s-fs and lets one write (PUT, POST, DELETE) of a key through at a time; reads pass freely.
// It forwards everything else unchanged, the Host header included (SigV4 signs it).
package main

import (
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
)

// keyLocks holds one mutex per object path, dropped when no request holds or waits for it.
type keyLocks struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	sync.Mutex
	users int
}

func (k *keyLocks) lock(key string) func() {
	k.mu.Lock()
	l := k.locks[key]
	if l == nil {
		l = &keyLock{}
		k.locks[key] = l
	}
	l.users++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		l.users--
		if l.users == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:19000", "address to serve on")
	backend := flag.String("backend", "http://127.0.0.1:19001", "the S3 server to forward to")
	flag.Parse()
	target, err := url.Parse(*backend)
	if err != nil {
		log.Fatalf("bad -backend: %v", err)
	}
	proxy := &httputil.ReverseProxy{
		Director: func(r *http.Request) {
			// r.Host stays the client's: the signature covers it.
			r.URL.Scheme = target.Scheme
			r.URL.Host = target.Host
		},
		FlushInterval: -1,
	}
	locks := &keyLocks{locks: map[string]*keyLock{}}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPut, http.MethodPost, http.MethodDelete:
			defer locks.lock(r.URL.Path)()
		}
		proxy.ServeHTTP(w, r)
	})
	log.Printf("e2e-s3-gate on %s, forwarding to %s", *listen, *backend)
	log.Fatal(http.ListenAndServe(*listen, handler))
}
