#!/usr/bin/env bash
# Where the hub's time goes under the benchmark's loads: writes docs/bench/hub-profile.md, which
# bench/report.py folds into docs/benchmarks.md. Run after bench/run.sh (it reuses its build).
#
#   bench/profile.sh            perf sampling if perf works here, else callgrind
#   PROFILER=callgrind bench/profile.sh
#
# Hardware counters: if `perf stat -e instructions true` counts, perf samples cycles; where it
# says "not supported" (as in many containers) perf can still sample the cpu-clock software
# event, which is what this uses; callgrind (instruction counts, ~50x slower) is the fallback.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCRATCH=${BENCH_SCRATCH:-.build-bench}
BIN=$ROOT/$SCRATCH/release
OUT=$ROOT/docs/bench/hub-profile.md
WORK=$ROOT/bench/results/profile
SECONDS_PER_LOAD=${SECONDS_PER_LOAD:-6}
PORT=18010
rm -rf "$WORK"; mkdir -p "$WORK" "$ROOT/docs/bench"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ -z "${PROFILER:-}" ]; then
    if perf stat -e instructions true 2>&1 | grep -q 'not supported'; then
        if perf record -e cpu-clock -o "$WORK/probe.data" true >/dev/null 2>&1; then PROFILER=perf-cpu-clock; else PROFILER=callgrind; fi
    else
        PROFILER=perf-cycles
    fi
fi
echo "profiler: $PROFILER" >&2

HUB_PID=""
start_hub() {
    rm -rf "$WORK/hub-data"
    echo '{"channel":{"allow_publish_for_client":true}}' > "$WORK/hub.json"
    local prefix=()
    [ "$PROFILER" = callgrind ] && prefix=(valgrind --tool=callgrind "--callgrind-out-file=$WORK/callgrind.$1.out")
    HUB_TOKEN_HMAC_SECRET=s HUB_API_KEY=k HUB_GATEWAY_ALLOWED_TOKEN=bench HUB_GATEWAY_MONITOR_INTERVAL=3600 \
        taskset -c 0 "${prefix[@]}" "$BIN/hub" --host 127.0.0.1 --port $PORT \
        --log-level warning --threads "${HUB_THREADS:-1}" --config "$WORK/hub.json" --data-dir "$WORK/hub-data" \
        --client-queue-max-bytes 16777216 --client-queue-max-messages 100000 >>"$WORK/hub.log" 2>&1 &
    HUB_PID=$!
    local i
    for i in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
}
stop_hub() { kill "$HUB_PID" 2>/dev/null || true; wait "$HUB_PID" 2>/dev/null || true; }
trap stop_hub EXIT

# Where a perf recording's samples went, as fenced blocks: by library, and the N hottest
# functions by self time.
by_library() {
    echo '```'
    perf report -i "$1" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | head -8
    echo '```'
}
hottest() {
    echo '```'
    perf report -i "$1" --no-children --sort dso,symbol --stdio -g none 2>/dev/null | grep '%' | head -"$2" | cut -c1-170
    echo '```'
}

