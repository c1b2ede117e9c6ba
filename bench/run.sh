#!/usr/bin/env bash
# The benchmark: the hub against nats-server, mosquitto, a FastAPI peer and the libwebsockets
# mirror, same scenarios, same generator (hub-bench), one server at a time; and, for fan-out only,
# the kernel floor (`hub-bench floor-server`: epoll + one send(2) per client per turn, no protocol
# work), also run at the hub's half rate so the report can set the two latencies side by side, and
# in scenario 2 (the same server on the FastAPI peer's channel wire) as its yardstick. Writes
# docs/benchmarks.md, docs/bench/*.png and docs/bench/results.jsonl.
#
#   bench/run.sh                 full run (about 30 minutes on 2 cores with the default 3 repeats,
#                                an estimate from the last full run's step times; BENCH_REPEATS=1 ~15)
#   bench/run.sh --quick         smaller sizes, shorter steps, one round (about 5 minutes once built)
#   bench/run.sh --servers "hub nats" --scenarios "fanout rest"   a subset (the report covers what ran)
#   bench/run.sh --scenarios codecs   only the hub's codecs and transports: its section of
#                                docs/benchmarks.md is replaced, the rest of the report kept
#   bench/run.sh --scenarios start --servers hub   only scenario 7 (gateway allocation): its section
#                                of docs/benchmarks.md is replaced, the rest of the report kept
#   bench/run.sh --scenarios proxies --servers hub   only scenario 8 (backend proxies against direct JWT,
#                                `hub-bench proxy-backend` as the backend): its section replaced likewise
#   bench/run.sh --scenarios "cluster failover" --servers hub   only section 5: two hub nodes across
#                                standalone Redis and a 3-primary Redis Cluster (with a single-node
#                                reference run, since scenario 1 is not in the run), and the publish
#                                gap when the channel's primary is SIGKILLed, on Redis Sentinel and
#                                on the Redis Cluster (bench/failover.py); section 5 replaced, the rest kept
#   bench/run.sh --scenarios cores --servers "hub floor"   only the two-core fan-out: the hub with
#                                --threads 2 and `hub-bench floor-server --threads 2` (two epoll loops,
#                                SO_REUSEPORT), both and the generator on CPUs 0-1 (taskset -c 0,1),
#                                interleaved as in scenario 1; labels hub-2t / floor-2t; its section
#                                (beside scenario 1) replaced, the rest kept
#   bench/run.sh --scenarios cost --servers "hub floor"   only the cost per delivery: each server twice
#                                under valgrind --tool=callgrind (busy: COST_DELIVERIES/s, idle:
#                                COST_IDLE_DELIVERIES/s, fan-out to 1,000): instructions per delivery =
#                                ΔIr / Δdeliveries, bytes per delivery, and syscalls per delivery from
#                                two `strace -c -f` runs; its section replaced, the rest kept
#   --no-install / --no-build    skip the apt/pip step or the release builds
#
# Repeats: in scenario 1 (and cores) the hub and the floor run BENCH_REPEATS times at each subscriber
# count, interleaved (hub, floor, hub, floor, …; the floor's --compare-deliveries pass at the same
# round's hub half rate); in scenario 2 the hub, nats-server and the floor likewise; other servers once. Every
# result line carries its round as "repeat"; the report gives medians with the spread (min–max) and
# judges the floor/nats targets by the median of the per-round ratios.
#
# Environment: BENCH_SCRATCH (SwiftPM build folder, default .build-bench so a long debug build or
# test run holding .build does not block the benchmark), HUB_REST_PATH (the hub route scenario 4
# measures, default seed 000's /status?gw_id=gw01, the route the FastAPI peer implements),
# BENCH_FAILOVERS (primary kills in scenario failover, default 3), BENCH_REPEATS (rounds of the
# interleaved pairs, default 3 in a full run, 1 with --quick), COST_DELIVERIES / COST_IDLE_DELIVERIES
# (scenario cost's busy and idle rates, default 20000 and 1000 deliveries/s; a busy run that loses
# deliveries under callgrind is made again at half the rate, twice at most), COST_STRACE (0: no
# strace runs in scenario cost).
# Ports besides 18000-18010 and 16379: the Redis Cluster on 17000-17005 (buses 27000-27005), the
# failover's Sentinel set on 17100-17112 (its Redis Cluster on 17100-17105 after that) and its hub on 17120.
#
# Pinning: every server runs on CPU 0 (taskset -c 0), the generator and wrk on CPU 1; scenario cores
# alone gives the servers and the generator both CPUs (taskset -c 0,1).
# Adding a scenario: write scenario_NAME (it gets the server kind as $1 and appends JSON lines to
# $RESULTS), add NAME to ALL_SCENARIOS, and teach bench/report.py its table.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench
MODE=full
INSTALL=1
BUILD=1
ALL_SERVERS="hub nats mosquitto fastapi lws floor"
ALL_SCENARIOS="fanout cores channels connections rest cluster failover codecs start proxies cost"
# Scenarios whose section stands alone: a run of only these updates that section in place.
SPLICEABLE_SCENARIOS="codecs start proxies cluster failover cores cost"
SERVERS=$ALL_SERVERS
SCENARIOS=$ALL_SCENARIOS
COMMAND="bench/run.sh $*"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --servers) SERVERS=$2; shift ;;
        --scenarios) SCENARIOS=$2; shift ;;
        --no-install) INSTALL=0 ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^set -euo pipefail/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 64 ;;
    esac
    shift
done

SCRATCH=${BENCH_SCRATCH:-.build-bench}
FAILOVERS=${BENCH_FAILOVERS:-3}
HUB_REST_PATH=${HUB_REST_PATH:-/status?gw_id=gw01}
# The hub gets one service thread by default: it is pinned to one CPU like every peer, and a
# second thread there only takes turns with the first (HUB_THREADS to try other counts).
HUB_THREADS=${HUB_THREADS:-1}
# The floor's epoll loops (scenario cores runs it with 2, like the hub's threads).
FLOOR_THREADS=1
SERVER_CPU=0
GENERATOR_CPU=1
# The default namespace's options on the hub (scenario codecs adds fossil deltas).
HUB_CHANNEL_OPTIONS='{"allow_publish_for_client":true}'

