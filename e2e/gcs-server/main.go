// Command e2e-gcs-server is the GCS-protocol server of the e2e test bed (e2e/build-stores.sh builds it,
// e2e/cluster.sh runs it): fake-gcs-server's fakestorage, in memory, plus the requests of GCS's XML API that
// object_store's GCS client sends and fakestorage does not serve (it answers them "invalid uploadType"):
//
//	PUT  /BUCKET/OBJECT                         an upload; x-goog-if-generation-match is its precondition
//	PUT  /BUCKET/OBJECT + x-goog-copy-source    a copy (object_store's copy and copy_if_not_exists)
//	POST /BUCKET/OBJECT?uploads                 start a multipart upload
//	PUT  /BUCKET/OBJECT?partNumber=N&uploadId=U one part
//	POST /BUCKET/OBJECT?uploadId=U              complete it (the parts joined in the order listed)
//	DELETE /BUCKET/OBJECT?uploadId=U            abort it
//
// Each write becomes fakestorage's own media upload (POST /upload/storage/v1/b/BUCKET/o?uploadType=media), which
// checks ifGenerationMatch atomically with the write; the answer gets the headers GCS gives (ETag,
// x-goog-generation). Downloads, deletes and listings (the XML list, list-type=2) fakestorage serves itself.
package main

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/fsouza/fake-gcs-server/fakestorage"
)

// The JSON and internal paths fakestorage serves as they are.
var ownPrefixes = []string{"/storage/", "/upload/", "/download/", "/batch/", "/_internal/"}

type multipartUpload struct {
	bucket, object string
	header         http.Header
	parts          map[int][]byte
}

type adapter struct {
	inner      http.Handler
	publicHost string
	mu         sync.Mutex
	uploads    map[string]*multipartUpload
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Uint("port", 4443, "port to listen on")
	flag.Parse()
	addr := net.JoinHostPort(*host, fmt.Sprint(*port))
	server, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		Scheme:     "http",
		Host:       *host,
		Port:       uint16(*port),
		PublicHost: addr, // object_store addresses the XML API at the base URL's host
		NoListener: true,
		Writer:     os.Stderr,
	})
	if err != nil {
		log.Fatalf("starting fakestorage: %v", err)
	}
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("listening on %s: %v", addr, err)
	}
	a := &adapter{inner: server.HTTPHandler(), publicHost: addr, uploads: map[string]*multipartUpload{}}
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		listener.Close()
	}()
	log.Printf("e2e-gcs-server listening on http://%s", addr)
	if err := http.Serve(listener, a); err != nil && !strings.Contains(err.Error(), "use of closed") {
		log.Fatal(err)
	}
}

func (a *adapter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// fakestorage routes XML-API requests by their Host (its public host); clients may name this server by
	// any address that reaches it (a pod, through the node's relay).
	r.Host = a.publicHost
	bucket, object, ok := bucketObject(r.URL.Path)
	if !ok {
		a.inner.ServeHTTP(w, r)
		return
	}
	q := r.URL.Query()
	// fakestorage's access log shows the requests these become; this one, what was asked.
	logXML := func(what string) { log.Printf("XML API %s %s: %s", r.Method, r.URL.RequestURI(), what) }
	switch {
	case r.Method == http.MethodPut && q.Has("uploadId"):
		logXML("multipart part")
		a.putPart(w, r, q)
	case r.Method == http.MethodPut && q.Has("X-Goog-Algorithm"):
		a.inner.ServeHTTP(w, r) // a signed-URL upload, which fakestorage serves
	case r.Method == http.MethodPut && r.Header.Get("x-goog-copy-source") != "":
		logXML("copy of " + r.Header.Get("x-goog-copy-source"))
		a.copy(w, r, bucket, object)
	case r.Method == http.MethodPut:
		logXML("upload")
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		a.upload(w, r.Header, bucket, object, body, nil)
	case r.Method == http.MethodPost && q.Has("uploads"):
		logXML("multipart start")
		a.initiate(w, r, bucket, object)
	case r.Method == http.MethodPost && q.Has("uploadId"):
		logXML("multipart complete")
		a.complete(w, r, q.Get("uploadId"))
	case r.Method == http.MethodDelete && q.Has("uploadId"):
		logXML("multipart abort")
		a.mu.Lock()
		delete(a.uploads, q.Get("uploadId"))
		a.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	default:
		a.inner.ServeHTTP(w, r)
	}
}

// bucketObject splits an XML-API path /BUCKET/OBJECT; ok is false for fakestorage's own paths and bucket-level
// requests.
func bucketObject(path string) (bucket, object string, ok bool) {
	for _, prefix := range ownPrefixes {
		if strings.HasPrefix(path, prefix) {
			return "", "", false
		}
	}
	bucket, object, found := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	return bucket, object, found && bucket != "" && object != ""
}

