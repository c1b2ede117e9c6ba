"""The Redis engine in Sentinel mode: real `redis-sentinel`s (three), a primary and a replica
`redis-server`, and two real hubs that find the primary through the sentinels and follow it
across failovers.

Replication is asynchronous, so a failover may lose the last publications the old primary
acknowledged. What must hold for a subscriber with recovery (the unmodified centrifuge-python
SDK): its offsets never skip and never repeat within an epoch, and after the failover it either
continues exactly or is told `recovered: false` with the new epoch.

HUB_SENTINEL_FAILOVERS (default 1) sets how many kill -9 failovers the failover test runs in a
row; each one restarts the dead server as the new replica first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from centrifuge import Client, ClientEventHandler, PublicationContext, SubscribedContext, \
    SubscriptionEventHandler

from hubtest import ARTIFACTS, WAIT, Hub, arun, async_wait_for, free_port, wait_for

logging.getLogger("centrifuge").setLevel(logging.WARNING)

REDIS_SERVER = "redis-server"
REDIS_CLI = "redis-cli"
MASTER = "hubmaster"
FAILOVERS = int(os.environ.get("HUB_SENTINEL_FAILOVERS", "1"))
# down-after 1 s, then election and promotion: a failover takes a few seconds.
FAILOVER_WAIT = 20.0

HUB_CONFIG = {"channel": {"allow_publish_for_client": True, "history_size": 1000, "history_ttl": 300}}


def cli(port: int, *args: str) -> str:
    out = subprocess.run([REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, f"redis-cli -p {port} {args}: {out.stderr}"
    return out.stdout.strip()


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Process:
    """One redis-server (data node or sentinel) on a fixed port, restartable on that port."""

    def __init__(self, workdir: Path, name: str):
        self.port = free_port()
        self.workdir = workdir
        self.name = name
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    def launch(self, argv: List[str]) -> None:
        self.starts += 1
        log = ARTIFACTS / f"sentinel-test-{self.name}-{self.port}.{self.starts}.log"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(argv + ["--logfile", str(log)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.alive() and answers(self.port), message=f"{self.name} on port {self.port}")

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"{self.name} on port {self.port} exited")
        return True

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def cli(self, *args: str) -> str:
        return cli(self.port, *args)


class DataServer(Process):
    """A redis-server without persistence (a restart comes back empty)."""

    def start(self, replica_of: Optional[int] = None) -> "DataServer":
        argv = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no"]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.launch(argv)
        return self

    def role(self) -> str:
        return self.cli("ROLE").splitlines()[0]


class Sentinel(Process):
    def start(self, primary: int) -> "Sentinel":
        conf = self.workdir / f"sentinel-{self.port}.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {self.workdir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 3000\n"
            f"sentinel parallel-syncs {MASTER} 1\n")
        self.launch([REDIS_SERVER, str(conf), "--sentinel"])
        return self

    def master(self) -> Dict[str, str]:
        lines = self.cli("SENTINEL", "MASTER", MASTER).splitlines()
        return dict(zip(lines[::2], lines[1::2]))

    def primary_port(self) -> int:
        return int(self.cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER).splitlines()[1])


class Topology:
    """A primary, a replica and three sentinels monitoring them as MASTER."""

    def __init__(self, workdir: Path):
        self.servers = [DataServer(workdir, "a"), DataServer(workdir, "b")]
        self.sentinels = [Sentinel(workdir, f"sentinel{i}") for i in range(3)]
        self.servers[0].start()
        self.servers[1].start(replica_of=self.servers[0].port)
        for sentinel in self.sentinels:
            sentinel.start(self.servers[0].port)
        self.wait_ready()

    @property
    def sentinel_arg(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def by_port(self, port: int) -> DataServer:
        return next(s for s in self.servers if s.port == port)

    @property
    def primary(self) -> DataServer:
        return self.by_port(self.sentinels[0].primary_port())

    @property
    def replica(self) -> DataServer:
        return next(s for s in self.servers if s is not self.primary)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Every sentinel names the same primary, knows the other two and a replica in sync:
        only then can they agree on a failover."""
        def ready() -> bool:
            ports = set()
            for sentinel in self.sentinels:
                m = sentinel.master()
                if int(m.get("num-other-sentinels", 0)) != 2 or int(m.get("num-slaves", 0)) != 1 \
                        or "s_down" in m.get("flags", "") or "o_down" in m.get("flags", ""):
                    return False
                ports.add(sentinel.primary_port())
            if len(ports) != 1:
                return False
            primary = self.by_port(ports.pop())
            replica = next(s for s in self.servers if s is not primary)
            info = replica.cli("INFO", "replication")
            return "master_link_status:up" in info and primary.role() == "master"
        wait_for(ready, timeout=timeout, interval=0.2, message="sentinels agreeing on a primary with a replica in sync")

    def stop(self) -> None:
        for process in self.sentinels + self.servers:
            process.stop()


