#!/usr/bin/env bash
# The project's test command: starts the e2e control plane, runs every test (unit and e2e)
# against it, and always stops it again. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'e2e/cluster.sh down' EXIT
e2e/cluster.sh up >/dev/null
# shellcheck disable=SC1090
source <(e2e/cluster.sh env)
cargo test --locked "$@"
