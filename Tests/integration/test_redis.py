"""The Redis engine end to end: several real `hub` processes sharing real `redis-server`s.

Each test starts its own redis-server(s) on free ports (no persistence: `--save "" --appendonly
no`, so a restart loses everything, which is what the fault tests want) and two hubs with
`--engine redis`. Channel names are unique per test so nothing leaks between tests.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from hubtest import ARTIFACTS, WAIT, Hub, arun, async_wait_for, free_port, wait_for

REDIS_SERVER = "redis-server"
REDIS_CLI = "redis-cli"

# Short enough for the crash tests to run in seconds; the hub's minimum is 5.
PRESENCE_TTL = 5
# Nodes announce every min(5, presence_ttl / 3) s and drop out of /api/info after three missed
# announcements (docs/configuration.md, --presence-ttl): 3 s with a 5 s presence TTL.
NODE_TTL = 3

HUB_CONFIG = {"channel": {"allow_publish_for_client": True},
              "namespaces": [{"name": "short", "history_size": 3, "history_ttl": 30}]}


class RedisServer:
    """One real redis-server on a fixed port; can be SIGKILLed and started again on that port.
    `persistent`: append-only file fsynced before every reply (`--appendonly yes --appendfsync
    always`), so whatever Redis acknowledged survives a SIGKILL (test_faults.py)."""

    def __init__(self, workdir: Path, name: str, persistent: bool = False):
        self.port = free_port()
        self.workdir = workdir
        self.name = name
        self.persistent = persistent
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.starts += 1
        log = ARTIFACTS / f"redis-{self.name}-{self.port}.{self.starts}.log"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]),
             "--dir", str(self.workdir), "--daemonize", "no",
             "--logfile", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, message=f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"redis-server on port {self.port} exited")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (a hung or partitioned Redis)."""
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
        out = subprocess.run([REDIS_CLI, "-p", str(self.port), *args], capture_output=True,
                             text=True, timeout=WAIT)
        assert out.returncode == 0, f"redis-cli {args}: {out.stderr}"
        return out.stdout.strip()


@pytest.fixture
def redis_factory(tmp_path_factory):
    """redis_factory() -> a started RedisServer; all are stopped at teardown."""
    servers: List[RedisServer] = []

    def start() -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis"), name=str(len(servers) + 1))
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def start_node(hub_factory, name: str, *redis: RedisServer, url_arg: Optional[List[str]] = None) -> Hub:
    args = url_arg if url_arg is not None else ["--redis-url", ",".join(r.url for r in redis)]
    return hub_factory("--engine", "redis", *args, "--node-name", name,
                       "--presence-ttl", str(PRESENCE_TTL), config=HUB_CONFIG)


@pytest.fixture
def cluster(redis_factory, hub_factory):
    """One Redis, two hub nodes a and b on it."""
    redis = redis_factory()
    a = start_node(hub_factory, "a", redis)
    b = start_node(hub_factory, "b", redis)
    return redis, a, b


def channel_name(prefix: str = "room") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def fnv1a_shard(channel: str, count: int) -> int:
    """The hub's shard choice (RedisBroker.shardIndex): FNV-1a 32-bit of the UTF-8 name."""
    h = 2166136261
    for byte in channel.encode():
        h ^= byte
        h = (h * 16777619) & 0xFFFFFFFF
    return h % count


def numsub(redis: RedisServer, channel: str) -> int:
    """How many connections are SUBSCRIBEd to the channel's PUB/SUB channel on this Redis."""
    lines = redis.cli("PUBSUB", "NUMSUB", f"hub:ch:{channel}").splitlines()
    return int(lines[1]) if len(lines) == 2 else 0


def thread_switches(pid: int) -> Dict[int, int]:
    """Context switches (voluntary + involuntary) per thread of a process, from /proc."""
    counts = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
        counts[int(task.name)] = int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])
    return counts


