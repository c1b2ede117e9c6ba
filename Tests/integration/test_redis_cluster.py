"""The Redis engine on a real Redis Cluster (`--redis-cluster`): 3 primaries + 3 replicas started
by the test (`redis-cli --cluster create … --cluster-replicas 1`), two hub processes on it.

Channels are spread over slots of different primaries; a channel's keys share its slot through
hash tags (`hub:stream:{ch}`, `hub:meta:{ch}`, `hub:ch:{ch}`), and fan-out is sharded PUB/SUB.
The last test moves a live channel's slot to another primary while both hubs publish into it.
RESHARD_PUBLICATIONS (default 120) sets how many it publishes across the move.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List

import pytest
import requests

from hubtest import ARTIFACTS, WAIT, arun, async_wait_for, free_port, wait_for
from test_gateways import RECORD, TEN, fifty_starts, gateway_hub, post, simulators, statuses  # noqa: F401 (fixture)
from test_cache import cache_hub, history as channel_history, job_until, post_job, tree  # noqa: F401 (fixture)
from test_sdk import Events, SubEvents, make_client

HUB_CONFIG = {"channel": {"allow_publish_for_client": True},
              "rate_limits": {"teamcache": ["6/hour"]}}
CACHE_KEY = "cluster-cache-key"
RESHARD_PUBLICATIONS = int(os.environ.get("RESHARD_PUBLICATIONS", "120"))


class RedisCluster:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        # The cluster bus listens on port + 10000: stay below 55536.
        self.ports: List[int] = []
        while len(self.ports) < 6:
            port = free_port()
            if port < 55536 and port + 10000 not in self.ports and port not in self.ports:
                self.ports.append(port)
        self.procs: List[subprocess.Popen] = []

    def start(self) -> "RedisCluster":
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for port in self.ports:
            self.procs.append(subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled", "yes",
                 "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "2000",
                 "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                 "--logfile", str(ARTIFACTS / f"redis-cluster-{port}.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            wait_for(lambda: self.cli(port, "PING") == "PONG", message=f"redis-server {port}")
        out = subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                              "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        for port in self.ports:
            wait_for(lambda: "cluster_state:ok" in self.cli(port, "CLUSTER", "INFO"), timeout=30, message="cluster_state:ok")
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()

    @staticmethod
    def cli(port: int, *args: str, cluster: bool = False) -> str:
        out = subprocess.run(["redis-cli", *(["-c"] if cluster else []), "-p", str(port), *args],
                             capture_output=True, text=True, timeout=WAIT)
        return out.stdout.strip()

    @property
    def seeds(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    @property
    def live_port(self) -> int:
        """A node still running (the failover test kills one)."""
        return next(port for port, proc in zip(self.ports, self.procs) if proc.poll() is None)

    def slot(self, key: str) -> int:
        return int(self.cli(self.live_port, "CLUSTER", "KEYSLOT", key))

    def primaries(self) -> Dict[str, dict]:
        """node id → {port, slots: [(first, last)]} for every primary."""
        out: Dict[str, dict] = {}
        for line in self.cli(self.live_port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            ranges = []
            for part in fields[8:]:
                if part.startswith("["):
                    continue
                first, _, last = part.partition("-")
                ranges.append((int(first), int(last or first)))
            out[fields[0]] = {"port": int(fields[1].split(":")[1].split("@")[0]), "slots": ranges}
        return out

    def owner(self, slot: int) -> str:
        owner = self.owner_or_none(slot)
        assert owner is not None, f"no owner for slot {slot}"
        return owner

    def owner_or_none(self, slot: int):
        for node, info in self.primaries().items():
            if any(first <= slot <= last for first, last in info["slots"]):
                return node
        return None


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


def start_node(hub_factory, cluster: RedisCluster, name: str, *args: str, via_env: bool = False, **kwargs):
    env = {"API_GATEWAY_KEY": CACHE_KEY, **kwargs.pop("env", {})}
    seeds = ("--redis-cluster", cluster.seeds)
    if via_env:  # the same through HUB_REDIS_CLUSTER
        env["HUB_REDIS_CLUSTER"], seeds = cluster.seeds, ()
    hub = hub_factory("--engine", "redis", *seeds, "--node-name", name,
                      "--presence-ttl", "5", *args, config=HUB_CONFIG, env=env, **kwargs)
    # Ready once the slot map is known and the node directory (one slot) answers.
    wait_for(lambda: "error" not in hub.api("info", {}), message="info through the cluster")
    return hub


@pytest.fixture
def nodes(redis_cluster, hub_factory):
    return start_node(hub_factory, redis_cluster, "a"), start_node(hub_factory, redis_cluster, "b", via_env=True)


def channels_on_every_primary(cluster: RedisCluster, per_primary: int = 2) -> List[str]:
    """Channel names whose slots belong to each of the three primaries."""
    by_owner: Dict[str, List[str]] = {}
    while len(by_owner) < 3 or any(len(v) < per_primary for v in by_owner.values()):
        ch = f"room-{uuid.uuid4().hex[:8]}"
        owned = by_owner.setdefault(cluster.owner(cluster.slot(f"hub:ch:{{{ch}}}")), [])
        if len(owned) < per_primary:
            owned.append(ch)
    return [ch for owned in by_owner.values() for ch in owned]


# --------------------------------------------------------------------------------------------


def test_publications_on_either_node_reach_both_nodes_once_in_order(redis_cluster, nodes):
    a, b = nodes
    channels = channels_on_every_primary(redis_cluster)

    async def body():
        clients, subs = [], {}
        for hub, user in ((a, "alice"), (b, "bob")):
            client = make_client(hub, Events(), "json", user=user)
            await client.connect()
            await client.ready(WAIT)
            clients.append(client)
            for ch in channels:
                events = SubEvents()
                sub = client.new_subscription(ch, events)
                await sub.subscribe()
                await sub.ready(WAIT)
                subs[(user, ch)] = events
        try:
            # Sharded PUB/SUB: each hub subscribed on the channel's slot owner only.
            primaries = redis_cluster.primaries()
            for ch in channels:
                owner = redis_cluster.owner(redis_cluster.slot(f"hub:ch:{{{ch}}}"))
                for node, info in primaries.items():
                    counts = redis_cluster.cli(info["port"], "PUBSUB", "SHARDNUMSUB", f"hub:ch:{{{ch}}}").split()
                    assert counts[1] == ("2" if node == owner else "0"), (ch, node, counts)
            for n in range(6):
                for ch in channels:
                    assert "error" not in (a if n % 2 == 0 else b).publish(ch, {"n": n})
            for (user, ch), events in subs.items():
                await async_wait_for(lambda: len(events.pubs) >= 6, message=f"{user} in {ch}")
            await asyncio.sleep(0.5)  # anything extra would have arrived by now
            for (user, ch), events in subs.items():
                assert [c.pub.offset for c in events.pubs] == [1, 2, 3, 4, 5, 6], (user, ch)
                assert [c.pub.data["n"] for c in events.pubs] == list(range(6)), (user, ch)
        finally:
            for client in clients:
                await client.disconnect()

    arun(body())
    # The keys share the channel's slot on its owner; nothing lands under the plain names.
    ch = channels[0]
    assert redis_cluster.cli(redis_cluster.ports[0], "HGET", f"hub:meta:{{{ch}}}", "s", cluster=True) == "6"
    assert redis_cluster.cli(redis_cluster.ports[0], "XLEN", f"hub:stream:{{{ch}}}", cluster=True) == "6"


def test_history_presence_and_recovery_agree_across_nodes(redis_cluster, nodes):
    a, b = nodes
    ch = channels_on_every_primary(redis_cluster, per_primary=1)[1]

    async def body():
        alice = await a.client("alice")
        sub = await alice.subscribe(ch)
        epoch = sub["epoch"]
        bob = await b.client("bob")
        await bob.subscribe(ch)
        # Presence is written to Redis as the subscriber goes live, just after its subscribe
        # reply: both nodes see both users once it lands.
        for hub in (a, b):
            await async_wait_for(lambda: sorted(info["user"] for info in hub.api_result("presence", {"channel": ch})["presence"].values())
                                 == ["alice", "bob"], message=f"presence on {hub}")
        for n in range(3):
            (a, b)[n % 2].publish(ch, {"n": n})
        await alice.pubs(3, channel=ch)
        await alice.close()
        b.publish(ch, {"n": 3})
        a.publish(ch, {"n": 4})
        from_a, from_b = (hub.api_result("history", {"channel": ch, "limit": 10}) for hub in (a, b))
        assert from_a == from_b and [p["offset"] for p in from_a["publications"]] == [1, 2, 3, 4, 5]
        # Back on the other node, from where it left.
        alice = await b.client("alice")
        sub = await alice.subscribe(ch, recover=True, offset=3, epoch=epoch)
        assert sub.get("recovered") is True and [p["data"]["n"] for p in sub["publications"]] == [3, 4]
        await alice.close()
        await bob.close()

    arun(body())


def test_node_directory_and_control_messages_work_engine_wide(nodes):
    """The node list and server-API control messages: one slot and one sharded channel each."""
    a, b = nodes

    async def body():
        await async_wait_for(lambda: sorted(n["name"] for n in a.api_result("info")["nodes"]) == ["a", "b"],
                             message="both nodes announced")
        on_a, on_b = await a.client("alice"), await b.client("alice")
        a.api_result("send", {"user": "alice", "data": {"n": 1}})
        for tab in (on_a, on_b):
            assert (await tab.push(kind="message"))["message"] == {"data": {"n": 1}}
        b.api_result("disconnect", {"user": "alice"})
        assert await on_a.closed() == 3503 and await on_b.closed() == 3503

    arun(body())


def test_gateway_records_are_shared_and_readable_with_redis_cli(redis_cluster, hub_factory, simulators):
    args = ("--engine", "redis", "--redis-cluster", redis_cluster.seeds)
    a = gateway_hub(hub_factory, *args, interval=30)
    b = gateway_hub(hub_factory, *args, interval=30)
    simulators(*TEN, hub=a)
    wait_for(lambda: set(statuses(b)) == set(TEN), message="b sees a's registrations")
    codes = fifty_starts([a.url, b.url])
    assert sorted(codes) == [200] * 10 + [503] * 40
    # The records in many slots, each under its plain key; `redis-cli -c` follows the slot.
    slots = {redis_cluster.slot(f"gateway:{gw}") for gw in TEN}
    assert len({redis_cluster.owner(s) for s in slots}) > 1
    for gw in TEN:
        value = redis_cluster.cli(redis_cluster.ports[0], "GET", f"gateway:{gw}", cluster=True)
        assert RECORD.match(value), value
        assert value.split("|")[1] == "working"
    # A register through one node is read back on the other.
    assert post(b, "/register", {"gw_ip": "192.168.1.12", "gw_id": "gwx1", "gw_type": "recorder"}).status_code == 200
    assert re.match(r"192\.168\.1\.12\|started\|recorder\|", redis_cluster.cli(redis_cluster.ports[1], "GET", "gateway:gwx1", cluster=True))
    assert "gwx1" in statuses(a)


def test_cache_jobs_are_claimed_once_across_nodes(redis_cluster, hub_factory, tree):
    """Seed 001's job queue and leases are records: claims by compare-and-set, each in its slot."""
    args = ("--engine", "redis", "--redis-cluster", redis_cluster.seeds)
    a = cache_hub(hub_factory, tree, *args, "--node-name", "cache-a")
    b = cache_hub(hub_factory, tree, *args, "--node-name", "cache-b")
    jobs = []
    for n in range(4):
        files = [f"00_Media/Farm/ProRes422/Farm{i:05d}.mov" for i in range(n * 10, n * 10 + 10)]
        r = post_job(a if n % 2 else b, {"files": files})
        assert r.status_code == 201, r.text
        jobs.append((r.json()["jobId"], files))
    for job_id, files in jobs:
        for hub in (a, b):
            assert job_until(hub, job_id, lambda j: j["status"] == "completed")["job"]["progress"]["files"]["completed"] == 10
        started = sorted(e["path"] for e in channel_history(a, f"cache:files:{job_id}") if e["event"] == "started")
        assert started == sorted(files), f"job {job_id}: files read {len(started)} times for 10 files"


