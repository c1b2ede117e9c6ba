"""The Redis engine end to end: several real hub processes sharing real redis-server processes
(started here on free ports, stopped at teardown). Cross-node fan-out, history and presence that
agree across nodes, recovery on another node, Redis killed and restarted under load, two shards,
and the node directory."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import zlib

import pytest

from hubtest import WAIT, arun, async_wait_for, free_port, wait_for


class RedisProcess:
    """One redis-server on a free port; `kill()` and `start()` again on the same port."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.dir = tmp_path / f"redis-{self.port}"
        self.dir.mkdir()
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        wait_for(lambda: self.cli("PING") == "PONG", message=f"redis-server on {self.port}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def cli(self, *args: str) -> str:
        r = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                           text=True, timeout=10)
        return r.stdout.strip()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis(tmp_path):
    r = RedisProcess(tmp_path)
    yield r
    if r.proc.poll() is None:
        r.proc.terminate()
        r.proc.wait(10)


@pytest.fixture
def redis2(tmp_path):
    r = RedisProcess(tmp_path)
    yield r
    if r.proc.poll() is None:
        r.proc.terminate()
        r.proc.wait(10)


def nodes(hub_factory, *urls: str, count: int = 2, extra=(), config=None):
    args = ["--engine", "redis"]
    for url in urls:
        args += ["--redis-url", url]
    return [hub_factory(*args, "--node-name", f"node-{chr(ord('a') + i)}", *extra, config=config)
            for i in range(count)]


def test_publication_on_one_node_reaches_subscribers_on_the_other_in_order_once(hub_factory, redis):
    a, b = nodes(hub_factory, redis.url, config={"channel": {"allow_publish_for_client": True}})

    async def main():
        on_a = await a.client("alice")
        publisher_on_b = await b.client("bob")
        try:
            await on_a.subscribe("news")
            # through the server API of node B ...
            for n in range(20):
                assert b.publish("news", {"n": n})["offset"] == n + 1
            # ... and a client publication on node B
            await publisher_on_b.result("publish", {"channel": "news", "data": {"n": 20}})
            pubs = await on_a.pubs(21, channel="news")
            assert [p["data"]["n"] for p in pubs] == list(range(21))
            assert [p["offset"] for p in pubs] == list(range(1, 22))
            await on_a.no_push(0.5)  # nothing twice
        finally:
            await on_a.close()
            await publisher_on_b.close()

    arun(main())


def test_history_and_presence_agree_across_nodes(hub_factory, redis):
    a, b = nodes(hub_factory, redis.url)

    async def main():
        ca = await a.client("alice")
        cb = await b.client("bob")
        try:
            await ca.subscribe("room")
            await cb.subscribe("room")
            for n in range(5):
                (a if n % 2 else b).publish("room", {"n": n})
            await ca.pubs(5, channel="room")
            ha = a.api_result("history", {"channel": "room", "limit": -1})
            hb = b.api_result("history", {"channel": "room", "limit": -1})
            assert ha == hb
            assert [p["data"]["n"] for p in ha["publications"]] == list(range(5))

            expected = {ca.connect_reply["client"], cb.connect_reply["client"]}
            for hub in (a, b):
                presence = hub.api_result("presence", {"channel": "room"})["presence"]
                assert set(presence) == expected
                assert {v["user"] for v in presence.values()} == {"alice", "bob"}
                assert hub.api_result("presence_stats", {"channel": "room"}) == {"num_clients": 2, "num_users": 2}
            await cb.close()
            for hub in (a, b):
                await async_wait_for(lambda: hub.api_result("presence_stats", {"channel": "room"})
                                     == {"num_clients": 1, "num_users": 1}, message="bob to leave presence")
        finally:
            await ca.close()
            await cb.close()

    arun(main())


def test_client_dropped_from_one_node_recovers_on_the_other(hub_factory, redis):
    a, b = nodes(hub_factory, redis.url)

    async def main():
        c = await a.client("alice")
        a.publish("rec", {"n": 0})
        res = await c.subscribe("rec")
        epoch, offset = res["epoch"], res["offset"]
        await c.close()
        for n in (1, 2, 3):
            (a if n == 2 else b).publish("rec", {"n": n})
        async with await b.client("alice") as c2:
            res = await c2.subscribe("rec", recover=True, offset=offset, epoch=epoch)
            assert res["recovered"] is True and res["epoch"] == epoch and res["offset"] == 4
            assert [p["data"]["n"] for p in res["publications"]] == [1, 2, 3]
            a.publish("rec", {"n": 4})
            nxt = (await c2.push(kind="pub", channel="rec"))["pub"]
            assert nxt["offset"] == 5 and nxt["data"] == {"n": 4}
            await c2.no_push(0.3)

    arun(main())