@pytest.fixture
def topology(tmp_path_factory):
    t = Topology(tmp_path_factory.mktemp("sentinel"))
    yield t
    t.stop()


def start_node(hub_factory, topology: Topology, name: str, *extra: str) -> Hub:
    return hub_factory("--engine", "redis", "--redis-sentinel", topology.sentinel_arg,
                       "--redis-master-name", MASTER, "--node-name", name, "--presence-ttl", "5",
                       *extra, config=HUB_CONFIG)


def redis_lines(hub: Hub) -> List[str]:
    return [line for line in hub.log().splitlines() if "hub.redis" in line]


def connected_at(hub: Hub, port: int) -> bool:
    return any("connected" in line and f"at 127.0.0.1:{port}" in line for line in redis_lines(hub))


# --------------------------------------------------------------------------------------------
# A publisher through the server API and an SDK subscriber that records what it sees


class Publisher(threading.Thread):
    """Publishes {"n": i} through /api/publish every `interval` s until stopped: acknowledged
    ones as (n, offset, epoch), refused ones as (n, error)."""

    def __init__(self, hub: Hub, channel: str, interval: float = 0.02):
        super().__init__(daemon=True)
        self.hub, self.channel, self.interval = hub, channel, interval
        self.acked: List[Tuple[int, int, str]] = []
        self.failed: List[Tuple[int, Dict[str, Any]]] = []
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            try:
                out = self.hub.api("publish", {"channel": self.channel, "data": {"n": n}})
            except Exception as e:  # a hub that does not answer at all is a failure too
                out = {"error": {"code": -1, "message": repr(e)}}
            with self.lock:
                if "error" in out:
                    self.failed.append((n, out["error"]))
                else:
                    self.acked.append((n, out["result"]["offset"], out["result"]["epoch"]))
            n += 1
            self.halt.wait(self.interval)

    def epochs(self) -> List[str]:
        with self.lock:
            seen: List[str] = []
            for _, _, epoch in self.acked:
                if epoch not in seen:
                    seen.append(epoch)
            return seen

    def acked_in(self, epoch: str) -> int:
        with self.lock:
            return len([x for x in self.acked if x[2] == epoch])


class Recorder(SubscriptionEventHandler):
    """Every subscribed event and publication of one SDK subscription, in order."""

    def __init__(self):
        self.events: List[Tuple[str, Any]] = []

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.events.append(("subscribed", ctx))

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.events.append(("pub", ctx))

    def subscribed(self) -> List[SubscribedContext]:
        return [ctx for kind, ctx in self.events if kind == "subscribed"]

    def pubs(self) -> List[PublicationContext]:
        return [ctx for kind, ctx in self.events if kind == "pub"]

    def check(self, acked: List[Tuple[int, int, str]]) -> List[Tuple[str, int, int]]:
        """Asserts offsets continue exactly within each epoch (no hole, no duplicate) and that
        every resubscribe either recovered or said recovered:false with a new epoch; returns
        the (epoch, offset, n) seen. Data must agree with what the publisher was told."""
        told = {(epoch, offset): n for n, offset, epoch in acked}
        epoch, offset = None, None
        seen: List[Tuple[str, int, int]] = []
        for kind, ctx in self.events:
            if kind == "subscribed":
                position = ctx.stream_position
                assert position is not None and ctx.recoverable, ctx
                if epoch is None or not ctx.was_recovering:
                    epoch, offset = position.epoch, position.offset
                elif ctx.recovered:
                    assert position.epoch == epoch, f"recovered into another epoch: {ctx}"
                else:
                    assert position.epoch != epoch, f"recovered:false within the same epoch {epoch}: {ctx}"
                    epoch, offset = position.epoch, position.offset
                continue
            pub = ctx.pub
            assert pub.offset == offset + 1, f"offset {pub.offset} after {offset} in epoch {epoch}: " \
                                             f"a {'hole' if pub.offset > offset + 1 else 'duplicate'}"
            offset = pub.offset
            n = pub.data["n"]
            if (epoch, offset) in told:
                assert told[(epoch, offset)] == n, f"({epoch}, {offset}) carries n={n}, the publisher was told n={told[(epoch, offset)]}"
            seen.append((epoch, offset, n))
        return seen


def sdk_client(hub: Hub, user: str) -> Client:
    return Client(hub.ws_url, token=hub.token(user), timeout=WAIT, min_reconnect_delay=0.05,
                  max_reconnect_delay=0.5, proxy=None)


