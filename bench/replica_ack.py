#!/usr/bin/env python3
"""What `--redis-min-replicas-ack` costs: publish latency through the server API with and without
`WAIT 1 <timeout>` after each publication, against a real primary + replica on loopback.

    HUB_BINARY=.build/release/hub python3 bench/replica_ack.py [--publishes 3000] [--threads 1,8]

Starts its own redis-servers (no persistence) and one hub per mode; publishes {"n": i} into a
channel with history through /api/publish (keep-alive HTTP, one session per thread) and prints a
Markdown table of p50/p99 latency and throughput per mode and concurrency.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import requests

API_KEY = "bench-api-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def redis(port: int, workdir: str, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", workdir, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(lambda: subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True).stdout.strip() == b"PONG",
         f"redis on {port}")
    return proc


def hub(binary: str, redis_port: int, workdir: str, *extra: str) -> tuple:
    port = free_port()
    config = Path(workdir) / f"hub-{port}.json"
    config.write_text(json.dumps({"channel": {"history_size": 100, "history_ttl": 300}}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HUB_")}, "HUB_API_KEY": API_KEY}
    proc = subprocess.Popen([binary, "--port", str(port), "--host", "127.0.0.1", "--log-level", "warning",
                             "--data-dir", f"{workdir}/data-{port}", "--config", str(config), "--engine", "redis",
                             "--redis-url", f"redis://127.0.0.1:{redis_port}/0", *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return requests.get(url + "/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False
    wait(healthy, "hub")
    return proc, url


def run(url: str, publishes: int, threads: int) -> dict:
    latencies: list = []
    lock = threading.Lock()
    errors = [0]
    per_thread = publishes // threads

    def worker(t: int) -> None:
        session = requests.Session()
        session.headers["X-API-Key"] = API_KEY
        mine = []
        for i in range(per_thread):
            started = time.perf_counter()
            out = session.post(url + "/api/publish", json={"channel": f"bench-{t}", "data": {"n": i}}).json()
            mine.append(time.perf_counter() - started)
            if "error" in out:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    # Warm up (scripts loaded, connections open) outside the measurement.
    worker(99)
    latencies.clear()
    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    took = time.perf_counter() - started
    latencies.sort()
    return {"p50": statistics.median(latencies) * 1000, "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
            "rate": len(latencies) / took, "errors": errors[0]}


def resp(*args: str) -> bytes:
    out = f"*{len(args)}\r\n".encode()
    for a in args:
        b = a.encode()
        out += f"${len(b)}\r\n".encode() + b + b"\r\n"
    return out


def redis_level(port: int, count: int, wait_after: bool) -> dict:
    """The same write straight to Redis (XADD + HINCRBY + PUBLISH in a MULTI, as near the publish
    script as plain commands get), alone or with WAIT 1 500 pipelined after it: what WAIT adds
    without the hub's HTTP path around it."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = s.makefile("rb")
        latencies = []
        for i in range(count):
            request = resp("MULTI") + resp("HINCRBY", "bench:meta", "s", "1") + \
                resp("XADD", "bench:stream", "MAXLEN", "100", "*", "d", str(i)) + resp("PUBLISH", "bench:ch", str(i)) + resp("EXEC")
            replies = 5
            if wait_after:
                request += resp("WAIT", "1", "500")
                replies += 1
            started = time.perf_counter()
            s.sendall(request)
            seen = 0
            while seen < replies:
                line = reader.readline()
                if line.startswith(b"*"):  # EXEC's array: its three elements follow
                    for _ in range(int(line[1:])):
                        element = reader.readline()
                        if element.startswith(b"$"):
                            reader.readline()
                seen += 1
            latencies.append(time.perf_counter() - started)
        latencies.sort()
        return {"p50": statistics.median(latencies) * 1000, "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
                "rate": count / sum(latencies), "errors": 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--publishes", type=int, default=3000)
    parser.add_argument("--threads", default="1,8")
    args = parser.parse_args()
    binary = os.environ.get("HUB_BINARY", ".build/debug/hub")
    with tempfile.TemporaryDirectory() as workdir:
        primary_port, replica_port = free_port(), free_port()
        servers = [redis(primary_port, workdir), redis(replica_port, workdir, "--replicaof", "127.0.0.1", str(primary_port))]
        wait(lambda: b"master_link_status:up" in subprocess.run(["redis-cli", "-p", str(replica_port), "INFO", "replication"],
                                                                capture_output=True).stdout, "replica in sync")
        rows = []
        for mode, wait_after in (("off", False), ("WAIT 1 500", True)):
            rows.append((mode + " (Redis only)", 1, redis_level(primary_port, args.publishes, wait_after)))
        try:
            for mode, extra in (("off", []), ("WAIT 1 500", ["--redis-min-replicas-ack", "1", "--redis-replicas-ack-timeout", "500"])):
                proc, url = hub(binary, primary_port, workdir, *extra)
                try:
                    for threads in (int(t) for t in args.threads.split(",")):
                        result = run(url, args.publishes, threads)
                        rows.append((mode, threads, result))
                finally:
                    proc.terminate()
                    proc.wait(10)
        finally:
            for server in servers:
                server.terminate()
                server.wait(10)
    print("| replicas ack | concurrent publishers | p50 ms | p99 ms | publishes/s | errors |")
    print("|---|---|---|---|---|---|")
    for mode, threads, r in rows:
        print(f"| {mode} | {threads} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rate']:.0f} | {r['errors']} |")


if __name__ == "__main__":
    main()
