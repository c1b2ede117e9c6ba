"""Seed 004, the meetings pipeline: uploads, processing over channels, artifacts, Telegram sign-in.

Real hub, real reference worker (clients/meetings-worker, ffprobe + pocketsphinx), real WAV
recordings made with espeak-ng, Telegram vectors generated here with a test bot token and an RSA
key made by openssl.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from hubtest import API_KEY, REPO_ROOT, WAIT, arun, wait_for

WORKER = REPO_ROOT / "clients" / "python" / "src" / "hub_clients" / "meetings_worker.py"
BOT_TOKEN = "123456:TEST-bot-token-for-integration"
ADMIN_TG_ID = 4242


# --------------------------------------------------------------------------------------------
# helpers


def envelope(r, status: int, code: str) -> Dict[str, Any]:
    """Asserts seed 004's error envelope {"error": {code, message, details}}."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]


def bearer(hub, sub: str, **claims: Any) -> Dict[str, str]:
    return {"Authorization": f"Bearer {hub.token(sub, **claims)}"}


def upload(hub, user: str, data: bytes, filename: str = "meeting.wav", **fields: Any):
    """POST /v1/files as a real multipart/form-data upload: the recording in part `file`,
    other form fields (title, metadata) beside it."""
    return hub.http.post(hub.url + "/v1/files", headers=bearer(hub, user), data=fields,
                         files={"file": (filename, data, "application/octet-stream")}, timeout=WAIT * 2)


def worker_call(hub, method: str, path: str, **kwargs: Any):
    kwargs.setdefault("timeout", WAIT)
    headers = kwargs.pop("headers", {})
    headers["X-API-Key"] = API_KEY
    return hub.http.request(method, hub.url + path, headers=headers, **kwargs)


def meetings_dir(hub) -> Path:
    return hub.workdir / "data" / "meetings"


def files_under(path: Path):
    return sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> bytes:
    """About two seconds of synthetic speech as a WAV file (espeak-ng)."""
    path = tmp_path_factory.mktemp("speech") / "meeting.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "the budget meeting starts now"], check=True,
                   capture_output=True, timeout=20)
    return path.read_bytes()


@pytest.fixture(scope="module")
def passport_key(tmp_path_factory):
    """The bot's RSA key pair for Telegram Passport (private PEM path, public PEM path)."""
    d = tmp_path_factory.mktemp("passport")
    private, public = d / "bot.pem", d / "bot.pub"
    subprocess.run(["openssl", "genrsa", "-out", str(private), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(private), "-pubout", "-out", str(public)], check=True,
                   capture_output=True)
    return private, public


@pytest.fixture
def mhub(hub_factory, passport_key):
    """A hub with Telegram configured (bot token, Passport key, one admin)."""
    return hub_factory("--telegram-passport-key", str(passport_key[0]),
                       "--meetings-admin-telegram-ids", str(ADMIN_TG_ID),
                       env={"HUB_TELEGRAM_BOT_TOKEN": BOT_TOKEN})


