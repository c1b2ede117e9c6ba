#!/usr/bin/env bash
# The hub with everything that makes the dashboard move: four simulated gateways, the agent
# worker with the fake LLM, the meetings worker, a cache root of sample files, and some traffic
# (rooms starting and stopping, a cache job now and then). Open http://localhost:8000/ and sign
# in as admin / admin-password (HUB_ADMIN_USER / HUB_ADMIN_PASSWORD). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_packages "${HUB_PACKAGES[@]}"
python3 -m venv --help >/dev/null 2>&1 || ensure_packages python3-venv
# HUB_BINARY: use that build instead of making the release one.
HUB_BINARY=${HUB_BINARY:-}
if [ -z "$HUB_BINARY" ]; then swift build -c release --product hub; HUB_BINARY=.build/release/hub; fi

VENV=.venv-demo
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check './clients/python[stt]'

PORT=${HUB_PORT:-8000}
HUB=http://localhost:$PORT
DEMO=${DEMO_DIR:-/tmp/hub-demo}
export HUB_TOKEN_HMAC_SECRET=${HUB_TOKEN_HMAC_SECRET:-change-me} HUB_API_KEY=${HUB_API_KEY:-change-me-too}
export HUB_ADMIN_USER=${HUB_ADMIN_USER:-admin} HUB_ADMIN_PASSWORD=${HUB_ADMIN_PASSWORD:-admin-password}
export HUB_GATEWAY_ALLOWED_TOKEN=${HUB_GATEWAY_ALLOWED_TOKEN:-1234} HUB_GATEWAY_ADMIN_TOKEN=${HUB_GATEWAY_ADMIN_TOKEN:-admin-secret-key}
export API_GATEWAY_KEY=${API_GATEWAY_KEY:-demo-api-key-2024} CACHE_ROOT=$DEMO/cache

# Sample media for the cache jobs: 24 files of 4-16 MiB, made once.
if [ ! -d "$CACHE_ROOT/00_Media" ]; then
    for dir in Farm/ProRes422 City/H264; do
        mkdir -p "$CACHE_ROOT/00_Media/$dir"
        for i in $(seq -w 1 12); do head -c $(( (RANDOM % 13 + 4) * 1048576 )) /dev/urandom > "$CACHE_ROOT/00_Media/$dir/clip_$i.mov"; done
    done
fi

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT INT TERM
"$HUB_BINARY" --port "$PORT" --data-dir "$DEMO/data" --cache-max-read-rate 20 --gateway-monitor-interval 1 "$@" &
pids+=($!)
for _ in $(seq 100); do curl -sf "$HUB/health" >/dev/null && break; sleep 0.1; done

for gw in gw01 gw02 gw03 gw04; do
    "$VENV/bin/hub-gateway-sim" --hub "$HUB" --token "$HUB_GATEWAY_ALLOWED_TOKEN" --id "$gw" --type recorder >"$DEMO/$gw.log" 2>&1 &
    pids+=($!)
done
LLM_PORT=$(( PORT + 80 ))
"$VENV/bin/hub-fake-llm" --port "$LLM_PORT" >"$DEMO/llm.log" 2>&1 & pids+=($!)
"$VENV/bin/hub-june-worker" --hub "$HUB" --api-key "$HUB_API_KEY" \
    --llm-url "http://localhost:$LLM_PORT/v1/chat/completions" agent llm tts stt >"$DEMO/june.log" 2>&1 & pids+=($!)
"$VENV/bin/hub-meetings-worker" --hub "$HUB" --name demo-worker >"$DEMO/meetings.log" 2>&1 & pids+=($!)

echo "dashboard: $HUB/  (sign in as $HUB_ADMIN_USER / $HUB_ADMIN_PASSWORD); logs in $DEMO" >&2

# Traffic: every few seconds a room starts or stops; every half minute a cache job.
"$VENV/bin/python" - "$HUB" <<'EOF'
import json, os, random, sys, time, urllib.request

hub = sys.argv[1]
allowed, admin, cache_key = os.environ["HUB_GATEWAY_ALLOWED_TOKEN"], os.environ["HUB_GATEWAY_ADMIN_TOKEN"], os.environ["API_GATEWAY_KEY"]

def call(method, path, body=None, headers=None):
    request = urllib.request.Request(hub + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return json.loads(response.read() or b"{}")
    except Exception as error:
        print(f"{method} {path}: {error}", file=sys.stderr)
        return None

rooms = ["math101", "physics202", "history301", "art404", "biology110", "music220"]
folders = ["00_Media/Farm/ProRes422", "00_Media/City/H264"]
tick = 0
while True:
    statuses = call("GET", "/admin/statuses", headers={"Authorization": f"Bearer {admin}"}) or {}
    working = [gw for gw, s in statuses.items() if s.get("status") == "working"]
    busy = {s.get("room") for s in statuses.values()}
    if working and (len(working) >= 3 or random.random() < 0.35):
        call("POST", "/stop", {"gw_id": random.choice(working)}, {"Authorization": f"Bearer {allowed}"})
    else:
        free_rooms = [r for r in rooms if r not in busy]
        if free_rooms:
            call("POST", "/start", {"room": random.choice(free_rooms)}, {"Authorization": f"Bearer {allowed}"})
    if tick % 6 == 0:
        call("POST", "/api/v1/cache/jobs", {"directories": [folders[(tick // 6) % 2]], "recursive": True}, {"X-API-Key": cache_key})
    tick += 1
    time.sleep(5)
EOF