async def subscribe(hub: Hub, user: str, channel: str) -> Tuple[Client, Recorder]:
    recorder = Recorder()
    client = sdk_client(hub, user)
    sub = client.new_subscription(channel, recorder, min_resubscribe_delay=0.05, max_resubscribe_delay=0.5)
    await client.connect()
    await sub.subscribe()
    await sub.ready(WAIT)
    return client, recorder


def channel_name(prefix: str) -> str:
    return f"{prefix}-{os.urandom(5).hex()}"


# --------------------------------------------------------------------------------------------


def test_hubs_publish_subscribe_and_read_history_through_the_primary_sentinel_names(topology, hub_factory):
    a = start_node(hub_factory, topology, "a")
    b = start_node(hub_factory, topology, "b")
    ch = channel_name("news")
    primary = topology.primary

    async def body():
        client, recorder = await subscribe(a, "alice", ch)
        try:
            for n in range(3):
                b.publish(ch, {"n": n})
            await async_wait_for(lambda: len(recorder.pubs()) == 3, message="3 publications on the other node")
            assert [(p.pub.offset, p.pub.data["n"]) for p in recorder.pubs()] == [(1, 0), (2, 1), (3, 2)]
            history = a.api_result("history", {"channel": ch, "limit": -1})
            assert [p["data"]["n"] for p in history["publications"]] == [0, 1, 2]
            # The stream is on the primary the sentinels named, and remembers which primary wrote it.
            meta = primary.cli("HGETALL", f"hub:meta:{ch}").splitlines()
            fields = dict(zip(meta[::2], meta[1::2]))
            assert fields["s"] == "3" and fields["e"] == history["epoch"]
            assert fields["g"] == [l.split(":", 1)[1] for l in primary.cli("INFO", "replication").splitlines()
                                   if l.startswith("master_replid:")][0].strip()
            presence = b.api_result("presence_stats", {"channel": ch})
            assert presence["num_clients"] == 1
        finally:
            await client.disconnect()

    arun(body())
    for hub in (a, b):
        assert connected_at(hub, primary.port), redis_lines(hub)


def test_a_master_name_the_sentinels_do_not_monitor_is_logged_and_every_call_is_a_temporary_error(topology, hub_factory):
    hub = hub_factory("--engine", "redis", "--redis-sentinel", topology.sentinel_arg, "--redis-master-name", "nosuch",
                      config=HUB_CONFIG)
    wait_for(lambda: any("monitor no master named 'nosuch'" in l for l in redis_lines(hub)), message="the log line")
    out = hub.api("publish", {"channel": "x", "data": {}})
    assert out["error"]["code"] == 100 and "unavailable" in out["error"]["message"], out


def run_failover(topology: Topology, hubs: List[Hub], channel: str, trigger) -> None:
    """Subscribers on both hubs, a publisher on the second; `trigger(old_primary)` makes the
    failover happen; returns once both hubs publish through the new primary."""

    async def body():
        subscribers = [await subscribe(hub, f"user{i}", channel) for i, hub in enumerate(hubs)]
        publisher = Publisher(hubs[-1], channel)
        publisher.start()
        try:
            await async_wait_for(lambda: len(publisher.acked) >= 10, message="10 acknowledged publications")
            old = topology.primary
            replica = topology.replica
            old_epoch = publisher.epochs()[-1]
            trigger(old)
            # Both hubs find the promoted replica (through +switch-master or by asking again).
            await async_wait_for(lambda: all(connected_at(hub, replica.port) for hub in hubs), timeout=FAILOVER_WAIT,
                                 message="both hubs connected to the promoted replica")
            await async_wait_for(lambda: publisher.epochs()[-1] != old_epoch and publisher.acked_in(publisher.epochs()[-1]) >= 10,
                                 timeout=FAILOVER_WAIT, message="publications acknowledged by the new primary")
        finally:
            publisher.halt.set()
            publisher.join(WAIT)
        # The other hub publishes through the new primary too.
        last = hubs[0].publish(channel, {"n": -1})
        publisher.acked.append((-1, last["offset"], last["epoch"]))
        new_epoch = publisher.epochs()[-1]
        offsets = [offset for _, offset, epoch in publisher.acked if epoch == new_epoch]
        assert offsets == list(range(1, len(offsets) + 1)), "the new primary's stream starts over in a new epoch"
        for error in (e for _, e in publisher.failed):
            assert error["code"] == 100, error  # the documented temporary error, nothing else
        last_new = max(offsets)

        for client, recorder in subscribers:
            await async_wait_for(lambda: any(e == new_epoch and o == last_new for e, o, _ in recorder.check(publisher.acked)),
                                 timeout=10, message="the subscriber reaching the last publication of the new epoch")
            seen = recorder.check(publisher.acked)
            # After the failover the subscriber was told where it stands: it resubscribed and
            # either recovered or learned recovered:false with the new epoch.
            again = [ctx for ctx in recorder.subscribed() if ctx.was_recovering]
            assert again, "the subscriber never resubscribed across the failover"
            assert again[-1].stream_position.epoch == new_epoch
            # Everything of the new epoch from where it joined it, once each.
            joined = next(o for e, o, _ in seen if e == new_epoch)
            assert [o for e, o, _ in seen if e == new_epoch] == list(range(joined, last_new + 1))
            await client.disconnect()

    arun(body(), timeout=90)