class Worker:
    def __init__(self, hub, name: str, log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["HUB_API_KEY"] = API_KEY
        self.proc = subprocess.Popen([sys.executable, str(WORKER), "--hub", hub.url, "--name", name, "--poll", "1"],
                                     env=env, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def start_worker(request):
    workers = []

    def start(hub, name="worker-1"):
        log = REPO_ROOT / "test-artifacts" / f"{request.node.name}.{name}.log"
        log.parent.mkdir(exist_ok=True)
        w = Worker(hub, name, log)
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()


def status_of(hub, user: str, file_id: str) -> Dict[str, Any]:
    r = hub.get(f"/v1/files/{file_id}/status", headers=bearer(hub, user))
    assert r.status_code == 200, r.text
    return r.json()


# --------------------------------------------------------------------------------------------
# the whole pipeline


def test_upload_is_processed_by_the_worker_and_the_transcript_downloads(hub, speech, start_worker):
    r = upload(hub, "alice", speech, title="Budget review")
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {"file_id", "meeting_id", "status"} and created["status"] == "pending"
    file_id, meeting_id = created["file_id"], created["meeting_id"]
    meeting = hub.get(f"/v1/meetings/{meeting_id}", headers=bearer(hub, "alice")).json()
    assert meeting["title"] == "Budget review" and meeting["content_type"] == "audio/wav"
    assert meeting["size"] == len(speech) and meeting["artifacts"] == []

    async def watch():
        # The dashboard's view: the meeting's channel, subscribed before the worker starts.
        c = await hub.client(user="alice")
        await c.subscribe(meeting["channel"])
        worker = start_worker(hub)
        events = []
        deadline = time.monotonic() + 30
        while not events or events[-1].get("status") not in ("completed", "failed"):
            assert time.monotonic() < deadline, f"no completion; events {events}"
            pub = (await c.push(timeout=30, kind="pub", channel=meeting["channel"]))["pub"]
            events.append(pub["data"])
        await c.close()
        return worker, events

    worker, events = arun(watch())
    assert events[-1]["status"] == "completed", (events, worker.log_path.read_text())
    progress = [e["progress"] for e in events if e["type"] == "progress"]
    assert progress and progress == sorted(progress) and 0 < progress[0] < 100
    assert {"artifact"} <= {e["type"] for e in events}
    assert status_of(hub, "alice", file_id) == {
        "file_id": file_id, "meeting_id": meeting_id, "status": "completed", "progress": 100, "stage": "done"}

    listing = hub.get(f"/v1/meetings/{meeting_id}/artifacts", headers=bearer(hub, "alice")).json()
    by_name = {a["name"]: a for a in listing["artifacts"]}
    assert set(by_name) == {"transcript.txt", "summary.json"}
    transcript = hub.get(by_name["transcript.txt"]["download_url"])
    assert transcript.status_code == 200
    assert transcript.headers["content-type"].startswith("text/plain")
    assert int(transcript.headers["content-length"]) == len(transcript.content) == by_name["transcript.txt"]["size"]
    assert len(transcript.text.split()) >= 2, transcript.text  # pocketsphinx heard words

    summary = hub.get(by_name["summary.json"]["download_url"]).json()
    with wave.open(io.BytesIO(speech)) as w:
        seconds = w.getnframes() / w.getframerate()
    assert summary["duration"] == pytest.approx(seconds, abs=0.05)
    assert summary["format"] == "wav" and summary["word_count"] == len(summary["words"]) >= 2
    details = hub.get(f"/v1/meetings/{meeting_id}", headers=bearer(hub, "alice")).json()
    assert details["status"] == "completed" and details["duration"] == pytest.approx(summary["duration"])
    assert {a["name"] for a in details["artifacts"]} == {"transcript.txt", "summary.json"}

    # Range requests: a slice, a suffix, and one past the end.
    url = by_name["transcript.txt"]["download_url"]
    part = hub.get(url, headers={"Range": "bytes=0-3"})
    assert part.status_code == 206 and part.content == transcript.content[:4]
    assert part.headers["content-range"] == f"bytes 0-3/{len(transcript.content)}"
    tail = hub.get(url, headers={"Range": "bytes=-2"})
    assert tail.status_code == 206 and tail.content == transcript.content[-2:]
    envelope(hub.get(url, headers={"Range": f"bytes={len(transcript.content) + 10}-"}), 416, "BAD_REQUEST")

    system = hub.get("/v1/system/status", headers=bearer(hub, "alice")).json()
    assert system["status"] == "healthy" and system["workers_online"] == 1
    assert system["queue"] == {"pending": 0, "processing": 0}


def test_a_recording_the_worker_cannot_read_marks_the_file_failed(hub, start_worker):
    # WAV magic bytes, garbage after: accepted by type, refused by ffprobe.
    bogus = b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(2000)
    created = upload(hub, "alice", bogus).json()
    start_worker(hub)
    final = wait_for(lambda: (s := status_of(hub, "alice", created["file_id"]))["status"] in ("failed", "completed") and s,
                     timeout=20, message="the file to fail")
    assert final["status"] == "failed" and "ffprobe" in final["error"], final


# --------------------------------------------------------------------------------------------
# input checks


def test_uploads_are_typed_by_content_and_bounded_in_size(hub_factory, speech):
    hub = hub_factory("--meetings-max-upload-bytes", str(len(speech) - 1))
    envelope(upload(hub, "alice", b"just some text, not audio" * 10, filename="meeting.wav"), 415, "INVALID_FILE_TYPE")
    envelope(upload(hub, "alice", b"%PDF-1.7\n" + b"0" * 100), 415, "INVALID_FILE_TYPE")
    # Over the limit: refused while the part streams in, the partial file removed.
    err = envelope(upload(hub, "alice", speech), 413, "FILE_TOO_LARGE")
    assert err["details"]["max_bytes"] == len(speech) - 1
    envelope(upload(hub, "alice", speech[:200], metadata="[1,2]"), 400, "BAD_REQUEST")
    missing = hub.http.post(hub.url + "/v1/files", headers=bearer(hub, "alice"), data={"title": "no file"},
                            files={"other": ("x.wav", speech[:200])}, timeout=WAIT)
    assert envelope(missing, 400, "BAD_REQUEST")["details"]["field"] == "file"
    # Not multipart at all.
    envelope(hub.http.post(hub.url + "/v1/files", headers={**bearer(hub, "alice"), "Content-Type": "audio/wav"},
                           data=speech[:200], timeout=WAIT), 400, "BAD_REQUEST")
    # None of it left a meeting or a byte behind.
    assert hub.get("/v1/meetings", headers=bearer(hub, "alice")).json()["total"] == 0
    assert files_under(meetings_dir(hub)) == []
    assert files_under(hub.workdir / "data" / "uploads") == []
    envelope(hub.http.post(hub.url + "/v1/files", files={"file": ("m.wav", speech)}, timeout=WAIT), 401, "UNAUTHORIZED")
    # The hub-wide multipart body limit answers in the same envelope.
    small = hub_factory("--max-upload-size", "4096")
    envelope(upload(small, "alice", speech), 413, "FILE_TOO_LARGE")
    assert small.get("/v1/meetings", headers=bearer(small, "alice")).json()["total"] == 0
    assert files_under(small.workdir / "data" / "uploads") == []


def test_an_interrupted_upload_leaves_no_record_and_no_file(hub, speech):
    uploads = hub.workdir / "data" / "uploads"
    head = (b"--cut\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.wav\"\r\n"
            b"Content-Type: audio/wav\r\n\r\n")
    total = len(head) + len(speech) * 4 + len(b"\r\n--cut--\r\n")
    with socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT) as s:
        s.sendall((f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {hub.token('alice')}\r\n"
                   f"Content-Type: multipart/form-data; boundary=cut\r\nContent-Length: {total}\r\n\r\n").encode())
        s.sendall(head + speech)  # a quarter of the file, then the client goes away
        # The part is being streamed to disk while the client is still there.
        wait_for(lambda: any(p.stat().st_size > 0 for p in uploads.glob("upload-*")), message="the part on disk")
    wait_for(lambda: files_under(uploads) == [], message="the partial upload to be removed")
    assert hub.alive()
    assert hub.get("/v1/meetings", headers=bearer(hub, "alice")).json()["total"] == 0
    assert files_under(meetings_dir(hub)) == []
    assert upload(hub, "alice", speech).status_code == 201  # and the hub still takes uploads


def test_uploads_status_checks_and_downloads_are_rate_limited_per_user(hub_factory, speech):
    hub = hub_factory(config={"rate_limits": {"meetings-uploads": ["2/hour"], "meetings-status": ["2/minute"],
                                              "meetings-downloads": ["1/hour"]}})
    created = [upload(hub, "alice", speech[:400]) for _ in range(2)]
    assert [r.status_code for r in created] == [201, 201]
    err = envelope(upload(hub, "alice", speech[:400]), 429, "RATE_LIMITED")
    assert err["details"]["retry_after"] > 0
    # Over the limit, the next upload is refused before its body is read: the answer comes
    # with only the headers sent, and nothing is written (the 400 MB never need to arrive).
    with socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT) as raw:
        raw.sendall((f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer(hub, 'alice')['Authorization']}\r\n"
                     "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 400000000\r\n\r\n").encode())
        head = raw.recv(65536).decode(errors="replace")
    assert head.startswith("HTTP/1.1 429"), head[:200]
    assert '"RATE_LIMITED"' in head and "retry-after:" in head.lower()
    assert files_under(Path(hub.workdir) / "data" / "uploads") == []
    assert upload(hub, "bob", speech[:400]).status_code == 201

    fid = created[0].json()["file_id"]
    assert [hub.get(f"/v1/files/{fid}/status", headers=bearer(hub, "alice")).status_code for _ in range(2)] == [200, 200]
    limited = hub.get(f"/v1/files/{fid}/status", headers=bearer(hub, "alice"))
    envelope(limited, 429, "RATE_LIMITED")
    assert int(limited.headers["retry-after"]) > 0

    assert claim(hub, fid).status_code == 200
    assert worker_call(hub, "PUT", f"/v1/worker/tasks/{fid}/artifacts/a.txt", params={"worker": "w1"},
                       data=b"a").status_code == 200
    mid = created[0].json()["meeting_id"]
    url = hub.get(f"/v1/meetings/{mid}/artifacts", headers=bearer(hub, "alice")).json()["artifacts"][0]["download_url"]
    assert hub.get(url).status_code == 200
    envelope(hub.get(url), 429, "RATE_LIMITED")  # counted per user, whoever holds the link


