"""Scenario `failover` of bench/run.sh: the publish gap a subscriber sees when the Redis primary
behind a hub is SIGKILLed and Redis Sentinel promotes its replica.

Topology (all on 127.0.0.1, all pinned to --server-cpu like every server in the benchmark): a
primary and a replica redis-server, three redis-sentinels (down-after-milliseconds 1000,
failover-timeout 3000, quorum 2), one hub with `--engine redis --redis-sentinel ... --redis-master-name`.
A publisher thread POSTs /api/publish every --interval-ms (one thread per request, so a request
hanging in the failover does not hold the next ones back); a WebSocket client subscribed to a
channel with history follows the hub's `unsubscribe` 2500 (new epoch after a failover) by
subscribing again, as the SDKs do. Then --kills times: SIGKILL the primary, wait for publishes to be
acknowledged again, restart the dead server as the new primary's replica and wait until the
sentinels agree again.

Per kill, written as JSON lines to --out:
- gap_ms: from the last publication delivered before the kill to the first delivered publication
  that was published (sent) after the kill and acknowledged: the hole the subscriber sees;
- outage_ms: from the kill to the acknowledgement of the first publish sent after it;
- failed: publishes refused (error / non-200 / timeout) meanwhile; acked_undelivered: acknowledged
  publications the subscriber never got (the replica may lack what the old primary acknowledged,
  and the subscriber's recovery across the new epoch is `recovered: false`).
Then one summary line with p50 / max over the kills.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import websockets

MASTER = "benchmaster"
CHANNEL = "failover"


def log(*args: object) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(check, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (subprocess.SubprocessError, OSError, ValueError, IndexError):
            pass
        time.sleep(interval)
    raise SystemExit(f"failover: timed out waiting for {what}")


def cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=5,
                          check=True).stdout


class Topology:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.pin = ["taskset", "-c", str(args.server_cpu)]
        self.data_ports = [args.base_port, args.base_port + 1]
        self.sentinel_ports = [args.base_port + 10 + i for i in range(3)]
        self.procs: dict[int, subprocess.Popen] = {}
        self.starts = 0

    def launch(self, port: int, argv: list[str]) -> None:
        self.starts += 1
        logfile = os.path.join(self.args.workdir, f"redis-{port}.{self.starts}.log")
        self.procs[port] = subprocess.Popen(self.pin + argv + ["--logfile", logfile], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: answers(port), 10, f"redis on port {port}")

    def start_data(self, port: int, replica_of: int | None = None) -> None:
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                "--dir", self.args.workdir, "--daemonize", "no"]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.launch(port, argv)

    def start(self) -> None:
        self.start_data(self.data_ports[0])
        self.start_data(self.data_ports[1], replica_of=self.data_ports[0])
        for port in self.sentinel_ports:
            conf = os.path.join(self.args.workdir, f"sentinel-{port}.conf")
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self.args.workdir}\n"
                        f"sentinel monitor {MASTER} 127.0.0.1 {self.data_ports[0]} 2\n"
                        f"sentinel down-after-milliseconds {MASTER} {self.args.down_after_ms}\n"
                        f"sentinel failover-timeout {MASTER} 3000\n"
                        f"sentinel parallel-syncs {MASTER} 1\n")
            self.launch(port, ["redis-server", conf, "--sentinel"])
        self.wait_ready()

    def primary_port(self) -> int:
        return int(cli(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER).splitlines()[1])

    def wait_ready(self) -> None:
        """Every sentinel names the same primary, knows the other two and a replica in sync: only
        then can they agree on the next failover."""
        def ready() -> bool:
            ports = set()
            for port in self.sentinel_ports:
                lines = cli(port, "SENTINEL", "MASTER", MASTER).splitlines()
                m = dict(zip(lines[::2], lines[1::2]))
                if int(m.get("num-other-sentinels", 0)) != 2 or int(m.get("num-slaves", 0)) < 1 \
                        or "s_down" in m.get("flags", "") or "o_down" in m.get("flags", ""):
                    return False
                ports.add(int(cli(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER).splitlines()[1]))
            if len(ports) != 1:
                return False
            primary = ports.pop()
            replica = next(p for p in self.data_ports if p != primary)
            return "master_link_status:up" in cli(replica, "INFO", "replication") \
                and cli(primary, "ROLE").splitlines()[0] == "master"
        wait_for(ready, 30, "sentinels agreeing on a primary with a replica in sync", 0.2)

    def hub_args(self) -> list[str]:
        return ["--redis-sentinel", ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
                "--redis-master-name", MASTER]

    def restart(self, port: int) -> None:
        """The dead server back, as the new primary's replica."""
        self.start_data(port, replica_of=self.primary_port())

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