# Ports (all on 127.0.0.1).
HUB_PORT=18000 NATS_PORT=18001 MOSQUITTO_PORT=18002 FASTAPI_PORT=18003 LWS_PORT=18004 FLOOR_PORT=18006
REST_PORT=18005 PROXY_BACKEND_PORT=18007 REDIS_PORT=16379 NATS_TCP_PORT=14222 MQTT_TCP_PORT=11883

log() { printf '\n=== %s  %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Install and build

install_peers() {
    local missing=()
    command -v nats-server >/dev/null || missing+=(nats-server)
    command -v mosquitto >/dev/null || missing+=(mosquitto)
    command -v libwebsockets-test-server >/dev/null || missing+=(libwebsockets-test-server)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v valgrind >/dev/null || missing+=(valgrind)
    command -v strace >/dev/null || missing+=(strace)
    pkg-config --exists libwebsockets hiredis libcrypto sqlite3 2>/dev/null \
        || missing+=(libwebsockets-dev libhiredis-dev libssl-dev libsqlite3-dev pkg-config)
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! "$BENCH/.venv/bin/python" -c 'import fastapi, uvicorn, websockets, redis, matplotlib' 2>/dev/null; then
        log "python venv bench/.venv (fastapi, uvicorn[standard], redis, matplotlib)"
        python3 -m venv "$BENCH/.venv"
        "$BENCH/.venv/bin/pip" install -q --upgrade pip
        "$BENCH/.venv/bin/pip" install -q fastapi 'uvicorn[standard]' redis matplotlib
    fi
}

build() {
    local product try out="$BENCH/results/build.log"
    mkdir -p "$BENCH/results"
    for product in hub hub-bench; do
        log "swift build -c release --product $product (scratch $SCRATCH)"
        for try in 1 2 3; do
            if swift build -c release --product "$product" --scratch-path "$SCRATCH" > "$out" 2>&1; then
                tail -n 1 "$out" >&2
                break
            fi
            tail -n 20 "$out" >&2
            [ "$try" = 3 ] && { echo "release build of $product failed" >&2; exit 1; }
            echo "build failed (or the build folder was locked); retrying in 10 s" >&2
            sleep 10
        done
    done
}

# ---------------------------------------------------------------------------------------------
# Servers: start_server KIND sets SERVER_PID and PORT; stop_server ends it.

SERVER_PID=""
PORT=""
# A command the hub or the floor runs under (scenario cost: valgrind), and how long start_server
# waits for its port and stop_server for its exit (valgrind starts slowly and dumps at exit).
SERVER_WRAP=()
SERVER_WAIT_S=10

wait_port() {
    local port=$1 i
    for i in $(seq 1 $((${2:-10} * 20))); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listening on port $port" >&2
    return 1
}

start_server() {
    local kind=$1
    case "$kind" in
        hub)
            PORT=$HUB_PORT
            rm -rf "$RUN/hub-data"
            echo "{\"channel\":$HUB_CHANNEL_OPTIONS}" > "$RUN/hub.json"
            HUB_TOKEN_HMAC_SECRET=s HUB_API_KEY=k HUB_GATEWAY_ALLOWED_TOKEN=bench HUB_GATEWAY_MONITOR_INTERVAL=3600 \
                taskset -c $SERVER_CPU "${SERVER_WRAP[@]}" "$BIN/hub" --host 127.0.0.1 --port $PORT \
                --log-level warning --threads "$HUB_THREADS" --config "$RUN/hub.json" --data-dir "$RUN/hub-data" \
                --client-queue-max-bytes 16777216 --client-queue-max-messages 100000 >>"$RUN/hub.log" 2>&1 &
            ;;
        nats)
            PORT=$NATS_PORT
            sed -e "s/^port: .*/port: $NATS_TCP_PORT/" -e "s/^  port: .*/  port: $PORT/" "$BENCH/peers/nats.conf" > "$RUN/nats.conf"
            taskset -c $SERVER_CPU nats-server -c "$RUN/nats.conf" >>"$RUN/nats.log" 2>&1 &
            ;;
        mosquitto)
            PORT=$MOSQUITTO_PORT
            sed -e "s/^listener 11883 /listener $MQTT_TCP_PORT /" -e "s/^listener 18002$/listener $PORT/" \
                "$BENCH/peers/mosquitto.conf" > "$RUN/mosquitto.conf"
            taskset -c $SERVER_CPU mosquitto -c "$RUN/mosquitto.conf" >>"$RUN/mosquitto.log" 2>&1 &
            ;;
        fastapi)
            PORT=$FASTAPI_PORT
            taskset -c $SERVER_CPU "$BENCH/.venv/bin/uvicorn" fastapi_broadcast:app --app-dir "$BENCH/peers" \
                --host 127.0.0.1 --port $PORT --log-level warning --no-access-log --backlog 4096 >>"$RUN/fastapi.log" 2>&1 &
            ;;
        lws)
            PORT=$LWS_PORT
            # -n: no dumb-increment traffic; -d 1: errors only; -i lo: loopback only.
            taskset -c $SERVER_CPU libwebsockets-test-server --port=$PORT -i lo -n -d 1 >>"$RUN/lws.log" 2>&1 &
            ;;
        floor)
            PORT=$FLOOR_PORT
            taskset -c $SERVER_CPU "${SERVER_WRAP[@]}" "$BIN/hub-bench" floor-server --port $PORT --threads "$FLOOR_THREADS" \
                >>"$RUN/floor.log" 2>&1 &
            ;;
        rest-fastapi)
            PORT=$REST_PORT
            REDIS_PORT=$REDIS_PORT taskset -c $SERVER_CPU "$BENCH/.venv/bin/uvicorn" fastapi_rest:app --app-dir "$BENCH/peers" \
                --host 127.0.0.1 --port $PORT --log-level warning --no-access-log --backlog 4096 >>"$RUN/rest.log" 2>&1 &
            ;;
        *) echo "unknown server $kind" >&2; return 1 ;;
    esac
    SERVER_PID=$!
    wait_port "$PORT" "$SERVER_WAIT_S"
    sleep 0.3
}

stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        local i
        for i in $(seq 1 $((SERVER_WAIT_S * 20))); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}

REDIS_PID=""
start_redis() {
    taskset -c $SERVER_CPU redis-server --bind 127.0.0.1 --port $REDIS_PORT --save '' --appendonly no \
        --daemonize no --logfile "$RUN/redis.log" &
    REDIS_PID=$!
    wait_port $REDIS_PORT
    local i id
    for i in $(seq 1 100); do
        id=$(printf 'gw%02d' "$i")
        echo "SET gateway:$id \"10.0.0.$i|working|recorder|room$i|2025-01-01T12:00:00|00:05:12|45%\""
    done | redis-cli -p $REDIS_PORT >/dev/null
}

stop_redis() {
    if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
    REDIS_PID=""
}

cleanup() { stop_server; stop_redis; stop_rcluster; }
trap cleanup EXIT

generator() {
    taskset -c $GENERATOR_CPU "$BIN/hub-bench" "$@" --out "$RESULTS" 2>>"$RUN/generator.log" >/dev/null
}

# CPU seconds (user + system) of a process, from /proc.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# ---------------------------------------------------------------------------------------------
# Scenarios: each takes the server kind and appends JSON lines to $RESULTS.

# tag_results FROM KEY=JSON...: sets fields on the result lines after line FROM (those of the run
# just made), e.g. tag_results "$n0" repeat=2 scenario='"cores"'. Keeps the generator's compact format.
tag_results() {
    "$BENCH/.venv/bin/python" - "$RESULTS" "$@" <<'PY'
import json, sys
path, start = sys.argv[1], int(sys.argv[2])
fields = {k: json.loads(v) for k, v in (a.split("=", 1) for a in sys.argv[3:])}
lines = open(path).read().splitlines()
for i in range(start, len(lines)):
    if lines[i].strip():
        lines[i] = json.dumps({**json.loads(lines[i]), **fields}, sort_keys=True, separators=(",", ":"))
open(path, "w").write("".join(line + "\n" for line in lines))
PY
}

# pair_of KIND A B [C]: the servers of the group A B (C) that are in --servers (in that order), when
# KIND is the first of them in --servers; nothing otherwise. The group's runs are interleaved at
# that server's turn (A B A B …), so drift on this shared machine hits all of them.
pair_of() {
    local kind=$1 s out=()
    shift
    local group=" $* "
    for s in $SERVERS; do
        if [[ "$group" == *" $s "* ]]; then
            [ "$s" = "$kind" ] || return 0
            break
        fi
    done
    for s in "$@"; do [[ " $SERVERS " == *" $s "* ]] && out+=("$s"); done
    [[ " ${out[*]} " == *" $kind "* ]] && echo "${out[*]}"
    return 0
}

# The hub's half-rate deliveries/s in SCENARIO (server label SERVER) at SUBS subscribers in round
# REPEAT (empty if it did not run).
hub_half_deliveries() {
    "$BENCH/.venv/bin/python" - "$RESULTS" "$@" <<'PY'
import json, sys
# SUBS "-": a scenario without subscriber counts (scenario 2)
scenario, server, repeat = sys.argv[2], sys.argv[3], int(sys.argv[5])
subs = None if sys.argv[4] == "-" else int(sys.argv[4])
for line in open(sys.argv[1]):
    r = json.loads(line)
    if (r.get("scenario"), r.get("phase"), r.get("server"), r.get("subscribers"), r.get("repeat", 1)) \
            == (scenario, "summary", server, subs, repeat) and "half" in r:
        print(r["half"]["deliveries_per_s"], round(r["half"].get("bytes_per_delivery", 0)))
PY
}

# floor_payload BYTES: the floor's --payload-size for the hub's BYTES per delivery in the round
# (the floor's frame is a 4-byte header and the payload); nothing when BYTES is unknown.
floor_payload() {
    if [ -n "$1" ] && [ "$1" -gt 130 ]; then echo "--payload-size $(( $1 - 4 ))"; fi
    return 0
}

# fanout_run KIND SUBS REPEAT [SCENARIO LABEL]: one fan-out measurement of KIND at SUBS subscribers,
# its lines tagged with the round (and, for scenario cores, relabelled SCENARIO / LABEL). The floor
# speaks the lws mirror's wire and also runs at the hub's half rate of the same round.
fanout_run() {
    local kind=$1 subs=$2 repeat=$3 scenario=${4:-fanout} label=${5:-$1} n0 compare
    local wire=(--server "$kind" --label "$label")
    if [ "$kind" = floor ]; then
        wire=(--server lws --label "$label")
        local half bytes
        read -r half bytes <<< "$(hub_half_deliveries "$scenario" "${label/floor/hub}" "$subs" "$repeat")"
        [ -n "$half" ] && wire+=(--compare-deliveries "$half")
        # The same bytes per delivery as the hub's frames in this round (a push with its
        # envelope is ~2.3x the 128-byte payload): the floor's frame is a 4-byte header and the
        # payload. FLOOR_PAYLOAD pins the payload instead (the 128-byte reference run).
        if [ -n "${FLOOR_PAYLOAD:-}" ]; then
            wire+=(--payload-size "$FLOOR_PAYLOAD")
        else
            wire+=($(floor_payload "$bytes"))
        fi
    fi
    start_server "$kind"
    log "$scenario $label: $subs subscribers (round $repeat)"
    # One publication's fan-out to N sockets takes ~N x 10 us on every server here, so at 5,000
    # subscribers even 1 publish/s has p99 > 50 ms: the limit scales with N (50 ms per 1,000).
    local limit=$(( subs > 1000 ? 50 * subs / 1000 : 50 ))
    n0=$(wc -l < "$RESULTS")
    generator fanout "${wire[@]}" --port "$PORT" --server-pid "$SERVER_PID" --subscribers "$subs" \
        --step-seconds "$STEP_S" --half-seconds "$HALF_S" --start-deliveries "$START_DELIVERIES" \
        --p99-limit-ms "$limit" --budget-seconds "$STEP_BUDGET_S" || echo "$scenario $label $subs: generator failed" >&2
    tag_results "$n0" repeat="$repeat" scenario="\"$scenario\""
    tail -n 1 "$RESULTS" | cut -c1-300 >&2
    stop_server
}