# --------------------------------------------------------------------------------------------
# listing, ownership, deletion


def claim(hub, file_id: str, worker: str = "w1"):
    return worker_call(hub, "POST", f"/v1/worker/tasks/{file_id}/claim", json={"worker": worker})


def test_meetings_paginate_newest_first_and_filter_by_status(hub, speech):
    ids = [upload(hub, "alice", speech[:400], title=f"m{i}").json() for i in range(5)]
    # m0 completes, m1 fails, the rest stay pending.
    assert claim(hub, ids[0]["file_id"]).status_code == 200
    assert worker_call(hub, "POST", f"/v1/worker/tasks/{ids[0]['file_id']}/complete", json={"worker": "w1"}).status_code == 200
    assert claim(hub, ids[1]["file_id"]).status_code == 200
    assert worker_call(hub, "POST", f"/v1/worker/tasks/{ids[1]['file_id']}/fail",
                       json={"worker": "w1", "reason": "no audio"}).status_code == 200
    a = bearer(hub, "alice")

    page1 = hub.get("/v1/meetings", params={"page": 1, "limit": 2}, headers=a).json()
    assert [m["title"] for m in page1["meetings"]] == ["m4", "m3"]
    assert (page1["page"], page1["limit"], page1["total"], page1["pages"]) == (1, 2, 5, 3)
    page3 = hub.get("/v1/meetings", params={"page": 3, "limit": 2}, headers=a).json()
    assert [m["title"] for m in page3["meetings"]] == ["m0"]
    assert hub.get("/v1/meetings", params={"page": 4, "limit": 2}, headers=a).json()["meetings"] == []

    def titles(status):
        return [m["title"] for m in hub.get("/v1/meetings", params={"status": status}, headers=a).json()["meetings"]]

    assert titles("completed") == ["m0"]
    assert titles("failed") == ["m1"]
    assert titles("pending") == ["m4", "m3", "m2"]
    assert titles("processing") == []
    failed = hub.get("/v1/meetings", params={"status": "failed"}, headers=a).json()["meetings"][0]
    assert failed["error"] == "no audio"
    envelope(hub.get("/v1/meetings", params={"status": "done"}, headers=a), 400, "BAD_REQUEST")
    envelope(hub.get("/v1/meetings", params={"limit": 0}, headers=a), 400, "BAD_REQUEST")
    envelope(hub.get("/v1/meetings", params={"page": "x"}, headers=a), 400, "BAD_REQUEST")