def test_rate_limit_holds_across_nodes(redis_cluster, nodes):
    a, b = nodes
    codes = [requests.get(f"{(a, b)[i % 2].url}/api/v1/cache/jobs/none-{i}", headers={"X-API-Key": CACHE_KEY},
                          timeout=WAIT).status_code for i in range(10)]
    assert codes.count(429) == 4, codes


def test_the_publication_stream_lands_in_its_own_slot_once_in_order(redis_cluster, hub_factory):
    """A namespace's Redis stream target on a cluster: one XADD per event to the node owning the
    stream key's slot (not the channel's), in order, readable with `redis-cli -c XRANGE`."""
    key = f"archive:{uuid.uuid4().hex[:8]}"
    config = {**HUB_CONFIG, "namespaces": [{"name": "feed", "history_size": 100, "history_ttl": 600,
                                             "publication_stream_redis_key": key}]}
    hub = hub_factory("--engine", "redis", "--redis-cluster", redis_cluster.seeds, "--node-name", "s", config=config)
    wait_for(lambda: "error" not in hub.api("info", {}), message="info through the cluster")
    channel = next(f"feed:{n}" for n in range(1000)
                   if redis_cluster.owner(redis_cluster.slot(f"hub:ch:{{feed:{n}}}")) != redis_cluster.owner(redis_cluster.slot(key)))
    for n in range(1, 11):
        hub.publish(channel, {"n": n})

    def entries():
        out = redis_cluster.cli(redis_cluster.live_port, "XRANGE", key, "-", "+", cluster=True).splitlines()
        return [json.loads(line) for line in out if line.startswith("{")]

    wait_for(lambda: len(entries()) == 10, message="10 stream entries")
    assert [(e["type"], e["channel"], e["offset"], e["data"]["n"]) for e in entries()] == \
        [("publication", channel, n, n) for n in range(1, 11)]