# Scenario 1. The hub and the floor run $REPEATS times each at every subscriber count, interleaved
# (hub, floor, hub, floor, …); the other servers once.
scenario_fanout() {
    local kind=$1 subs i s pair
    if [ "$kind" = hub ] || [ "$kind" = floor ]; then
        pair=$(pair_of "$kind" hub floor)
        for subs in $FANOUT_SUBS; do
            for i in $(seq 1 "$REPEATS"); do
                for s in $pair; do fanout_run "$s" "$subs" "$i"; done
            done
            # The floor as it ran before its payload followed the hub's bytes: a reference, once.
            [ "$kind" = floor ] && FLOOR_PAYLOAD=128 fanout_run floor "$subs" 1 fanout floor-128
        done
        return 0
    fi
    for subs in $FANOUT_SUBS; do fanout_run "$kind" "$subs" 1; done
}

# channels_run KIND REPEAT: one scenario-2 measurement. The floor speaks the FastAPI peer's channel
# wire (floor-server's `/ws`), its payload sized to the hub's bytes per delivery in this round.
channels_run() {
    local kind=$1 repeat=$2 n0 wire=(--server "$1")
    if [ "$kind" = floor ]; then
        local bytes
        wire=(--server fastapi --label floor)
        read -r _ bytes <<< "$(hub_half_deliveries channels hub - "$repeat")"
        wire+=($(floor_payload "$bytes"))
    fi
    start_server "$kind"
    log "channels $kind: $CHANNEL_CONNS connections, groups of 10 (round $repeat)"
    n0=$(wc -l < "$RESULTS")
    generator channels "${wire[@]}" --port "$PORT" --server-pid "$SERVER_PID" --connections "$CHANNEL_CONNS" \
        --group-size 10 --step-seconds "$STEP_S" --half-seconds "$HALF_S" --start-deliveries "$START_DELIVERIES" \
        --budget-seconds "$STEP_BUDGET_S" || echo "channels $kind: generator failed" >&2
    tag_results "$n0" repeat="$repeat"
    tail -n 1 "$RESULTS" | cut -c1-300 >&2
    stop_server
}

# Scenario 2. The hub, nats-server and the floor run $REPEATS times each, interleaved (the floor
# after the hub, whose bytes per delivery it takes); the other servers once.
scenario_channels() {
    local kind=$1 i s pair
    if [ "$kind" = hub ] || [ "$kind" = nats ] || [ "$kind" = floor ]; then
        pair=$(pair_of "$kind" hub nats floor)
        for i in $(seq 1 "$REPEATS"); do
            for s in $pair; do channels_run "$s" "$i"; done
        done
        return 0
    fi
    channels_run "$kind" 1
}

# Scenario cores: scenario 1 on both cores. The hub with --threads 2 and the floor with two epoll
# loops, each allowed CPUs 0 and 1 (taskset -c 0,1), the generator too (no pinning to one CPU):
# at each subscriber count hub and floor interleaved, $REPEATS times each, the floor's compare
# pass at the same round's hub half rate. Labels hub-2t and floor-2t, scenario "cores", so
# scenario 1's tables keep the one-core figures.
scenario_cores() {
    local kind=$1 subs i s pair
    pair=$(pair_of "$kind" hub floor)
    [ -n "$pair" ] || return 0
    for subs in $FANOUT_SUBS; do
        for i in $(seq 1 "$REPEATS"); do
            for s in $pair; do
                SERVER_CPU=0,1 GENERATOR_CPU=0,1 HUB_THREADS=2 FLOOR_THREADS=2 fanout_run "$s" "$subs" "$i" cores "$s-2t"
            done
        done
    done
}

scenario_connections() {
    local kind=$1
    [ "$kind" = floor ] && return 0
    start_server "$kind"
    log "connections $kind: $IDLE_CONNS idle connections"
    generator connections --server "$kind" --port "$PORT" --server-pid "$SERVER_PID" --connections "$IDLE_CONNS" \
        --settle-seconds "$SETTLE_S" \
        || echo "connections $kind: generator failed" >&2
    tail -n 1 "$RESULTS" | cut -c1-300 >&2
    stop_server
}

# REST runs once per pair (hub, FastAPI + redis), not per WebSocket peer.
scenario_rest() {
    local kind=$1 url label
    case "$kind" in
        hub)
            start_server hub; url="http://127.0.0.1:$PORT$HUB_REST_PATH"; label=hub
            # the same gateway record the FastAPI peer reads from Redis, registered the seed's way
            curl -fsS -X POST -H 'Authorization: Bearer bench' -H 'Content-Type: application/json' \
                -d '{"gw_id":"gw01","gw_ip":"10.0.0.1","gw_type":"recorder"}' "http://127.0.0.1:$PORT/register" >/dev/null ;;
        fastapi) start_redis; start_server rest-fastapi; url="http://127.0.0.1:$PORT/status?gw_id=gw01"; label=fastapi ;;
        *) return 0 ;;
    esac
    log "rest $label: wrk $url"
    curl -fsS -H 'Authorization: Bearer bench' "$url" | cut -c1-200 >&2 || true
    echo >&2
    local c0 r0 c1 r1 out="$RUN/wrk-$label.txt"
    c0=$(cpu_seconds "$SERVER_PID"); r0=0; [ -n "$REDIS_PID" ] && r0=$(cpu_seconds "$REDIS_PID")
    taskset -c $GENERATOR_CPU wrk -t1 -c"$WRK_CONNECTIONS" -d"${WRK_S}s" --latency -H 'Authorization: Bearer bench' "$url" > "$out"
    c1=$(cpu_seconds "$SERVER_PID"); r1=0; [ -n "$REDIS_PID" ] && r1=$(cpu_seconds "$REDIS_PID")
    "$BENCH/.venv/bin/python" "$BENCH/report.py" wrk-json "$out" --server "$label" --url "$url" \
        --server-cpu-s "$(awk -v a="$c0" -v b="$c1" 'BEGIN{print b-a}')" \
        --redis-cpu-s "$(awk -v a="$r0" -v b="$r1" 'BEGIN{print b-a}')" --seconds "$WRK_S" >> "$RESULTS"
    tail -n 1 "$RESULTS" | cut -c1-300 >&2
    stop_server
    stop_redis
}