def test_users_see_only_their_own_meetings_and_admins_see_all(hub, speech):
    created = upload(hub, "alice", speech[:400]).json()
    mid, fid = created["meeting_id"], created["file_id"]
    assert claim(hub, fid).status_code == 200
    assert worker_call(hub, "PUT", f"/v1/worker/tasks/{fid}/artifacts/notes.txt", params={"worker": "w1"},
                       data=b"minutes", headers={"Content-Type": "text/plain"}).status_code == 200
    bob = bearer(hub, "bob")
    for r in (hub.get(f"/v1/meetings/{mid}", headers=bob), hub.get(f"/v1/files/{fid}/status", headers=bob),
              hub.get(f"/v1/meetings/{mid}/artifacts", headers=bob),
              hub.http.delete(f"{hub.url}/v1/meetings/{mid}", headers=bob)):
        envelope(r, 404, "NOT_FOUND")  # not 403: bob cannot tell the id exists
    envelope(hub.get("/v1/meetings/00000000-0000-7000-8000-000000000000", headers=bob), 404, "NOT_FOUND")
    assert hub.get("/v1/meetings", headers=bob).json()["total"] == 0

    admin = bearer(hub, "root", role="admin")
    assert hub.get(f"/v1/meetings/{mid}", headers=admin).json()["owner"] == "alice"
    assert hub.get("/v1/meetings", headers=admin).json()["total"] == 1
    envelope(hub.get("/v1/system/config", headers=bob), 403, "UNAUTHORIZED")
    config = hub.get("/v1/system/config", headers=admin).json()
    assert config["rate_limits"]["meetings-uploads"] == ["10/hour"]
    assert "secret" not in json.dumps(config).lower()

    # Deleting takes the meeting, its artifacts and its media with it.
    assert files_under(meetings_dir(hub)) == sorted([Path(f"media/{mid}/{fid}"), Path(f"artifacts/{mid}/notes.txt")])
    link = hub.get(f"/v1/meetings/{mid}/artifacts", headers=bearer(hub, "alice")).json()["artifacts"][0]["download_url"]
    r = hub.http.delete(f"{hub.url}/v1/meetings/{mid}", headers=bearer(hub, "alice"))
    assert r.status_code == 200 and r.json() == {"deleted": True}
    envelope(hub.get(f"/v1/meetings/{mid}", headers=bearer(hub, "alice")), 404, "NOT_FOUND")
    envelope(hub.get(f"/v1/files/{fid}/status", headers=bearer(hub, "alice")), 404, "NOT_FOUND")
    envelope(hub.get(link), 404, "NOT_FOUND")
    assert files_under(meetings_dir(hub)) == []
    envelope(worker_call(hub, "POST", f"/v1/worker/tasks/{fid}/progress", json={"worker": "w1", "progress": 50}),
             404, "NOT_FOUND")


