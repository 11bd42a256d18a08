#!/usr/bin/env bash
# Builds the e2e test bed's object-store servers besides S3 (whose s3s-fs e2e/cluster.sh installs itself) once
# per machine and version, into $HOME/.cache/e2e-k8s/stores:
#   e2e-gcs-server   the GCS-protocol server: fake-gcs-server's fakestorage, github.com/fsouza/fake-gcs-server
#                    v1.56.1 (Go module proxy), under e2e/gcs-server/main.go, which adds the XML-API uploads,
#                    copies and multipart uploads that object_store's GCS client sends and fakestorage does not
#                    serve. e2e/gcs-server/go.sum pins every module by hash.
#   Azurite 3.35.0   the Azure-Blob-protocol server (npm registry), installed with `npm ci` from
#                    e2e/azurite/package-lock.json, which pins it and every dependency by hash. 3.36.0 and later
#                    need Node >= 21; Debian's Node is 20.
# An output's directory is named after a hash of its sources (for the GCS server, this script too), so an edit
# builds it again; older builds are removed then. A build goes to a temporary directory first and is moved into place whole.
#
#   e2e/build-stores.sh           build what is missing (saying what it did on stderr), then print the paths
#                                 (shell assignments) on stdout
#   e2e/build-stores.sh --paths   only print the paths
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

FAKE_GCS_VERSION=v1.56.1
FAKE_GCS_SUM=h1:K03sAvbLvDz4hAynpCCUqnNRp+ik9JFSvHbkD/wTPOU=
AZURITE_VERSION=3.35.0

