#!/usr/bin/env bash
# Builds the container runtime of the e2e node once per machine and version, into $HOME/.cache/e2e-k8s/node:
#   containerd, containerd-shim-runc-v2 and ctr   github.com/containerd/containerd/v2 v2.1.4   (Go module proxy)
#   runc (static, with seccomp)                   github.com/opencontainers/runc v1.3.3         (Go module proxy)
#     linked against libseccomp.a from Debian bookworm's libseccomp-dev, unpacked privately (never installed)
#   CNI plugins bridge, host-local, loopback      github.com/containernetworking/plugins v1.7.1 (Go module proxy)
#   the pod sandbox image e2e.local/pause:1       e2e/pause.c (gcc -static), an OCI image layout tar
# kubelet and kube-scheduler come from e2e/build-k8s.sh. Every source is pinned: the Go modules by version and by
# the module-zip hash the Go checksum database also vouches for (verified again below), the Debian package by
# version and sha256. Each output is skipped when it exists; a build goes to a temporary directory first.
#
#   e2e/build-node.sh           build what is missing, then print the paths (shell assignments) on stdout
#   e2e/build-node.sh --paths   only print the paths
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

CONTAINERD_VERSION=v2.1.4
CONTAINERD_SUM=h1:/hXWjiSFd6ftrBOBGfAZ6T30LJcx1dBjdKEeI8xucKQ=
RUNC_VERSION=v1.3.3
RUNC_SUM=h1:qlmBbbhu+yY0QM7jqfuat7M1H3/iXjju3VkP9lkFQr4=
# runc 1.3.3 replaces go-selinux with a patched copy (CVE-2025-52881) in a nested module that the module zip
# does not carry; go-selinux v1.13.1 is the upstream release with the same fix.
SELINUX_VERSION=v1.13.1
SELINUX_SUM=h1:A8nNeceYngH9Ow++M+VVEwJVpdFmrlxsN22F+ISDCJE=
CNI_VERSION=v1.7.1
CNI_SUM=h1:CNAR0jviDj6FS5Vg85NTgKWLDzZPfi/lj+VJfhMDTIs=
LIBSECCOMP_DEB=libseccomp-dev_2.5.4-1+deb12u1_amd64.deb
LIBSECCOMP_SHA256=5fb305f3aeb293e2b78a4cfcb58c0f42179703c371a408d002c8454661e6b7b2
PAUSE_IMAGE=e2e.local/pause:1

NODE=$HOME/.cache/e2e-k8s/node
PAUSE_HASH=$(cat "$SCRIPT_DIR/pause.c" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
CONTAINERD_DIR=$NODE/containerd-$CONTAINERD_VERSION
RUNC_DIR=$NODE/runc-$RUNC_VERSION
CNI_DIR=$NODE/cni-plugins-$CNI_VERSION
PAUSE_DIR=$NODE/pause-$PAUSE_HASH

print_paths() {
  printf 'NODE_CONTAINERD=%q\n' "$CONTAINERD_DIR/bin/containerd"
  printf 'NODE_SHIM_DIR=%q\n' "$CONTAINERD_DIR/bin"
  printf 'NODE_CTR=%q\n' "$CONTAINERD_DIR/bin/ctr"
  printf 'NODE_RUNC=%q\n' "$RUNC_DIR/runc"
  printf 'NODE_CNI_BIN=%q\n' "$CNI_DIR"
  printf 'NODE_PAUSE_TAR=%q\n' "$PAUSE_DIR/pause-oci.tar"
  printf 'NODE_PAUSE_IMAGE=%q\n' "$PAUSE_IMAGE"
}
if [ "${1:-}" = --paths ]; then
  print_paths
  exit 0
fi

log() { echo "build-node: $*" >&2; }
die() { log "error: $*"; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
export GOMODCACHE=${GOMODCACHE:-$HOME/.cache/go-mod}
BUILD=$NODE/build
mkdir -p "$NODE"

# module_source MODULE VERSION SUM DEST: a writable copy of the module's source, its zip hash checked.
module_source() {
  local json dir sum
  json=$(go mod download -json "$1@$2")
  dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<< "$json")
  sum=$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p' <<< "$json")
  [ "$sum" = "$3" ] || die "$1@$2: module hash $sum, expected $3"
  rm -rf "$4"
  mkdir -p "$(dirname "$4")"
  cp -r "$dir" "$4"
  chmod -R u+w "$4"
}

# install_outputs TMPDIR DEST FILE...: move the built files into place (DEST appears complete or not at all).
install_outputs() {
  local tmp=$1 dest=$2 f
  shift 2
  for f in "$@"; do [ -x "$tmp/$f" ] || die "$tmp/$f was not built"; done
  rm -rf "$dest"
  mv "$tmp" "$dest"
}

build_containerd() {
  [ -x "$CONTAINERD_DIR/bin/containerd" ] && [ -x "$CONTAINERD_DIR/bin/containerd-shim-runc-v2" ] \
    && [ -x "$CONTAINERD_DIR/bin/ctr" ] && return
  local t0=$SECONDS src=$BUILD/containerd
  log "building containerd $CONTAINERD_VERSION (about 3 min on 2 cores)"
  module_source github.com/containerd/containerd/v2 "$CONTAINERD_VERSION" "$CONTAINERD_SUM" "$src"
  rm -rf "$BUILD/containerd-out"
  mkdir -p "$BUILD/containerd-out/bin"
  # Static (no cgo); the snapshotters this node does not use are left out (overlayfs and native stay).
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    -o "$BUILD/containerd-out/bin/" ./cmd/containerd ./cmd/containerd-shim-runc-v2 ./cmd/ctr)
  install_outputs "$BUILD/containerd-out" "$CONTAINERD_DIR" bin/containerd bin/containerd-shim-runc-v2 bin/ctr
  rm -rf "$src"
  log "containerd built in $((SECONDS - t0))s: $("$CONTAINERD_DIR/bin/containerd" --version)"
}

