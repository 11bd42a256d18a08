#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and kubelet from the k8s.io/kubernetes Go
# module, once per machine and version (only the binaries that are missing from the cache are built). `go install` cannot build k8s.io/kubernetes (its staging modules are replaced
# to ./staging at v0.0.0), so a throw-away wrapper module replaces each staging module with its
# published v0.<minor>.<patch> release.
set -euo pipefail
K8S=${K8S_VERSION:-1.37.2}
STAGING_VERSION=v0.${K8S#1.}
MINOR=$(echo "$K8S" | cut -d. -f2)
ROOT=$HOME/.cache/e2e-k8s/v$K8S
OUT=$ROOT/bin
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOMODCACHE=${GOMODCACHE:-$HOME/.cache/go-mod}

COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
missing=()
for cmd in "${COMMANDS[@]}"; do
  [ -x "$OUT/$cmd" ] || missing+=("$cmd")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
rm -rf "$ROOT/mod"
mkdir -p "$ROOT/mod" "$OUT"
cd "$ROOT/mod"
go mod init e2e.local/k8sbins >/dev/null 2>&1
gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
staging=$( { sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) v0\.0\.0$#\1#p' "$gomod"
             sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$gomod"; } | sort -u )
for module in $staging; do
  go mod edit "-replace=$module=$module@$STAGING_VERSION"
done
# kubelet also needs k8s.io/cri-streaming (a staging module since 1.36): the loop above replaces it like the rest.
tools=()
for cmd in "${COMMANDS[@]}"; do tools+=("k8s.io/kubernetes/cmd/$cmd@v$K8S"); done
go get -tool "${tools[@]}"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$K8S -X k8s.io/component-base/version.gitMajor=1"
ldflags="$ldflags -X k8s.io/component-base/version.gitMinor=$MINOR -X k8s.io/component-base/version.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=v$K8S"
packages=()
for cmd in "${missing[@]}"; do packages+=("k8s.io/kubernetes/cmd/$cmd"); done
# Into a temporary directory first, so that an interrupted build never leaves a partial binary in the cache.
rm -rf "$ROOT/bin.tmp"
mkdir -p "$ROOT/bin.tmp"
/usr/bin/time -v -o "$ROOT/build-time-$(IFS=+; echo "${missing[*]}").txt" \
  go build -trimpath -ldflags "$ldflags" -o "$ROOT/bin.tmp/" "${packages[@]}"
for cmd in "${missing[@]}"; do
  mv -f "$ROOT/bin.tmp/$cmd" "$OUT/$cmd"
done
rmdir "$ROOT/bin.tmp"
for cmd in "${COMMANDS[@]}"; do
  "$OUT/$cmd" --version
done