# Scenario 5: two hub nodes sharing Redis (--engine redis), both pinned to the server CPU like every
# server here; the subscribers on node B, the publisher on node A, so every delivery crosses Redis.
# Twice per subscriber count: on one standalone redis-server (label hub-cluster) and on a Redis
# Cluster of 3 primaries with a replica each (label hub-rcluster, --redis-cluster). Same fields as
# scenario 1, so the report sets it beside the single-node figure; when scenario 1 does not run on
# the hub in the same run, a single-node hub run at the same counts (label hub-single) is the reference.
RCLUSTER_PORTS="17000 17001 17002 17003 17004 17005"
RCLUSTER_PIDS=()
start_rcluster() {
    local port seeds=() i ok
    rm -rf "$RUN/rcluster"
    for port in $RCLUSTER_PORTS; do
        mkdir -p "$RUN/rcluster/$port"
        taskset -c $SERVER_CPU redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
            --cluster-config-file nodes.conf --dir "$RUN/rcluster/$port" --save '' --appendonly no \
            --daemonize no --logfile "$RUN/rcluster/$port/redis.log" &
        RCLUSTER_PIDS+=($!)
        seeds+=("127.0.0.1:$port")
    done
    for port in $RCLUSTER_PORTS; do wait_port "$port"; done
    redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes >"$RUN/rcluster/create.log" 2>&1
    # every node must see all slots served before a hub reads the map
    for i in $(seq 1 200); do
        ok=1
        for port in $RCLUSTER_PORTS; do
            redis-cli -p "$port" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok' || { ok=0; break; }
        done
        [ "$ok" = 1 ] && break
        sleep 0.1
    done
    [ "$ok" = 1 ] || { echo "redis cluster did not reach cluster_state:ok" >&2; return 1; }
    RCLUSTER_SEEDS=$(IFS=,; echo "${seeds[*]}")
}

stop_rcluster() {
    local pid
    for pid in "${RCLUSTER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${RCLUSTER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    RCLUSTER_PIDS=()
}

# cross_node LABEL SUBS REDIS-FLAGS...: nodes A and B on the given Redis, one fan-out run across them.
cross_node() {
    local label=$1 subs=$2 node_b_pid
    shift 2
    rm -rf "$RUN/hub-data-a" "$RUN/hub-data-b"
    echo '{"channel":{"allow_publish_for_client":true}}' > "$RUN/hub.json"
    local common=(--host 127.0.0.1 --log-level warning --threads "$HUB_THREADS" --config "$RUN/hub.json"
                  --engine redis "$@"
                  --client-queue-max-bytes 16777216 --client-queue-max-messages 100000)
    HUB_TOKEN_HMAC_SECRET=s HUB_API_KEY=k taskset -c $SERVER_CPU "$BIN/hub" --port $HUB_PORT --node-name node-a \
        --data-dir "$RUN/hub-data-a" "${common[@]}" >>"$RUN/hub.log" 2>&1 &
    SERVER_PID=$!
    HUB_TOKEN_HMAC_SECRET=s HUB_API_KEY=k taskset -c $SERVER_CPU "$BIN/hub" --port $((HUB_PORT + 10)) --node-name node-b \
        --data-dir "$RUN/hub-data-b" "${common[@]}" >>"$RUN/hub.log" 2>&1 &
    node_b_pid=$!
    wait_port $HUB_PORT && wait_port $((HUB_PORT + 10))
    sleep 0.5
    log "cluster ($label): $subs subscribers on node B, publisher on node A"
    local limit=$(( subs > 1000 ? 50 * subs / 1000 : 50 ))
    generator fanout --server hub --label "$label" --port $((HUB_PORT + 10)) --publisher-port $HUB_PORT \
        --server-pid "$node_b_pid" --subscribers "$subs" \
        --step-seconds "$STEP_S" --half-seconds "$HALF_S" --start-deliveries "$START_DELIVERIES" \
        --p99-limit-ms "$limit" --budget-seconds "$STEP_BUDGET_S" || echo "cluster $label $subs: generator failed" >&2
    # the generator writes scenario "fanout"; relabel its lines for the report
    sed -i -e "/\"server\":\"$label\"/s/\"scenario\":\"fanout\"/\"scenario\":\"cluster\"/" "$RESULTS"
    tail -n 1 "$RESULTS" | cut -c1-300 >&2
    kill "$node_b_pid" 2>/dev/null || true
    wait "$node_b_pid" 2>/dev/null || true
    stop_server
}

scenario_cluster() {
    local kind=$1 subs
    [ "$kind" = hub ] || return 0
    local single=1
    [[ " $SCENARIOS " == *" fanout "* && " $SERVERS " == *" hub "* ]] && single=0
    for subs in $FANOUT_SUBS; do
        if [ "$single" = 1 ]; then
            # scenario 1 is not in this run: the single-node reference, measured the same way
            start_server hub
            log "cluster (hub-single): $subs subscribers on one node"
            local limit=$(( subs > 1000 ? 50 * subs / 1000 : 50 ))
            generator fanout --server hub --label hub-single --port "$PORT" --server-pid "$SERVER_PID" \
                --subscribers "$subs" --step-seconds "$STEP_S" --half-seconds "$HALF_S" \
                --start-deliveries "$START_DELIVERIES" --p99-limit-ms "$limit" --budget-seconds "$STEP_BUDGET_S" \
                || echo "cluster hub-single $subs: generator failed" >&2
            sed -i -e '/"server":"hub-single"/s/"scenario":"fanout"/"scenario":"cluster"/' "$RESULTS"
            tail -n 1 "$RESULTS" | cut -c1-300 >&2
            stop_server
        fi
        start_redis
        cross_node hub-cluster "$subs" --redis-url "redis://127.0.0.1:$REDIS_PORT/0"
        stop_redis
        start_rcluster
        cross_node hub-rcluster "$subs" --redis-cluster "$RCLUSTER_SEEDS"
        stop_rcluster
    done
}

