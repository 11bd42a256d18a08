#!/usr/bin/env bash
# Builds and runs the benchmarks of issue 6 and appends a section to benches/RESULTS.md: date, commit,
# machine facts, the exact command, and the markdown the benches print (tables and goal verdicts).
#
#   benches/run.sh                 # every bench, the default sizes
#   BENCH_FULL=1 benches/run.sh    # adds the 1 GiB and 10 000-SST parents, ~1 GiB checkpoint, 500 clones
#   BENCH_ONLY=operator_scale,checkpoint_under_load benches/run.sh   # some of them
#
# The benches (all by default, in this order):
#   clone_cost             library: copy-on-write clone vs `cp -r` (10 MiB and 100 MiB parents, 10 and 1 000 SSTs)
#   verify_throughput      library: Content verification vs `sha256sum` (~100 MiB checkpoint)
#   checkpoint_under_load  library: writer throughput with and without a checkpoint every N ms
#   operator_scale         e2e control plane: 100 DatabaseClones at once (500 with BENCH_FULL=1) vs plain creates
#   copy_throughput        library: independent copy vs `rclone copy` (~100 MiB, 1 GiB with BENCH_FULL=1); incremental vs full
#
# operator_scale needs the e2e control plane. When KUBECONFIG and E2E_KUBECTL are set and the API server
# answers (e.g. after `source <(e2e/cluster.sh env)`), it uses that cluster; otherwise this script starts one
# with e2e/cluster.sh on private ports (E2E_STATE_DIR default $TMPDIR/slatedb-bench-cluster, E2E_ETCD_PORT
# 42379, E2E_ETCD_PEER_PORT 42380, E2E_APISERVER_PORT 46443, E2E_S3_PORT 49000,
# E2E_GCS_PORT 49100, E2E_AZURITE_PORT 49200, and no node (E2E_NODE=0); set them to move it) and
# stops it right after that bench (the library benches run without it).
#
# Other knobs: BENCH_REPS (default 7 for clone_cost, 5 for verify_throughput, 3 with BENCH_FULL; 3 for
# checkpoint_under_load), BENCH_DEADLINE_SECS (per bench; each bench exits by itself when it is reached),
# TMPDIR (where the parent databases are written), and those at the top of each bench's source
# (BENCH_CLONES, BENCH_STORES, BENCH_PHASE_SECS, BENCH_CHECKPOINT_INTERVALS_MS, …).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_BENCHES=(clone_cost verify_throughput checkpoint_under_load operator_scale copy_throughput)
results=benches/RESULTS.md
command_line="$({ env | grep -E '^(BENCH_[A-Z_]+|TMPDIR|E2E_STATE_DIR|E2E_[A-Z_]*PORT)=' || true; } | sort | tr '\n' ' ')benches/run.sh"

benches=()
if [ -n "${BENCH_ONLY:-}" ]; then
    IFS=', ' read -r -a wanted <<<"$BENCH_ONLY"
    for b in "${wanted[@]}"; do
        [ -n "$b" ] || continue
        case " ${ALL_BENCHES[*]} " in
            *" $b "*) benches+=("$b") ;;
            *) echo "run.sh: unknown bench '$b' in BENCH_ONLY (known: ${ALL_BENCHES[*]})" >&2; exit 2 ;;
        esac
    done
else
    benches=("${ALL_BENCHES[@]}")
fi
[ "${#benches[@]}" -gt 0 ] || { echo "run.sh: BENCH_ONLY selects no bench" >&2; exit 2; }

work=$(mktemp -d)
owned_cluster=0
# operator_scale's control plane: started right before that bench and stopped right after it, so the
# library benches do not share the machine with an idle API server, etcd and controller manager.
cluster_up() {
    if [ -n "${KUBECONFIG:-}" ] && [ -n "${E2E_KUBECTL:-}" ] \
        && [ "$("$E2E_KUBECTL" --request-timeout=5s get --raw /readyz 2>/dev/null)" = ok ]; then
        echo "run.sh: operator_scale uses the cluster of KUBECONFIG=$KUBECONFIG" >&2
    else
        export E2E_STATE_DIR=${E2E_STATE_DIR:-${TMPDIR:-/tmp}/slatedb-bench-cluster}
        export E2E_ETCD_PORT=${E2E_ETCD_PORT:-42379} E2E_ETCD_PEER_PORT=${E2E_ETCD_PEER_PORT:-42380}
        export E2E_APISERVER_PORT=${E2E_APISERVER_PORT:-46443} E2E_S3_PORT=${E2E_S3_PORT:-49000}
        export E2E_S3_BACKEND_PORT=${E2E_S3_BACKEND_PORT:-49001}
        export E2E_GCS_PORT=${E2E_GCS_PORT:-49100} E2E_AZURITE_PORT=${E2E_AZURITE_PORT:-49200}
        # The benches run no pods; a second node would clash with the test bed's own.
        export E2E_NODE=${E2E_NODE:-0}
        echo "run.sh: starting a cluster for operator_scale in $E2E_STATE_DIR" >&2
        owned_cluster=1
        e2e/cluster.sh up >/dev/null
        # shellcheck source=/dev/null
        source <(e2e/cluster.sh env)
        # The cluster is thrown away afterwards: no need to delete what the bench made.
        export BENCH_SKIP_CLEANUP=${BENCH_SKIP_CLEANUP:-1}
    fi
}
cluster_down() {
    if [ "$owned_cluster" = 1 ]; then
        echo "run.sh: stopping the bench cluster ($E2E_STATE_DIR)" >&2
        e2e/cluster.sh down >&2 || true
        owned_cluster=0
    fi
}

