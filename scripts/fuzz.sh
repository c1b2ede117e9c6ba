#!/usr/bin/env bash
# Builds the libFuzzer binary (hub-fuzz, with AddressSanitizer) and runs each target for a
# bounded time on its committed seed corpus, Tests/fuzz/corpus/<target>/.
#
#   scripts/fuzz.sh                 # every target, HUB_FUZZ_SECONDS (default 12) each
#   scripts/fuzz.sh 600 multipart   # one target for ten minutes
#
# New inputs libFuzzer finds go to test-artifacts/fuzz/<target>/corpus (not the committed
# corpus); a crash or broken invariant stops the run, leaves the input in
# test-artifacts/fuzz/<target>-crash-…, and fails the script. Replay one without libFuzzer:
#   swift build --product hub-fuzz && .build/debug/hub-fuzz <target> <file>
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH="${1:-${HUB_FUZZ_SECONDS:-12}}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(protocol protobuf fossil filter session multipart router jwt telegram paths transports)

# FUZZING: hub-fuzz hands its `main` to libFuzzer's driver instead of replaying files.
swift build -c debug --product hub-fuzz --scratch-path .build-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING
BINARY=.build-fuzz/debug/hub-fuzz

status=0
for target in "${TARGETS[@]}"; do
    out="test-artifacts/fuzz/$target"
    mkdir -p "$out/corpus"
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: growth is a finding too.
    if HUB_FUZZ_TARGET="$target" "$BINARY" "$out/corpus" "Tests/fuzz/corpus/$target" \
        -max_total_time="$SECONDS_EACH" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$out-" -print_final_stats=1 >"$out.log" 2>&1; then
        echo "fuzz $target: $(grep -E '^stat::number_of_executed_units' "$out.log" | awk '{print $2}') runs in ${SECONDS_EACH}s, no finding"
    else
        echo "fuzz $target: FAILED (input saved as $out-crash-*; log $out.log)"
        grep -E 'invariant broken|ERROR: (AddressSanitizer|libFuzzer)|Fatal error' "$out.log" | head -5 || true
        status=1
    fi
done
exit $status