# Scenario failover (section 5): one hub on a Redis Sentinel set (primary, replica, three
# sentinels), then on a 3-primary Redis Cluster, all on the server CPU; a subscriber on a channel
# with history and a publisher at 100 publishes/s (bench/failover.py, on the generator CPU); the
# channel's primary is SIGKILLed $BENCH_FAILOVERS times: the publish gap the subscriber sees and
# the time until publishes are acknowledged again, per kill.
scenario_failover() {
    local kind=$1
    [ "$kind" = hub ] || return 0
    local redis
    for redis in sentinel cluster; do
        log "failover ($redis): $FAILOVERS SIGKILLs of the channel's primary"
        rm -rf "$RUN/failover-$redis"
        taskset -c $GENERATOR_CPU "$BENCH/.venv/bin/python" "$BENCH/failover.py" --redis "$redis" --hub "$BIN/hub" \
            --out "$RESULTS" --workdir "$RUN/failover-$redis" --kills "$FAILOVERS" --server-cpu $SERVER_CPU \
            --threads "$HUB_THREADS" 2>>"$RUN/failover.log" || echo "failover $redis: failed (see $RUN/failover.log)" >&2
        tail -n 1 "$RESULTS" | cut -c1-300 >&2
    done
}

# Scenario 6: the hub alone, fan-out to 1,000 subscribers in each of its client modes — JSON and
# Protobuf (twice each, interleaved, so drift hits both), both with fossil deltas on a gateway
# record and the same record whole, and uni_sse subscribers (JSON) — each with bytes per delivery.
scenario_codecs() {
    local kind=$1 entry name args limit=50
    [ "$kind" = hub ] || return 0
    local modes=("json|--codec json" "protobuf|--codec protobuf" "json|--codec json" "protobuf|--codec protobuf"
                 "json-gateway|--codec json --payload gateway" "json-delta|--codec json --payload gateway --delta"
                 "protobuf-gateway|--codec protobuf --payload gateway"
                 "protobuf-delta|--codec protobuf --payload gateway --delta" "sse|--transport sse")
    for entry in "${modes[@]}"; do
        name=hub-codec-${entry%%|*}
        read -r -a args <<< "${entry#*|}"
        HUB_CHANNEL_OPTIONS='{"allow_publish_for_client":true,"allowed_delta_types":["fossil"]}' start_server hub
        log "codecs: $name (${args[*]}), $CODEC_SUBS subscribers"
        generator fanout --server hub --label "$name" "${args[@]}" \
            --port "$PORT" --server-pid "$SERVER_PID" --subscribers "$CODEC_SUBS" \
            --step-seconds "$STEP_S" --half-seconds "$HALF_S" --start-deliveries "$START_DELIVERIES" \
            --p99-limit-ms "$limit" --budget-seconds "$STEP_BUDGET_S" || echo "codecs $name: generator failed" >&2
        # the generator writes scenario "fanout"; relabel its lines for the report
        sed -i -e "/\"server\":\"$name\"/s/\"scenario\":\"fanout\"/\"scenario\":\"codecs\"/" "$RESULTS"
        tail -n 1 "$RESULTS" | cut -c1-300 >&2
        stop_server
    done
}

# Scenario 7: seed 000's /start against $START_GATEWAYS registered gateways, on the embedded store
# and on Redis (`hub-bench starts` serves the gateways' launcher API itself).
scenario_start() {
    local kind=$1 count
    [ "$kind" = hub ] || return 0
    for count in $START_GATEWAYS; do
        start_server hub
        log "start: $count gateways, embedded store"
        generator starts --port "$PORT" --server-pid "$SERVER_PID" --label hub --gateways "$count" --rounds "$START_ROUNDS" \
            || echo "start $count: generator failed" >&2
        tail -n 1 "$RESULTS" | cut -c1-300 >&2
        stop_server
        start_redis
        rm -rf "$RUN/hub-data-redis"
        HUB_TOKEN_HMAC_SECRET=s HUB_API_KEY=k HUB_GATEWAY_ALLOWED_TOKEN=bench HUB_GATEWAY_MONITOR_INTERVAL=3600 \
            taskset -c $SERVER_CPU "$BIN/hub" --host 127.0.0.1 --port $HUB_PORT --log-level warning --threads "$HUB_THREADS" \
            --engine redis --redis-url "redis://127.0.0.1:$REDIS_PORT/0" --data-dir "$RUN/hub-data-redis" >>"$RUN/hub.log" 2>&1 &
        SERVER_PID=$!
        PORT=$HUB_PORT
        wait_port "$PORT"
        sleep 1.5  # the free-gateway set is rebuilt from Redis on the first tick
        log "start: $count gateways, Redis store"
        generator starts --port "$PORT" --server-pid "$SERVER_PID" --label hub-redis --gateways "$count" --rounds "$START_ROUNDS" \
            || echo "start $count (redis): generator failed" >&2
        tail -n 1 "$RESULTS" | cut -c1-300 >&2
        stop_server
        stop_redis
    done
}