def test_download_links_expire_and_cannot_be_altered(hub_factory, speech):
    hub = hub_factory("--meetings-link-ttl", "2")
    created = upload(hub, "alice", speech[:400]).json()
    fid, mid = created["file_id"], created["meeting_id"]
    assert claim(hub, fid).status_code == 200
    body = bytes(range(256)) * 4
    assert worker_call(hub, "PUT", f"/v1/worker/tasks/{fid}/artifacts/data.bin", params={"worker": "w1"},
                       data=body, headers={"Content-Type": "application/octet-stream"}).status_code == 200
    artifact = hub.get(f"/v1/meetings/{mid}/artifacts", headers=bearer(hub, "alice")).json()["artifacts"][0]
    url = artifact["download_url"]
    r = hub.get(url)
    assert r.status_code == 200 and r.content == body and r.headers["accept-ranges"] == "bytes"
    assert r.headers["x-ratelimit-limit"] == "100"

    envelope(hub.get(url.replace("signature=", "signature=0")), 401, "UNAUTHORIZED")
    envelope(hub.get(url.replace("user=alice", "user=bob")), 401, "UNAUTHORIZED")
    envelope(hub.get(url.replace("data.bin", "other.bin")), 401, "UNAUTHORIZED")
    expires = int(url.split("expires=")[1].split("&")[0])
    envelope(hub.get(url.replace(f"expires={expires}", f"expires={expires + 3600}")), 401, "UNAUTHORIZED")
    envelope(hub.get(url.split("?")[0]), 401, "UNAUTHORIZED")
    time.sleep(max(0.0, expires - time.time()) + 0.2)
    err = envelope(hub.get(url), 403, "UNAUTHORIZED")
    assert err["details"]["reason"] == "expired"
    fresh = hub.get(f"/v1/meetings/{mid}/artifacts", headers=bearer(hub, "alice")).json()["artifacts"][0]["download_url"]
    assert hub.get(fresh).content == body


def test_a_task_is_claimed_once_and_returns_to_the_queue_when_its_worker_goes_quiet(hub_factory, speech):
    hub = hub_factory("--meetings-task-lease", "1")
    created = upload(hub, "alice", speech[:400]).json()
    fid = created["file_id"]
    queued = worker_call(hub, "GET", "/v1/worker/tasks").json()["tasks"]
    assert [t["file_id"] for t in queued] == [fid]

    first, second = claim(hub, fid, "w1"), claim(hub, fid, "w2")
    assert first.status_code == 200 and first.json()["media_url"].endswith("/media")
    envelope(second, 409, "CONFLICT")
    assert worker_call(hub, "GET", "/v1/worker/tasks").json()["tasks"] == []
    assert status_of(hub, "alice", fid)["status"] == "processing"
    envelope(worker_call(hub, "POST", f"/v1/worker/tasks/{fid}/progress", json={"worker": "w2", "progress": 10}),
             409, "CONFLICT")
    media = worker_call(hub, "GET", first.json()["media_url"], headers={"Range": "bytes=0-99"})
    assert media.status_code == 206 and media.content == speech[:100]

    time.sleep(1.3)  # w1's lease runs out without a report
    taken = claim(hub, fid, "w2")
    assert taken.status_code == 200 and taken.json()["attempt"] == 2
    envelope(worker_call(hub, "POST", f"/v1/worker/tasks/{fid}/progress", json={"worker": "w1", "progress": 10}),
             409, "CONFLICT")
    r = worker_call(hub, "POST", f"/v1/worker/tasks/{fid}/progress", json={"worker": "w2", "progress": 40, "stage": "x"})
    assert r.status_code == 200
    assert status_of(hub, "alice", fid)["progress"] == 40
    envelope(worker_call(hub, "POST", f"/v1/worker/tasks/{fid}/progress", json={"worker": "w2", "progress": 140}),
             400, "BAD_REQUEST")
    envelope(worker_call(hub, "PUT", f"/v1/worker/tasks/{fid}/artifacts/.hidden", params={"worker": "w2"},
                         data=b"x"), 400, "BAD_REQUEST")
    envelope(hub.http.post(f"{hub.url}/v1/worker/tasks/{fid}/claim", json={"worker": "w3"}, timeout=WAIT),
             401, "UNAUTHORIZED")
    done = worker_call(hub, "POST", f"/v1/worker/tasks/{fid}/complete", json={"worker": "w2", "duration": 1.5})
    assert done.status_code == 200 and status_of(hub, "alice", fid)["status"] == "completed"
    envelope(claim(hub, fid, "w3"), 404, "NOT_FOUND")  # a finished task is gone
    envelope(worker_call(hub, "POST", f"/v1/worker/tasks/{fid}/fail", json={"worker": "w2", "reason": "late"}),
             404, "NOT_FOUND")
    assert status_of(hub, "alice", fid)["status"] == "completed"


# --------------------------------------------------------------------------------------------
# profiles and speakers


