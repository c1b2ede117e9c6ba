"""Centrifugo's unidirectional transports with no SDK: `uni_sse` (EventSource, `curl -N`),
`uni_http_stream` (newline-delimited JSON) and `uni_websocket`, against a real hub."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.parse
from typing import Dict, List, Optional

import pytest
import websockets

from hubtest import WAIT, arun, conn_token, wait_for

CONFIG = {"namespaces": [
    {"name": "news", "history_size": 100, "history_ttl": 300, "recovery": True, "presence": True,
     "allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True},
    {"name": "private", "history_size": 10, "history_ttl": 300},
]}


class RawStream:
    """One streamed HTTP response read straight off a socket: SSE events or JSON lines."""

    def __init__(self, port: int, method: str, path: str, headers: Optional[Dict[str, str]] = None,
                 body: Optional[bytes] = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        self.buf = b""
        self.eof = False
        head = self._until(b"\r\n\r\n").decode()
        status_line, *header_lines = head.split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if ":" in h)}

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("nothing more within the deadline")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout as e:
            raise TimeoutError("nothing more within the deadline") from e
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise EOFError("the stream ended")
        self.buf += data

    def _until(self, sep: bytes, timeout: float = WAIT) -> bytes:
        deadline = time.monotonic() + timeout
        while sep not in self.buf:
            self._fill(deadline)
        part, self.buf = self.buf.split(sep, 1)
        return part

    def line(self, timeout: float = WAIT) -> dict:
        return json.loads(self._until(b"\n", timeout))

    def event(self, timeout: float = WAIT) -> Dict[str, str]:
        """The next SSE event (comments and blank keep-alives skipped): its fields, data joined."""
        while True:
            block = self._until(b"\n\n", timeout).decode()
            fields: Dict[str, str] = {}
            for raw in block.split("\n"):
                raw = raw.rstrip("\r")
                if not raw or raw.startswith(":"):
                    continue
                name, _, value = raw.partition(":")
                value = value[1:] if value.startswith(" ") else value
                fields[name] = fields[name] + "\n" + value if name in fields else value
            if fields:
                return fields

    def rest(self, timeout: float = WAIT) -> bytes:
        """Everything until the server ends the response."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except EOFError:
            pass
        out, self.buf = self.buf, b""
        return out

    def close(self) -> None:
        self.sock.close()


def uni_sse(hub, connect: dict, last_event_id: Optional[str] = None) -> RawStream:
    query = urllib.parse.quote(json.dumps(connect))
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    return RawStream(hub.port, "GET", f"/connection/uni_sse?cf_connect={query}", headers)


def uni_http_stream(hub, connect: dict) -> RawStream:
    return RawStream(hub.port, "POST", "/connection/uni_http_stream", {"Content-Type": "application/json"},
                     json.dumps(connect).encode())


def connections(hub) -> List[dict]:
    result = hub.api_result("connections", {})
    return list(result.get("connections", {}).values())


@pytest.fixture
def uhub(hub_factory):
    return hub_factory("--allow-anonymous", config=CONFIG)


def test_curl_receives_publications_over_uni_sse(uhub):
    hub = uhub
    token = conn_token("alice", secret=hub.secret, channels=["private:feed"])
    url = f"{hub.url}/connection/uni_sse?cf_connect=" + urllib.parse.quote(json.dumps({"token": token}))
    curl = subprocess.Popen(["curl", "-sN", url], stdout=subprocess.PIPE, text=True)
    try:
        first = curl.stdout.readline()
        assert first.startswith("data: "), first
        connect = json.loads(first[len("data: "):])["connect"]
        assert connect["client"] and connect["ping"] == 25 and "pong" not in connect
        assert set(connect["subs"]) == {"private:feed"}
        epoch = connect["subs"]["private:feed"]["epoch"]
        hub.publish("private:feed", {"headline": "hello"})
        lines = [curl.stdout.readline() for _ in range(4)]  # blank, id, data
        event = [l for l in lines if l.strip()]
        assert event[0].strip() == f"id: 1:{epoch}:private:feed"
        pub = json.loads(event[1][len("data: "):])
        assert pub == {"channel": "private:feed", "pub": {"data": {"headline": "hello"}, "offset": 1, "time": pub["pub"]["time"]}}
    finally:
        curl.terminate()
        curl.wait(WAIT)


def test_uni_sse_headers_and_a_reconnect_resumes_from_last_event_id(uhub):
    hub = uhub
    token = conn_token("alice", secret=hub.secret, channels=["private:feed"])
    s = uni_sse(hub, {"token": token})
    assert s.status == 200
    assert s.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert s.headers["cache-control"] == "no-cache" and "content-length" not in s.headers
    s.event()  # connect
    hub.publish("private:feed", {"n": 1})
    seen = s.event()
    last_id = seen["id"]
    s.close()
    # Missed while away: two publications.
    hub.publish("private:feed", {"n": 2})
    hub.publish("private:feed", {"n": 3})
    wait_for(lambda: not [c for c in connections(hub) if c["user"] == "alice"], message="the first stream to end")
    s = uni_sse(hub, {"token": token}, last_event_id=last_id)
    connect = json.loads(s.event()["data"])["connect"]
    sub = connect["subs"]["private:feed"]
    assert sub["recovered"] is True and sub["offset"] == 3 and "publications" not in sub
    missed = [s.event() for _ in range(2)]
    assert [json.loads(e["data"])["pub"]["data"] for e in missed] == [{"n": 2}, {"n": 3}]
    assert [e["id"].split(":")[0] for e in missed] == ["2", "3"]
    hub.publish("private:feed", {"n": 4})
    assert json.loads(s.event()["data"])["pub"]["offset"] == 4  # then live, nothing twice
    s.close()