# Scenario 8: the backend proxies' cost on one hub, against the hub deciding alone (`hub-bench
# proxies` alternates the modes per round). The backend is `hub-bench proxy-backend`, one epoll
# thread answering allow, on the generator's CPU: its CPU time is in the results.
scenario_proxies() {
    local kind=$1 backend_pid
    [ "$kind" = hub ] || return 0
    taskset -c $GENERATOR_CPU "$BIN/hub-bench" proxy-backend --port $PROXY_BACKEND_PORT >>"$RUN/proxy-backend.log" 2>&1 &
    backend_pid=$!
    wait_port $PROXY_BACKEND_PORT
    rm -rf "$RUN/hub-data"
    echo '{"namespaces":[{"name":"direct"},{"name":"proxied","proxy_subscribe":true}]}' > "$RUN/hub-proxies.json"
    HUB_TOKEN_HMAC_SECRET=s HUB_API_KEY=k taskset -c $SERVER_CPU "$BIN/hub" --host 127.0.0.1 --port $HUB_PORT \
        --log-level warning --threads "$HUB_THREADS" --config "$RUN/hub-proxies.json" --data-dir "$RUN/hub-data" \
        --proxy-connect-endpoint "http://127.0.0.1:$PROXY_BACKEND_PORT/connect" \
        --proxy-subscribe-endpoint "http://127.0.0.1:$PROXY_BACKEND_PORT/subscribe" >>"$RUN/hub.log" 2>&1 &
    SERVER_PID=$!
    PORT=$HUB_PORT
    wait_port "$PORT"
    sleep 0.3
    log "proxies: $PROXY_CONNECTIONS connects and $PROXY_SUBSCRIBES subscribes per mode, $PROXY_ROUNDS rounds"
    generator proxies --port "$PORT" --server-pid "$SERVER_PID" --backend-pid "$backend_pid" \
        --connections "$PROXY_CONNECTIONS" --subscribes "$PROXY_SUBSCRIBES" --rounds "$PROXY_ROUNDS" \
        || echo "proxies: generator failed" >&2
    tail -n 1 "$RESULTS" | cut -c1-300 >&2
    stop_server
    kill "$backend_pid" 2>/dev/null || true
    wait "$backend_pid" 2>/dev/null || true
}

