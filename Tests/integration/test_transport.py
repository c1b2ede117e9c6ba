"""Transport hardening at the libwebsockets edge (docs/security.md, "Transport"): TLS with
HTTP/2, permessage-deflate both ways and compression bombs, a deadline for every stage of a
request, header and connection limits, request smuggling, `%00` paths and port sharing.

Abusive clients are raw sockets: they send exactly the bytes a slow or hostile client would."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import time
import zlib
from pathlib import Path

import httpx
import pytest

from hubtest import API_KEY, HUB_BINARY, Hub, WSClient, arun, conn_token, wait_for

# ---------------------------------------------------------------- raw HTTP helpers

def raw_exchange(port: int, data: bytes, wait: float = 3.0, source: str = "") -> tuple[bytes, bool]:
    """Send `data`, read until the server closes or `wait` passes. Returns (bytes, closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait,
                                 source_address=(source, 0) if source else None)
    try:
        if data:
            s.sendall(data)
        return read_until_close(s, wait)
    finally:
        s.close()


def read_until_close(s: socket.socket, wait: float) -> tuple[bytes, bool]:
    received = b""
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return received, False
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return received, False
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, True
        received += chunk


def statuses(raw: bytes) -> list[int]:
    """Status codes of every HTTP/1.1 response in `raw` (a smuggled request would add one)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def body_of(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# ---------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost, made here with the openssl CLI."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return str(cert), str(key)


def start_tls_hub(hub_factory, certificate, *args: str):
    """A hub serving TLS (the factory's health check speaks plain HTTP, so wait here)."""
    cert, key = certificate
    argv, env, port, log_path, workdir = hub_factory.command(["--tls-cert", cert, "--tls-key", key, *args])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    hub = Hub(proc, port, log_path, None, API_KEY, workdir)
    hub.url = f"https://127.0.0.1:{port}"
    hub.ws_url = f"wss://127.0.0.1:{port}/connection/websocket"
    hub_factory.hubs.append(hub)

    def healthy():
        assert proc.poll() is None, hub.log()
        try:
            return httpx.get(hub.url + "/health", verify=ssl.create_default_context(cafile=cert), timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    wait_for(healthy, timeout=10)
    return hub


def test_https_and_http2_serve_rest_over_tls(hub_factory, certificate):
    cert, _ = certificate
    hub = start_tls_hub(hub_factory, certificate, "--http2")
    with httpx.Client(verify=ssl.create_default_context(cafile=cert), http2=False, trust_env=False) as h1:
        r = h1.get(hub.url + "/health")
        assert r.status_code == 200 and r.http_version == "HTTP/1.1"
        r = h1.post(hub.url + "/api/publish", headers={"X-API-Key": API_KEY}, json={"channel": "news", "data": {}})
        assert r.status_code == 200, r.text
    with httpx.Client(verify=ssl.create_default_context(cafile=cert), http2=True, trust_env=False) as h2:
        r = h2.get(hub.url + "/health")
        assert r.status_code == 200 and r.http_version == "HTTP/2"
        # A response larger than one HTTP/2 frame and the initial flow-control window.
        spec = h2.get(hub.url + "/openapi.json")
        assert spec.status_code == 200 and spec.http_version == "HTTP/2"
        assert len(spec.content) > 16_384 and spec.json()["paths"]
        assert h2.head(hub.url + "/health").status_code == 200
        r = h2.get(hub.url + "/no/such/route")
        assert r.status_code == 404
        # POSTs with bodies, answered in the server API's shape, mixed with other requests on
        # the one connection (Authorization: lws 4.1 drops untokenised headers such as X-API-Key
        # over h2; see docs/security.md).
        for n in range(40):
            r = h2.post(hub.url + "/api/publish", headers={"Authorization": "apikey " + API_KEY},
                        json={"channel": "over-h2", "data": {"n": n}})
            assert r.status_code == 200 and r.http_version == "HTTP/2", r.text
            assert r.json()["result"]["offset"] == n + 1
            assert h2.get(hub.url + "/health").status_code == 200


def test_without_http2_an_h2_client_is_served_http_1_1(hub_factory, certificate):
    cert, _ = certificate
    hub = start_tls_hub(hub_factory, certificate)
    with httpx.Client(verify=ssl.create_default_context(cafile=cert), http2=True, trust_env=False) as client:
        r = client.post(hub.url + "/api/publish", headers={"X-API-Key": API_KEY}, json={"channel": "news", "data": {}})
        assert r.status_code == 200 and r.http_version == "HTTP/1.1", r.text


def test_wss_speaks_the_client_protocol(hub_factory, certificate):
    cert, _ = certificate
    hub = start_tls_hub(hub_factory, certificate)
    context = ssl.create_default_context(cafile=cert)

    async def scenario():
        async with await WSClient.open(hub.ws_url, ssl=context) as c:
            reply = await c.connect(token=conn_token("alice"))
            assert reply["client"]
            await c.subscribe("news")
            r = httpx.post(hub.url + "/api/publish", headers={"X-API-Key": API_KEY}, verify=ssl.create_default_context(cafile=cert),
                           json={"channel": "news", "data": {"n": 1}})
            assert r.status_code == 200
            pubs = await c.pubs(1, channel="news")
            assert pubs[0]["data"] == {"n": 1}
    arun(scenario())


def test_plain_http_to_the_tls_port_is_closed_and_the_hub_keeps_serving(hub_factory, certificate):
    cert, _ = certificate
    hub = start_tls_hub(hub_factory, certificate, "--handshake-timeout", "2", "--header-timeout", "2")
    started = time.monotonic()
    raw, closed = raw_exchange(hub.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", wait=6)
    assert closed and time.monotonic() - started < 5
    assert b"200 OK" not in raw and b"hub" not in raw
    # A TCP connection that never starts its TLS handshake is cut at the header timeout.
    started = time.monotonic()
    raw, closed = raw_exchange(hub.port, b"", wait=8)
    assert closed and raw == b"" and 1.5 <= time.monotonic() - started < 6
    assert httpx.get(hub.url + "/health", verify=ssl.create_default_context(cafile=cert)).status_code == 200


def test_tls_needs_both_files_and_readable_ones(hub_factory, certificate):
    cert, _ = certificate
    cp = hub_factory.run("--tls-cert", cert)
    assert cp.returncode != 0 and "tls_cert and tls_key go together" in cp.stderr
    cp = hub_factory.run("--tls-cert", cert, "--tls-key", "/nonexistent/key.pem")
    assert cp.returncode != 0 and "tls_key: cannot read /nonexistent/key.pem" in cp.stderr


# ---------------------------------------------------------------- permessage-deflate

class RawWebSocket:
    """A WebSocket client on a bare socket, so tests see the RSV1 (compressed) bit of every frame
    and can send frames no library would."""

    def __init__(self, port: int, deflate: bool):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else ""
        self.sock.sendall((f"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"{offer}\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, "closed during the handshake"
            head += chunk
        self.head, self.buffer = head.split(b"\r\n\r\n", 1)
        assert self.head.startswith(b"HTTP/1.1 101"), self.head
        self.deflate = b"permessage-deflate" in self.head.lower()
        self.inflater = zlib.decompressobj(wbits=-15)  # the hub may keep its context between messages

    def send(self, payload: bytes, compress: bool = False) -> None:
        self.sock.sendall(self.encode(payload, compress))

    @staticmethod
    def encode(payload: bytes, compress: bool = False) -> bytes:
        """One masked client text frame (RSV1 and deflated payload when compress)."""
        first = 0x81
        if compress:
            c = zlib.compressobj(wbits=-15)
            payload = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
            assert payload.endswith(b"\x00\x00\xff\xff")
            payload = payload[:-4]
            first |= 0x40  # RSV1: this message is compressed
        mask = os.urandom(4)
        n = len(payload)
        header = bytes([first]) + (bytes([0x80 | n]) if n < 126 else
                                   bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                   bytes([0x80 | 127]) + struct.pack(">Q", n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return header + mask + masked

    def _need(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def frame(self) -> tuple[int, bool, bytes]:
        """(opcode, compressed, payload as received) of the next frame."""
        b0, b1 = self._need(2)
        self.last_fin = bool(b0 & 0x80)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._need(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._need(8))[0]
        return b0 & 0x0F, bool(b0 & 0x40), self._need(n)

    def message(self) -> tuple[bool, dict]:
        """(was compressed, JSON) of the next text message, its fragments joined; server pings
        (`{}`) are answered."""
        while True:
            opcode, compressed, payload = self.frame()
            if opcode == 8:
                raise ConnectionError(f"close {struct.unpack('>H', payload[:2])[0]}")
            while not self.last_fin:
                _, _, more = self.frame()
                payload += more
            text = self.inflater.decompress(payload + b"\x00\x00\xff\xff") if compressed else payload
            for line in text.decode().splitlines():
                if line == "{}":
                    self.send(b"{}")
                    continue
                return compressed, json.loads(line)

    def close_code(self) -> int:
        while True:
            opcode, _, payload = self.frame()
            if opcode == 8:
                return struct.unpack(">H", payload[:2])[0]


def test_a_publisher_burst_past_a_turns_read_is_answered_and_delivered_whole_in_order(hub_factory):
    """A client writes 2,500 publish commands (~640 KB) in one go, more than a turn reads of one
    connection (256 KiB; the loop reads a saturated connection again before it writes): every
    command is answered, in order, and a subscriber gets every publication once, in order."""
    hub = hub_factory(config={"channel": {"allow_publish_for_client": True}})
    n = 2500
    pad = "x" * 200

    async def main():
        async with await hub.client("bob") as sub:
            await sub.subscribe("burst")
            publisher = RawWebSocket(hub.port, deflate=False)
            try:
                publisher.send(json.dumps({"id": 1, "connect": {"token": hub.token("alice")}}).encode())
                assert "connect" in json.loads(publisher.frame()[2]), "no connect reply"
                burst = b"".join(RawWebSocket.encode(json.dumps(
                    {"id": i + 2, "publish": {"channel": "burst", "data": {"i": i, "p": pad}}}).encode())
                    for i in range(n))
                assert len(burst) > 2 * 256 * 1024
                await asyncio.to_thread(publisher.sock.sendall, burst)

                def replies() -> list[dict]:
                    out: list[dict] = []
                    publisher.sock.settimeout(10)
                    while len(out) < n:
                        out += [json.loads(line) for line in publisher.frame()[2].split(b"\n") if line.strip()]
                    return out
                answered = await asyncio.to_thread(replies)
            finally:
                publisher.sock.close()
            assert [r.get("id") for r in answered] == list(range(2, n + 2))
            assert all(r.get("publish") == {} for r in answered), next(r for r in answered if r.get("publish") != {})
            got = [(await sub.push(kind="pub", channel="burst"))["pub"]["data"]["i"] for _ in range(n)]
            assert got == list(range(n))
    arun(main())


def publish(hub, channel: str, data) -> None:
    r = hub.http.post(hub.url + "/api/publish", headers={"X-API-Key": API_KEY},
                      json={"channel": channel, "data": data}, timeout=5)
    assert r.status_code == 200, r.text


@pytest.fixture
def deflate_hub(hub_factory):
    return hub_factory("--websocket-compression", "true")


def test_permessage_deflate_both_ways(deflate_hub):
    hub = deflate_hub
    ws = RawWebSocket(hub.port, deflate=True)
    assert ws.deflate, ws.head
    # The client sends compressed: the hub inflates the connect and subscribe commands.
    ws.send(json.dumps({"id": 1, "connect": {"token": conn_token("alice")}}).encode(), compress=True)
    _, reply = ws.message()
    assert reply["id"] == 1 and "connect" in reply, reply
    ws.send(json.dumps({"id": 2, "subscribe": {"channel": "news"}}).encode(), compress=True)
    _, reply = ws.message()
    assert reply["id"] == 2 and "subscribe" in reply, reply
    # The hub sends compressed: a repetitive publication arrives with RSV1 set, much smaller.
    text = "all work and no play " * 500
    publish(hub, "news", {"text": text})
    compressed, push = ws.message()
    assert compressed
    assert push["push"]["pub"]["data"] == {"text": text}
    ws.sock.close()


def test_a_client_without_the_extension_gets_plain_frames(deflate_hub):
    hub = deflate_hub
    ws = RawWebSocket(hub.port, deflate=False)
    assert not ws.deflate
    ws.send(json.dumps({"id": 1, "connect": {"token": conn_token("bob")}}).encode())
    compressed, reply = ws.message()
    assert not compressed and "connect" in reply
    ws.send(json.dumps({"id": 2, "subscribe": {"channel": "news"}}).encode())
    ws.message()
    publish(hub, "news", {"text": "x" * 5000})
    compressed, push = ws.message()
    assert not compressed and push["push"]["pub"]["data"] == {"text": "x" * 5000}
    ws.sock.close()


def test_websockets_library_negotiates_deflate_and_works(deflate_hub):
    hub = deflate_hub

    async def scenario():
        async with await WSClient.open(hub.ws_url, compression="deflate") as c:
            assert "permessage-deflate" in (c.ws.response.headers.get("Sec-WebSocket-Extensions") or "")
            await c.connect(token=conn_token("carol"))
            await c.subscribe("news")
            publish(hub, "news", {"big": "y" * 100_000})
            pubs = await c.pubs(1, channel="news")
            assert pubs[0]["data"] == {"big": "y" * 100_000}
    arun(scenario())


def test_websocket_compression_is_off_unless_asked_for(hub):
    ws = RawWebSocket(hub.port, deflate=True)
    assert not ws.deflate, ws.head
    ws.sock.close()


def test_compression_bomb_closes_with_1009_and_memory_stays_flat(deflate_hub):
    hub = deflate_hub
    before = rss_kib(hub.proc.pid)
    for _ in range(5):
        ws = RawWebSocket(hub.port, deflate=True)
        # 20 MB of zeros compress to ~20 KB: far past the 64 KiB max message once inflated.
        bomb = b'{"id":1,"connect":{"token":"' + conn_token("x").encode() + b'","data":"' + b"0" * 20_000_000 + b'"}}'
        started = time.monotonic()
        ws.send(bomb, compress=True)
        assert ws.close_code() == 1009  # never processed: no connect reply comes first
        assert time.monotonic() - started < 2  # closed at the limit, not after inflating it all
        ws.sock.close()
    after = rss_kib(hub.proc.pid)
    assert after - before < 30_000, f"RSS grew {after - before} KiB inflating bombs"
    assert hub.http.get(hub.url + "/health").status_code == 200


# ---------------------------------------------------------------- deadlines for every stage

@pytest.mark.parametrize("keep_alive", [False, True])
def test_slow_headers_are_cut_at_the_header_timeout(hub_factory, keep_alive):
    hub = hub_factory("--header-timeout", "2", "--idle-timeout", "30")
    s = socket.create_connection(("127.0.0.1", hub.port))
    if keep_alive:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
    started = time.monotonic()
    s.sendall(b"GET /health HTTP/1.1\r\n")
    # Slowloris: a header byte every half second never finishes the request.
    for byte in b"X-Slow: abcdefghijklmnop":
        try:
            s.sendall(bytes([byte]))
        except OSError:
            break
        time.sleep(0.5)
        if time.monotonic() - started > 6:
            break
    raw, closed = read_until_close(s, 5)
    s.close()
    assert closed and 1.5 <= time.monotonic() - started < 9
    # The first request of a connection too (docs/security.md, FirstRequestDeadline.swift).
    assert statuses(raw) == ([200, 408] if keep_alive else [408]), raw
    assert b"request head not received within 2 s" in raw


def test_the_first_request_deadline_spares_answered_and_upgraded_connections(hub_factory):
    # The edge's first-head timer fires on every plain connection at the header timeout; one
    # whose request was answered, or that became a WebSocket, goes on as before.
    hub = hub_factory("--header-timeout", "1", "--idle-timeout", "30")
    s = socket.create_connection(("127.0.0.1", hub.port), timeout=5)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    first = s.recv(65536)
    ws = RawWebSocket(hub.port, deflate=False)
    time.sleep(1.6)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    second = s.recv(65536)
    s.close()
    assert statuses(first) == [200] and statuses(second) == [200], (first, second)
    ws.send(json.dumps({"id": 1, "connect": {"token": conn_token("spared")}}).encode())
    _, reply = ws.message()
    assert reply["id"] == 1 and "connect" in reply, reply
    ws.sock.close()


def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(hub_factory):
    hub = hub_factory("--header-timeout", "2")
    started = time.monotonic()
    raw, closed = raw_exchange(hub.port, b"", wait=8)
    assert closed and raw == b"" and 1.5 <= time.monotonic() - started < 6


def test_idle_keep_alive_is_closed_quietly_at_the_idle_timeout(hub_factory):
    hub = hub_factory("--idle-timeout", "1")
    s = socket.create_connection(("127.0.0.1", hub.port))
    s.sendall(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode()
              + b"\r\nContent-Type: application/json\r\nContent-Length: 37\r\n\r\n"
              + b'{"channel":"news","data":{"n":"idle"}}'[:37])
    started = time.monotonic()
    raw, closed = read_until_close(s, 6)
    s.close()
    assert closed and time.monotonic() - started < 5
    assert len(statuses(raw)) == 1, raw  # the answer, and nothing after it


def test_a_trickled_body_gets_408_at_the_body_timeout(hub_factory):
    hub = hub_factory("--body-timeout", "2")
    s = socket.create_connection(("127.0.0.1", hub.port))
    started = time.monotonic()
    s.sendall(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode()
              + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    for _ in range(16):  # one byte every 0.4 s: never idle long, never done
        time.sleep(0.4)
        try:
            s.sendall(b" ")
        except OSError:
            break
    raw, closed = read_until_close(s, 4)
    s.close()
    assert closed and time.monotonic() - started < 10
    assert statuses(raw) == [408], raw
    assert body_of(raw)["error"]["code"] == 408


def test_a_stalled_body_is_cut_at_the_handshake_timeout(hub_factory):
    # No byte for handshake_timeout between two chunks of a body: closed, long before body_timeout.
    hub = hub_factory("--body-timeout", "60", "--handshake-timeout", "2")
    started = time.monotonic()
    raw, closed = raw_exchange(hub.port, b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", wait=8)
    assert closed and 1.5 <= time.monotonic() - started < 6


# ---------------------------------------------------------------- limits

def test_a_head_over_max_header_size_is_refused(hub_factory):
    hub = hub_factory("--max-header-size", "2048")
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n"
    raw, closed = raw_exchange(hub.port, big)
    assert closed and statuses(raw) == [], raw  # the first request: lws closes without a word
    # The same on a keep-alive connection, after a first answered request.
    s = socket.create_connection(("127.0.0.1", hub.port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    s.sendall(big)
    raw, closed = read_until_close(s, 3)
    s.close()
    assert closed and statuses(raw) == [200, 431], raw
    raw, _ = raw_exchange(hub.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1000
                          + b"\r\nConnection: close\r\n\r\n")
    assert statuses(raw) == [200], raw


def test_transport_settings_come_from_the_environment_and_the_config_file(hub_factory):
    hub = hub_factory(env={"HUB_MAX_CONNECTIONS_PER_IP": "1"}, config={"header_timeout": 30, "idle_timeout": 30})
    held = socket.create_connection(("127.0.0.1", hub.port))
    time.sleep(0.3)
    raw, closed = raw_exchange(hub.port, b"")
    assert closed and statuses(raw) == [503]
    held.close()
    cp = hub_factory.run(config={"max_header_size": 100})
    assert cp.returncode != 0 and "max_header_size must be 1024-65536 bytes" in cp.stderr
    cp = hub_factory.run(env={"HUB_BODY_TIMEOUT": "0"})
    assert cp.returncode != 0 and "body_timeout must be 1-3600 seconds" in cp.stderr
    cp = hub_factory.run("--http2")
    assert cp.returncode != 0 and "http2 needs tls_cert and tls_key" in cp.stderr


def test_connections_per_ip_and_in_total_are_limited(hub_factory):
    hub = hub_factory("--max-connections-per-ip", "2", "--max-connections", "3", "--header-timeout", "30")
    held = [socket.create_connection(("127.0.0.1", hub.port), source_address=("127.0.0.1", 0)) for _ in range(2)]
    time.sleep(0.3)
    raw, closed = raw_exchange(hub.port, b"", source="127.0.0.1")
    assert closed and statuses(raw) == [503] and body_of(raw) == {"error": "too many connections"}
    # Another address still gets in, up to the total.
    held.append(socket.create_connection(("127.0.0.1", hub.port), source_address=("127.0.0.2", 0)))
    time.sleep(0.3)
    raw, closed = raw_exchange(hub.port, b"", source="127.0.0.3")
    assert closed and statuses(raw) == [503]
    # Closing one frees its place.
    held.pop(0).close()

    def admitted():
        raw, _ = raw_exchange(hub.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                              source="127.0.0.1", wait=2)
        return statuses(raw) == [200]
    wait_for(admitted, timeout=5)
    for s in held:
        s.close()


# ---------------------------------------------------------------- request smuggling

SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("framing", [
    b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n",
    b"Content-Length: %d\r\nContent-Length: 0\r\n",
    b"Content-Length: 0\r\nContent-Length: %d\r\n",
    b"Content-Length: +%d\r\n",
    b"Content-Length: %d, %d\r\n",
    b"Content-Length: 0x%x\r\n",
])
def test_conflicting_body_framing_is_refused_and_nothing_is_smuggled(hub, framing):
    body = b"0\r\n\r\n" + SMUGGLED
    headers = framing.replace(b"%d, %d", b"%d, %d" % (len(body), len(body))) if b"%d, %d" in framing else framing % len(body)
    request = b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode() + b"\r\n" + headers + b"\r\n" + body
    raw, closed = raw_exchange(hub.port, request)
    assert closed, raw
    assert statuses(raw) == [400], raw  # one answer; the smuggled GET never ran
    assert "Content-Length" in body_of(raw)["error"]["message"]


@pytest.mark.parametrize("coding", [b"chunked", b"xchunked", b"gzip, chunked", b"identity"])
def test_transfer_encoding_is_411_and_closes(hub, coding):
    body = b"0\r\n\r\n" + SMUGGLED
    request = b"POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding + b"\r\n\r\n" + body
    raw, closed = raw_exchange(hub.port, request)
    assert closed and statuses(raw) == [411], raw
    assert "send Content-Length" in body_of(raw)["error"]["message"]


def test_a_well_framed_pipeline_still_works(hub):
    one = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    raw, _ = raw_exchange(hub.port, one + one + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(raw) == [200, 200, 200]


# ---------------------------------------------------------------- %00 in the path

@pytest.mark.parametrize("path", [b"/health%00", b"/api%00/publish", b"/a%00b", b"/ws/al%00ice"])
def test_a_nul_in_the_path_is_never_served(hub, path):
    raw, closed = raw_exchange(hub.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert closed and statuses(raw) == [], raw  # the first request: lws closes without a word
    assert hub.http.get(hub.url + "/health").status_code == 200


def test_a_request_lws_answers_itself_gets_no_second_answer(hub):
    s = socket.create_connection(("127.0.0.1", hub.port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    s.sendall(b"GET /he%zzalth HTTP/1.1\r\nHost: x\r\n\r\n")  # a bad escape: lws says 403
    raw, closed = read_until_close(s, 3)
    s.close()
    assert closed and statuses(raw) == [200, 403], raw


def test_a_nul_in_a_keep_alive_request_gets_400_after_the_first_answer(hub):
    s = socket.create_connection(("127.0.0.1", hub.port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    s.sendall(b"GET /he%00alth HTTP/1.1\r\nHost: x\r\n\r\n")
    raw, closed = read_until_close(s, 3)
    s.close()
    assert closed and statuses(raw) == [200, 400], raw
    assert b"%00" in raw.split(b"HTTP/1.1 400")[1]


# ---------------------------------------------------------------- one port, one hub

def test_a_second_hub_on_the_same_port_fails_to_start(hub):
    cp = subprocess.run([HUB_BINARY, "--host", "127.0.0.1",
                         "--port", str(hub.port), "--data-dir", str(hub.workdir / "second")],
                        capture_output=True, text=True, timeout=10,
                        env={k: v for k, v in os.environ.items() if not k.startswith("HUB_")})
    assert cp.returncode != 0
    assert f"could not listen on 127.0.0.1:{hub.port}" in cp.stderr and "--reuse-port" in cp.stderr, cp.stderr
    assert hub.http.get(hub.url + "/health").status_code == 200


def test_reuse_port_lets_a_second_hub_share_the_port_on_purpose(hub_factory):
    first = hub_factory()
    second = hub_factory("--reuse-port", port=first.port)
    # The health check may have reached the first hub: wait until the second one serves too.
    wait_for(lambda: "hub serving" in second.log(), timeout=10)
    assert second.alive() and first.alive()
    assert first.http.get(first.url + "/health").status_code == 200


# ---------------------------------------------------------------- keep-alive memory

def test_keep_alive_requests_do_not_retain_their_responses(hub):
    """lws frees the per-session slot between keep-alive requests: each answered exchange (with
    its ~80 KB response) must be let go then, not kept for the life of the process."""
    session = hub.http
    for _ in range(50):
        session.get(hub.url + "/openapi.json")
    before = rss_kib(hub.proc.pid)
    for _ in range(600):
        assert session.get(hub.url + "/openapi.json").status_code == 200
    grown = rss_kib(hub.proc.pid) - before
    assert grown < 10_000, f"RSS grew {grown} KiB over 600 keep-alive responses of ~80 KB"
