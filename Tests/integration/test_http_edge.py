"""HTTP request bodies at the libwebsockets edge: bodies on any method, chunked bodies, bodies
over the limit, and keep-alive connections that carry all of them.

The multipart streaming path (bodies of `.multipart` routes fed to the parser as they arrive)
is not exercised here: no route the hub serves yet is declared `.multipart` (the meetings
uploads will be the first). Its parts are unit-tested in Tests/RESTCompatTests
(MultipartTests, UploadRouteTests).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import requests


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks of 1/100 s


def test_bodies_on_every_method_over_keep_alive_leave_the_hub_responsive_and_idle(hub):
    """Found by the fuzzer: a body on GET/OPTIONS answered before it was read left a service
    thread re-announcing the body's completion forever (100% CPU, its connections hung)."""
    failures = []

    def client(path: str) -> None:
        session = requests.Session()
        session.trust_env = False
        for _ in range(15):
            for method in ("QUERY", "PUT", "PATCH", "OPTIONS", "GET", "HEAD", "DELETE", "POST"):
                try:
                    session.request(method, hub.url + path, json={"x": 1}, headers={"X-API-Key": hub.api_key}, timeout=3)
                except requests.exceptions.ReadTimeout:
                    failures.append(f"{method} {path} timed out")
                    return
                except requests.exceptions.ConnectionError:
                    # lws closes a connection whose method it does not know; a new one is fine.
                    session = requests.Session()
                    session.trust_env = False

    threads = [threading.Thread(target=client, args=(p,)) for p in ("/api/channels", "/api/broadcast", "/health")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert hub.get("/health", timeout=3).status_code == 200
    before = cpu_seconds(hub.proc.pid)
    time.sleep(1.0)
    assert cpu_seconds(hub.proc.pid) - before < 0.3, "hub keeps burning CPU while idle"


def test_chunked_request_body_is_411_not_a_hang(hub):
    def chunks():
        yield b'{"channel":"news",'
        yield b'"data":{"n":1}}'

    r = hub.http.post(hub.url + "/api/publish", data=chunks(), headers={"X-API-Key": hub.api_key}, timeout=5)
    assert r.status_code == 411
    assert r.json() == {"error": {"code": 411, "message": "chunked request bodies are not supported: send Content-Length"}}
    # Nothing was published.
    assert hub.api_result("history", {"channel": "news", "limit": 10}).get("publications", []) == []


def test_declared_body_over_the_limit_is_413_before_reading_it(hub_factory):
    hub = hub_factory("--max-body-size", "4096")
    with socket.create_connection(("127.0.0.1", hub.port), timeout=5) as s:
        s.sendall(f"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {hub.api_key}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n".encode())
        answer = b""
        while True:  # the hub answers and closes without waiting for 100 MB
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"request body larger than 4096 bytes" in body
    assert hub.get("/health").status_code == 200


def test_multipart_body_to_a_json_route_is_buffered_and_refused_as_not_json(hub):
    """Only routes declared `.multipart` stream uploads; elsewhere a form is just a bad body."""
    r = hub.http.post(hub.url + "/api/publish", files={"file": ("a.bin", b"\x00" * 1000)},
                      headers={"X-API-Key": hub.api_key}, timeout=5)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == 107


def test_upload_directory_is_prepared_and_crash_leftovers_removed(hub_factory, tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "upload-leftover-from-a-crash").write_bytes(b"x" * 100)
    (uploads / "notes.txt").write_text("not ours")
    hub = hub_factory("--upload-dir", str(uploads), "--max-upload-size", "2048", "--max-upload-file-size", "1024")
    assert hub.get("/health").status_code == 200
    assert sorted(p.name for p in uploads.iterdir()) == ["notes.txt"]
    fresh = tmp_path / "new-uploads"
    hub_factory("--upload-dir", str(fresh))
    assert fresh.is_dir() and (fresh.stat().st_mode & 0o777) == 0o700


def test_bad_upload_limits_stop_the_hub_at_start(hub_factory):
    cp = hub_factory.run("--max-upload-size", "10")
    assert cp.returncode == 64
    assert "max_upload_size must be at least 1024" in cp.stderr + cp.stdout


def test_post_without_content_length_is_answered_and_the_connection_closed(hub):
    """No length means no body; lws would otherwise wait for one and swallow the next request."""
    with socket.create_connection(("127.0.0.1", hub.port), timeout=5) as s:
        s.sendall(f"POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: {hub.api_key}\r\n\r\n".encode())
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"result"' in answer