def test_redis_replies_and_messages_are_handled_on_the_service_thread(redis_factory, hub_factory):
    """The Redis sockets live in the service loop: a publication makes no other thread of the
    publishing or the receiving node wake up (with a Redis I/O thread of its own, each one
    woke that thread and then the service thread again)."""
    redis = redis_factory()
    a, b = (hub_factory("--engine", "redis", "--redis-url", redis.url, "--node-name", name, "--threads", "1",
                        config=HUB_CONFIG) for name in ("a", "b"))
    ch = channel_name()
    count = 400

    async def body():
        alice = await b.client("alice")
        await alice.subscribe(ch)
        publisher = await a.client("bob")
        await publisher.result("publish", {"channel": ch, "data": {"n": -1}})
        assert (await alice.pubs(1, channel=ch))[0]["data"] == {"n": -1}
        before = {hub: thread_switches(hub.proc.pid) for hub in (a, b)}
        for n in range(count):
            await publisher.result("publish", {"channel": ch, "data": {"n": n}})
        assert [p["data"]["n"] for p in await alice.pubs(count, channel=ch)] == list(range(count))
        for hub in (a, b):
            after = thread_switches(hub.proc.pid)
            woken = sorted(after[t] - before[hub].get(t, 0) for t in after)
            # One thread (the service loop) does the work; every other thread wakes only for
            # its timers (once a second: the ticker, the shard's health check, the announcer).
            busy = [w for w in woken if w > count // 4]
            assert len(busy) == 1, f"threads woken per {count} publications: {woken}"

    arun(body())


# --------------------------------------------------------------------------------------------
# Fan-out, history, presence and recovery across nodes


def test_publication_on_one_node_reaches_subscribers_on_the_other_in_order_once(cluster):
    _, a, b = cluster
    ch = channel_name()

    async def body():
        alice = await a.client("alice")
        await alice.subscribe(ch)
        carol = await b.client("carol")  # a local subscriber on the publishing node too
        await carol.subscribe(ch)
        bob = await b.client("bob")
        for n in range(5):
            b.publish(ch, {"n": n})                                       # server API on B
            await bob.result("publish", {"channel": ch, "data": {"n": 100 + n}})  # client publish on B
        expected = [n for i in range(5) for n in (i, 100 + i)]
        for client in (alice, carol):
            pubs = await client.pubs(10, channel=ch)
            assert [p["data"]["n"] for p in pubs] == expected
            assert [p["offset"] for p in pubs] == list(range(1, 11))
        # The client publish carries its publisher's info across nodes.
        assert pubs[1]["info"]["user"] == "bob"
        await alice.no_push(0.5)  # exactly once: nothing more arrives
        await carol.no_push(0.1)

    arun(body())


def test_presence_and_history_agree_across_nodes(cluster):
    _, a, b = cluster
    ch = channel_name()

    async def body():
        alice = await a.client("alice")
        await alice.subscribe(ch)
        bob = await b.client("bob")
        await bob.subscribe(ch)
        clients = {alice.connect_reply["client"]: "alice", bob.connect_reply["client"]: "bob"}
        for hub in (a, b):
            presence = hub.api_result("presence", {"channel": ch})["presence"]
            assert {c: info["user"] for c, info in presence.items()} == clients
            assert hub.api_result("presence_stats", {"channel": ch}) == {"num_clients": 2, "num_users": 2}
        # And through the client protocol, from a subscriber on each node.
        for client in (alice, bob):
            presence = (await client.result("presence", {"channel": ch}))["presence"]
            assert {c: info["user"] for c, info in presence.items()} == clients

        for n in range(3):
            a.publish(ch, {"n": n})
        for n in range(3, 5):
            b.publish(ch, {"n": n})
        await alice.pubs(5, channel=ch)
        await bob.pubs(5, channel=ch)
        from_a = a.api_result("history", {"channel": ch, "limit": 10})
        from_b = b.api_result("history", {"channel": ch, "limit": 10})
        assert from_a == from_b
        assert [p["data"]["n"] for p in from_a["publications"]] == [0, 1, 2, 3, 4]
        assert [p["offset"] for p in from_a["publications"]] == [1, 2, 3, 4, 5]
        assert from_a["offset"] == 5 and from_a["epoch"]
        # Clients on either node read the same history.
        for client in (alice, bob):
            history = await client.result("history", {"channel": ch, "limit": 10})
            assert history["publications"] == from_a["publications"]
            assert (history["offset"], history["epoch"]) == (5, from_a["epoch"])

    arun(body())


def test_client_that_drops_from_one_node_recovers_on_the_other(cluster):
    _, a, b = cluster
    ch = channel_name()

    async def body():
        alice = await a.client("alice")
        sub = await alice.subscribe(ch)
        epoch = sub["epoch"]
        a.publish(ch, {"n": 1})
        b.publish(ch, {"n": 2})
        seen = await alice.pubs(2, channel=ch)
        assert [p["offset"] for p in seen] == [1, 2]
        await alice.close()

        # Missed while away: published on both nodes.
        a.publish(ch, {"n": 3})
        b.publish(ch, {"n": 4})
        a.publish(ch, {"n": 5})

        alice = await b.client("alice")
        sub = await alice.subscribe(ch, recover=True, offset=2, epoch=epoch)
        assert sub.get("recovered") is True and sub.get("was_recovering") is True
        assert sub["epoch"] == epoch and sub["offset"] == 5
        assert [p["data"]["n"] for p in sub.get("publications", [])] == [3, 4, 5]
        assert [p["offset"] for p in sub["publications"]] == [3, 4, 5]
        # Live again, nothing recovered arrives a second time.
        a.publish(ch, {"n": 6})
        (live,) = await alice.pubs(1, channel=ch)
        assert (live["offset"], live["data"]["n"]) == (6, 6)
        await alice.no_push(0.5)

    arun(body())


def test_history_in_redis_is_bounded_by_size_and_ttl(cluster):
    redis, a, b = cluster
    ch = channel_name("short:room")
    for n in range(1, 6):
        (a if n % 2 else b).publish(ch, {"n": n})
    history = b.api_result("history", {"channel": ch, "limit": 10})
    assert [p["offset"] for p in history["publications"]] == [3, 4, 5] and history["offset"] == 5
    assert redis.cli("XLEN", f"hub:stream:{ch}") == "3"
    assert 0 < int(redis.cli("TTL", f"hub:stream:{ch}")) <= 30
    assert redis.cli("HGET", f"hub:meta:{ch}", "e") == history["epoch"]

    async def body():
        # Too far behind for the 3 kept: told so, on either node, with the current position.
        alice = await b.client("alice")
        sub = await alice.subscribe(ch, recover=True, offset=1, epoch=history["epoch"])
        assert sub.get("recovered") is not True and sub["offset"] == 5 and sub["epoch"] == history["epoch"]
        bob = await a.client("bob")
        sub = await bob.subscribe(ch, recover=True, offset=3, epoch=history["epoch"])
        assert sub.get("recovered") is True and [p["offset"] for p in sub["publications"]] == [4, 5]

    arun(body())


# --------------------------------------------------------------------------------------------
# Redis killed and restarted under load


class Publisher(threading.Thread):
    """Publishes {"n": i} through /api/publish on one hub every `interval` s until stopped,
    remembering each outcome: (n, offset, epoch) when acknowledged, (n, error) when not."""

    def __init__(self, hub: Hub, channel: str, interval: float = 0.03):
        super().__init__(daemon=True)
        self.hub, self.channel, self.interval = hub, channel, interval
        self.acked: List[tuple] = []
        self.failed: List[tuple] = []
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            out = self.hub.api("publish", {"channel": self.channel, "data": {"n": n}})
            with self.lock:
                if "error" in out:
                    self.failed.append((n, out["error"]))
                else:
                    self.acked.append((n, out["result"]["offset"], out["result"]["epoch"]))
            n += 1
            self.halt.wait(self.interval)

    def count(self, epoch: Optional[str] = None, failed: bool = False) -> int:
        with self.lock:
            if failed:
                return len(self.failed)
            return len([x for x in self.acked if epoch is None or x[2] == epoch])


async def pubs_until_unsubscribe(client, channel: str, timeout: float = 10) -> tuple:
    """Publications of the channel up to its unsubscribe push: (pubs, unsubscribe)."""
    deadline = time.monotonic() + timeout
    pubs = []
    while True:
        push = await client.push(timeout=max(0.01, deadline - time.monotonic()), channel=channel)
        if "pub" in push:
            pubs.append(push["pub"])
        elif "unsubscribe" in push:
            return pubs, push["unsubscribe"]


def redis_log_lines(hub: Hub) -> List[str]:
    return [line for line in hub.log().splitlines() if "hub.redis" in line]


def test_redis_killed_and_restarted_mid_stream(cluster):
    redis, a, b = cluster
    ch = channel_name()

    async def body():
        alice = await a.client("alice")  # subscriber on A; the publisher is on B
        old_epoch = (await alice.subscribe(ch))["epoch"]
        carol = await b.client("carol")  # subscriber on the publishing node
        await carol.subscribe(ch)
        publisher = Publisher(b, ch)
        publisher.start()
        try:
            await async_wait_for(lambda: publisher.count() >= 10, message="10 acknowledged publications")
            redis.kill()
            # Both nodes notice and refuse what needs Redis with a clear error, without hanging.
            await async_wait_for(lambda: publisher.count(failed=True) >= 10,
                                 message="publishes failing while Redis is down")
            for _, error in publisher.failed:
                assert error["code"] == 100 and "redis" in error["message"], error
            out = a.api("publish", {"channel": ch, "data": {}})
            assert out["error"]["code"] == 100 and "unavailable" in out["error"]["message"], out
            # Commands for every node travel through Redis: refused, not acknowledged and dropped.
            for method, params in (("disconnect", {"user": "alice"}),
                                   ("subscribe", {"user": "alice", "channel": channel_name()}),
                                   ("presence", {"channel": ch}), ("history", {"channel": ch}), ("info", {})):
                out = a.api(method, params)
                assert out.get("error", {}).get("code") == 100, (method, out)
            # Local service goes on: health, new connections and connect work; subscribe needs
            # Redis and says so (error 100, the documented behaviour, docs/protocol.md).
            for hub in (a, b):
                assert hub.get("/health").status_code == 200
                dave = await hub.client("dave")
                err = await dave.error("subscribe", {"channel": channel_name()})
                assert err["code"] == 100 and "redis" in err["message"] and "unavailable" in err["message"], err
                await dave.close()
            assert (await alice.call("ping", {})).get("ping") == {}

            redis.start()  # same port, empty: the stream lost its data
            # Both nodes reconnect (backoff at most 2 s) and resubscribe their channels.
            await async_wait_for(lambda: all(any("connected again" in l for l in redis_log_lines(h)) for h in (a, b)),
                                 timeout=10, message="both nodes reconnected")
            await async_wait_for(lambda: publisher.count() > publisher.count(old_epoch), timeout=10,
                                 message="publishes acknowledged again after the restart")
        finally:
            publisher.halt.set()
            publisher.join(WAIT)
        acked_old = [x for x in publisher.acked if x[2] == old_epoch]
        acked_new = [x for x in publisher.acked if x[2] != old_epoch]
        new_epoch = acked_new[0][2]
        assert [x[1] for x in acked_new] == list(range(1, len(acked_new) + 1)), \
            "the lost stream starts again at offset 1 in a new epoch"

        for client in (alice, carol):
            # Every old-epoch publication in order, each once, then the unsubscribe that makes
            # SDKs resubscribe: never a silent jump into the new epoch. (The one publication
            # acknowledged in the instant Redis died may not have reached a node; the
            # unsubscribe covers that too.)
            pubs, unsubscribe = await pubs_until_unsubscribe(client, ch)
            assert unsubscribe["code"] == 2500, unsubscribe
            offsets = [p["offset"] for p in pubs]
            assert offsets == list(range(1, len(pubs) + 1))
            assert len(pubs) >= len(acked_old) - 1
            by_offset = {p["offset"]: p["data"]["n"] for p in pubs}
            for n, offset, _ in acked_old:
                if offset in by_offset:
                    assert by_offset[offset] == n
            # Resubscribing with the old position: not recovered, told the new epoch.
            sub = await client.subscribe(ch, recover=True, offset=offsets[-1], epoch=old_epoch)
            assert sub.get("was_recovering") is True and sub.get("recovered") is not True
            assert sub["epoch"] == new_epoch and sub["offset"] == len(acked_new)

        # The node directory is rebuilt from the next announcements.
        await async_wait_for(lambda: node_names(a) == ["a", "b"], timeout=NODE_TTL + 2,
                             message="both nodes listed again")
        # Cross-node delivery works again, in both directions.
        b.publish(ch, {"n": "after-1"})
        a.publish(ch, {"n": "after-2"})
        for client in (alice, carol):
            pubs = await client.pubs(2, channel=ch)
            assert [(p["offset"], p["data"]["n"]) for p in pubs] == \
                [(len(acked_new) + 1, "after-1"), (len(acked_new) + 2, "after-2")]
            await client.no_push(0.2)

    arun(body())
    for hub in (a, b):
        assert hub.alive(), f"hub crashed: {hub.log()[-2000:]}"
        lines = redis_log_lines(hub)
        # The outage is logged once (lost, maybe unreachable while retrying, connected again),
        # not once per failed publish or retry.
        assert len([l for l in lines if "connection lost" in l]) == 1, lines
        assert len([l for l in lines if "unreachable" in l]) <= 1, lines
        assert len([l for l in lines if "connected again" in l]) == 1, lines
        assert len(lines) <= 4, lines


def test_redis_that_stops_answering_counts_as_down_and_nothing_hangs(cluster):
    redis, a, b = cluster
    ch = channel_name()

    async def body():
        alice = await a.client("alice")
        epoch = (await alice.subscribe(ch))["epoch"]
        b.publish(ch, {"n": 1})
        assert [p["offset"] for p in await alice.pubs(1, channel=ch)] == [1]
        redis.pause()
        try:
            # The first call waits for the reply timeout (5 s), then fails; the next ones fail
            # at once while the node retries, instead of queueing without bound.
            started = time.monotonic()
            r = b.post_raw("/api/publish", {"channel": ch, "data": {"n": 2}}, timeout=15)
            waited = time.monotonic() - started
            assert r.status_code == 200 and r.json()["error"]["code"] == 100, r.text
            assert waited < 9, f"publish hung for {waited:.1f} s"
            await async_wait_for(lambda: "error" in a.post_raw("/api/publish", {"channel": ch, "data": {}}, timeout=15).json(),
                                 timeout=10, message="node A noticing the silent Redis too")
            started = time.monotonic()
            assert "error" in b.api("history", {"channel": ch, "limit": 1})
            assert time.monotonic() - started < 1
            assert (await alice.call("ping", {})).get("ping") == {}
        finally:
            redis.resume()
        # Back: same data (nothing was lost), so the stream goes on in the same epoch. Whether
        # the timed-out publishes (B's n=2, A's first {}) took effect when Redis woke is
        # unknowable to the callers; those that did reach alice (live or by recovering after an
        # unsubscribe 2500), never a gap.
        out = await async_wait_for(lambda: (lambda o: o if "result" in o else None)(
            b.api("publish", {"channel": ch, "data": {"n": 3}})), timeout=10, message="publishing again")
        top = out["result"]["offset"]
        pubs = []
        while not pubs or pubs[-1]["offset"] < top:
            push = await alice.push(channel=ch)
            if "unsubscribe" in push:
                # The stream moved on while A was away: recover from the last offset seen.
                assert push["unsubscribe"]["code"] == 2500
                sub = await alice.subscribe(ch, recover=True, offset=(pubs[-1]["offset"] if pubs else 1), epoch=epoch)
                assert sub.get("recovered") is True and sub["epoch"] == epoch
                pubs += sub.get("publications", [])
                break
            pubs.append(push["pub"])
        assert [p["offset"] for p in pubs] == list(range(2, top + 1)), "no gap, no duplicate"
        assert pubs[-1]["data"] == {"n": 3}
        assert all(p["data"] in ({"n": 2}, {}) for p in pubs[:-1]), pubs
        assert len([p for p in pubs if p["data"] == {"n": 2}]) <= 1 and len([p for p in pubs if p["data"] == {}]) <= 1, pubs
        await alice.no_push(0.3)

    arun(body())
    for hub in (a, b):
        assert hub.alive()
        lines = redis_log_lines(hub)
        assert len([l for l in lines if "connection lost" in l]) == 1, lines
        assert len([l for l in lines if "unreachable" in l]) <= 1, lines


# --------------------------------------------------------------------------------------------
# Sharding


def test_two_shards_each_carry_their_channels_across_nodes(hub_factory, redis_factory):
    first, second = redis_factory(), redis_factory()
    # Both ways of naming several shards: one comma-separated value, or the flag repeated.
    a = start_node(hub_factory, "a", first, second)
    b = start_node(hub_factory, "b", url_arg=["--redis-url", first.url, "--redis-url", second.url])
    names: Dict[int, str] = {}
    while len(names) < 2:
        ch = channel_name()
        names.setdefault(fnv1a_shard(ch, 2), ch)

    async def body():
        alice = await a.client("alice")
        for shard, ch in sorted(names.items()):
            await alice.subscribe(ch)
            b.publish(ch, {"shard": shard, "n": 1})
            a.publish(ch, {"shard": shard, "n": 2})
            pubs = await alice.pubs(2, channel=ch)
            assert [(p["offset"], p["data"]["n"]) for p in pubs] == [(1, 1), (2, 2)]
            history = [hub.api_result("history", {"channel": ch, "limit": 10}) for hub in (a, b)]
            assert history[0] == history[1] and history[0]["offset"] == 2
            presence = b.api_result("presence", {"channel": ch})["presence"]
            assert [info["user"] for info in presence.values()] == ["alice"]
        await alice.no_push(0.3)

    arun(body())
    # Each channel's stream, position, presence and PUB/SUB subscription live on its shard only.
    for shard, ch in names.items():
        home, other = (first, second) if shard == 0 else (second, first)
        for key in (f"hub:stream:{ch}", f"hub:meta:{ch}", f"hub:presence:{ch}"):
            assert home.cli("EXISTS", key) == "1", f"{key} missing on shard {shard}"
            assert other.cli("EXISTS", key) == "0", f"{key} on the wrong shard"
        assert home.cli("XLEN", f"hub:stream:{ch}") == "2"
        assert numsub(home, ch) == 1 and numsub(other, ch) == 0
    # The node directory lives on the first shard.
    wait_for(lambda: first.cli("HLEN", "hub:nodes") == "2", message="both nodes announced on the first shard")
    assert second.cli("EXISTS", "hub:nodes") == "0"


# --------------------------------------------------------------------------------------------
# Nodes know each other; a crashed node's traces expire


def node_names(hub: Hub) -> List[str]:
    return sorted(n["name"] for n in hub.api_result("info")["nodes"])


def test_info_lists_live_nodes_and_a_killed_node_leaves_info_and_presence(cluster):
    _, a, b = cluster
    ch = channel_name()
    wait_for(lambda: node_names(a) == ["a", "b"] and node_names(b) == ["a", "b"],
             message="both nodes listed by both")
    nodes = {n["name"]: n for n in a.api_result("info")["nodes"]}
    assert nodes["a"]["uid"] != nodes["b"]["uid"] and nodes["a"]["version"]

    async def body():
        alice = await a.client("alice")
        await alice.subscribe(ch)
        bob = await b.client("bob")
        await bob.subscribe(ch)
        # B's announcement carries its live numbers (refreshed within one announce interval).
        await async_wait_for(lambda: {n["name"]: n for n in a.api_result("info")["nodes"]}["b"]["num_clients"] == 1,
                             timeout=NODE_TTL + 2, message="node b announcing its client")
        users = lambda: sorted(i["user"] for i in a.api_result("presence", {"channel": ch})["presence"].values())
        assert users() == ["alice", "bob"]

        killed_at = time.monotonic()
        assert b.stop(signal.SIGKILL) == -signal.SIGKILL
        # No goodbye from B: its entries expire. Presence within presence_ttl, the node within
        # three announce intervals (plus the second of rounding both are kept in).
        await async_wait_for(lambda: users() == ["alice"], timeout=PRESENCE_TTL + 2,
                             message="bob gone from presence")
        await async_wait_for(lambda: node_names(a) == ["a"], timeout=NODE_TTL + 2,
                             message="node b gone from /api/info")
        assert time.monotonic() - killed_at <= PRESENCE_TTL + 2
        # A live node's own clients stay: they are refreshed well within the TTL.
        await asyncio.sleep(1.5)
        assert users() == ["alice"] and node_names(a) == ["a"]
        assert (await alice.call("ping", {})).get("ping") == {}

    arun(body())


def test_user_wide_disconnect_send_and_refresh_reach_every_node(cluster):
    """Server API calls on one node act on the user's connections on both (through Redis)."""
    _, a, b = cluster

    async def body():
        on_a, on_b, bob = await a.client("alice"), await b.client("alice"), await b.client("bob")
        a.api_result("send", {"user": "alice", "data": {"n": 1}})
        for tab in (on_a, on_b):
            assert (await tab.push(kind="message"))["message"] == {"data": {"n": 1}}
        b.api_result("disconnect", {"user": "alice"})
        assert await on_a.closed() == 3503 and await on_b.closed() == 3503
        again_a, again_b = await a.client("alice"), await b.client("alice")
        a.api_result("refresh", {"user": "alice", "expired": True})
        assert await again_a.closed() == 3005 and await again_b.closed() == 3005
        assert (await bob.call("ping", {})).get("ping") == {}
    arun(body())


def test_channels_and_connections_list_every_nodes_clients(cluster):
    """`channels` and `connections` on either node see the subscribers and clients of both
    (a survey through Redis), with a channel's counts summed over the nodes; a node that
    stopped answering drops out of the listing instead of failing it."""
    _, a, b = cluster
    shared, only_b = channel_name("shared"), channel_name("onlyb")

    async def body():
        await async_wait_for(lambda: len(a.api_result("info")["nodes"]) == 2, message="both nodes announced")
        alice_a, alice_b, bob_b = await a.client("alice"), await b.client("alice"), await b.client("bob")
        await alice_a.subscribe(shared)
        await alice_b.subscribe(shared)
        await bob_b.subscribe(shared)
        await bob_b.subscribe(only_b)
        for node in (a, b):
            listed = node.api_result("channels")["channels"]
            assert listed[shared] == {"num_clients": 3} and listed[only_b] == {"num_clients": 1}, listed
            assert set(node.api_result("channels", {"pattern": "onlyb-*"})["channels"]) == {only_b}
            everyone = node.api_result("connections")["connections"]
            assert set(everyone) == {c.connect_reply["client"] for c in (alice_a, alice_b, bob_b)}
            alices = node.api_result("connections", {"user": "alice"})["connections"]
            assert set(alices) == {alice_a.connect_reply["client"], alice_b.connect_reply["client"]}
            assert all(entry["user"] == "alice" for entry in alices.values())
        assert a.api("channels", {"pattern": 7})["error"]["code"] == 107
        # Node b frozen: its announcement is still fresh, so a waits for it, then answers with its own.
        b.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            listed = a.api_result("channels")["channels"]
            assert time.monotonic() - started < 5
            assert listed[shared] == {"num_clients": 1} and only_b not in listed, listed
            assert set(a.api_result("connections")["connections"]) == {alice_a.connect_reply["client"]}
        finally:
            b.proc.send_signal(signal.SIGCONT)
        await async_wait_for(lambda: a.api_result("channels")["channels"].get(shared) == {"num_clients": 3},
                             message="b answers again after SIGCONT")
    arun(body())