def test_profiles_and_speaker_links_belong_to_their_user(hub, speech):
    a, b = bearer(hub, "alice"), bearer(hub, "bob")
    def form(**fields):
        return {"files": {k: (None, v) if isinstance(v, str) else ("voice.wav", v) for k, v in fields.items()}}

    r = hub.http.post(hub.url + "/v1/users/profiles", headers=a, timeout=WAIT, **form(display_name="Alice A."))
    assert r.status_code == 200, r.text
    profile_id = r.json()["profile_id"]
    assert r.json() == {"profile_id": profile_id, "display_name": "Alice A."}
    r = hub.http.post(hub.url + "/v1/users/profiles", headers=b, timeout=WAIT, **form(display_name="Bob", voice_sample=speech))
    assert r.status_code == 200 and r.json()["voice_sample_size"] == len(speech)
    mine = hub.get("/v1/users/profiles", headers=a).json()["profiles"]
    assert [(p["profile_id"], p["display_name"]) for p in mine] == [(profile_id, "Alice A.")]
    envelope(hub.http.post(hub.url + "/v1/users/profiles", headers=a, timeout=WAIT, **form(display_name="")),
             400, "BAD_REQUEST")
    envelope(hub.http.post(hub.url + "/v1/users/profiles", headers=a, timeout=WAIT,
                           **form(display_name="X", voice_sample=b"not audio")), 415, "INVALID_FILE_TYPE")
    assert len(hub.get("/v1/users/profiles", headers=a).json()["profiles"]) == 1  # the refused one left nothing

    url = f"{hub.url}/v1/users/profiles/{profile_id}"
    r = hub.http.put(url, headers=a, timeout=WAIT, **form(display_name="Alice"))
    assert r.status_code == 200 and r.json() == {"profile_id": profile_id, "display_name": "Alice"}
    envelope(hub.http.put(url, headers=b, timeout=WAIT, **form(display_name="Mallory")), 404, "NOT_FOUND")
    envelope(hub.http.put(url, headers=a, timeout=WAIT, **form(title="nothing to change")), 400, "BAD_REQUEST")
    assert hub.get("/v1/users/profiles", headers=a).json()["profiles"][0]["display_name"] == "Alice"

    # A voice sample: a file part, typed by its content.
    r = hub.http.put(url, headers=a, timeout=WAIT, **form(display_name="Alice V.", voice_sample=speech))
    assert r.status_code == 200 and r.json()["voice_sample_size"] == len(speech), r.text
    envelope(hub.http.put(url, headers=a, timeout=WAIT, **form(voice_sample=b"not audio at all")), 415, "INVALID_FILE_TYPE")
    envelope(hub.http.put(url, headers=b, timeout=WAIT, **form(voice_sample=speech)), 404, "NOT_FOUND")
    stored = hub.get("/v1/users/profiles", headers=a).json()["profiles"][0]
    assert stored["display_name"] == "Alice V." and stored["has_voice_sample"] and stored["voice_sample_size"] == len(speech)
    assert (meetings_dir(hub) / "profiles" / profile_id / "voice-sample").read_bytes() == speech
    assert files_under(hub.workdir / "data" / "uploads") == []

    speaker = "5b0c6e1e-8d4e-4f3a-9c55-2f1d0b7a6e01"
    r = hub.http.post(hub.url + "/v1/speakers/link", json={"speaker_id": speaker, "user_profile_id": profile_id},
                      headers=a, timeout=WAIT)
    assert r.status_code == 200 and r.json() == {"linked": True}
    mapping = hub.get(f"/v1/speakers/{speaker}/mapping", headers=a).json()
    assert mapping["user_profile_id"] == profile_id and mapping["confidence"] == 1.0
    envelope(hub.get(f"/v1/speakers/{speaker}/mapping", headers=b), 404, "NOT_FOUND")
    envelope(hub.http.post(hub.url + "/v1/speakers/link", json={"speaker_id": speaker, "user_profile_id": profile_id},
                           headers=b, timeout=WAIT), 404, "NOT_FOUND")
    envelope(hub.http.post(hub.url + "/v1/speakers/link", json={"speaker_id": "nope", "user_profile_id": profile_id},
                           headers=a, timeout=WAIT), 400, "BAD_REQUEST")


# --------------------------------------------------------------------------------------------
# Telegram


def widget_data(bot_token: str = BOT_TOKEN, **fields: Any) -> Dict[str, Any]:
    """Login Widget data signed as Telegram does: HMAC-SHA256 keyed by SHA-256(bot token) over
    the sorted key=value lines."""
    data = {"id": 777, "first_name": "Ada", "username": "ada", "auth_date": int(time.time())}
    data.update(fields)
    check = "\n".join(f"{k}={data[k]}" for k in sorted(data))
    data["hash"] = hmac.new(hashlib.sha256(bot_token.encode()).digest(), check.encode(), hashlib.sha256).hexdigest()
    return data