# libseccomp_root: the unpacked libseccomp-dev (headers, libseccomp.a, pkg-config file) under $BUILD/seccomp.
libseccomp_root() {
  local apt=$NODE/apt uri deb
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
  deb=$apt/debs/$LIBSECCOMP_DEB
  if [ ! -f "$deb" ] || ! echo "$LIBSECCOMP_SHA256  $deb" | sha256sum -c --quiet - >/dev/null 2>&1; then
    uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    uri=${uri:-http://deb.debian.org/debian}
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bookworm main" > "$apt/sources.list"
    # Private lists and cache: /etc/apt and the system's package state are never written.
    local apto=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
                -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root)
    apt-get "${apto[@]}" update >&2
    local name=${LIBSECCOMP_DEB%%_*} version=${LIBSECCOMP_DEB#*_}
    version=${version%_*}
    (cd "$apt/debs" && apt-get "${apto[@]}" download "$name=$version" >&2)
    echo "$LIBSECCOMP_SHA256  $deb" | sha256sum -c --quiet - >&2 || die "checksum mismatch for $deb"
  fi
  rm -rf "$BUILD/seccomp"
  dpkg-deb -x "$deb" "$BUILD/seccomp"
  # Only the static library: the .so link would point at the system's libseccomp2.
  rm -f "$BUILD/seccomp/usr/lib/x86_64-linux-gnu/libseccomp.so"
}

build_runc() {
  [ -x "$RUNC_DIR/runc" ] && return
  command -v gcc >/dev/null || die "gcc is needed to build runc (cgo, libseccomp)"
  local t0=$SECONDS src=$BUILD/runc version=${RUNC_VERSION#v}
  log "building runc $RUNC_VERSION with seccomp (about 1 min)"
  libseccomp_root
  module_source github.com/opencontainers/runc "$RUNC_VERSION" "$RUNC_SUM" "$src"
  local selinux_sum
  selinux_sum=$(go mod download -json "github.com/opencontainers/selinux@$SELINUX_VERSION" \
    | sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p')
  [ "$selinux_sum" = "$SELINUX_SUM" ] || die "go-selinux $SELINUX_VERSION: hash $selinux_sum, expected $SELINUX_SUM"
  (cd "$src" && go mod edit "-replace=github.com/opencontainers/selinux=github.com/opencontainers/selinux@$SELINUX_VERSION")
  rm -rf "$BUILD/runc-out"
  mkdir -p "$BUILD/runc-out"
  # As runc's `make static`: a static PIE with libseccomp linked in, so it runs whatever the host has.
  (cd "$src" && CGO_ENABLED=1 PKG_CONFIG_PATH="$BUILD/seccomp/usr/lib/x86_64-linux-gnu/pkgconfig" \
    PKG_CONFIG_SYSROOT_DIR="$BUILD/seccomp" go build -trimpath -buildmode=pie \
    -tags "seccomp urfave_cli_no_docs netgo osusergo" \
    -ldflags "-s -w -X main.version=$version -linkmode external -extldflags -static-pie" \
    -o "$BUILD/runc-out/runc" .)
  "$BUILD/runc-out/runc" features | python3 -c 'import json, sys; sys.exit(not json.load(sys.stdin)["linux"]["seccomp"]["enabled"])' \
    || die "runc was built without seccomp"
  install_outputs "$BUILD/runc-out" "$RUNC_DIR" runc
  rm -rf "$src" "$BUILD/seccomp"
  log "runc built in $((SECONDS - t0))s: $("$RUNC_DIR/runc" --version | tr '\n' ' ')"
}

build_cni() {
  [ -x "$CNI_DIR/bridge" ] && [ -x "$CNI_DIR/host-local" ] && [ -x "$CNI_DIR/loopback" ] && return
  local t0=$SECONDS src=$BUILD/cni
  log "building the CNI plugins $CNI_VERSION (bridge, host-local, loopback)"
  module_source github.com/containernetworking/plugins "$CNI_VERSION" "$CNI_SUM" "$src"
  rm -rf "$BUILD/cni-out"
  mkdir -p "$BUILD/cni-out"
  (cd "$src" && CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_VERSION" \
    -o "$BUILD/cni-out/" ./plugins/main/bridge ./plugins/ipam/host-local ./plugins/main/loopback)
  install_outputs "$BUILD/cni-out" "$CNI_DIR" bridge host-local loopback
  rm -rf "$src"
  log "CNI plugins built in $((SECONDS - t0))s"
}

build_pause() {
  [ -f "$PAUSE_DIR/pause-oci.tar" ] && return
  command -v gcc >/dev/null || die "gcc is needed to build the pause image"
  command -v python3 >/dev/null || die "python3 is needed to build the pause image"
  log "building the pause image $PAUSE_IMAGE"
  rm -rf "$BUILD/pause-out"
  mkdir -p "$BUILD/pause-out"
  gcc -static -Os -s -Wall -Werror -o "$BUILD/pause-out/pause" "$SCRIPT_DIR/pause.c"
  # An OCI image layout with one layer holding /pause; fixed times and owners, so the digest is stable.
  PAUSE="$BUILD/pause-out/pause" OUT="$BUILD/pause-out/pause-oci.tar" NAME="$PAUSE_IMAGE" python3 - <<'PY'
import gzip, hashlib, io, json, os, tarfile

def info(name, size=0, mode=0o644, kind=tarfile.REGTYPE):
    i = tarfile.TarInfo(name)
    i.size, i.mode, i.type, i.mtime, i.uid, i.gid, i.uname, i.gname = size, mode, kind, 0, 0, 0, "root", "root"
    return i

def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()

binary = open(os.environ["PAUSE"], "rb").read()
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
    tar.addfile(info("pause", len(binary), 0o755), io.BytesIO(binary))
layer_tar = raw.getvalue()
gz = io.BytesIO()
with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as f:
    f.write(layer_tar)
layer = gz.getvalue()
config = json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"},
    "rootfs": {"type": "layers", "diff_ids": [digest(layer_tar)]},
    "history": [{"created_by": "e2e/build-node.sh (e2e/pause.c)"}],
}, sort_keys=True).encode()
manifest = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(layer), "size": len(layer)}],
}, sort_keys=True).encode()
name = os.environ["NAME"]
index = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest),
                   "size": len(manifest), "annotations": {"io.containerd.image.name": name,
                                                          "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}],
}, sort_keys=True).encode()
with tarfile.open(os.environ["OUT"], mode="w", format=tarfile.PAX_FORMAT) as tar:
    for d in ("blobs", "blobs/sha256"):
        tar.addfile(info(d, mode=0o755, kind=tarfile.DIRTYPE))
    for path, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)] + \
            [("blobs/sha256/" + digest(b)[7:], b) for b in (config, manifest, layer)]:
        tar.addfile(info(path, len(data)), io.BytesIO(data))
PY
  install_outputs "$BUILD/pause-out" "$PAUSE_DIR" pause
  log "pause image built ($(stat -c %s "$PAUSE_DIR/pause-oci.tar") bytes)"
}

command -v go >/dev/null 2>&1 || die "go is not on PATH"
build_containerd
build_runc
build_cni
build_pause
rm -rf "$BUILD"
print_paths
