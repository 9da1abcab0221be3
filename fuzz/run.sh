#!/usr/bin/env bash
# Builds every fuzz target with nightly and runs each for SECONDS (default 60), seeded from
# corpus/<target>/. Prints one summary line per target; exits non-zero if any target crashed
# (the input that did is under artifacts/<target>/) or the build failed.
#
#   fuzz/run.sh [SECONDS]        CARGO_TARGET_DIR: build output (default fuzz/target)
#
# New inputs a run finds go to a working corpus under the target dir, never into corpus/:
# the seeds in the repository stay the small hand-picked set.
set -uo pipefail

secs="${1:-60}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here" || exit 2
target_dir="${CARGO_TARGET_DIR:-$here/target}"
export CARGO_TARGET_DIR="$target_dir"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz missing: cargo install cargo-fuzz --locked (and rustup toolchain install nightly)" >&2
    exit 2
fi
cargo +nightly fuzz build --target-dir "$target_dir" || { echo "fuzz build failed" >&2; exit 2; }

failed=0
summary=()
for target in $(cargo +nightly fuzz list); do
    work="$target_dir/corpus/$target"
    log="$target_dir/logs/$target.log"
    mkdir -p "$work" "$(dirname "$log")" "$here/corpus/$target"
    # -rss_limit_mb / -timeout: a runaway allocation or a hang is a finding too.
    cargo +nightly fuzz run --target-dir "$target_dir" "$target" "$work" "$here/corpus/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    if [ "$rc" -eq 0 ]; then
        line="ok    $target: ${runs:-?} runs in ${secs}s, cov ${cov:-?}, corpus $(ls "$work" | wc -l)"
    else
        failed=1
        crash=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //')
        line="FAIL  $target: exit $rc after ${runs:-?} runs; input: ${crash:-none written}; log: $log"
    fi
    echo "$line"
    summary+=("$line")
done

echo "--- fuzz summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
