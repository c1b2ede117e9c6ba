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
from test_gateways import redis_url  # noqa: F401 (fixture)

CONFIG = {"namespaces": [
    {"name": "news", "history_size": 100, "history_ttl": 300, "recovery": True, "presence": True,
     "allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True,
     "allow_publish_for_subscriber": True, "allow_presence_for_subscriber": True},
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

    def body(self, timeout: float = WAIT) -> bytes:
        """A plain answer's body, by its Content-Length (the connection stays open: keep-alive)."""
        deadline = time.monotonic() + timeout
        length = int(self.headers["content-length"])
        while len(self.buf) < length:
            self._fill(deadline)
        out, self.buf = self.buf[:length], self.buf[length:]
        return out

    def rest(self, timeout: float = WAIT) -> bytes:
        """Everything until the server ends the response: a plain answer's body by its
        Content-Length (keep-alive leaves the connection open), a stream's until it closes."""
        if "content-length" in self.headers:
            return self.body(timeout)
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


# --------------------------------------------------------------------------------------------
# bidirectional emulation: a stream down, POST /emulation up (centrifuge-js's SSE and
# HTTP-streaming fallbacks), written here against the documented wire format


def emulate(hub, session: str, node: str, *commands: dict, raw: Optional[bytes] = None) -> int:
    body = raw if raw is not None else json.dumps(
        {"session": session, "node": node, "data": "\n".join(json.dumps(c) for c in commands)}).encode()
    return hub.http.post(hub.url + "/emulation", data=body, headers={"Content-Type": "application/json"}, timeout=WAIT).status_code


def test_sse_emulation_connect_subscribe_publish_and_pongs(hub_factory):
    hub = hub_factory("--ping-interval", "1", "--pong-timeout", "1", config=CONFIG)
    connect = {"id": 1, "connect": {"token": conn_token("alice", secret=hub.secret), "name": "emulated"}}
    s = RawStream(hub.port, "GET", "/connection/sse?cf_connect=" + urllib.parse.quote(json.dumps(connect)), {"Accept": "text/event-stream"})
    assert s.status == 200 and s.headers["content-type"].startswith("text/event-stream")
    reply = json.loads(s.event()["data"])
    assert reply["id"] == 1
    result = reply["connect"]
    session, node = result["session"], result["node"]
    assert result["pong"] is True and len(session) > 40

    def next_message():
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            message = json.loads(s.event()["data"])
            if message == {}:
                assert emulate(hub, session, node, {}) == 204  # the pong goes up like any command
                continue
            return message
        raise AssertionError("only pings within the deadline")

    assert emulate(hub, session, node, {"id": 2, "subscribe": {"channel": "news:emu"}}) == 204
    assert next_message()["id"] == 2
    assert emulate(hub, session, node, {"id": 3, "publish": {"channel": "news:emu", "data": {"from": "sse"}}},
                   {"id": 4, "presence_stats": {"channel": "news:emu"}}) == 204
    got = [next_message() for _ in range(3)]
    assert {"id": 3, "publish": {}} in got
    assert {"id": 4, "presence_stats": {"num_clients": 1, "num_users": 1}} in got
    [push] = [m for m in got if "push" in m]
    assert push["push"]["channel"] == "news:emu" and push["push"]["pub"]["data"] == {"from": "sse"}
    # Answering pings through /emulation keeps the session past several ping + pong timeouts.
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        try:
            message = json.loads(s.event(timeout=deadline - time.monotonic())["data"])
        except TimeoutError:
            break
        if message == {}:
            emulate(hub, session, node, {})
    assert [c["transport"] for c in connections(hub)] == ["sse"]
    s.close()


def test_http_stream_emulation_in_json_and_protobuf(hub_factory):
    from centrifuge.protocol import client_pb2 as pb
    from test_protobuf import delimited, replies

    hub = hub_factory(config=CONFIG)
    token = conn_token("alice", secret=hub.secret)
    s = RawStream(hub.port, "POST", "/connection/http_stream", {"Content-Type": "application/json"},
                  json.dumps({"id": 1, "connect": {"token": token}}).encode())
    result = s.line()["connect"]
    assert emulate(hub, result["session"], result["node"], {"id": 2, "rpc": {"method": "no-such-method"}}) == 204
    assert s.line() == {"id": 2, "error": {"code": 104, "message": "unknown rpc method no-such-method"}}
    s.close()

    command = pb.Command(id=1)
    command.connect.token = token
    s = RawStream(hub.port, "POST", "/connection/http_stream", {"Content-Type": "application/octet-stream"},
                  delimited(command))
    assert s.status == 200 and s.headers["content-type"] == "application/octet-stream"
    deadline = time.monotonic() + WAIT
    while True:
        try:
            [connected] = replies(s.buf)
            break
        except (IndexError, ValueError, Exception):
            s._fill(deadline)
    s.buf = b""
    assert connected.id == 1 and connected.connect.session and connected.connect.node
    subscribe = pb.Command(id=2)
    subscribe.subscribe.channel = "news:proto"
    up = pb.EmulationRequest(node=connected.connect.node, session=connected.connect.session, data=delimited(subscribe))
    r = hub.http.post(hub.url + "/emulation", data=up.SerializeToString(), headers={"Content-Type": "application/octet-stream"}, timeout=WAIT)
    assert r.status_code == 204
    hub.publish("news:proto", {"via": "protobuf"})
    got = []
    deadline = time.monotonic() + WAIT
    while len(got) < 2:
        s._fill(deadline)
        try:
            got = replies(s.buf)
        except Exception:
            continue
    assert got[0].id == 2 and got[1].push.channel == "news:proto"
    assert json.loads(got[1].push.pub.data) == {"via": "protobuf"}
    s.close()


def test_emulation_refuses_what_is_not_a_session(hub_factory):
    hub = hub_factory(config=CONFIG)
    s = RawStream(hub.port, "POST", "/connection/http_stream", {"Content-Type": "application/json"},
                  json.dumps({"id": 1, "connect": {"token": conn_token("alice", secret=hub.secret)}}).encode())
    result = s.line()["connect"]
    client, _, secret = result["session"].partition(".")
    forged = client + "." + ("a" * len(secret))
    assert emulate(hub, forged, result["node"], {"id": 2, "subscribe": {"channel": "news:x"}}) == 404
    assert emulate(hub, "nobody.nothing", result["node"], {"id": 2}) == 404
    for raw in (b"not json", b"[]", json.dumps({"session": result["session"]}).encode(), b""):
        assert emulate(hub, "", "", raw=raw) == 400
    big = "x" * 70_000
    assert emulate(hub, result["session"], result["node"], {"id": 3, "publish": {"channel": "news:x", "data": big}}) == 413
    r = hub.http.post(hub.url + "/connection/http_stream", data=b"", timeout=WAIT)
    assert r.status_code == 400 and r.json() == {"error": {"code": 400, "message": "the connect command is required"}}
    # Nothing of the above reached the session: its next reply is to the next real command.
    assert emulate(hub, result["session"], result["node"], {"id": 9, "presence_stats": {"channel": "news:x"}}) == 204
    assert s.line() == {"id": 9, "error": {"code": 103, "message": "permission denied"}}  # not subscribed
    s.close()


def test_emulation_requests_reach_the_session_through_another_node(hub_factory, redis_url):
    args = ("--engine", "redis", "--redis-url", f"redis://127.0.0.1:{redis_url}/0")
    a = hub_factory(*args, config=CONFIG)
    b = hub_factory(*args, config=CONFIG)
    s = RawStream(a.port, "POST", "/connection/http_stream", {"Content-Type": "application/json"},
                  json.dumps({"id": 1, "connect": {"token": conn_token("alice", secret=a.secret)}}).encode())
    result = s.line()["connect"]
    # The balancer sent the command to node b: it goes to a through the broker.
    assert emulate(b, result["session"], result["node"], {"id": 2, "subscribe": {"channel": "news:far"}}) == 204
    assert s.line()["id"] == 2
    b.publish("news:far", {"n": 1})
    assert s.line()["push"]["pub"]["data"] == {"n": 1}
    s.close()