# Scenario cost: what one fan-out delivery costs the hub and the floor in user-space instructions
# (callgrind: this VM has no PMU, so perf stat cannot count them) and in bytes written. Per server
# two runs under valgrind --tool=callgrind, the server started as start_server starts it (one
# thread, the same config and queue flags), fan-out to $COST_SUBS subscribers, one 6 s step and a
# 1 s half-rate run: busy at $COST_DELIVERIES deliveries/s, idle at $COST_IDLE_DELIVERIES/s.
# Instructions per delivery = (Ir busy − Ir idle) / (deliveries busy − deliveries idle), so start-up,
# connecting, timers and shutdown cancel out. A busy run that lost deliveries or subscribers (the
# server runs ~50× slower under callgrind) is dropped and made again at half the rate, twice at most.
# Bytes per delivery: what the subscribers read (the generator's bytes_per_delivery). Syscalls per
# delivery the same way from two runs with `strace -c -f` attached (COST_STRACE=0 skips them).
# cost_run KIND RUN DELIVERIES [strace]: one run under callgrind (or strace); its lines become
# scenario cost-run, cost_run RUN (strace-RUN); COST_OUT is the tool's output file.
cost_run() {
    local kind=$1 run=$2 deliveries=$3 tool=${4:-callgrind} wire=(--server "$1") tracer=""
    [ "$kind" = floor ] && wire=(--server lws --label floor)
    if [ "$tool" = strace ]; then
        run=strace-$run
        COST_OUT=$RUN/strace.$kind.${run#strace-}.txt
        rm -f "$COST_OUT"
        start_server "$kind"
        taskset -c $SERVER_CPU strace -c -f -qq -o "$COST_OUT" -p "$SERVER_PID" 2>>"$RUN/strace.log" &
        tracer=$!
        sleep 1
    else
        COST_OUT=$RUN/callgrind.$kind.$run.out
        rm -f "$COST_OUT"
        SERVER_WRAP=(valgrind --tool=callgrind "--callgrind-out-file=$COST_OUT")
        SERVER_WAIT_S=120
        start_server "$kind"
    fi
    log "cost $kind: $run, $deliveries deliveries/s to $COST_SUBS subscribers under $tool"
    COST_N0=$(wc -l < "$RESULTS")
    generator fanout "${wire[@]}" --port "$PORT" --server-pid "$SERVER_PID" --subscribers "$COST_SUBS" \
        --start-deliveries "$deliveries" --max-steps 1 --refine-steps 0 --step-seconds 6 --half-seconds 1 \
        --p99-limit-ms 100000 --budget-seconds 60 || echo "cost $kind $run: generator failed" >&2
    tag_results "$COST_N0" scenario='"cost-run"' cost_run="\"$run\"" cost_deliveries="$deliveries"
    if [ -n "$tracer" ]; then
        kill -INT "$tracer" 2>/dev/null || true
        wait "$tracer" 2>/dev/null || true
    fi
    stop_server
    SERVER_WRAP=()
    SERVER_WAIT_S=10
}

scenario_cost() {
    local kind=$1 rate try busy idle
    [ "$kind" = hub ] || [ "$kind" = floor ] || return 0
    command -v valgrind >/dev/null || { echo "cost: no valgrind (bench/run.sh without --no-install installs it)" >&2; return 0; }
    rate=$COST_DELIVERIES
    for try in 1 2 3; do
        cost_run "$kind" busy "$rate"
        busy=$COST_OUT
        "$BENCH/.venv/bin/python" "$BENCH/report.py" cost-check --results "$RESULTS" --server "$kind" && break
        echo "cost $kind: deliveries or subscribers lost at $rate deliveries/s under callgrind" >&2
        [ "$try" = 3 ] && break
        tag_results "$COST_N0" cost_run='"busy-dropped"'
        mv "$busy" "$busy.$rate"
        rate=$((rate / 2))
    done
    cost_run "$kind" idle "$COST_IDLE_DELIVERIES"
    idle=$COST_OUT
    local traces=()
    if [ "$COST_STRACE" = 1 ] && command -v strace >/dev/null; then
        cost_run "$kind" busy "$rate" strace
        traces+=(--strace-busy "$COST_OUT")
        cost_run "$kind" idle "$COST_IDLE_DELIVERIES" strace
        traces+=(--strace-idle "$COST_OUT")
    fi
    "$BENCH/.venv/bin/python" "$BENCH/report.py" cost-json --results "$RESULTS" --server "$kind" \
        --busy "$busy" --idle "$idle" "${traces[@]}" --subscribers "$COST_SUBS" >> "$RESULTS" || echo "cost $kind: no figure" >&2
    tail -n 1 "$RESULTS" | cut -c1-300 >&2
}

# ---------------------------------------------------------------------------------------------

CODEC_SUBS=1000
COST_SUBS=1000
COST_DELIVERIES=${COST_DELIVERIES:-20000}
COST_IDLE_DELIVERIES=${COST_IDLE_DELIVERIES:-1000}
COST_STRACE=${COST_STRACE:-1}
if [ "$MODE" = quick ]; then
    REPEATS=${BENCH_REPEATS:-1}
    FANOUT_SUBS="1000"
    STEP_S=0.6 HALF_S=1 STEP_BUDGET_S=4 START_DELIVERIES=40000
    CHANNEL_CONNS=1000
    IDLE_CONNS=3000 SETTLE_S=1
    WRK_S=2 WRK_CONNECTIONS=32
    START_GATEWAYS="10 10000" START_ROUNDS=200
    PROXY_CONNECTIONS=1000 PROXY_SUBSCRIBES=500 PROXY_ROUNDS=1
else
    REPEATS=${BENCH_REPEATS:-3}
    FANOUT_SUBS="1000 5000"
    STEP_S=2 HALF_S=3 STEP_BUDGET_S=30 START_DELIVERIES=20000
    CHANNEL_CONNS=10000
    IDLE_CONNS=20000 SETTLE_S=2
    WRK_S=10 WRK_CONNECTIONS=64
    START_GATEWAYS="10 10000" START_ROUNDS=1000
    PROXY_CONNECTIONS=10000 PROXY_SUBSCRIBES=3000 PROXY_ROUNDS=5
fi

[ "$INSTALL" = 1 ] && install_peers
[ "$BUILD" = 1 ] && build
BIN=$ROOT/$SCRATCH/release
[ -x "$BIN/hub" ] && [ -x "$BIN/hub-bench" ] || { echo "no release build in $BIN" >&2; exit 1; }

# Each side may hold the connections of a whole scenario: raise the open-files limit as far as
# the hard limit allows, and keep the idle-connections scenario inside it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ "$IDLE_CONNS" -gt $((NOFILE - 100)) ]; then
    echo "open files limited to $NOFILE (hard limit): idle connections $IDLE_CONNS -> $((NOFILE - 100))" >&2
    IDLE_CONNS=$((NOFILE - 100))
fi

RUN=$BENCH/results/latest
rm -rf "$RUN"
mkdir -p "$RUN" "$ROOT/docs/bench"
RESULTS=$RUN/results.jsonl
: > "$RESULTS"
STARTED=$(date +%s)
# Hypervisor steal over the whole run (this machine is a VM; a busy host shows up here).
steal_snapshot() { awk '/^cpu /{ t=0; for (i=2;i<=9;i++) t+=$i; print $9, t }' /proc/stat; }
STEAL0=$(steal_snapshot)
cat > "$RUN/meta.json" <<EOF
{"mode": "$MODE", "command": "$COMMAND", "started": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "servers": "$SERVERS", "scenarios": "$SCENARIOS", "fanout_subscribers": "$FANOUT_SUBS",
 "channel_connections": $CHANNEL_CONNS, "idle_connections": $IDLE_CONNS, "nofile": "$NOFILE",
 "step_seconds": $STEP_S, "half_seconds": $HALF_S, "wrk_seconds": $WRK_S, "wrk_connections": $WRK_CONNECTIONS,
 "hub_rest_path": "$HUB_REST_PATH", "server_cpu": $SERVER_CPU, "generator_cpu": $GENERATOR_CPU, "repeats": $REPEATS}
EOF

for scenario in $SCENARIOS; do
    for kind in $SERVERS; do
        "scenario_$scenario" "$kind"
    done
done

SPLICE=1
for scenario in $SCENARIOS; do
    [[ " $SPLICEABLE_SCENARIOS " == *" $scenario "* ]] || SPLICE=0
done

# The hub's profile under the same loads (full runs only; a quick run keeps the last one, and so
# does a run of stand-alone sections, whose report keeps the rest of the page as it was).
if [ "$MODE" = full ] && [ "$SPLICE" = 0 ] && [[ " $SERVERS " == *" hub "* ]]; then
    log "profiling the hub (bench/profile.sh)"
    HUB_THREADS=$HUB_THREADS HUB_REST_PATH=$HUB_REST_PATH BENCH_SCRATCH=$SCRATCH "$BENCH/profile.sh" || echo "profile failed" >&2
fi

ELAPSED=$(( $(date +%s) - STARTED ))
STEAL_PCT=$(echo "$STEAL0 $(steal_snapshot)" | awk '{ d=$4-$2; printf "%.1f", (d>0 ? 100*($3-$1)/d : 0) }')
log "all scenarios done in ${ELAPSED}s; writing docs/benchmarks.md"
if [ "$SPLICE" = 1 ]; then
    # Only stand-alone sections ran: they replace their own sections, the rest of the report stays.
    cp "$RESULTS" "$ROOT/docs/bench/results-${SCENARIOS// /-}.jsonl"
    "$BENCH/.venv/bin/python" "$BENCH/report.py" report --run "$RUN" --elapsed "$ELAPSED" --steal "$STEAL_PCT" \
        --markdown "$ROOT/docs/benchmarks.md" --plots "$ROOT/docs/bench" --splice
else
    cp "$RESULTS" "$ROOT/docs/bench/results.jsonl"
    "$BENCH/.venv/bin/python" "$BENCH/report.py" report --run "$RUN" --elapsed "$ELAPSED" --steal "$STEAL_PCT" \
        --markdown "$ROOT/docs/benchmarks.md" --plots "$ROOT/docs/bench"
fi
log "done: docs/benchmarks.md, docs/bench/"