cleanup() {
    cluster_down
    rm -rf "$work"
}
trap cleanup EXIT

# copy_throughput's baseline is `rclone copy` (Debian's package), missing on a fresh machine.
case " ${benches[*]} " in
    *" copy_throughput "*)
        if ! command -v rclone >/dev/null; then
            echo "run.sh: installing rclone (Debian) for copy_throughput's baseline" >&2
            apt-get install -y -qq rclone >&2 || { apt-get update -qq >&2 && apt-get install -y -qq rclone >&2; }
        fi
        ;;
esac

build_args=()
for b in "${benches[@]}"; do build_args+=(--bench "$b"); done
echo "run.sh: building the benches (cargo bench --no-run ${build_args[*]})" >&2
cargo bench --no-run "${build_args[@]}" >&2

case " ${benches[*]} " in
    *" operator_scale "*)
        # The operator binary cargo just built, copied: another build sharing target/ may replace it.
        if [ -z "${BENCH_OPERATOR_BIN:-}" ]; then
            cp "${CARGO_TARGET_DIR:-target}/release/slatedb-operator" "$work/slatedb-operator"
            export BENCH_OPERATOR_BIN=$work/slatedb-operator
        fi
        ;;
esac

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
t0=$(date +%s)
status=0
for bench in "${benches[@]}"; do
    echo "run.sh: cargo bench --bench $bench" >&2
    if [ "$bench" = operator_scale ]; then cluster_up; fi
    b0=$(date +%s)
    if cargo bench --bench "$bench" >"$work/$bench.md"; then
        echo "run.sh: $bench finished in $(( $(date +%s) - b0 )) s" >&2
    else
        rc=$?
        status=$rc
        printf '\n**`cargo bench --bench %s` failed with status %s after %s s** (see its stderr).\n\n' \
            "$bench" "$rc" "$(( $(date +%s) - b0 ))" >>"$work/$bench.md"
    fi
    if [ "$bench" = operator_scale ]; then cluster_down; fi
done
elapsed=$(( $(date +%s) - t0 ))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

commit=$(git rev-parse --short HEAD)
if [ -n "$(git status --porcelain)" ]; then commit="$commit (working tree has uncommitted changes)"; fi
cpu_model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem_total=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)

if [ ! -f "$results" ]; then
    cat >"$results" <<'HEADER'
# Benchmark results

Appended by `benches/run.sh`, one section per run, newest last. Every figure is a ratio against a
baseline measured in the same run (the machine is shared and noisy); absolute times appear only
beside their baseline. Goals (issue 6): copy-on-write clone ≤ 1% of `cp -r` at 1 GiB; the
10 000-SST clone ≤ 2× the 10-SST clone; Content verification ≥ 0.8× `sha256sum` per core.
HEADER
fi

ran=""
for b in "${benches[@]}"; do ran="$ran${ran:+, }\`cargo bench --bench $b\`"; done
{
    printf '\n## %s — %s\n\n' "$started" "$commit"
    printf -- '- command: `%s` (from the repository root; it runs `cargo bench --no-run`, then %s)\n' "$command_line" "$ran"
    printf -- '- commit: %s\n' "$commit"
    printf -- '- machine: %s CPUs (`nproc`), %s memory, %s, Linux %s, %s\n' \
        "$(nproc)" "$mem_total" "$cpu_model" "$(uname -r)" "$(rustc --version)"
    printf -- '- load average (1/5/15 min) before: %s, after: %s; the benches took %s s\n\n' \
        "$load_before" "$load_after" "$elapsed"
    for b in "${benches[@]}"; do cat "$work/$b.md"; done
} >>"$results"

echo "run.sh: appended to $results" >&2
exit "$status"