// upload writes OBJECT through fakestorage's media upload, with x-goog-if-generation-match from header as its
// precondition, and answers with what GCS's XML API returns; extra (if not nil) gets the object's attributes.
func (a *adapter) upload(w http.ResponseWriter, header http.Header, bucket, object string, body []byte,
	extra func(etag string, generation int64)) {
	q := url.Values{"uploadType": {"media"}, "name": {object}}
	if generation := header.Get("x-goog-if-generation-match"); generation != "" {
		q.Set("ifGenerationMatch", generation)
	}
	path := "/upload/storage/v1/b/" + bucket + "/o"
	inner, err := http.NewRequest(http.MethodPost, path+"?"+q.Encode(), bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	inner.URL.RawPath = "/upload/storage/v1/b/" + url.PathEscape(bucket) + "/o"
	for key, values := range header {
		lower := strings.ToLower(key)
		if lower == "content-type" || strings.HasPrefix(lower, "x-goog-meta-") {
			inner.Header[key] = values
		}
	}
	if inner.Header.Get("Content-Type") == "" {
		inner.Header.Set("Content-Type", "application/octet-stream")
	}
	recorder := httptest.NewRecorder()
	a.inner.ServeHTTP(recorder, inner)
	if recorder.Code != http.StatusOK {
		w.WriteHeader(recorder.Code)
		w.Write(recorder.Body.Bytes())
		return
	}
	var created struct {
		Etag       string `json:"etag"`
		Generation int64  `json:"generation,string"`
	}
	if err := json.Unmarshal(recorder.Body.Bytes(), &created); err != nil {
		http.Error(w, "decoding fakestorage's answer: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("ETag", fmt.Sprintf("%q", created.Etag))
	w.Header().Set("x-goog-generation", fmt.Sprint(created.Generation))
	if extra != nil {
		extra(created.Etag, created.Generation)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// copy reads the source (x-goog-copy-source: BUCKET/OBJECT, percent-encoded) and uploads it as OBJECT, so the
// write is checked against x-goog-if-generation-match like any upload.
func (a *adapter) copy(w http.ResponseWriter, r *http.Request, bucket, object string) {
	source, err := url.PathUnescape(strings.TrimPrefix(r.Header.Get("x-goog-copy-source"), "/"))
	if err != nil {
		http.Error(w, "bad x-goog-copy-source: "+err.Error(), http.StatusBadRequest)
		return
	}
	sourceBucket, sourceObject, ok := strings.Cut(source, "/")
	if !ok {
		http.Error(w, "bad x-goog-copy-source "+source, http.StatusBadRequest)
		return
	}
	get, err := http.NewRequest(http.MethodGet, "/download/storage/v1/b/x/o/x?alt=media", nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	get.URL.Path = "/download/storage/v1/b/" + sourceBucket + "/o/" + sourceObject
	get.URL.RawPath = "/download/storage/v1/b/" + url.PathEscape(sourceBucket) + "/o/" + url.PathEscape(sourceObject)
	recorder := httptest.NewRecorder()
	a.inner.ServeHTTP(recorder, get)
	if recorder.Code != http.StatusOK {
		w.WriteHeader(recorder.Code)
		w.Write(recorder.Body.Bytes())
		return
	}
	header := r.Header.Clone()
	header.Set("Content-Type", recorder.Header().Get("Content-Type"))
	a.upload(w, header, bucket, object, recorder.Body.Bytes(), nil)
}

func (a *adapter) initiate(w http.ResponseWriter, r *http.Request, bucket, object string) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	uploadID := hex.EncodeToString(id)
	a.mu.Lock()
	a.uploads[uploadID] = &multipartUpload{bucket: bucket, object: object, header: r.Header.Clone(), parts: map[int][]byte{}}
	a.mu.Unlock()
	writeXML(w, struct {
		XMLName  xml.Name `xml:"InitiateMultipartUploadResult"`
		Bucket   string
		Key      string
		UploadId string
	}{Bucket: bucket, Key: object, UploadId: uploadID})
}

func (a *adapter) putPart(w http.ResponseWriter, r *http.Request, q url.Values) {
	var number int
	if _, err := fmt.Sscan(q.Get("partNumber"), &number); err != nil {
		http.Error(w, "bad partNumber", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	upload, ok := a.uploads[q.Get("uploadId")]
	if ok {
		upload.parts[number] = body
	}
	a.mu.Unlock()
	if !ok {
		http.Error(w, "no such upload", http.StatusNotFound)
		return
	}
	sum := md5.Sum(body)
	w.Header().Set("ETag", fmt.Sprintf("%q", hex.EncodeToString(sum[:])))
	w.WriteHeader(http.StatusOK)
}

func (a *adapter) complete(w http.ResponseWriter, r *http.Request, uploadID string) {
	var request struct {
		Parts []struct {
			PartNumber int `xml:"PartNumber"`
		} `xml:"Part"`
	}
	if err := xml.NewDecoder(r.Body).Decode(&request); err != nil {
		http.Error(w, "bad CompleteMultipartUpload: "+err.Error(), http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	upload, ok := a.uploads[uploadID]
	delete(a.uploads, uploadID)
	a.mu.Unlock()
	if !ok {
		http.Error(w, "no such upload", http.StatusNotFound)
		return
	}
	numbers := make([]int, 0, len(request.Parts))
	for _, part := range request.Parts {
		numbers = append(numbers, part.PartNumber)
	}
	if !sort.IntsAreSorted(numbers) {
		http.Error(w, "parts out of order", http.StatusBadRequest)
		return
	}
	var body bytes.Buffer
	for _, number := range numbers {
		part, ok := upload.parts[number]
		if !ok {
			http.Error(w, fmt.Sprintf("no part %d", number), http.StatusBadRequest)
			return
		}
		body.Write(part)
	}
	a.upload(w, upload.header, upload.bucket, upload.object, body.Bytes(), func(etag string, _ int64) {
		writeXML(w, struct {
			XMLName xml.Name `xml:"CompleteMultipartUploadResult"`
			Bucket  string
			Key     string
			ETag    string
		}{Bucket: upload.bucket, Key: upload.object, ETag: fmt.Sprintf("%q", etag)})
	})
}

func writeXML(w http.ResponseWriter, value any) {
	body, err := xml.Marshal(value)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(http.StatusOK)
	w.Write(append([]byte(xml.Header), body...))
}