def test_uni_http_stream_subscribes_the_connect_requests_channels_as_json_lines(uhub):
    hub = uhub
    s = uni_http_stream(hub, {"subs": {"news:today": {}}})
    assert s.status == 200
    connect = s.line()["connect"]
    assert set(connect["subs"]) == {"news:today"}
    for n in range(3):
        hub.publish("news:today", {"n": n})
    pubs = [s.line() for _ in range(3)]
    assert [p["pub"]["data"]["n"] for p in pubs] == [0, 1, 2] and all(p["channel"] == "news:today" for p in pubs)
    [entry] = connections(hub)
    assert entry["transport"] == "uni_http_stream" and entry["user"] == ""
    assert hub.api_result("presence_stats", {"channel": "news:today"})["num_clients"] == 1
    s.close()
    wait_for(lambda: connections(hub) == [], message="the closed stream's session to go")
    assert hub.api_result("presence_stats", {"channel": "news:today"}).get("num_clients", 0) == 0


def test_refusals_end_the_stream_with_a_disconnect_and_bad_requests_get_400(uhub):
    hub = uhub
    # A channel anonymous clients may not subscribe to: the protocol's permission denied.
    s = uni_http_stream(hub, {"subs": {"private:feed": {}}})
    assert s.status == 200
    assert json.loads(s.rest()) == {"disconnect": {"code": 3507, "reason": "permission denied"}}
    # A forged token: invalid token; an expired one: expired.
    s = uni_http_stream(hub, {"token": conn_token("alice", secret="not-the-secret")})
    assert json.loads(s.rest()) == {"disconnect": {"code": 3500, "reason": "invalid token"}}
    s = uni_http_stream(hub, {"token": conn_token("alice", secret=hub.secret, exp=int(time.time()) - 60)})
    assert json.loads(s.rest()) == {"disconnect": {"code": 3005, "reason": "connection expired"}}
    # Not a connect request at all: refused before any stream starts, in the hub's error shape.
    for raw in (b"[1,2]", b"{not json"):
        s = RawStream(hub.port, "POST", "/connection/uni_http_stream", {"Content-Type": "application/json"}, raw)
        assert s.status == 400
        assert json.loads(s.rest()) == {"error": {"code": 400, "message": "the connect request must be a JSON object"}}
    r = hub.http.get(hub.url + "/connection/uni_sse", params={"cf_connect": "nope"}, timeout=WAIT)
    assert r.status_code == 400
    assert connections(hub) == [] and hub.alive()


def test_uni_websocket_connect_request_then_bare_pushes_and_pings(hub_factory):
    hub = hub_factory("--allow-anonymous", "--ping-interval", "1", config=CONFIG)

    async def main():
        async with websockets.connect(f"ws://127.0.0.1:{hub.port}/connection/uni_websocket") as ws:
            await ws.send(json.dumps({"subs": {"news:ws": {}}, "name": "pytest"}))
            connect = json.loads(await asyncio.wait_for(ws.recv(), WAIT))["connect"]
            assert connect["ping"] == 1 and set(connect["subs"]) == {"news:ws"}
            # Anything else the client says is ignored: it is not a command channel.
            await ws.send(json.dumps({"id": 2, "publish": {"channel": "news:ws", "data": {}}}))
            await asyncio.to_thread(hub.publish, "news:ws", {"hello": "ws"})
            got = []
            while len([m for m in got if m]) < 1:
                got.append(json.loads(await asyncio.wait_for(ws.recv(), WAIT)))
            pub = [m for m in got if m][0]
            assert pub["channel"] == "news:ws" and pub["pub"]["data"] == {"hello": "ws"} and pub["pub"]["offset"] == 1
            # Pings are `{}` and need no answer: two intervals later the connection still stands.
            pings = 0
            deadline = time.monotonic() + 3.5
            while time.monotonic() < deadline:
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                assert message == {}
                pings += 1
            assert pings >= 2
            assert hub.api_result("history", {"channel": "news:ws", "limit": 10})["offset"] == 1  # its publish did nothing
    arun(main())


def test_a_stream_that_is_not_read_is_cut_off_and_others_keep_their_stream(hub_factory):
    hub = hub_factory("--allow-anonymous", "--client-queue-max-bytes", str(256 * 1024), config=CONFIG)
    stalled = socket.create_connection(("127.0.0.1", hub.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = json.dumps({"subs": {"news:flood": {}}}).encode()
    stalled.sendall(b"POST /connection/uni_http_stream HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    reader = uni_sse(hub, {"subs": {"news:flood": {}}})
    reader.event()
    wait_for(lambda: len(connections(hub)) == 2, message="both streams connected")
    blob = "x" * 16384
    for n in range(200):
        hub.publish("news:flood", {"n": n, "blob": blob})
        json.loads(reader.event()["data"])  # the reading one keeps up
    wait_for(lambda: len(connections(hub)) == 1, message="the stalled stream to be cut off as slow")
    metrics = hub.get("/metrics").text
    assert any(line.startswith("hub_slow_disconnects_total") and not line.endswith(" 0") for line in metrics.splitlines()), metrics[:400]
    hub.publish("news:flood", {"n": "after"})
    assert json.loads(reader.event()["data"])["pub"]["data"]["n"] == "after"
    stalled.close()
    reader.close()