# profile NAME DESCRIPTION hub-bench-arguments...: load at a fixed rate, sample the hub meanwhile.
profile() {
    local name=$1 description=$2; shift 2
    start_hub "$name"
    taskset -c 1 "$BIN/hub-bench" "$@" --server hub --port $PORT --server-pid "$HUB_PID" --max-steps 1 \
        --step-seconds "$SECONDS_PER_LOAD" --half-seconds 0.5 --p99-limit-ms 100000 --out "$WORK/$name.jsonl" \
        >/dev/null 2>"$WORK/$name.log" &
    local gen=$!
    if [ "$PROFILER" != callgrind ]; then
        # Start sampling once the connections are up (the first step line is logged after them).
        local i
        for i in $(seq 1 600); do grep -q '\] ready:' "$WORK/$name.log" 2>/dev/null && break; sleep 0.1; done
        sleep 0.5
        local event=cpu-clock
        [ "$PROFILER" = perf-cycles ] && event=cycles
        perf record -e $event -F 1999 -g -p "$HUB_PID" -o "$WORK/$name.perf" -- sleep "$SECONDS_PER_LOAD" >/dev/null 2>&1 || true
    fi
    wait $gen || true
    stop_hub
    {
        echo "### $description"
        echo
        echo '```'
        grep '\] rate' "$WORK/$name.log" | head -1 | sed 's/^\[hub-bench hub\] //'
        echo '```'
        echo
        if [ "$PROFILER" = callgrind ]; then
            echo "callgrind (instructions), functions with the most inclusive cost:"
            echo '```'
            callgrind_annotate --inclusive=yes "$WORK/callgrind.$name.out" 2>/dev/null | sed -n '/^Ir/,$p' | head -40 | cut -c1-160
            echo '```'
        else
            echo "Samples by library (perf $PROFILER, all hub threads):"
            by_library "$WORK/$name.perf"
            echo
            echo "Hottest functions (self time):"
            hottest "$WORK/$name.perf" 25
            echo
            echo "Hottest call chains into the hub's own code (inclusive, caller view):"
            echo '```'
            perf report -i "$WORK/$name.perf" --children --sort symbol --stdio -g none 2>/dev/null \
                | grep '%' | grep -E 'Channels|RESTCompat|Hub|hub_' | head -15 | cut -c1-170
            echo '```'
        fi
        echo
    } >> "$WORK/profile.md"
}

{
    echo "Produced by \`bench/profile.sh\` ($PROFILER, $(date -u +%Y-%m-%d)): the hub pinned to CPU 0 with"
    echo "\`--threads ${HUB_THREADS:-1}\` as in the benchmark, hub-bench on CPU 1 at one fixed rate, sampled for"
    echo "${SECONDS_PER_LOAD} s after the connections are up."
    echo
} > "$WORK/profile.md"

# about the hub's half rate at 1,000 subscribers, where scenario 1's latency target applies
RATE_FANOUT=${RATE_FANOUT:-2560000}
RATE_CHANNELS=${RATE_CHANNELS:-20000}
if [ "$PROFILER" = callgrind ]; then RATE_FANOUT=20000; RATE_CHANNELS=2000; fi
profile fanout "Fan-out, 1,000 subscribers, ${RATE_FANOUT} deliveries/s" \
    fanout --subscribers 1000 --start-deliveries "$RATE_FANOUT"
profile channels "Many channels, 10,000 connections in groups of ten, ${RATE_CHANNELS} deliveries/s" \
    channels --connections 10000 --group-size 10 --start-deliveries "$RATE_CHANNELS"

