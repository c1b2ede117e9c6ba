#!/usr/bin/env python3
"""Cache-worker benchmark (seed 001): the hub's built-in cache worker against plain sequential
reading (`cat files > /dev/null`) on the same tree, plus job creation time for a directory of
100,000 files.

    python3 bench/cache.py [--hub .build/release/hub] [--big-mb 2048] [--small 20000]

The tree is made under a temporary directory: real (non-sparse) large files, so the disk and page
cache are exercised, and many small files. The page cache is dropped before each read pass when
possible (root: /proc/sys/vm/drop_caches); otherwise both passes read from the page cache, which
the output says.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

KEY = "bench-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"X-API-Key": KEY, "Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=120) as r:
        return json.loads(r.read())


def drop_caches():
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def make_tree(root, big_mb, small):
    os.makedirs(f"{root}/big", exist_ok=True)
    chunk = os.urandom(1 << 20)
    for i in range(4):
        with open(f"{root}/big/take{i}.mxf", "wb") as f:
            for _ in range(big_mb // 4):
                f.write(chunk)
    for d in range(small // 1000):
        os.makedirs(f"{root}/small/d{d:03d}", exist_ok=True)
        for i in range(1000):
            with open(f"{root}/small/d{d:03d}/f{i:04d}.bin", "wb") as f:
                f.write(chunk[: 4096 + (i * 37) % 60000])


def cat_seconds(root, sub):
    files = []
    for dirpath, _, names in os.walk(f"{root}/{sub}"):
        files += [os.path.join(dirpath, n) for n in sorted(names)]
    start = time.monotonic()
    subprocess.run(f"xargs -0 cat > /dev/null", shell=True, input="\0".join(files).encode(), check=True)
    return time.monotonic() - start, sum(os.path.getsize(f) for f in files)


def hub_seconds(base, sub):
    body = call("POST", f"{base}/api/v1/cache/jobs", {"directories": [sub]})
    job_id = body["jobId"]
    start = time.monotonic()
    while True:
        job = call("GET", f"{base}/api/v1/cache/jobs/{job_id}")["job"]
        if job["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.01)
    # startedAt/completedAt are the worker's own clock: the read time without creation or polling.
    def parse(ts):
        import datetime
        return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()
    assert job["status"] == "completed", job
    return parse(job["completedAt"]) - parse(job["startedAt"]), job["progress"]["size"]["completedBytes"], time.monotonic() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hub", default=".build/debug/hub")
    ap.add_argument("--big-mb", type=int, default=2048)
    ap.add_argument("--small", type=int, default=20000)
    ap.add_argument("--creation-files", type=int, default=100000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cache-bench-")
    root = f"{work}/root"
    port = free_port()
    proc = None
    try:
        make_tree(root, args.big_mb, args.small)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env.update({"API_GATEWAY_KEY": KEY, "CACHE_ROOT": root, "CACHE_PROGRESS_FILE_THRESHOLD": "10"})
        cfg = f"{work}/hub.json"
        with open(cfg, "w") as f:
            json.dump({"rate_limits": {"teamcache": ["100000/minute"]}}, f)
        proc = subprocess.Popen([args.hub, "--port", str(port), "--host", "127.0.0.1", "--data-dir", f"{work}/data",
                                 "--config", cfg, "--log-level", "warning"], env=env, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                call("GET", f"{base}/api/v1/health")
                break
            except OSError:
                time.sleep(0.05)
        cold = drop_caches()
        print(f"page cache {'dropped before each pass' if cold else 'NOT dropped (not root): both passes read cached pages'}")
        for sub in ("big", "small"):
            results = {}
            for name in ("cat", "hub", "cat", "hub"):  # interleaved, best of two each
                if cold:
                    drop_caches()
                if name == "cat":
                    seconds, size = cat_seconds(root, sub)
                else:
                    seconds, size, _ = hub_seconds(base, sub)
                results.setdefault(name, []).append((seconds, size))
            cat_s, size = min(results["cat"])
            hub_s, hub_size = min(results["hub"])
            mb = size / 1048576
            print(f"{sub:5s}: {mb:8.0f} MB  cat {mb / cat_s:8.1f} MB/s ({cat_s:.2f}s)   hub worker {hub_size / 1048576 / hub_s:8.1f} MB/s ({hub_s:.2f}s)   hub/cat {cat_s / hub_s * 100:5.1f}%")
        # Job creation on a directory of N empty files.
        many = f"{root}/many"
        os.makedirs(many)
        for d in range(args.creation_files // 1000):
            os.makedirs(f"{many}/d{d:03d}")
            for i in range(1000):
                open(f"{many}/d{d:03d}/f{i:04d}", "wb").close()
        call("POST", f"{base}/api/v1/cache/jobs", {"directories": ["many/d000"]})  # warm the directory cache path
        start = time.monotonic()
        body = call("POST", f"{base}/api/v1/cache/jobs", {"directories": ["many"]})
        created = time.monotonic() - start
        print(f"job creation, {body['totalFiles']} files in one directory tree: {created * 1000:.0f} ms (request to 201, file list stored)")
        health_start = time.monotonic()
        call("GET", f"{base}/api/v1/health")
        print(f"health answered in {(time.monotonic() - health_start) * 1000:.1f} ms right after")
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
