#!/usr/bin/env bash
# Builds and runs the library benchmarks of issue 6 (clone cost, verification throughput) and
# appends a section to benches/RESULTS.md: date, commit, machine facts, the exact command, and the
# markdown the benches print (tables and goal verdicts).
#
#   benches/run.sh                 # 10 MiB and 100 MiB parents, 10 and 1 000 SSTs, ~100 MiB checkpoint
#   BENCH_FULL=1 benches/run.sh    # adds the 1 GiB and 10 000-SST parents, ~1 GiB checkpoint
#
# Other knobs: BENCH_REPS (default 7 for clone_cost, 5 for verify_throughput, 3 with BENCH_FULL), BENCH_DEADLINE_SECS (per bench; each bench exits by itself
# when it is reached), TMPDIR (where the parent databases are written).
set -euo pipefail
cd "$(dirname "$0")/.."

results=benches/RESULTS.md
command_line="$({ env | grep -E '^(BENCH_[A-Z_]+|TMPDIR)=' || true; } | sort | tr '\n' ' ')benches/run.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "run.sh: building the benches (cargo bench --no-run)" >&2
cargo bench --no-run --bench clone_cost --bench verify_throughput >&2

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
t0=$(date +%s)
status=0
for bench in clone_cost verify_throughput; do
    echo "run.sh: cargo bench --bench $bench" >&2
    b0=$(date +%s)
    if cargo bench --bench "$bench" >"$work/$bench.md"; then
        echo "run.sh: $bench finished in $(( $(date +%s) - b0 )) s" >&2
    else
        rc=$?
        status=$rc
        printf '\n**`cargo bench --bench %s` failed with status %s after %s s** (see its stderr).\n\n' \
            "$bench" "$rc" "$(( $(date +%s) - b0 ))" >>"$work/$bench.md"
    fi
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

{
    printf '\n## %s — %s\n\n' "$started" "$commit"
    printf -- '- command: `%s` (from the repository root; it runs `cargo bench --no-run`, then `cargo bench --bench clone_cost` and `cargo bench --bench verify_throughput`)\n' "$command_line"
    printf -- '- commit: %s\n' "$commit"
    printf -- '- machine: %s CPUs (`nproc`), %s memory, %s, Linux %s, %s\n' \
        "$(nproc)" "$mem_total" "$cpu_model" "$(uname -r)" "$(rustc --version)"
    printf -- '- load average (1/5/15 min) before: %s, after: %s; both benches took %s s\n\n' \
        "$load_before" "$load_after" "$elapsed"
    cat "$work/clone_cost.md"
    cat "$work/verify_throughput.md"
} >>"$results"

echo "run.sh: appended to $results" >&2
exit "$status"
