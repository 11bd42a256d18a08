#!/usr/bin/env bash
# The demo: starts the local cluster (control plane, S3 server and a real node: kubelet + containerd), builds the
# operator's image without Docker and imports it into the node, installs the operator with the Helm chart, writes a
# sample SlateDB database to the S3 server, then takes a DatabaseCheckpoint and a DatabaseClone of it and reads the
# clone back. Everything stops at the end unless --keep is given (then: `e2e/cluster.sh down`).
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = "--keep" ] && keep=true
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Building the operator (release)"
cargo build --release --locked --quiet --bin slatedb-operator
operator=${CARGO_TARGET_DIR:-$PWD/target}/release/slatedb-operator

say "Starting the cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, S3 server, and a node: containerd + kubelet)"
e2e/cluster.sh up >/dev/null
# shellcheck disable=SC1090
source <(e2e/cluster.sh env)
kubectl=$E2E_KUBECTL
helm=$E2E_HELM
cleanup() { e2e/cluster.sh down >/dev/null 2>&1 || true; }
$keep || trap cleanup EXIT
$kubectl get nodes -o wide

say "Building the image without Docker (e2e/build-image.sh) and importing it into the node's containerd"
tag=demo-$(sha256sum "$operator" | cut -c1-12)
image_tar=$E2E_STATE_DIR/slatedb-operator-image.tar
IMAGE_BINARY=$operator IMAGE_NAME=docker.io/library/slatedb-operator:$tag e2e/build-image.sh "$image_tar" >/dev/null
e2e/cluster.sh import-image "$image_tar"

say "Installing the operator with the chart (helm install --wait: the pod is Ready through its readiness probe)"
# The pod reaches the API server through the node's address (there is no kube-proxy in this cluster); the CRDs
# are already applied by e2e/cluster.sh up (from crds/, the same files as the chart's).
$helm install slatedb-operator charts/slatedb-operator --namespace slatedb-system --create-namespace \
  --set image.repository=docker.io/library/slatedb-operator --set "image.tag=$tag" --set image.pullPolicy=Never \
  --set crds.enabled=false \
  --set-json "extraEnv=[{\"name\":\"KUBERNETES_SERVICE_HOST\",\"value\":\"$E2E_NODE_IP\"},{\"name\":\"KUBERNETES_SERVICE_PORT\",\"value\":\"${E2E_APISERVER_URL##*:}\"}]" \
  --wait --timeout 2m >/dev/null
$kubectl get pods -n slatedb-system -o wide

# The demo's object store: a bucket on the S3 server. This shell writes to it on loopback; the operator pod reaches
# the same server through the node's address.
export AWS_ACCESS_KEY_ID=$E2E_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$E2E_S3_SECRET_KEY AWS_ENDPOINT=$E2E_S3_ENDPOINT \
  AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
store=s3://$E2E_S3_BUCKET/demo
say "Writing a sample database: 10000 keys in 5 SSTs at $store/prod/orders"
"$operator" sample --store "$store" --path prod/orders --keys 10000 --ssts 5

$kubectl create namespace demo --dry-run=client -o yaml | $kubectl apply -f - >/dev/null
$kubectl create secret generic store-credentials -n demo --from-literal "AWS_ACCESS_KEY_ID=$E2E_S3_ACCESS_KEY" \
  --from-literal "AWS_SECRET_ACCESS_KEY=$E2E_S3_SECRET_KEY" --from-literal "AWS_ENDPOINT=$E2E_POD_S3_ENDPOINT" \
  --from-literal AWS_ALLOW_HTTP=true --from-literal AWS_REGION=us-east-1 --dry-run=client -o yaml \
  | $kubectl apply -f - >/dev/null
cat <<YAML | $kubectl apply -n demo -f -
apiVersion: slatedb.io/v1alpha1
kind: DatabaseCheckpoint
metadata: {name: nightly}
spec:
  database:
    store: {url: "$store", secretRef: {name: store-credentials}}
    path: prod/orders
  lifetime: 48h
  checksum: Content
---
apiVersion: slatedb.io/v1alpha1
kind: DatabaseClone
metadata: {name: pr-1234}
spec:
  source: {checkpointRef: {name: nightly}}
  target: {path: clones/pr-1234}
  verify: Content
  expireAfter: 72h
YAML

say "Waiting for both to be Ready"
$kubectl wait -n demo --for=condition=Ready --timeout=120s databasecheckpoint/nightly databaseclone/pr-1234
$kubectl get -n demo databasecheckpoints,databaseclones

say "The clone, read back through SlateDB (content verified against the checkpoint)"
"$operator" verify --store "$store" --path clones/pr-1234 --content
echo "checkpoint content root: $($kubectl get -n demo dbcp nightly -o jsonpath='{.status.checksum.contentRoot}')"
echo "clone content root:      $($kubectl get -n demo dbclone pr-1234 -o jsonpath='{.status.checksum.contentRoot}')"
objects=$E2E_S3_ROOT/$E2E_S3_BUCKET/demo
echo "objects under the parent: $(find "$objects/prod/orders" -type f | wc -l), under the clone: $(find "$objects/clones/pr-1234" -type f | wc -l) (no SST copied)"

say "Operator metrics (excerpt), scraped from the pod through the API server's pod proxy"
pod=$($kubectl get pods -n slatedb-system -l app.kubernetes.io/instance=slatedb-operator -o jsonpath='{.items[0].metadata.name}')
$kubectl get --raw "/api/v1/namespaces/slatedb-system/pods/$pod:8080/proxy/metrics" \
  | grep -E '^slatedb_operator_(reconciles_total|clones_in_flight|clone_duration_seconds_count|leader)' || true

if $keep; then
  say "Left running: source <(e2e/cluster.sh env) to use kubectl and helm; e2e/cluster.sh down to stop"
else
  say "Done; stopping everything"
fi
