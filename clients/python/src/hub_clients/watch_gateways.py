#!/usr/bin/env python3
"""Watch every gateway live: prints the current state (RPC `gateways.snapshot`), then each change
published on `gateways:all`, recovering from the snapshot's position so nothing is missed.

    pip install websockets
    HUB_TOKEN_HMAC_SECRET=change-me hub-watch-gateways ws://localhost:8000/connection/websocket

The connection token is an HS256 JWT for user `dashboard`, signed with HUB_TOKEN_HMAC_SECRET.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import sys
import time

from websockets.asyncio.client import connect


def token(secret: str) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "dashboard", "exp": int(time.time()) + 86400}).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def line(gw_id: str, s: dict, event: str = "now") -> str:
    return (f"{event:10} {gw_id:8} {s.get('status')!s:8} room={s.get('room')} gateway={s.get('gateway')} "
            f"media={s.get('media_duration')} transcript={s.get('transcript_progress')}")


async def watch(url: str, secret: str) -> None:
    async with connect(url, proxy=None) as ws:
        async def call(cmd_id: int, method: str, params: dict) -> dict:
            await ws.send(json.dumps({"id": cmd_id, method: params}))
            while True:
                for text in (await ws.recv()).split("\n"):
                    if text.strip():
                        msg = json.loads(text)
                        if msg.get("id") == cmd_id:
                            if "error" in msg:
                                raise SystemExit(f"{method}: {msg['error']}")
                            return msg[method]
        await call(1, "connect", {"token": token(secret)})
        snap = (await call(2, "rpc", {"method": "gateways.snapshot", "data": {}}))["data"]
        for gw_id, status in snap["gateways"].items():
            print(line(gw_id, status), flush=True)
        sub = await call(3, "subscribe", {"channel": "gateways:all", "recover": True,
                                          "offset": snap["offset"], "epoch": snap["epoch"]})
        for pub in sub.get("publications", []):
            print(line(pub["data"]["gw_id"], pub["data"], pub["data"]["event"]), flush=True)
        async for frame in ws:
            for text in frame.split("\n"):
                if not text.strip():
                    continue
                msg = json.loads(text)
                if msg == {}:
                    await ws.send("{}")  # answer the server's ping
                elif "pub" in msg.get("push", {}):
                    data = msg["push"]["pub"]["data"]
                    print(line(data["gw_id"], data, data["event"]), flush=True)


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "ws://localhost:8000/connection/websocket"
    secret = os.environ.get("HUB_TOKEN_HMAC_SECRET")
    if not secret:
        sys.exit("set HUB_TOKEN_HMAC_SECRET to the hub's token secret")
    try:
        asyncio.run(watch(url, secret))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