# Scenario 5 at a fixed rate: node A (publisher's node), Redis and node B (the subscribers'
# node) share CPU 0 as in the benchmark; each is sampled, and its context switches counted.
RATE_CLUSTER=${RATE_CLUSTER:-1280000}
if [ "$PROFILER" != callgrind ] && command -v redis-server >/dev/null; then
    REDIS_PORT=16390
    taskset -c 0 redis-server --bind 127.0.0.1 --port $REDIS_PORT --save '' --appendonly no --daemonize no \
        --logfile "$WORK/redis.log" &
    redis_pid=$!
    for i in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT) 2>/dev/null && break; sleep 0.1; done
    echo '{"channel":{"allow_publish_for_client":true}}' > "$WORK/hub.json"
    node_pids=()
    for node in a b; do
        node_port=$([ $node = a ] && echo $((PORT + 1)) || echo $((PORT + 2)))
        HUB_TOKEN_HMAC_SECRET=s HUB_API_KEY=k taskset -c 0 "$BIN/hub" --host 127.0.0.1 --port "$node_port" --node-name "node-$node" \
            --log-level warning --threads "${HUB_THREADS:-1}" --config "$WORK/hub.json" --data-dir "$WORK/cluster-$node" \
            --engine redis --redis-url "redis://127.0.0.1:$REDIS_PORT/0" \
            --client-queue-max-bytes 16777216 --client-queue-max-messages 100000 >>"$WORK/hub.log" 2>&1 &
        node_pids+=($!)
        for i in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$node_port) 2>/dev/null && break; sleep 0.1; done
    done
    taskset -c 1 "$BIN/hub-bench" fanout --subscribers 1000 --server hub --port $((PORT + 2)) --publisher-port $((PORT + 1)) \
        --server-pid "${node_pids[1]}" --max-steps 1 --step-seconds "$SECONDS_PER_LOAD" --half-seconds 0.5 \
        --p99-limit-ms 100000 --start-deliveries "$RATE_CLUSTER" --out "$WORK/cluster.jsonl" >/dev/null 2>"$WORK/cluster.log" &
    gen=$!
    for i in $(seq 1 600); do grep -q '\] ready:' "$WORK/cluster.log" 2>/dev/null && break; sleep 0.1; done
    sleep 0.5
    names=("node A" "redis-server" "node B")
    pids=("${node_pids[0]}" "$redis_pid" "${node_pids[1]}")
    for k in 0 1 2; do
        perf record -e cpu-clock -F 1999 -g -p "${pids[$k]}" -o "$WORK/cluster-$k.perf" -- sleep "$SECONDS_PER_LOAD" >/dev/null 2>&1 &
        perf stat -e context-switches,task-clock -p "${pids[$k]}" -o "$WORK/cluster-$k.stat" -- sleep "$SECONDS_PER_LOAD" >/dev/null 2>&1 &
    done
    wait $gen || true
    sleep 1
    kill "${node_pids[@]}" "$redis_pid" 2>/dev/null || true
    wait "${node_pids[@]}" "$redis_pid" 2>/dev/null || true
    {
        echo "### Two nodes on Redis, 1,000 subscribers on node B, ${RATE_CLUSTER} deliveries/s"
        echo
        echo '```'
        grep '\] rate' "$WORK/cluster.log" | head -1 | sed 's/^\[hub-bench hub\] //'
        echo '```'
        echo
        echo "Per process over the same ${SECONDS_PER_LOAD} s (perf stat; all three share CPU 0):"
        echo '```'
        for k in 0 1 2; do
            awk -v who="${names[$k]}" '/task-clock/ { ms = $1 } /context-switches/ { cs = $1 }
                END { gsub(",", "", ms); gsub(",", "", cs); printf "%-13s %8.0f ms of CPU, %8d context switches\n", who, ms, cs }' \
                "$WORK/cluster-$k.stat"
        done
        echo '```'
        for k in 0 2; do
            echo
            echo "${names[$k]}, hottest functions (self time):"
            hottest "$WORK/cluster-$k.perf" 12
        done
        echo
    } >> "$WORK/profile.md"
fi

# REST: wrk against the route scenario 4 measures (seed 000's status of a registered gateway).
if [ "$PROFILER" != callgrind ] && command -v wrk >/dev/null; then
    start_hub rest
    REST_PATH=${HUB_REST_PATH:-/status?gw_id=gw01}
    curl -fsS -X POST -H 'Authorization: Bearer bench' -H 'Content-Type: application/json' \
        -d '{"gw_id":"gw01","gw_ip":"10.0.0.1","gw_type":"recorder"}' "http://127.0.0.1:$PORT/register" >/dev/null || true
    taskset -c 1 wrk -t1 -c64 -d"$((SECONDS_PER_LOAD + 2))s" --latency -H 'Authorization: Bearer bench' \
        "http://127.0.0.1:$PORT$REST_PATH" > "$WORK/rest.wrk" &
    wrk_pid=$!
    sleep 1
    perf record -e cpu-clock -F 1999 -g -p "$HUB_PID" -o "$WORK/rest.perf" -- sleep "$SECONDS_PER_LOAD" >/dev/null 2>&1 || true
    wait $wrk_pid || true
    stop_hub
    {
        echo "### REST: wrk -c64 on GET $REST_PATH"
        echo
        echo '```'
        grep -E 'Requests/sec|^ +99%' "$WORK/rest.wrk"
        echo '```'
        echo
        echo "Samples by library:"
        by_library "$WORK/rest.perf"
        echo
        echo "Hottest functions (self time):"
        hottest "$WORK/rest.perf" 20
        echo
    } >> "$WORK/profile.md"
fi

cp "$WORK/profile.md" "$OUT"
echo "wrote $OUT" >&2