def test_resharding_a_live_channel_loses_and_repeats_nothing(redis_cluster, nodes):
    a, b = nodes
    cluster = redis_cluster
    ch = channels_on_every_primary(cluster, per_primary=1)[0]
    slot = cluster.slot(f"hub:ch:{{{ch}}}")

    async def body():
        clients, subs = [], []
        for hub, user in ((a, "alice"), (b, "bob")):
            client = make_client(hub, Events(), "json", user=user)
            await client.connect()
            await client.ready(WAIT)
            events = SubEvents()
            sub = client.new_subscription(ch, events)
            await sub.subscribe()
            await sub.ready(WAIT)
            clients.append(client)
            subs.append(events)
        failures: List[str] = []

        def publish_all():
            for n in range(RESHARD_PUBLICATIONS):
                reply = (a, b)[n % 2].api("publish", {"channel": ch, "data": {"n": n}})
                if "error" in reply:
                    failures.append(str(reply))
                time.sleep(0.01)

        publisher = threading.Thread(target=publish_all)
        publisher.start()
        await asyncio.sleep(0.3)
        await asyncio.to_thread(move_slot, cluster, slot)
        await asyncio.to_thread(publisher.join, 60)
        assert not failures, failures[:3]
        try:
            for events in subs:
                await async_wait_for(lambda: len(events.pubs) >= RESHARD_PUBLICATIONS, timeout=20,
                                     message="every publication, live or recovered")
            await asyncio.sleep(0.5)
            for events in subs:
                assert [c.pub.offset for c in events.pubs] == list(range(1, RESHARD_PUBLICATIONS + 1))
            # Still live on the new owner.
            a.publish(ch, {"n": "after"})
            for events in subs:
                await async_wait_for(lambda: len(events.pubs) == RESHARD_PUBLICATIONS + 1, message="live after the move")
        finally:
            for client in clients:
                await client.disconnect()

    source = cluster.owner(slot)
    arun(body(), timeout=90)
    target = cluster.owner(slot)
    assert target != source
    # Publications between MIGRATE and SETSLOT NODE went to the target after ASKING.
    stats = cluster.cli(cluster.primaries()[target]["port"], "INFO", "commandstats")
    assert re.search(r"cmdstat_asking:calls=[1-9]", stats), stats
    history = b.api_result("history", {"channel": ch, "limit": -1})
    assert history["offset"] == RESHARD_PUBLICATIONS + 1