STORES=$HOME/.cache/e2e-k8s/stores
GCS_SRC=$SCRIPT_DIR/gcs-server
S3_GATE_SRC=$SCRIPT_DIR/s3-gate
AZURITE_SRC=$SCRIPT_DIR/azurite
GCS_HASH=$(cat "$GCS_SRC/main.go" "$GCS_SRC/go.mod" "$GCS_SRC/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
AZURITE_HASH=$(cat "$AZURITE_SRC/package.json" "$AZURITE_SRC/package-lock.json" | sha256sum | cut -c1-12)
GCS_DIR=$STORES/gcs-$GCS_HASH
S3_GATE_HASH=$(cat "$S3_GATE_SRC/main.go" "$S3_GATE_SRC/go.mod" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
S3_GATE_DIR=$STORES/s3-gate-$S3_GATE_HASH
AZURITE_DIR=$STORES/azurite-$AZURITE_HASH

print_paths() {
  printf 'STORES_GCS_SERVER=%q\n' "$GCS_DIR/e2e-gcs-server"
  printf 'STORES_S3_GATE=%q\n' "$S3_GATE_DIR/e2e-s3-gate"
  printf 'STORES_AZURITE=%q\n' "$AZURITE_DIR/node_modules/.bin/azurite-blob"
}
if [ "${1:-}" = --paths ]; then
  print_paths
  exit 0
fi

log() { echo "build-stores: $*" >&2; }
die() { log "error: $*"; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
export GOMODCACHE=${GOMODCACHE:-$HOME/.cache/go-mod}
mkdir -p "$STORES"

# replace_build KIND DIR TMP: move TMP into place as DIR and remove KIND's older builds.
replace_build() {
  local kind=$1 dest=$2 tmp=$3 old
  rm -rf "$dest"
  mv "$tmp" "$dest"
  for old in "$STORES/$kind"-*; do
    [ "$old" = "$dest" ] || [ ! -e "$old" ] || { rm -rf "$old"; log "removed the older build $old"; }
  done
}

build_gcs() {
  if [ -x "$GCS_DIR/e2e-gcs-server" ]; then
    log "e2e-gcs-server (fake-gcs-server $FAKE_GCS_VERSION) is built: $GCS_DIR"
    return
  fi
  command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build the GCS server)"
  grep -qF "github.com/fsouza/fake-gcs-server $FAKE_GCS_VERSION" "$GCS_SRC/go.mod" \
    || die "e2e/gcs-server/go.mod does not require fake-gcs-server $FAKE_GCS_VERSION"
  grep -qF "github.com/fsouza/fake-gcs-server $FAKE_GCS_VERSION $FAKE_GCS_SUM" "$GCS_SRC/go.sum" \
    || die "e2e/gcs-server/go.sum does not pin fake-gcs-server $FAKE_GCS_VERSION at $FAKE_GCS_SUM"
  local t0=$SECONDS tmp=$STORES/.gcs-build
  log "building e2e-gcs-server with fake-gcs-server $FAKE_GCS_VERSION (about 1-3 min cold)"
  rm -rf "$tmp"
  mkdir -p "$tmp/src" "$tmp/out"
  # A copy of the sources: the build never writes into the repository.
  cp "$GCS_SRC/main.go" "$GCS_SRC/go.mod" "$GCS_SRC/go.sum" "$tmp/src/"
  (cd "$tmp/src" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/out/e2e-gcs-server" .)
  [ -x "$tmp/out/e2e-gcs-server" ] || die "go build did not produce e2e-gcs-server"
  rm -rf "$tmp/src"
  replace_build gcs "$GCS_DIR" "$tmp/out"
  rm -rf "$tmp"
  log "e2e-gcs-server built in $((SECONDS - t0))s: $GCS_DIR"
}

# The gate in front of s3s-fs that makes its conditional writes atomic (e2e/s3-gate/main.go); the
# standard library only, a few seconds to build.
build_s3_gate() {
  if [ -x "$S3_GATE_DIR/e2e-s3-gate" ]; then
    log "e2e-s3-gate is built: $S3_GATE_DIR"
    return
  fi
  command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build the S3 gate)"
  local t0=$SECONDS tmp=$STORES/.s3-gate-build
  rm -rf "$tmp"
  mkdir -p "$tmp/src" "$tmp/out"
  cp "$S3_GATE_SRC/main.go" "$S3_GATE_SRC/go.mod" "$tmp/src/"
  (cd "$tmp/src" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/out/e2e-s3-gate" .)
  [ -x "$tmp/out/e2e-s3-gate" ] || die "go build did not produce e2e-s3-gate"
  rm -rf "$tmp/src"
  replace_build s3-gate "$S3_GATE_DIR" "$tmp/out"
  rm -rf "$tmp"
  log "e2e-s3-gate built in $((SECONDS - t0))s: $S3_GATE_DIR"
}

build_azurite() {
  if [ -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
    log "Azurite $AZURITE_VERSION is installed: $AZURITE_DIR"
    return
  fi
  command -v npm >/dev/null 2>&1 || die "npm is not on PATH (needed to install Azurite)"
  grep -qF "\"azurite\": \"$AZURITE_VERSION\"" "$AZURITE_SRC/package.json" \
    || die "e2e/azurite/package.json does not pin azurite $AZURITE_VERSION"
  local t0=$SECONDS tmp=$STORES/.azurite-build
  log "installing Azurite $AZURITE_VERSION with npm ci (about 30 s cold)"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  cp "$AZURITE_SRC/package.json" "$AZURITE_SRC/package-lock.json" "$tmp/"
  # --ignore-scripts: no install script runs (Azurite needs none); progress and funding notes to stderr.
  npm ci --prefix "$tmp" --omit=dev --ignore-scripts --no-audit --no-fund >&2
  local version
  version=$("$tmp/node_modules/.bin/azurite-blob" --version)
  [ "$version" = "$AZURITE_VERSION" ] || die "npm ci installed Azurite $version, expected $AZURITE_VERSION"
  replace_build azurite "$AZURITE_DIR" "$tmp"
  log "Azurite $AZURITE_VERSION installed in $((SECONDS - t0))s: $AZURITE_DIR"
}

build_gcs
build_s3_gate
build_azurite
print_paths
