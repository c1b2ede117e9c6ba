"""Seed 001 (TeamCache Manager API Gateway): cache jobs on a real directory tree.

The tree is made by the tests: thousands of small files and a few large sparse ones. The hub's
built-in worker really reads them; progress, per-file events and throughput are watched on the
channels and through the seed's REST endpoints.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from hubtest import REPO_ROOT, WAIT, arun, free_port, wait_for

KEY = "demo-api-key-2024"
SMALL_FILES = 2000
BIG = 64 * 1024 * 1024
BIG_FILES = 3


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("cache")
    root = base / "root"
    farm = root / "00_Media" / "Farm" / "ProRes422"
    for sub in ["", "A", "B", "C", "D"]:
        (farm / sub).mkdir(parents=True, exist_ok=True)
    payload = os.urandom(4096)
    for i in range(SMALL_FILES):
        sub = "" if i < 40 else "ABCD"[(i - 40) % 4]
        (farm / sub / f"Farm{i:05d}.mov").write_bytes(payload[: 512 + i % 2048])
    (root / "00_Media" / "video.mp4").write_bytes(b"v" * 12345)
    big = root / "big"
    big.mkdir()
    for i in range(BIG_FILES):
        with open(big / f"take{i}.mxf", "wb") as f:
            f.truncate(BIG)  # sparse: costs no disk, still BIG bytes to read
    (base / "outside.txt").write_text("secret")
    links = root / "links"
    links.mkdir()
    (links / "inside.mp4").symlink_to(root / "00_Media" / "video.mp4")
    (links / "out.txt").symlink_to(base / "outside.txt")
    (links / "outdir").symlink_to(base)
    trap = root / "trap"
    trap.mkdir()
    (trap / "fine.txt").write_text("fine")
    (trap / "leak").symlink_to(base / "outside.txt")
    return root


def small_size(i: int) -> int:
    return 512 + i % 2048


FARM_BYTES = sum(small_size(i) for i in range(SMALL_FILES))


def cache_hub(hub_factory, root, *args, env=None, limit=True, **kwargs):
    e = {"API_GATEWAY_KEY": KEY, "CACHE_ROOT": str(root)}
    e.update(env or {})
    config = None if not limit else {"rate_limits": {"teamcache": ["100000/minute"]}}
    return hub_factory(*args, env=e, config=config, **kwargs)


def post_job(hub, body, key=KEY):
    headers = {} if key is None else {"X-API-Key": key}
    return hub.http.post(hub.url + "/api/v1/cache/jobs", json=body, headers=headers, timeout=30)


def get_job(hub, job_id, key=KEY):
    return hub.http.get(f"{hub.url}/api/v1/cache/jobs/{job_id}", headers={"X-API-Key": key}, timeout=WAIT)


def job_until(hub, job_id, pred, timeout=20.0, what="job state"):
    def check():
        body = get_job(hub, job_id).json()
        return body if pred(body["job"]) else None
    return wait_for(check, timeout=timeout, interval=0.05, message=what)


def history(hub, channel, limit=1000):
    out = hub.api_result("history", {"channel": channel, "limit": limit})
    return [p["data"] for p in out.get("publications", [])]


ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# ---------------------------------------------------------------------------------------------


def test_health_create_list_get_as_documented(hub_factory, tree):
    hub = cache_hub(hub_factory, tree)
    health = hub.get("/api/v1/health")
    assert health.status_code == 200
    h = health.json()
    assert (h["success"], h["status"], h["service"], h["database"]) == (True, "healthy", "api-gateway", "connected")
    assert ISO.match(h["timestamp"])

    # The seed's curl: a file plus the directory holding it; the file counts once.
    r = post_job(hub, {"files": ["00_Media/Farm/ProRes422/Farm00003.mov"],
                       "directories": ["00_Media/Farm/ProRes422"], "recursive": True})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["success"] is True and created["status"] == "pending"
    assert created["message"] == "Cache job created successfully"
    assert uuid.UUID(created["jobId"])
    assert created["totalFiles"] == SMALL_FILES
    assert created["totalSize"]["bytes"] == FARM_BYTES
    assert created["totalSize"]["readable"].endswith(" MB") and ISO.match(created["createdAt"])

    done = job_until(hub, created["jobId"], lambda j: j["status"] == "completed", what="job completed")["job"]
    assert done["id"] == created["jobId"] and done["totalFiles"] == SMALL_FILES
    p = done["progress"]
    assert p["files"] == {"completed": SMALL_FILES, "failed": 0, "total": SMALL_FILES, "percentage": 100}
    assert p["size"]["completedBytes"] == p["size"]["totalBytes"] == FARM_BYTES
    assert p["size"]["completedReadable"] == p["size"]["totalReadable"] == created["totalSize"]["readable"]
    assert p["size"]["percentage"] == 100 and p["percentage"] == 100
    assert "throughput" in done  # null or fresh figures, never missing (the seed's client reads it)
    assert ISO.match(done["startedAt"]) and ISO.match(done["completedAt"]) and done["error"] is None

    listed = hub.http.get(hub.url + "/api/v1/cache/jobs", headers={"X-API-Key": KEY}, timeout=WAIT).json()
    assert listed["success"] is True and listed["total"] == 1
    (entry,) = listed["jobs"]
    assert entry == {
        "id": created["jobId"], "status": "completed", "totalFiles": SMALL_FILES,
        "totalSizeBytes": FARM_BYTES, "totalSizeReadable": created["totalSize"]["readable"],
        "completedFiles": SMALL_FILES, "completedSizeBytes": FARM_BYTES,
        "completedSizeReadable": created["totalSize"]["readable"],
        "createdAt": created["createdAt"], "completedAt": done["completedAt"],
    }

    # recursive:false takes only the directory's own files.
    r = post_job(hub, {"directories": ["00_Media/Farm/ProRes422"], "recursive": False})
    assert r.status_code == 201 and r.json()["totalFiles"] == 40


def test_every_error_body(hub_factory, tree):
    hub = cache_hub(hub_factory, tree)
    url = hub.url + "/api/v1/cache/jobs"
    for headers in ({}, {"X-API-Key": "wrong"}):
        for method, path in (("POST", url), ("GET", url), ("GET", url + "/" + str(uuid.uuid4())),
                             ("DELETE", url + "/" + str(uuid.uuid4()))):
            body = {"files": ["00_Media/video.mp4"]} if method == "POST" else None
            r = hub.http.request(method, path, headers=headers, json=body, timeout=WAIT)
            assert (r.status_code, r.json()) == (401, {"success": False, "error": "Invalid or missing API key"})
    assert hub.api_result("history", {"channel": "cache:jobs", "limit": 10}).get("publications", []) == []

    for bad in ("not-a-uuid", "6bb4629b-1487-477c-96fe-b762d82a099", "6bb4629b_1487_477c_96fe_b762d82a099b"):
        for method in ("GET", "DELETE"):
            r = hub.http.request(method, f"{url}/{bad}", headers={"X-API-Key": KEY}, timeout=WAIT)
            assert (r.status_code, r.json()) == (400, {"success": False, "error": "Invalid job ID format"})
    missing = str(uuid.uuid4())
    for method in ("GET", "DELETE"):
        r = hub.http.request(method, f"{url}/{missing}", headers={"X-API-Key": KEY}, timeout=WAIT)
        assert (r.status_code, r.json()) == (404, {"success": False, "error": "Job not found"})

    cases = [
        ({}, "At least one file or directory is required"),
        ({"files": "00_Media/video.mp4"}, "files must be an array of paths"),
        ({"directories": [1]}, "directories must be an array of paths"),
        ({"files": ["00_Media/video.mp4"], "recursive": "yes"}, "recursive must be true or false"),
        ({"files": ["00_Media/nope.mov"]}, "File not found: 00_Media/nope.mov"),
        ({"directories": ["00_Media/NoSuchDir"]}, "Directory not found: 00_Media/NoSuchDir"),
        ({"files": ["00_Media/Farm"]}, "Not a file: 00_Media/Farm"),
        ({"directories": ["00_Media/video.mp4"]}, "Not a directory: 00_Media/video.mp4"),
    ]
    for body, message in cases:
        r = post_job(hub, body)
        assert (r.status_code, r.json()) == (400, {"success": False, "error": message}), body
    r = hub.http.post(url, data="{not json", headers={"X-API-Key": KEY, "Content-Type": "application/json"}, timeout=WAIT)
    assert r.status_code == 400 and r.json()["success"] is False and "JSON" in r.json()["error"]
    # Nothing above made a job.
    assert hub.http.get(url, headers={"X-API-Key": KEY}, timeout=WAIT).json() == {"success": True, "jobs": [], "total": 0}

    # A finished job cannot be cancelled.
    job_id = post_job(hub, {"files": ["00_Media/video.mp4"]}).json()["jobId"]
    job_until(hub, job_id, lambda j: j["status"] == "completed")
    r = hub.http.delete(f"{url}/{job_id}", headers={"X-API-Key": KEY}, timeout=WAIT)
    assert (r.status_code, r.json()) == (400, {"success": False, "error": "Job cannot be cancelled: it is already completed"})


def test_paths_from_every_os_normalise_into_the_root(hub_factory, tree):
    hub = cache_hub(hub_factory, tree)
    same_file = [
        "00_Media/video.mp4",
        "./00_Media//video.mp4",
        "/Volumes/dmpfs/tc-east-1/00_Media/video.mp4",
        "C:\\dmpfs\\tc-east-1\\00_Media\\video.mp4",
        "c:/dmpfs/tc-east-1/00_Media/video.mp4",
        "/mnt/lucidlink/tc-east-1/00_Media/video.mp4",
        str(tree / "00_Media" / "video.mp4"),
        "links/inside.mp4",  # a symlink that stays inside the root
    ]
    for path in same_file:
        r = post_job(hub, {"files": [path]})
        assert r.status_code == 201, (path, r.text)
        assert r.json()["totalFiles"] == 1 and r.json()["totalSize"]["bytes"] == 12345, path
    r = post_job(hub, {"directories": ["/Volumes/dmpfs/tc-east-1/00_Media/Farm/ProRes422", "C:\\dmpfs\\tc-east-1\\00_Media\\Farm"]})
    assert r.status_code == 201 and r.json()["totalFiles"] == SMALL_FILES  # the same files, once

    # Configurable prefixes: only the named filespace is accepted then.
    hub2 = cache_hub(hub_factory, tree, "--cache-path-prefixes", "/Volumes/dmpfs/tc-east-1,/mnt/lucidlink/tc-east-1")
    assert post_job(hub2, {"files": ["/Volumes/dmpfs/tc-east-1/00_Media/video.mp4"]}).status_code == 201
    r = post_job(hub2, {"files": ["/Volumes/otherfs/west/00_Media/video.mp4"]})
    assert (r.status_code, r.json()["error"]) == (400, "Path is outside the cache root: /Volumes/otherfs/west/00_Media/video.mp4")


def test_escape_attempts_are_refused_naming_the_path(hub_factory, tree):
    hub = cache_hub(hub_factory, tree)
    refused = {
        "../outside.txt": "Path escapes the cache root: ../outside.txt",
        "00_Media/../../outside.txt": "Path escapes the cache root: 00_Media/../../outside.txt",
        "/Volumes/dmpfs/tc-east-1/../../../etc/passwd": "Path escapes the cache root: /Volumes/dmpfs/tc-east-1/../../../etc/passwd",
        "C:\\dmpfs\\tc-east-1\\..\\..\\outside.txt": "Path escapes the cache root: C:\\dmpfs\\tc-east-1\\..\\..\\outside.txt",
        "/etc/passwd": "Path is outside the cache root: /etc/passwd",
        "links/out.txt": "Path escapes the cache root: links/out.txt",
    }
    for path, message in refused.items():
        r = post_job(hub, {"files": [path]})
        assert (r.status_code, r.json()) == (400, {"success": False, "error": message}), path
    for directory, message in {"links/outdir": "Path escapes the cache root: links/outdir",
                               "trap": "Path escapes the cache root: trap/leak"}.items():
        r = post_job(hub, {"directories": [directory]})
        assert (r.status_code, r.json()) == (400, {"success": False, "error": message}), directory
    listed = hub.http.get(hub.url + "/api/v1/cache/jobs", headers={"X-API-Key": KEY}, timeout=WAIT).json()
    assert listed["total"] == 0


def test_rate_limit_at_the_eleventh_request(hub_factory, tree):
    hub = cache_hub(hub_factory, tree, limit=False)
    # The window is the calendar minute: start early enough in one that all eleven land in it.
    while time.time() % 60 > 54:
        time.sleep(0.5)
    url = hub.url + "/api/v1/cache/jobs"
    for i in range(10):
        r = hub.http.get(url, headers={"X-API-Key": KEY}, timeout=WAIT)
        assert r.status_code == 200, (i, r.text)
    r = hub.http.get(url, headers={"X-API-Key": KEY}, timeout=WAIT)
    assert (r.status_code, r.json()) == (429, {"success": False, "error": "Too many requests, please try again later"})
    assert int(r.headers["retry-after"]) >= 1
    assert hub.get("/api/v1/health").status_code == 200  # health is not counted


def test_progress_thresholds_and_file_events_on_channels(hub_factory, tree):
    hub = cache_hub(hub_factory, tree, env={"CACHE_PROGRESS_FILE_THRESHOLD": "50",
                                            "CACHE_PROGRESS_TIME_THRESHOLD": "600000"})
    r = post_job(hub, {"directories": ["00_Media/Farm/ProRes422"]})
    job_id = r.json()["jobId"]
    job_until(hub, job_id, lambda j: j["status"] == "completed")
    progress = wait_for(lambda: (lambda h: h if h and h[-1]["status"] == "completed" else None)(
        history(hub, f"cache:progress:{job_id}")), message="final progress")
    done_counts = [p["progress"]["files"]["completed"] + p["progress"]["files"]["failed"] for p in progress]
    # The time threshold is ten minutes: every publication is a file-threshold one (multiples of
    # 50, each moving on), plus the start and the last file.
    assert done_counts[-1] == SMALL_FILES and progress[-1]["progress"]["size"]["completedBytes"] == FARM_BYTES
    middle = [c for c in done_counts if 0 < c < SMALL_FILES]
    assert middle and all(c % 50 == 0 for c in middle), done_counts
    assert len(middle) == SMALL_FILES // 50 - 1 and len(set(middle)) == len(middle)

    jobs = history(hub, "cache:jobs")
    assert [(e["event"], e["jobId"]) for e in jobs] == [("created", job_id), ("started", job_id), ("finished", job_id)]
    assert jobs[-1]["status"] == "completed" and jobs[-1]["completedFiles"] == SMALL_FILES

    # Per-file events, one file failing: a small job read slowly, its last file removed mid-way.
    hub2 = cache_hub(hub_factory, tree, "--cache-max-read-rate", "0.5", "--cache-concurrency", "1")
    doomed = tree / "00_Media" / "doomed.bin"
    doomed.write_bytes(b"d" * 100)
    slow = tree / "00_Media" / "slow.bin"
    slow.write_bytes(b"s" * 300_000)  # half a second at 0.5 MB/s: time to remove the next file
    r = post_job(hub2, {"files": ["00_Media/Farm/ProRes422/Farm00000.mov", "00_Media/slow.bin", "00_Media/doomed.bin"]})
    assert r.status_code == 201
    doomed.unlink()
    job2 = r.json()["jobId"]
    final = job_until(hub2, job2, lambda j: j["status"] in ("completed", "failed"))["job"]
    assert final["status"] == "failed" and final["progress"]["files"] == {"completed": 2, "failed": 1, "total": 3, "percentage": 100}
    assert "00_Media/doomed.bin" in final["error"] and "No such file" in final["error"]
    events = history(hub2, f"cache:files:{job2}")
    assert [(e["event"], e["path"]) for e in events] == [
        ("started", "00_Media/Farm/ProRes422/Farm00000.mov"), ("completed", "00_Media/Farm/ProRes422/Farm00000.mov"),
        ("started", "00_Media/slow.bin"), ("completed", "00_Media/slow.bin"),
        ("started", "00_Media/doomed.bin"), ("failed", "00_Media/doomed.bin"),
    ]
    assert events[1]["bytes"] == small_size(0) and events[3]["bytes"] == 300_000
    assert events[5]["bytes"] == 0 and "No such file" in events[5]["error"]


def test_throughput_live_cancel_within_a_second_then_stale_after_10s(hub_factory, tree):
    hub = cache_hub(hub_factory, tree, "--cache-max-read-rate", "40")

    async def body():
        watcher = await hub.client("dashboard")
        await watcher.subscribe("cache:throughput")
        await watcher.subscribe("cache:jobs")
        r = post_job(hub, {"directories": ["big"]})
        assert r.status_code == 201 and r.json()["totalSize"]["readable"] == "192 MB"
        job_id = r.json()["jobId"]
        rates = [(await watcher.push(kind="pub", channel="cache:throughput", timeout=3))["pub"]["data"] for _ in range(3)]
        assert all(rate["jobs"][0]["jobId"] == job_id for rate in rates)
        assert 20 <= rates[-1]["mbps"] <= 60 and rates[-1]["readable"] == f"{rates[-1]['mbps']:g} MB/s"
        running = get_job(hub, job_id).json()["job"]
        assert running["status"] == "running"
        assert running["throughput"] and 20 <= running["throughput"]["mbps"] <= 60
        assert 0 < running["progress"]["size"]["completedBytes"] < BIG * BIG_FILES

        r = hub.http.delete(f"{hub.url}/api/v1/cache/jobs/{job_id}", headers={"X-API-Key": KEY}, timeout=WAIT)
        assert (r.status_code, r.json()) == (200, {"success": True, "message": "Job cancelled successfully"})
        cancelled_at = time.monotonic()
        events = [p["pub"]["data"] for p in list(watcher.pushes) if "pub" in p and p["channel"] == "cache:jobs"]
        while not any(e["event"] == "cancelled" for e in events):
            events.append((await watcher.push(kind="pub", channel="cache:jobs"))["pub"]["data"])
        await asyncio.sleep(1.0)
        first = get_job(hub, job_id).json()["job"]
        await asyncio.sleep(1.0)
        second = get_job(hub, job_id).json()["job"]
        assert first["status"] == second["status"] == "cancelled"
        assert first["progress"] == second["progress"]  # no byte read after the first second
        assert second["progress"]["size"]["completedBytes"] < BIG * BIG_FILES
        await watcher.close()
        return job_id, cancelled_at

    job_id, cancelled_at = arun(body())
    r = hub.http.delete(f"{hub.url}/api/v1/cache/jobs/{job_id}", headers={"X-API-Key": KEY}, timeout=WAIT)
    assert (r.status_code, r.json()) == (400, {"success": False, "error": "Job cannot be cancelled: it is already cancelled"})
    time.sleep(max(0.0, cancelled_at + 10.5 - time.monotonic()))
    assert get_job(hub, job_id).json()["job"]["throughput"] is None


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_restart_mid_job_resumes(hub_factory, tree, sig):
    hub = cache_hub(hub_factory, tree, "--cache-max-read-rate", "40", "--cache-concurrency", "1")
    job_id = post_job(hub, {"directories": ["big"]}).json()["jobId"]
    # Past the first file, so there is a checkpoint to resume from.
    job_until(hub, job_id, lambda j: j["progress"]["files"]["completed"] >= 1, timeout=10)
    before = get_job(hub, job_id).json()["job"]
    assert before["status"] == "running"
    hub.stop(sig)
    data_dir = hub.workdir / "data"
    again = cache_hub(hub_factory, tree, "--data-dir", str(data_dir))
    done = job_until(again, job_id, lambda j: j["status"] == "completed", timeout=20)["job"]
    assert done["progress"]["files"] == {"completed": BIG_FILES, "failed": 0, "total": BIG_FILES, "percentage": 100}
    assert done["progress"]["size"]["completedBytes"] == BIG * BIG_FILES  # nothing counted twice
    assert done["startedAt"] == before["startedAt"]
    assert "resuming at file" in again.log()
    jobs = history(again, "cache:jobs")
    assert [e["event"] for e in jobs] == ["started", "finished"]  # the new node's stream: resumed, finished


def test_seed_python_client_example_runs(hub_factory, tree, tmp_path):
    hub = cache_hub(hub_factory, tree)
    source = (REPO_ROOT / "clients" / "teamcache_client_example.py").read_text()
    script = tmp_path / "client.py"
    script.write_text(source.replace("http://localhost:8095", hub.url).replace("demo-api-key-2024", KEY))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Created job: ") and uuid.UUID(lines[0].split(": ")[1])
    assert lines[1].startswith("Total size: ") and lines[1].endswith(" MB")
    total = lines[1].split(": ")[1]
    assert [line for line in lines if line.startswith("Progress: ")][-1] == f"Progress: {total} / {total}"


def test_external_worker_claims_over_channels(hub_factory, tree):
    hub = cache_hub(hub_factory, tree, "--cache-worker", "false")

    async def body():
        worker = await hub.client("worker-1")
        await worker.subscribe("cache:queue")
        other = await hub.client("worker-2")
        job_id = post_job(hub, {"files": ["00_Media/video.mp4", "links/inside.mp4"]}).json()["jobId"]
        queued = (await worker.push(kind="pub", channel="cache:queue"))["pub"]["data"]
        assert queued == {"event": "queued", "jobId": job_id, "totalFiles": 2, "totalSizeBytes": 24690, "chunks": 1}
        assert get_job(hub, job_id).json()["job"]["status"] == "pending"  # nobody reads it: the built-in worker is off

        denied = await worker.error("rpc", {"method": "cache.claim", "data": {"key": "wrong", "jobId": job_id}})
        assert denied["code"] == 103
        claim = await worker.result("rpc", {"method": "cache.claim", "data": {"key": hub.api_key, "jobId": job_id}})
        claim = claim["data"]
        assert claim["jobId"] == job_id and claim["resumeFrom"] == 0 and claim["totalFiles"] == 2
        # The claim is a compare-and-set: a second worker cannot take the same job.
        taken = await other.error("rpc", {"method": "cache.claim", "data": {"key": hub.api_key, "jobId": job_id}})
        assert taken["code"] == 108
        assert (await other.error("rpc", {"method": "cache.claim", "data": {"key": hub.api_key}}))["code"] == 108

        files = (await worker.result("rpc", {"method": "cache.files", "data": {
            "key": hub.api_key, "jobId": job_id, "claim": claim["claim"], "chunk": 0}}))["data"]["files"]
        assert files == [{"path": "00_Media/video.mp4", "size": 12345}, {"path": "links/inside.mp4", "size": 12345}]
        events = []
        for i, f in enumerate(files):
            events += [{"event": "started", "index": i, "path": f["path"], "size": f["size"]},
                       {"event": "completed", "index": i, "path": f["path"], "bytes": f["size"]}]
        rep = await worker.result("rpc", {"method": "cache.report", "data": {
            "key": hub.api_key, "jobId": job_id, "claim": claim["claim"], "events": events}})
        assert rep["data"] == {"status": "running"}
        fin = await worker.result("rpc", {"method": "cache.finish", "data": {
            "key": hub.api_key, "jobId": job_id, "claim": claim["claim"]}})
        assert fin["data"] == {"status": "completed"}
        await worker.close()
        await other.close()
        return job_id

    job_id = arun(body())
    job = get_job(hub, job_id).json()["job"]
    assert job["status"] == "completed" and job["progress"]["size"]["completedBytes"] == 24690
    assert [e["event"] for e in history(hub, f"cache:files:{job_id}")] == ["started", "completed"] * 2


def test_two_nodes_on_redis_run_each_job_once(hub_factory, tree, tmp_path):
    """Both nodes' built-in workers compete for the same queue in Redis: every job runs on one
    node only (one `started`, each file read once) and both nodes answer for every job."""
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True,
                                        text=True).stdout.strip() == "PONG", message="redis-server")
        args = ("--engine", "redis", "--redis-url", f"redis://127.0.0.1:{port}/0")
        a = cache_hub(hub_factory, tree, *args, "--node-name", "cache-a")
        b = cache_hub(hub_factory, tree, *args, "--node-name", "cache-b")
        jobs = []
        for n in range(6):
            files = [f"00_Media/Farm/ProRes422/{'' if i < 40 else 'ABCD'[(i - 40) % 4] + '/'}Farm{i:05d}.mov"
                     for i in range(n * 20, n * 20 + 20)]
            r = post_job(a if n % 2 else b, {"files": files})
            assert r.status_code == 201, r.text
            jobs.append((r.json()["jobId"], files))
        for job_id, files in jobs:
            for hub in (a, b):
                final = job_until(hub, job_id, lambda j: j["status"] == "completed")["job"]
                assert final["progress"]["files"]["completed"] == 20
            events = history(a, f"cache:files:{job_id}")
            started = sorted(e["path"] for e in events if e["event"] == "started")
            assert started == sorted(files), f"job {job_id}: files read {len(started)} times for 20 files"
        lifecycle = history(b, "cache:jobs")
        for job_id, _ in jobs:
            # once each, and in order across nodes: `created` is in the channel before the job
            # can be claimed, whichever node claims it
            assert [e["event"] for e in lifecycle if e["jobId"] == job_id] == ["created", "started", "finished"]
    finally:
        redis.terminate()
        redis.wait(10)


def test_finished_jobs_are_deleted_after_the_retention_and_unfinished_ones_kept(hub_factory, tree):
    """--cache-job-retention: a cancelled (finished) job goes after it, with its file list; a
    pending one older than the retention stays. Without this the store grew with every job."""
    hub = cache_hub(hub_factory, tree, "--cache-worker", "false", "--cache-job-retention", "2")
    r = post_job(hub, {"files": ["00_Media/video.mp4"]})
    assert r.status_code == 201, r.text
    pending = r.json()["jobId"]
    cancelled = post_job(hub, {"directories": ["00_Media/Farm"], "recursive": True}).json()["jobId"]
    assert hub.http.delete(f"{hub.url}/api/v1/cache/jobs/{cancelled}", headers={"X-API-Key": KEY}, timeout=WAIT).status_code == 200
    assert get_job(hub, cancelled).json()["job"]["status"] == "cancelled"
    started = time.monotonic()
    gone = wait_for(lambda: get_job(hub, cancelled).status_code == 404, timeout=10, interval=0.2,
                    message="the cancelled job to expire")
    assert gone and time.monotonic() - started >= 1.5, "deleted before its retention ran out"
    assert get_job(hub, cancelled).json() == {"success": False, "error": "Job not found"}
    listed = hub.http.get(hub.url + "/api/v1/cache/jobs", headers={"X-API-Key": KEY}, timeout=WAIT).json()
    assert [j["id"] for j in listed["jobs"]] == [pending]
    assert get_job(hub, pending).json()["job"]["status"] == "pending"
    # The file list went with it; the pending job's is still there (read from the hub's store).
    import sqlite3
    db = sqlite3.connect(f"file:{hub.workdir / 'data' / 'hub.db'}?mode=ro", uri=True)
    try:
        keys = [k for (k,) in db.execute("SELECT key FROM records WHERE key LIKE 'cache/%'")]
    finally:
        db.close()
    assert not [k for k in keys if cancelled in k], keys
    assert f"cache/job/{pending}" in keys and any(k.startswith(f"cache/files/{pending}/") for k in keys)
