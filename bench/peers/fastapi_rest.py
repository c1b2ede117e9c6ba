"""The FastAPI + redis-py peer for the REST scenario: the media-gateway proxy's GET /status,
reading `gateway:{gw_id}` = ip|state|type|room|start|duration|progress from Redis.

Run: REDIS_PORT=16379 uvicorn fastapi_rest:app --app-dir bench/peers --host 127.0.0.1 --port 18005
Seed: bench/run.sh writes gateway:gw01 … gateway:gw100.
"""

import os

import redis.asyncio as redis
from fastapi import FastAPI, Header, HTTPException

app = FastAPI()
store = redis.Redis(host="127.0.0.1", port=int(os.environ.get("REDIS_PORT", "6379")), decode_responses=True)


@app.get("/status")
async def status(gw_id: str | None = None, room: str | None = None,
                 authorization: str | None = Header(default=None)) -> dict:
    if not authorization:
        raise HTTPException(status_code=401, detail="Missing Authorization")
    if not gw_id:
        raise HTTPException(status_code=400, detail="Missing parameters")
    raw = await store.get(f"gateway:{gw_id}")
    if raw is None:
        raise HTTPException(status_code=404, detail="Gateway not found")
    ip, state, _kind, room_name, _start, duration, progress = raw.split("|")
    return {"status": "success", "data": {"gw_id": ip, "gw_state": state, "room": room_name,
                                          "media_duration": duration, "transcript_progress": progress}}