def test_telegram_login_widget_data_is_checked_and_exchanged_for_a_token(mhub):
    r = mhub.http.post(mhub.url + "/v1/auth/telegram/login", json=widget_data(), timeout=WAIT)
    assert r.status_code == 200, r.text
    grant = r.json()
    assert grant["token_type"] == "bearer" and grant["user_id"] == "tg:777" and grant["role"] == "user"
    me = {"Authorization": f"Bearer {grant['access_token']}"}
    assert mhub.get("/v1/meetings", headers=me).status_code == 200
    envelope(mhub.get("/v1/system/config", headers=me), 403, "UNAUTHORIZED")

    tampered = widget_data()
    tampered["first_name"] = "Eve"
    envelope(mhub.http.post(mhub.url + "/v1/auth/telegram/login", json=tampered, timeout=WAIT), 401, "UNAUTHORIZED")
    other_bot = widget_data(bot_token="999:another-bot")
    envelope(mhub.http.post(mhub.url + "/v1/auth/telegram/login", json=other_bot, timeout=WAIT), 401, "UNAUTHORIZED")
    stale = widget_data(auth_date=int(time.time()) - 2 * 86400)
    err = envelope(mhub.http.post(mhub.url + "/v1/auth/telegram/login", json=stale, timeout=WAIT), 401, "UNAUTHORIZED")
    assert err["details"]["max_age_seconds"] == 86400
    unsigned = widget_data()
    del unsigned["hash"]
    envelope(mhub.http.post(mhub.url + "/v1/auth/telegram/login", json=unsigned, timeout=WAIT), 401, "UNAUTHORIZED")

    admin = mhub.http.post(mhub.url + "/v1/auth/telegram/login", json=widget_data(id=ADMIN_TG_ID), timeout=WAIT).json()
    assert admin["role"] == "admin"
    config = mhub.get("/v1/system/config", headers={"Authorization": f"Bearer {admin['access_token']}"})
    assert config.status_code == 200 and config.json()["telegram"] == {
        "login_widget": True, "passport": True, "auth_max_age_seconds": 86400}


def _openssl(args, data: bytes) -> bytes:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


def passport_encrypt(plain: bytes):
    """Telegram Passport's data encryption: random padding (first byte = its length, total a
    multiple of 16), then AES-256-CBC with key/iv from SHA-512(secret + SHA-256(padded))."""
    pad = 32 + (16 - (len(plain) + 32) % 16) % 16
    padded = bytes([pad]) + os.urandom(pad - 1) + plain
    data_hash = hashlib.sha256(padded).digest()
    secret = os.urandom(32)
    digest = hashlib.sha512(secret + data_hash).digest()
    encrypted = _openssl(["enc", "-aes-256-cbc", "-nopad", "-K", digest[:32].hex(), "-iv", digest[32:48].hex()], padded)
    return encrypted, data_hash, secret


def passport_payload(public_key: Path, nonce: str, first_name: str = "Grace"):
    """PassportData as the Bot API delivers it: one personal_details element and the
    EncryptedCredentials whose secret is RSA-OAEP-encrypted with the bot's public key."""
    details, details_hash, details_secret = passport_encrypt(json.dumps({"first_name": first_name,
                                                                           "last_name": "Hopper"}).encode())
    credentials = {"secure_data": {"personal_details": {"data": {
        "data_hash": base64.b64encode(details_hash).decode(), "secret": base64.b64encode(details_secret).decode()}}},
        "nonce": nonce}
    data, data_hash, secret = passport_encrypt(json.dumps(credentials).encode())
    wrapped = _openssl(["pkeyutl", "-encrypt", "-pubin", "-inkey", str(public_key), "-pkeyopt", "rsa_padding_mode:oaep",
                        "-pkeyopt", "rsa_oaep_md:sha1"], secret)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return {"data": [{"type": "personal_details", "data": b64(details)}],
            "credentials": {"data": b64(data), "hash": b64(data_hash), "secret": b64(wrapped)}}


def test_telegram_passport_credentials_are_decrypted_and_exchanged_for_a_token(mhub, passport_key, tmp_path):
    def nonce_for(tg_id):
        r = mhub.post_raw("/v1/auth/telegram/nonce", {"telegram_user_id": tg_id})
        assert r.status_code == 200, r.text
        return r.json()["nonce"]

    def sign_in(payload):
        return mhub.http.post(mhub.url + "/v1/auth/telegram/passport", json=payload, timeout=WAIT)

    payload = passport_payload(passport_key[1], nonce_for(1001))
    r = sign_in(payload)
    assert r.status_code == 200, r.text
    grant = r.json()
    assert grant["user_id"] == "tg:1001" and grant["role"] == "user"
    claims = json.loads(base64.urlsafe_b64decode(grant["access_token"].split(".")[1] + "=="))
    assert claims["name"] == "Grace Hopper" and claims["auth"] == "telegram-passport"
    assert mhub.get("/v1/users/profiles", headers={"Authorization": f"Bearer {grant['access_token']}"}).status_code == 200

    envelope(sign_in(payload), 401, "UNAUTHORIZED")  # the same nonce twice: a replay

    tampered = passport_payload(passport_key[1], nonce_for(1002))
    data = bytearray(base64.b64decode(tampered["credentials"]["data"]))
    data[-1] ^= 1
    tampered["credentials"]["data"] = base64.b64encode(bytes(data)).decode()
    envelope(sign_in(tampered), 401, "UNAUTHORIZED")

    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(other), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(other), "-pubout", "-out", str(tmp_path / "other.pub")], check=True,
                   capture_output=True)
    envelope(sign_in(passport_payload(tmp_path / "other.pub", nonce_for(1003))), 401, "UNAUTHORIZED")

    forged = nonce_for(1004).rsplit(".", 1)[0].replace("1004.", "1005.", 1) + ".deadbeef"
    envelope(sign_in(passport_payload(passport_key[1], forged)), 401, "UNAUTHORIZED")
    envelope(sign_in({"credentials": {"data": "!!", "hash": "", "secret": ""}}), 400, "BAD_REQUEST")
    envelope(mhub.post_raw("/v1/auth/telegram/nonce", {"telegram_user_id": 1}, with_key=False), 401, "UNAUTHORIZED")


