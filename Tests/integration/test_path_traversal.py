"""Path traversal on every input that names a file: cache job paths and job ids (seed 001),
gateway assets (seed 000), meetings file ids, artifact names, uploaded file names and signed
download links (seed 004), the dashboard's fixed files.

Each input gets the same attempts: `../`, `%2e%2e` in every casing and mix, absolute paths,
backslashes, NUL, and symlinks that lead out of the root. URL paths go out as raw bytes on a
socket (HTTP clients would normalise `../` away before sending). A secret file sits next to
every root; no answer may hold it, no attempt may succeed or write anything outside the root,
and a legitimate request through the same door works (so the door is not simply shut)."""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from hubtest import API_KEY, WAIT
from test_cache import KEY, cache_hub, post_job
from test_meetings import bearer, claim, speech, upload, worker_call  # noqa: F401 (speech is a fixture)

SECRET = b"top secret outside the root"
# Names as a client would put them in one URL path segment (or in a JSON string, decoded).
SEGMENT_ATTEMPTS = ["..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "..%2fsecret.txt", "..%2Fsecret.txt",
                    "%2e%2e%2fsecret.txt", "..%5csecret.txt", "%2e%2e%5csecret.txt", "%2fetc%2fpasswd",
                    "..%00", "secret.txt%00.bin", "%00", "..%c0%afsecret.txt", "link-out", "link-dir%2fsecret.txt"]
# Whole paths after a route prefix, sent raw.
PATH_ATTEMPTS = ["../secret.txt", "../../../../../etc/passwd", "%2e%2e/secret.txt", "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                 "..\\secret.txt", "/etc/passwd", "//etc/passwd", "./../secret.txt"]


def raw_get(port: int, target: str, headers: str = "", method: str = "GET", body: bytes = b"") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    if not reply:
        return 0, b""  # closed unanswered
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), payload


def refused(status: int, payload: bytes, what: str, allowed=(400, 401, 403, 404, 405, 422)):
    if "%00" in what.split("?")[0]:
        # libwebsockets ends a request path at a decoded NUL before the hub sees it (or drops the
        # connection unanswered): `/jobs/%00` arrives as `/jobs/`, another route of the same
        # door. What must hold still holds: nothing outside the root is read or written.
        assert SECRET not in payload and b"root:x:0:0" not in payload, what
        return
    assert status in allowed, f"{what} -> {status} {payload[:200]!r}"
    assert SECRET not in payload and b"root:x:0:0" not in payload, what


