#!/usr/bin/env bash
# Builds the operator's container image without Docker and without a registry, as an OCI image layout tar that
# `ctr -n k8s.io images import` (containerd) and `podman load` take:
#   - the operator binary (release build by default; IMAGE_PROFILE=debug uses the dev build, IMAGE_BINARY a binary
#     built already),
#   - the runtime libraries it links, copied from where Debian's packages installed them (ldd names them; the
#     package and version of each are recorded in the image's labels),
#   - Debian's CA certificates (the bundle of the ca-certificates package),
#   - /etc/passwd and /etc/group with the non-root user 65532 (nonroot), a world-writable /tmp,
#   - the Dockerfile's user, entrypoint and exposed port (e2e/tests/image.rs keeps the two in step).
# The layer is deterministic (sorted entries, fixed times and owners), so the same inputs give the same digest.
#
#   e2e/build-image.sh [OUT.tar]   default: $CARGO_TARGET_DIR/image/slatedb-operator-oci.tar; prints the path
# IMAGE_NAME (default docker.io/library/slatedb-operator:e2e) is the name containerd gives the image.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/slatedb-operator/target}
OUT=${1:-$TARGET/image/slatedb-operator-oci.tar}
PROFILE=${IMAGE_PROFILE:-release}
IMAGE_NAME=${IMAGE_NAME:-docker.io/library/slatedb-operator:e2e}
log() { echo "build-image: $*" >&2; }

case "${IMAGE_BINARY:+given}$PROFILE" in
  given*) BIN=$IMAGE_BINARY ;;
  release) cargo build --release --locked --bin slatedb-operator >&2; BIN=$TARGET/release/slatedb-operator ;;
  debug) cargo build --locked --bin slatedb-operator >&2; BIN=$TARGET/debug/slatedb-operator ;;
  *) echo "IMAGE_PROFILE must be release or debug" >&2; exit 2 ;;
esac
command -v python3 >/dev/null || { echo "build-image: python3 is needed" >&2; exit 1; }

# The libraries the binary links (and the dynamic loader), with the Debian package that installed each.
libs=$(ldd "$BIN" | awk '/=>/ { print $3 } /ld-linux/ { print $1 }' | sort -u)
packages=""
for lib in $libs; do
  real=$(readlink -f "$lib")
  owner=$(dpkg -S "$real" 2>/dev/null | head -1 | cut -d: -f1 || true)
  [ -n "$owner" ] || owner=$(dpkg -S "$lib" 2>/dev/null | head -1 | cut -d: -f1 || true)
  [ -n "$owner" ] || { echo "build-image: no Debian package owns $lib" >&2; exit 1; }
  packages="$packages $owner=$(dpkg-query -W -f='${Version}' "$owner")"
done
CA=/etc/ssl/certs/ca-certificates.crt
[ -s "$CA" ] || { echo "build-image: $CA missing (Debian package ca-certificates)" >&2; exit 1; }
packages="$packages ca-certificates=$(dpkg-query -W -f='${Version}' ca-certificates)"
mkdir -p "$(dirname "$OUT")"
log "binary $BIN ($PROFILE), libraries from:$packages"

BIN="$BIN" LIBS="$libs" CA="$CA" PACKAGES="$packages" OUT="$OUT" IMAGE_NAME="$IMAGE_NAME" python3 - <<'PY'
import gzip, hashlib, io, json, os, tarfile

def entry(name, kind, data=b"", mode=0o644, link=""):
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
    info.mode = mode
    if kind == "dir":
        info.type = tarfile.DIRTYPE
    elif kind == "link":
        info.type, info.linkname = tarfile.SYMTYPE, link
    else:
        info.size = len(data)
    return info, data

files = {}
def add_dirs(path):
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        files.setdefault(d, entry(d, "dir", mode=0o755))

def add_file(path, data, mode=0o644):
    add_dirs(path)
    files[path.strip("/")] = entry(path.strip("/"), "file", data, mode)

add_file("usr/local/bin/slatedb-operator", open(os.environ["BIN"], "rb").read(), 0o755)
for lib in os.environ["LIBS"].split():
    # The loader and libraries under the path the binary asks for, as regular files.
    add_file(lib, open(os.path.realpath(lib), "rb").read(), 0o755)
add_file("etc/ssl/certs/ca-certificates.crt", open(os.environ["CA"], "rb").read())
add_file("etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
add_file("etc/group", b"root:x:0:\nnonroot:x:65532:\n")
add_file("etc/nsswitch.conf", b"hosts: files dns\n")
files["tmp"] = entry("tmp", "dir", mode=0o1777)
files["home"] = entry("home", "dir", mode=0o755)
home = entry("home/nonroot", "dir", mode=0o700)
home[0].uid = home[0].gid = 65532
files["home/nonroot"] = home
# /lib64 -> /usr/lib64 style links are not needed: files sit at the paths ldd printed.

raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for name in sorted(files):
        info, data = files[name]
        tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
layer_tar = raw.getvalue()
compressed = io.BytesIO()
with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0) as gz:
    gz.write(layer_tar)
layer = compressed.getvalue()

def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()

labels = {"org.opencontainers.image.title": "slatedb-operator",
          "org.opencontainers.image.description": "Declarative checkpoints and clones of SlateDB databases"}
for pkg in os.environ["PACKAGES"].split():
    name, version = pkg.split("=", 1)
    labels["io.slatedb.operator.debian-package." + name] = version
config = json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {
        "User": "65532:65532",
        "Entrypoint": ["slatedb-operator", "run"],
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
        "ExposedPorts": {"8080/tcp": {}},
        "WorkingDir": "/",
        "Labels": labels,
    },
    "rootfs": {"type": "layers", "diff_ids": [digest(layer_tar)]},
    "history": [{"created_by": "e2e/build-image.sh"}],
}, sort_keys=True).encode()
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(layer), "size": len(layer)}],
}, sort_keys=True).encode()
name = os.environ["IMAGE_NAME"]
index = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest),
                   "size": len(manifest),
                   "annotations": {"io.containerd.image.name": name,
                                   "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}}],
}, sort_keys=True).encode()

out = os.environ["OUT"]
with tarfile.open(out + ".tmp", mode="w", format=tarfile.PAX_FORMAT) as tar:
    def put(path, data):
        info, _ = entry(path, "file", data)
        tar.addfile(info, io.BytesIO(data))
    for d in ["blobs", "blobs/sha256"]:
        tar.addfile(entry(d, "dir", mode=0o755)[0])
    put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    put("index.json", index)
    for blob in (config, manifest, layer):
        put("blobs/sha256/" + digest(blob).split(":")[1], blob)
os.replace(out + ".tmp", out)
print(f"build-image: {name}: layer {len(layer)} bytes compressed, {len(layer_tar)} uncompressed, manifest {digest(manifest)}",
      file=__import__("sys").stderr)
PY
echo "$OUT"