# --------------------------------------------------------------------------------------------
# several nodes


@pytest.fixture
def redis_url(tmp_path):
    from hubtest import free_port
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False
        wait_for(up, message="redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_with_two_nodes_a_task_is_claimed_once_and_progress_reaches_either_node(hub_factory, redis_url, speech):
    from concurrent.futures import ThreadPoolExecutor
    a = hub_factory("--engine", "redis", "--redis-url", redis_url)
    b = hub_factory("--engine", "redis", "--redis-url", redis_url)
    created = upload(a, "alice", speech[:400]).json()
    fid, mid = created["file_id"], created["meeting_id"]
    channel = b.get(f"/v1/meetings/{mid}", headers=bearer(b, "alice")).json()["channel"]

    async def scenario():
        watcher = await a.client(user="alice")
        await watcher.subscribe(channel)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: claim(a if i % 2 else b, fid, f"w{i}").status_code, range(8)))
        assert sorted(results) == [200] + [409] * 7, results
        winner = next(f"w{i}" for i in range(8) if results[i] == 200)
        r = worker_call(b, "POST", f"/v1/worker/tasks/{fid}/progress", json={"worker": winner, "progress": 55})
        assert r.status_code == 200
        seen = []
        while not seen or seen[-1].get("progress") != 55:
            seen.append((await watcher.push(kind="pub", channel=channel))["pub"]["data"])
        await watcher.close()

    arun(scenario())
    assert status_of(a, "alice", fid)["progress"] == 55


def test_the_dashboard_page_and_script_are_served(hub):
    page = hub.get("/dashboard/meetings")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/dashboard/meetings.js">' in page.text
    assert "connect-src 'self' ws: wss:" in page.headers["content-security-policy"]
    script = hub.get("/dashboard/meetings.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    # It speaks the endpoints and protocol the hub serves.
    for needle in ("/v1/meetings?limit=100", "/connection/websocket", "subscribe: {channel: meeting.channel}", 'form.append("file", file)'):
        assert needle in script.text, needle


def test_a_task_whose_workers_keep_going_quiet_is_given_up_as_failed(hub_factory, speech):
    hub = hub_factory("--meetings-task-lease", "1")
    fid = upload(hub, "alice", speech[:400]).json()["file_id"]
    for attempt, worker in enumerate(["w1", "w2", "w3"], start=1):
        r = claim(hub, fid, worker)
        assert r.status_code == 200 and r.json()["attempt"] == attempt
        if attempt < 3:
            time.sleep(1.1)
    # Polled gently: the status route's per-user rate limit counts these reads too.
    final = wait_for(lambda: (s := status_of(hub, "alice", fid))["status"] == "failed" and s, timeout=5,
                     interval=0.25, message="the file to be given up")
    assert "giving up after 3 attempts" in final["error"], final
    envelope(claim(hub, fid, "w4"), 404, "NOT_FOUND")


def test_every_change_of_a_users_meetings_reaches_the_owner_channel_only(hub, speech, start_worker):
    async def watch():
        mine = await hub.client(user="alice")
        await mine.subscribe("meetings:user#alice")
        stranger = await hub.client(user="bob")
        refused = await stranger.call("subscribe", {"channel": "meetings:user#alice"})
        assert refused.get("error", {}).get("code") == 103, refused
        created = upload(hub, "alice", speech, title="Owner channel").json()
        start_worker(hub)
        events = []
        deadline = time.monotonic() + 30
        while not events or events[-1].get("status") not in ("completed", "failed"):
            assert time.monotonic() < deadline, f"no completion; events {events}"
            events.append((await mine.push(timeout=30, kind="pub", channel="meetings:user#alice"))["pub"]["data"])
        await mine.close()
        await stranger.close()
        return created, events

    created, events = arun(watch())
    assert {e["meeting_id"] for e in events} == {created["meeting_id"]}
    assert events[0]["type"] == "status" and events[0]["status"] == "pending"
    assert events[-1]["status"] == "completed" and "artifact" in {e["type"] for e in events}