def move_slot(cluster: RedisCluster, slot: int) -> None:
    """The steps of `redis-cli --cluster reshard` for one slot: IMPORTING/MIGRATING, MIGRATE the
    keys (all of a channel's in one call), then SETSLOT NODE on every primary."""
    primaries = cluster.primaries()
    source = cluster.owner(slot)
    target = next(node for node in primaries if node != source)
    sport, tport = primaries[source]["port"], primaries[target]["port"]
    assert cluster.cli(tport, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source) == "OK"
    assert cluster.cli(sport, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target) == "OK"
    time.sleep(0.2)  # publications meanwhile: served by the source, or ASKed to the target
    while True:
        keys = cluster.cli(sport, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
        if not keys:
            break
        out = cluster.cli(sport, "MIGRATE", "127.0.0.1", str(tport), "", "0", "5000", "KEYS", *keys)
        assert out in ("OK", "NOKEY"), out
    time.sleep(0.2)
    for port in [tport, sport] + [info["port"] for node, info in primaries.items() if node not in (source, target)]:
        assert cluster.cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target) == "OK"
    wait_for(lambda: cluster.owner(slot) == target, message="the slot's new owner")


def test_failover_of_a_channels_primary_keeps_subscribers_receiving(redis_cluster, nodes):
    """SIGKILL the primary of a live channel's slot: its replica takes over (cluster-node-timeout
    2 s), the hubs find it in the slot map and move the subscription; every acknowledged
    publication reaches both nodes' subscribers, in order, once. Runs last: it leaves a node dead."""
    a, b = nodes
    cluster = redis_cluster
    ch = channels_on_every_primary(cluster, per_primary=1)[2]
    slot = cluster.slot(f"hub:ch:{{{ch}}}")
    victim = cluster.primaries()[cluster.owner(slot)]["port"]

    async def body():
        clients, subs = [], []
        for hub, user in ((a, "alice"), (b, "bob")):
            client = make_client(hub, Events(), "json", user=user)
            await client.connect()
            await client.ready(WAIT)
            events = SubEvents()
            sub = client.new_subscription(ch, events)
            await sub.subscribe()
            await sub.ready(WAIT)
            clients.append(client)
            subs.append(events)
        acked: List[int] = []
        try:
            for n in range(5):
                acked.append((a, b)[n % 2].publish(ch, {"n": n})["offset"])
            cluster.procs[cluster.ports.index(victim)].kill()
            await asyncio.to_thread(wait_for, lambda: cluster.primaries().get(cluster.owner_or_none(slot) or "", {}).get("port") not in (None, victim),
                                    timeout=20, message="a replica promoted")
            deadline = time.monotonic() + 20
            while len(acked) < 10 and time.monotonic() < deadline:
                reply = (a, b)[len(acked) % 2].api("publish", {"channel": ch, "data": {"n": len(acked)}})
                if "error" not in reply:
                    acked.append(reply["result"]["offset"])
                else:
                    await asyncio.sleep(0.1)
            assert len(acked) == 10, "publishing works again after the failover"
            for events in subs:
                await async_wait_for(lambda: acked[-1] in [c.pub.offset for c in events.pubs], timeout=20,
                                     message="the publications after the failover")
                offsets = [c.pub.offset for c in events.pubs]
                assert offsets == sorted(set(offsets)) and set(acked) <= set(offsets), offsets
        finally:
            for client in clients:
                await client.disconnect()

    arun(body(), timeout=90)
