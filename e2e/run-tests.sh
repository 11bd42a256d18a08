#!/usr/bin/env bash
# The project's test command: starts the e2e control plane, runs every test (unit and e2e)
# against it, and always stops it again. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every package of the lock file, for every platform: a unit test reads `cargo metadata --offline`
# (which wants them all), and a build fetches only this platform's.
cargo fetch --locked
trap 'e2e/cluster.sh down' EXIT
e2e/cluster.sh up >/dev/null
# shellcheck disable=SC1090
source <(e2e/cluster.sh env)
cargo test --locked "$@"