@pytest.fixture
def outside(tmp_path) -> Path:
    """tmp/secret.txt and tmp/secret-dir/secret.txt, outside whichever root the test makes."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "secret-dir").mkdir()
    (tmp_path / "secret-dir" / "secret.txt").write_bytes(SECRET)
    return tmp_path


def plant_links(root: Path, outside: Path):
    os.symlink(outside / "secret.txt", root / "link-out")
    os.symlink(outside / "secret-dir", root / "link-dir")


def files_outside(base: Path, root: Path):
    """Every file under base that is not under root (what an escaping write would add)."""
    return sorted(str(p) for p in base.rglob("*") if p.is_file() and root not in p.parents)


# ------------------------------------------------------------------------------------------
# seed 001: cache job paths and job ids


def test_cache_job_paths_never_leave_the_cache_root(hub_factory, outside):
    root = outside / "root"
    (root / "media").mkdir(parents=True)
    (root / "media" / "clip.mov").write_bytes(b"clip")
    plant_links(root, outside)
    hub = cache_hub(hub_factory, root)
    r = post_job(hub, {"files": ["media/clip.mov"]})
    assert r.status_code == 201, r.text
    attempts = [urllib.parse.unquote(a) for a in SEGMENT_ATTEMPTS] + SEGMENT_ATTEMPTS + PATH_ATTEMPTS + [
        "media/../../secret.txt", "media\\..\\..\\secret.txt", "C:\\dmpfs\\tc-east-1\\..\\..\\secret.txt",
        "/Volumes/dmpfs/tc-east-1/../../secret.txt", "/mnt/lucidlink/tc-east-1/../secret.txt",
        str(outside / "secret.txt"), "media/clip.mov\x00/../../secret.txt", "\x00", "link-dir/secret.txt", "link-dir"]
    for path in attempts:
        for kind in ("files", "directories"):
            r = post_job(hub, {kind: [path]})
            assert r.status_code == 400 and r.json()["success"] is False, (kind, path, r.status_code, r.text)
            assert SECRET not in r.content
    r = post_job(hub, {"directories": ["."]})  # the whole root: the links out are refused, not followed
    assert r.status_code == 400 and "escapes the cache root" in r.json()["error"], r.text
    listed = hub.http.get(hub.url + "/api/v1/cache/jobs", headers={"X-API-Key": KEY}, timeout=WAIT).json()
    assert listed["total"] == 1  # only the legitimate job exists
    for attempt in SEGMENT_ATTEMPTS + PATH_ATTEMPTS:
        for method in ("GET", "DELETE"):
            status, payload = raw_get(hub.port, "/api/v1/cache/jobs/" + attempt, f"X-API-Key: {KEY}\r\n", method=method)
            refused(status, payload, f"{method} job {attempt}")


# ------------------------------------------------------------------------------------------
# seed 000: gateway assets


def test_gateway_assets_never_leave_the_assets_folder(hub_factory, outside):
    assets = outside / "assets"
    assets.mkdir()
    (assets / "model.bin").write_bytes(b"model")
    plant_links(assets, outside)
    hub = hub_factory("--gateway-assets-dir", str(assets))
    status, payload = raw_get(hub.port, "/assets/model.bin")
    assert (status, payload) == (200, b"model")
    for attempt in SEGMENT_ATTEMPTS + PATH_ATTEMPTS:
        status, payload = raw_get(hub.port, "/assets/" + attempt)
        refused(status, payload, f"asset {attempt}")


# ------------------------------------------------------------------------------------------
# seed 004: meetings file ids, artifact names, uploaded file names, signed links


def test_meetings_ids_names_and_links_never_leave_storage(hub_factory, outside, speech):
    hub = hub_factory(config={"rate_limits": {c: ["100000/minute"] for c in
                                              ("meetings-uploads", "meetings-status", "meetings-downloads")}})
    storage = hub.workdir / "data" / "meetings"
    before = files_outside(hub.workdir, storage)
    created = upload(hub, "alice", speech[:400]).json()
    fid, mid = created["file_id"], created["meeting_id"]
    assert claim(hub, fid).status_code == 200
    ok = worker_call(hub, "PUT", f"/v1/worker/tasks/{fid}/artifacts/notes.txt", params={"worker": "w1"}, data=b"notes")
    assert ok.status_code == 200, ok.text
    link = hub.get(f"/v1/meetings/{mid}/artifacts", headers=bearer(hub, "alice")).json()["artifacts"][0]["download_url"]
    query = link.split("?", 1)[1]
    assert hub.get(link).content == b"notes"

    user = f"Authorization: {bearer(hub, 'alice')['Authorization']}\r\n"
    worker = f"X-API-Key: {API_KEY}\r\n"
    for attempt in SEGMENT_ATTEMPTS + PATH_ATTEMPTS:
        status, payload = raw_get(hub.port, f"/v1/files/{attempt}/status", user)
        refused(status, payload, f"file status {attempt}", allowed=(400, 404, 405, 422))
        status, payload = raw_get(hub.port, f"/v1/worker/tasks/{attempt}/media", worker + "Range: bytes=0-100\r\n")
        refused(status, payload, f"media {attempt}", allowed=(400, 404, 405, 422))
        if attempt != "link-out":  # a valid artifact name; it would simply be stored under that name
            status, payload = raw_get(hub.port, f"/v1/worker/tasks/{fid}/artifacts/{attempt}?worker=w1", worker, method="PUT", body=SECRET)
            refused(status, payload, f"artifact {attempt}", allowed=(400, 404, 405, 422))
        status, payload = raw_get(hub.port, f"/v1/meetings/{mid}/artifacts/{attempt}/download?{query}")
        refused(status, payload, f"download {attempt}")
        status, payload = raw_get(hub.port, f"/v1/meetings/{attempt}/artifacts/notes.txt/download?{query}")
        refused(status, payload, f"download meeting {attempt}")
    names = [a["name"] for a in hub.get(f"/v1/meetings/{mid}/artifacts", headers=bearer(hub, "alice")).json()["artifacts"]]
    assert names == ["notes.txt"], names

    # Uploaded file names are the client's: kept as a display name, never used as a path.
    for name in ["../../../secret.txt", "..\\..\\secret.txt", "/etc/passwd", "a\x00b.wav", "..", "link-out"]:
        r = upload(hub, "alice", speech[:400], filename=name)
        assert r.status_code == 201, (name, r.text)
        shown = hub.get(f"/v1/meetings/{r.json()['meeting_id']}", headers=bearer(hub, "alice")).json()
        assert "/" not in shown["filename"] and "\\" not in shown["filename"] and shown["filename"] not in ("..", "."), shown
    assert files_outside(hub.workdir, storage) == before, "a request wrote outside the meetings storage"

    # A symlink planted where an artifact lives is not followed: the link answers 404, not the secret.
    artifact = next(storage.rglob("notes.txt"))
    artifact.unlink()
    os.symlink(outside / "secret.txt", artifact)
    parsed = urllib.parse.urlsplit(link)
    status, payload = raw_get(hub.port, parsed.path + "?" + parsed.query)
    refused(status, payload, "download through a planted symlink")


def test_dashboard_files_are_fixed(hub_factory):
    hub = hub_factory()
    status, payload = raw_get(hub.port, "/dashboard/meetings.js")
    assert status == 200 and payload
    for attempt in PATH_ATTEMPTS + SEGMENT_ATTEMPTS:
        status, payload = raw_get(hub.port, "/dashboard/" + attempt)
        refused(status, payload, f"dashboard {attempt}")
        status, payload = raw_get(hub.port, "/dashboard/meetings.js/" + attempt)
        refused(status, payload, f"dashboard script {attempt}")