class ClusterTopology(Topology):
    """Six `redis-server --cluster-enabled yes` (three primaries, a replica each); the kill hits
    the primary owning the channel's slot, and its replica is promoted by the cluster itself."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.data_ports = [args.base_port + i for i in range(6)]

    def start_node(self, port: int) -> None:
        folder = os.path.join(self.args.workdir, str(port))
        os.makedirs(folder, exist_ok=True)
        # the same nodes.conf on a restart: the node rejoins as its successor's replica
        self.launch(port, ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled", "yes",
                           "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.args.down_after_ms),
                           "--dir", folder, "--save", "", "--appendonly", "no", "--daemonize", "no",
                           # no 5 s wait for more replicas before a full sync
                           "--repl-diskless-sync-delay", "0"])

    def start(self) -> None:
        for port in self.data_ports:
            self.start_node(port)
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.data_ports],
                        "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, timeout=60, check=True)
        self.wait_ready()

    def nodes(self) -> list[list[str]]:
        port = next(p for p in self.data_ports if p in self.procs)
        return [line.split() for line in cli(port, "CLUSTER", "NODES").splitlines() if line.strip()]

    def primary_port(self) -> int:
        # the channel's stream key `hub:stream:{failover}`: its hash tag decides the slot
        slot = int(cli(self.data_ports[0] if self.data_ports[0] in self.procs else next(iter(self.procs)),
                       "CLUSTER", "KEYSLOT", "{" + CHANNEL + "}").strip())
        for node in self.nodes():
            if "master" in node[2] and "fail" not in node[2]:
                for r in node[8:]:
                    lo, _, hi = r.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        return int(node[1].split(":")[1].split("@")[0])
        raise ValueError("no primary owns the channel's slot")

    def wait_ready(self) -> None:
        """Every node says cluster_state:ok and each of the three primaries has a connected replica."""
        def ready() -> bool:
            for port in self.procs:
                if "cluster_state:ok" not in cli(port, "CLUSTER", "INFO"):
                    return False
            nodes = self.nodes()
            masters = [n for n in nodes if "master" in n[2] and "fail" not in n[2] and len(n) > 8]
            replicas = [n for n in nodes if "slave" in n[2] and "fail" not in n[2] and n[7] == "connected"]
            # a replica can only be promoted once its first sync is done
            return len(masters) == 3 and len(replicas) == 3 and all(
                "master_link_status:up" in cli(int(n[1].split(":")[1].split("@")[0]), "INFO", "replication")
                for n in replicas)
        wait_for(ready, 60, "the cluster at cluster_state:ok with a replica in sync per primary", 0.2)

    def hub_args(self) -> list[str]:
        return ["--redis-cluster", ",".join(f"127.0.0.1:{p}" for p in self.data_ports)]

    def restart(self, port: int) -> None:
        self.start_node(port)


def token(secret: str, subject: str) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    head = b64(b'{"alg":"HS256","typ":"JWT"}')
    body = b64(json.dumps({"sub": subject, "exp": int(time.time()) + 86400}).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


class Publisher:
    """Publishes {"seq": n} every interval; records when each was sent and acknowledged."""

    def __init__(self, port: int, interval_s: float):
        self.port, self.interval_s = port, interval_s
        self.sent: dict[int, float] = {}
        self.acked: dict[int, float] = {}
        self.failed: dict[int, float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def one(self, seq: int) -> None:
        body = json.dumps({"channel": CHANNEL, "data": {"seq": seq}})
        ok = False
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn.request("POST", "/api/publish", body, {"X-API-Key": "k", "Content-Type": "application/json"})
            resp = conn.getresponse()
            reply = resp.read()
            conn.close()
            ok = resp.status == 200 and "error" not in json.loads(reply or b"{}")
        except (OSError, http.client.HTTPException, ValueError):
            ok = False
        now = time.monotonic()
        with self.lock:
            (self.acked if ok else self.failed)[seq] = now

    def run(self) -> None:
        seq, next_at = 0, time.monotonic()
        while not self.stopping.is_set():
            seq += 1
            with self.lock:
                self.sent[seq] = time.monotonic()
            threading.Thread(target=self.one, args=(seq,), daemon=True).start()
            next_at += self.interval_s
            time.sleep(max(0.0, next_at - time.monotonic()))


class Subscriber:
    """A Centrifugo JSON-protocol client on the channel; records the first delivery of each seq."""

    def __init__(self, port: int):
        self.url = f"ws://127.0.0.1:{port}/connection/websocket"
        self.received: dict[int, float] = {}
        self.subscribed = asyncio.Event()
        self.resubscribes = 0

    async def run(self) -> None:
        next_id = 1
        while True:
            try:
                async with websockets.connect(self.url, max_size=None) as ws:
                    await ws.send(json.dumps({"id": next_id, "connect": {"token": token("s", "failover-sub")}}))
                    next_id += 1
                    await ws.send(json.dumps({"id": next_id, "subscribe": {"channel": CHANNEL}}))
                    next_id += 1
                    async for frame in ws:
                        now = time.monotonic()
                        for line in frame.splitlines() if isinstance(frame, str) else []:
                            msg = json.loads(line) if line.strip() else {}
                            if not msg:
                                await ws.send("{}")  # the server's ping wants a pong
                                continue
                            if "subscribe" in msg and "id" in msg:
                                self.subscribed.set()
                            push = msg.get("push") or {}
                            pub = push.get("pub")
                            if pub and isinstance(pub.get("data"), dict) and "seq" in pub["data"]:
                                self.received.setdefault(pub["data"]["seq"], now)
                            elif "unsubscribe" in push:
                                # a new epoch after the failover: subscribe again, as an SDK does
                                self.resubscribes += 1
                                await ws.send(json.dumps({"id": next_id, "subscribe": {"channel": CHANNEL}}))
                                next_id += 1
            except (OSError, websockets.WebSocketException) as e:
                log("subscriber reconnecting after", repr(e))
                await asyncio.sleep(0.1)


def measure(pub: Publisher, sub: Subscriber, t_kill: float, t_until: float) -> dict:
    with pub.lock:
        sent = dict(pub.sent)
        acked = dict(pub.acked)
        failed = dict(pub.failed)
    received = dict(sub.received)
    before = [t for t in received.values() if t < t_kill]
    after_sent = [s for s, t in sent.items() if t > t_kill and t < t_until]
    acked_after = sorted(s for s in after_sent if s in acked)
    delivered_after = [received[s] for s in acked_after if s in received]
    window = [s for s, t in sent.items() if t_kill - 5 < t < t_until]
    out = {
        "gap_ms": round(1000 * (min(delivered_after) - max(before)), 1) if before and delivered_after else None,
        "outage_ms": round(1000 * (acked[acked_after[0]] - t_kill), 1) if acked_after else None,
        "failed": sum(1 for s in window if s in failed),
        "acked_undelivered": sum(1 for s in window if s in acked and s not in received),
    }
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main_async(args: argparse.Namespace) -> None:
    os.makedirs(args.workdir, exist_ok=True)
    topo = ClusterTopology(args) if args.redis == "cluster" else Topology(args)
    hub = None
    out = open(args.out, "a")
    try:
        topo.start()
        log(f"{args.redis} topology ready; the channel's primary on", topo.primary_port())
        conf = os.path.join(args.workdir, "hub-failover.json")
        with open(conf, "w") as f:
            json.dump({"channel": {"allow_publish_for_client": True, "history_size": 1000, "history_ttl": 300}}, f)
        env = dict(os.environ, HUB_TOKEN_HMAC_SECRET="s", HUB_API_KEY="k")
        hub = subprocess.Popen(topo.pin + [args.hub, "--host", "127.0.0.1", "--port", str(args.hub_port),
                                           "--log-level", "warning", "--config", conf,
                                           "--data-dir", os.path.join(args.workdir, "hub-data"),
                                           "--engine", "redis", *topo.hub_args(), "--threads", str(args.threads)],
                               env=env, stdin=subprocess.DEVNULL, stdout=open(os.path.join(args.workdir, "hub.log"), "a"),
                               stderr=subprocess.STDOUT)
        wait_for(lambda: answers(args.hub_port), 15, "the hub")
        sub = Subscriber(args.hub_port)
        sub_task = asyncio.create_task(sub.run())
        await asyncio.wait_for(sub.subscribed.wait(), 10)
        pub = Publisher(args.hub_port, args.interval_ms / 1000)
        threading.Thread(target=pub.run, daemon=True).start()
        kills = []
        for i in range(1, args.kills + 1):
            await asyncio.sleep(args.steady_s)
            # steady state first: the last publishes acknowledged and delivered
            with pub.lock:
                last = max(pub.acked) if pub.acked else 0
            if last not in sub.received:
                await asyncio.sleep(1)
            primary = topo.primary_port()
            t_kill = time.monotonic()
            topo.kill(primary)
            log(f"kill {i}: SIGKILL primary on {primary}")
            deadline = t_kill + args.timeout_s

            def recovered() -> bool:
                with pub.lock:
                    return any(t > t_kill and s in pub.acked and s in sub.received for s, t in pub.sent.items())
            while time.monotonic() < deadline and not recovered():
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)  # publishes in flight at the recovery finish
            r = measure(pub, sub, t_kill, time.monotonic())
            r.update({"scenario": "failover", "phase": "kill", "server": "hub-failover", "redis": args.redis,
                      "kill": i, "interval_ms": args.interval_ms, "down_after_ms": args.down_after_ms})
            log(f"kill {i}: {r}")
            out.write(json.dumps(r) + "\n")
            out.flush()
            kills.append(r)
            await asyncio.to_thread(topo.restart, primary)
            await asyncio.to_thread(topo.wait_ready)
        pub.stopping.set()
        sub_task.cancel()
        gaps = [k["gap_ms"] for k in kills if k["gap_ms"] is not None]
        outages = [k["outage_ms"] for k in kills if k["outage_ms"] is not None]
        summary = {"scenario": "failover", "phase": "summary", "server": "hub-failover", "redis": args.redis,
                   "kills": len(kills), "recovered": len(gaps), "interval_ms": args.interval_ms,
                   "down_after_ms": args.down_after_ms, "resubscribes": sub.resubscribes,
                   "failed": sum(k["failed"] for k in kills), "acked_undelivered": sum(k["acked_undelivered"] for k in kills)}
        if gaps:
            summary.update(gap_p50_ms=round(statistics.median(gaps), 1), gap_max_ms=max(gaps))
        if outages:
            summary.update(outage_p50_ms=round(statistics.median(outages), 1), outage_max_ms=max(outages))
        out.write(json.dumps(summary) + "\n")
        log("summary", summary)
    finally:
        if hub is not None:
            hub.terminate()
            try:
                hub.wait(5)
            except subprocess.TimeoutExpired:
                hub.kill()
        topo.stop()
        out.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hub", required=True, help="the hub binary")
    p.add_argument("--out", required=True, help="results.jsonl to append to")
    p.add_argument("--workdir", required=True)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--redis", choices=["sentinel", "cluster"], default="sentinel",
                   help="a Sentinel set (primary, replica, three sentinels) or a 3-primary Redis Cluster")
    p.add_argument("--interval-ms", type=float, default=10)
    p.add_argument("--down-after-ms", type=int, default=1000)
    p.add_argument("--steady-s", type=float, default=2, help="publishing before each kill")
    p.add_argument("--timeout-s", type=float, default=30, help="longest wait for publishes to come back")
    p.add_argument("--base-port", type=int, default=17100, help="data servers on it and +1, sentinels on +10..+12")
    p.add_argument("--hub-port", type=int, default=17120)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="the hub's service threads")
    # run.sh's cleanup sends SIGTERM: end through `finally`, which stops the servers started here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