def test_redis_killed_and_restarted_mid_stream(hub_factory, redis):
    a, b = nodes(hub_factory, redis.url)

    async def main():
        sub = await a.client("alice")
        try:
            res = await sub.subscribe("live")
            epoch = res["epoch"]
            for n in range(3):
                b.publish("live", {"n": n})
            await sub.pubs(3, channel="live")

            redis.kill()
            # Both nodes keep serving their own connections and HTTP while Redis is away.
            for hub in (a, b):
                assert hub.get("/health").status_code == 200
            async with await b.client("carol") as local:
                assert local.connect_reply["client"]
            # A publication that needs Redis fails with an error, it is not silently dropped.
            r = b.post_raw("/api/publish", {"channel": "live", "data": {"n": "lost"}})
            assert r.status_code == 200 and "error" in r.json(), r.text

            redis.start()  # empty: the stream and its epoch are gone
            # Once both nodes have reconnected and resubscribed, a publication on node B reaches
            # node A's subscriber. Its stream has a new epoch, so the subscriber is not fed it
            # silently as if nothing was lost: it gets unsubscribe code 2500 (SDKs resubscribe)
            # and its recovery from the old position answers recovered=false with the new epoch.
            deadline = time.monotonic() + 20
            while True:
                b.post_raw("/api/publish", {"channel": "live", "data": {"n": "after"}})  # errors while reconnecting
                try:
                    push = await sub.push(timeout=0.5, channel="live")
                    break
                except AssertionError:
                    assert time.monotonic() < deadline, "nothing reached the subscriber after Redis came back"
            assert "unsubscribe" in push and push["unsubscribe"]["code"] == 2500, push
            res = await sub.subscribe("live", recover=True, offset=3, epoch=epoch)
            assert not res.get("recovered") and res["epoch"] != epoch
            b.publish("live", {"n": "next"})
            p = await sub.push(kind="pub", channel="live")
            assert p["pub"]["data"] == {"n": "next"}
        finally:
            await sub.close()

    arun(main(), timeout=60)
    for hub in (a, b):
        assert hub.alive()
        log = hub.log()
        # one line when the connection is lost, not one per message
        assert log.count("disconnected") <= 3, log[-3000:]


def test_two_shards_split_channels_and_both_work(hub_factory, redis, redis2):
    a, b = nodes(hub_factory, f"{redis.url},{redis2.url}")
    channels = [f"shard-{i}" for i in range(12)]

    async def main():
        sub = await a.client("alice")
        try:
            for ch in channels:
                await sub.subscribe(ch)
            for ch in channels:
                b.publish(ch, {"ch": ch})
            got = {(await sub.push(kind="pub"))["channel"] for _ in channels}
            assert got == set(channels)
        finally:
            await sub.close()

    arun(main())
    # Each shard holds the history of the channels hashed to it, and both hold some.
    per_shard = [set(r.cli("--scan").split()) for r in (redis, redis2)]
    owners = {}
    for ch in channels:
        owners[ch] = [i for i, keys in enumerate(per_shard) if any(k.endswith(":" + ch) for k in keys)]
        assert len(owners[ch]) == 1, (ch, per_shard)
    assert {o[0] for o in owners.values()} == {0, 1}, owners
    for ch in channels:
        assert a.api_result("history", {"channel": ch, "limit": -1}) == \
            b.api_result("history", {"channel": ch, "limit": -1})


def test_info_lists_live_nodes_and_a_killed_node_leaves_presence(hub_factory, redis):
    a, b = nodes(hub_factory, redis.url, extra=("--presence-ttl", "5"))
    wait_for(lambda: {n["name"] for n in a.api_result("info")["nodes"]} == {"node-a", "node-b"},
             timeout=15, message="both nodes in /api/info")
    assert {n["name"] for n in b.api_result("info")["nodes"]} == {"node-a", "node-b"}

    async def main():
        on_b = await b.client("bob")
        await on_b.subscribe("lobby")
        assert a.api_result("presence_stats", {"channel": "lobby"})["num_clients"] == 1
        b.stop(signal.SIGKILL)
        # the crashed node's client disappears from presence within the TTL (+ a refresh period)
        await async_wait_for(lambda: a.api_result("presence_stats", {"channel": "lobby"})["num_clients"] == 0,
                             timeout=20, message="the crashed node's client to leave presence")

    arun(main(), timeout=40)
    wait_for(lambda: {n["name"] for n in a.api_result("info")["nodes"]} == {"node-a"},
             timeout=40, message="the killed node to leave /api/info")
