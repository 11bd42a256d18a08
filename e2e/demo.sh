#!/usr/bin/env bash
# The demo: starts the local control plane, the operator and a sample SlateDB database, then takes a
# DatabaseCheckpoint and a DatabaseClone of it and reads the clone back. Everything stops at the
# end unless --keep is given (then: `e2e/cluster.sh down` and kill the operator by the printed pid).
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = "--keep" ] && keep=true
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Building the operator"
cargo build --locked --quiet
operator=${CARGO_TARGET_DIR:-$PWD/target}/debug/slatedb-operator

say "Starting the control plane (kube-apiserver, etcd, kube-controller-manager, S3 server)"
e2e/cluster.sh up >/dev/null
# shellcheck disable=SC1090
source <(e2e/cluster.sh env)
kubectl=$E2E_KUBECTL
store_dir=$E2E_STATE_DIR/demo-store
mkdir -p "$store_dir"
operator_pid=
cleanup() {
  [ -n "$operator_pid" ] && kill "$operator_pid" 2>/dev/null || true
  e2e/cluster.sh down >/dev/null 2>&1 || true
}
$keep || trap cleanup EXIT

say "Writing a sample database: 10000 keys in 5 SSTs at file://$store_dir/prod/orders"
"$operator" sample --store "file://$store_dir" --path prod/orders --keys 10000 --ssts 5

say "Starting the operator (log: $E2E_STATE_DIR/operator.log)"
"$operator" --log-format json run --http-port 18080 --allow-local-stores >"$E2E_STATE_DIR/operator.log" 2>&1 &
operator_pid=$!

$kubectl create namespace demo --dry-run=client -o yaml | $kubectl apply -f - >/dev/null
cat <<YAML | $kubectl apply -n demo -f -
apiVersion: slatedb.io/v1alpha1
kind: DatabaseCheckpoint
metadata: {name: nightly}
spec:
  database: {store: {url: "file://$store_dir"}, path: prod/orders}
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
"$operator" verify --store "file://$store_dir" --path clones/pr-1234 --content
echo "checkpoint content root: $($kubectl get -n demo dbcp nightly -o jsonpath='{.status.checksum.contentRoot}')"
echo "clone content root:      $($kubectl get -n demo dbclone pr-1234 -o jsonpath='{.status.checksum.contentRoot}')"
echo "objects under the parent: $(find "$store_dir/prod/orders" -type f | wc -l), under the clone: $(find "$store_dir/clones/pr-1234" -type f | wc -l) (no SST copied)"

say "Operator metrics (excerpt)"
curl -fsS http://127.0.0.1:18080/metrics | grep -E '^slatedb_operator_(reconciles_total|clones_in_flight|clone_duration_seconds_count)' || true

if $keep; then
  say "Left running: operator pid $operator_pid; source <(e2e/cluster.sh env) to use kubectl; e2e/cluster.sh down to stop"
else
  say "Done; stopping everything"
fi