def test_primary_killed_hubs_follow_the_promoted_replica_without_holes_or_duplicates(topology, hub_factory):
    hubs = [start_node(hub_factory, topology, "a"), start_node(hub_factory, topology, "b")]
    for round in range(FAILOVERS):
        if round > 0:
            # The dead server comes back empty, as the new primary's replica.
            dead = next(s for s in topology.servers if s.proc.poll() is not None)
            dead.start(replica_of=topology.primary.port)
            topology.wait_ready(timeout=30)
        run_failover(topology, hubs, channel_name(f"killed{round}"), lambda old: old.kill())
    for hub in hubs:
        assert hub.alive(), hub.log()[-2000:]
        lines = redis_lines(hub)
        assert len([l for l in lines if "connection lost" in l]) >= FAILOVERS, lines


def test_sentinel_failover_command_hubs_follow_the_switch(topology, hub_factory):
    hubs = [start_node(hub_factory, topology, "a"), start_node(hub_factory, topology, "b")]
    run_failover(topology, hubs, channel_name("graceful"),
                 lambda old: topology.sentinels[1].cli("SENTINEL", "FAILOVER", MASTER))
    # The old primary was alive: the hubs left it on the sentinels' word, not a broken connection.
    for hub in hubs:
        assert any("sentinel switched the master" in l for l in redis_lines(hub)), redis_lines(hub)


def test_min_replicas_ack_refuses_a_publication_no_replica_acknowledged(topology, hub_factory):
    hub = start_node(hub_factory, topology, "acked", "--redis-min-replicas-ack", "1", "--redis-replicas-ack-timeout", "300")
    ch = channel_name("acked")
    out = hub.api("publish", {"channel": ch, "data": {"n": 1}})
    assert out.get("result", {}).get("offset") == 1, out
    # The replica has it once the publication is acknowledged.
    replica = topology.replica
    assert replica.cli("HGET", f"hub:meta:{ch}", "s") == "1"

    replica.pause()
    try:
        started = time.monotonic()
        out = hub.api("publish", {"channel": ch, "data": {"n": 2}})
        took = time.monotonic() - started
        assert out["error"]["code"] == 100, out
        assert "replicas acknowledged" in out["error"]["message"] and "may still have taken effect" in out["error"]["message"], out
        assert 0.25 <= took < 2, took
        # Other commands of the shard go on meanwhile (history is a read: no acknowledgement).
        history = hub.api_result("history", {"channel": ch, "limit": -1})
        assert [p["data"]["n"] for p in history["publications"]] == [1, 2], "the write happened on the primary"
    finally:
        replica.resume()
    wait_for(lambda: "result" in hub.api("publish", {"channel": ch, "data": {"n": 3}}), timeout=WAIT,
             message="an acknowledged publication once the replica answers again")
    assert hub.alive()
    assert not [l for l in redis_lines(hub) if "connection lost" in l], "a WAIT running out is no lost connection"


@pytest.mark.parametrize("args, message", [
    (["--redis-sentinel", "127.0.0.1:26379"], "redis_sentinel needs redis_master_name"),
    (["--redis-sentinel", "127.0.0.1:26379", "--redis-master-name", MASTER, "--redis-url", "redis://127.0.0.1:6379/0"],
     "exclude each other"),
    (["--redis-sentinel", "127.0.0.1", "--redis-master-name", MASTER], "expected host:port"),
    (["--redis-url", "redis://127.0.0.1:6379/0", "--redis-master-name", MASTER], "redis_master_name needs redis_sentinel"),
    (["--redis-url", "redis://127.0.0.1:6379/0", "--redis-replicas-ack-timeout", "5000"], "1-3000 milliseconds"),
])
def test_inconsistent_sentinel_settings_stop_the_start(hub_factory, args, message):
    out = hub_factory.run("--engine", "redis", *args)
    assert out.returncode == 64 and message in out.stderr, out.stderr
