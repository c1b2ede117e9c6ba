"""The FastAPI peer for the WebSocket scenarios: an in-memory set of sockets, and every message a
client sends goes to all the others.

    /ws                   joins channel "bench" (and the set of everyone)
    /ws?channels=a,b      joins channels a and b instead ("" joins none)
    "@name text" sent     goes to channel name's members only; anything else goes to everyone

The server sends "ok" once a socket is registered, so the load generator knows when it counts.
Run: uvicorn fastapi_broadcast:app --app-dir bench/peers --host 127.0.0.1 --port 18003
"""

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()
everyone: set[WebSocket] = set()
channels: dict[str, set[WebSocket]] = {}


@app.websocket("/ws")
async def relay(ws: WebSocket) -> None:
    await ws.accept()
    raw = ws.query_params.get("channels", "bench")
    names = [name for name in raw.split(",") if name]
    everyone.add(ws)
    for name in names:
        channels.setdefault(name, set()).add(ws)
    await ws.send_text("ok")
    try:
        while True:
            message = await ws.receive_text()
            if message.startswith("@"):
                name, _, body = message[1:].partition(" ")
                targets = channels.get(name, ())
            else:
                body, targets = message, everyone
            for peer in list(targets):
                if peer is not ws:
                    try:
                        await peer.send_text(body)
                    except Exception:  # a peer that went away is dropped by its own handler
                        pass
    except WebSocketDisconnect:
        pass
    finally:
        everyone.discard(ws)
        for name in names:
            members = channels.get(name)
            if members is not None:
                members.discard(ws)
                if not members:
                    del channels[name]
