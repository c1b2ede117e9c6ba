"""Channel features a Centrifugo user relies on, driven by the unmodified centrifuge-python SDK
(JSON and Protobuf) and by raw frames: fossil delta compression, publication tags with
server-side filters, and keep-latest ("cache") recovery for state channels."""

from __future__ import annotations

import asyncio
import json

import pytest
from centrifuge import DeltaType, Filter
from centrifuge.fossil import apply_delta

from hubtest import WAIT, arun, async_wait_for
from test_sdk import Events, SubEvents, data, make_client

CONFIG = {"namespaces": [
    {"name": "gw", "history_size": 100, "history_ttl": 300, "allowed_delta_types": ["fossil"]},
    {"name": "cache", "history_size": 100, "history_ttl": 300, "allowed_delta_types": ["fossil"]},
    {"name": "ticks", "history_size": 100, "history_ttl": 300, "allow_tags_filter": True},
    {"name": "state", "history_size": 10, "history_ttl": 300, "recovery_mode": "cache"},
    {"name": "plain", "history_size": 10, "history_ttl": 300},
]}


def gateway_state(n: int) -> dict:
    """A seed-000 gateway record as the hub publishes it: only the counters move."""
    return {"gw_id": "gw01", "status": "working", "room": "room-42", "ip": "10.0.0.7", "port": 8443,
            "participants": ["alice", "bob", "carol"], "transcript_lines": n,
            "updated_at": f"2026-12-06T04:00:{n:02d}Z", "note": "x" * 400}


def cache_progress(n: int) -> dict:
    return {"job_id": "job-7", "status": "running", "files_done": n, "files_total": 2000,
            "bytes_done": n * 65536, "throughput_mbps": 104.5, "current": f"/data/set/file-{n:05d}.bin"}


@pytest.fixture(params=["json", "protobuf"])
def codec(request) -> str:
    return request.param


@pytest.mark.parametrize("channel,make", [("gw:gw01", gateway_state), ("cache:job-7", cache_progress)])
def test_sdk_with_fossil_delta_gets_every_state_exactly(hub_factory, codec, channel, make):
    hub = hub_factory(config=CONFIG)

    async def main():
        events, sub_events = Events(), SubEvents()
        client = make_client(hub, events, codec)
        sub = client.new_subscription(channel, sub_events, delta=DeltaType.FOSSIL)
        try:
            await client.connect()
            await sub.subscribe()
            await sub.ready(WAIT)
            for n in range(1, 8):
                await asyncio.to_thread(hub.publish, channel, make(n))
            await async_wait_for(lambda: len(sub_events.pubs) >= 7, message="7 publications")
            assert [data(codec, c.pub.data) for c in sub_events.pubs] == [make(n) for n in range(1, 8)]
            assert [c.pub.offset for c in sub_events.pubs] == list(range(1, 8))
            # After the first (whole) publication, the rest travelled as deltas.
            assert [c.pub.delta for c in sub_events.pubs] == [False] + [True] * 6
        finally:
            await client.disconnect()
    arun(main())


def test_delta_on_the_wire_is_small_and_decodes_to_the_document(hub_factory):
    hub = hub_factory(config=CONFIG)

    async def main():
        async with await hub.client("alice") as c:
            reply = await c.subscribe("gw:gw01", delta="fossil")
            assert reply.get("delta") is True
            await asyncio.to_thread(hub.publish, "gw:gw01", gateway_state(1))
            await asyncio.to_thread(hub.publish, "gw:gw01", gateway_state(2))
            first, second = await c.pubs(2)
            assert first.get("delta") is not True and json.loads(first["data"]) == gateway_state(1)
            assert second["delta"] is True
            whole = len(first["data"])
            assert len(second["data"]) * 5 <= whole, (len(second["data"]), whole)
            rebuilt = apply_delta(first["data"].encode(), second["data"].encode())
            assert json.loads(rebuilt) == gateway_state(2)
            # A subscriber without delta on the same channel gets the whole documents.
            async with await hub.client("bob") as plain:
                await plain.subscribe("gw:gw01")
                await asyncio.to_thread(hub.publish, "gw:gw01", gateway_state(3))
                (pub,) = await plain.pubs(1)
                assert pub["data"] == gateway_state(3) and "delta" not in pub
            (third,) = await c.pubs(1)
            assert third["delta"] is True
            assert json.loads(apply_delta(rebuilt, third["data"].encode())) == gateway_state(3)
    arun(main())


def test_delta_refused_where_the_namespace_does_not_allow_it(hub_factory):
    hub = hub_factory(config=CONFIG)

    async def main():
        async with await hub.client("alice") as c:
            err = await c.error("subscribe", {"channel": "plain:x", "delta": "fossil"})
            assert err["code"] == 107
            err = await c.error("subscribe", {"channel": "gw:gw01", "delta": "xdelta"})
            assert err["code"] == 107 and "delta" in err["message"]
            # Nothing was subscribed: the same subscribe without delta works.
            await c.subscribe("plain:x")
    arun(main())


def test_sdk_tags_filter_delivers_only_matching_live_and_in_recovery(hub_factory, codec):
    hub = hub_factory(config=CONFIG)
    tf = Filter.all(Filter.eq("ticker", "AAPL"), Filter.gte("price", "100"))

    def tick(i, ticker, price):
        hub.api_result("publish", {"channel": "ticks:nasdaq", "data": {"i": i},
                                   "tags": {"ticker": ticker, "price": str(price)}})

    async def main():
        events, sub_events = Events(), SubEvents()
        client = make_client(hub, events, codec)
        sub = client.new_subscription("ticks:nasdaq", sub_events, tags_filter=tf, recoverable=True)
        try:
            await client.connect()
            await sub.subscribe()
            await sub.ready(WAIT)
            for i, (ticker, price) in enumerate([("AAPL", 120), ("MSFT", 300), ("AAPL", 90), ("AAPL", 101)]):
                await asyncio.to_thread(tick, i, ticker, price)
            await async_wait_for(lambda: len(sub_events.pubs) >= 2, message="the matching publications")
            await asyncio.sleep(0.2)
            assert [data(codec, c.pub.data) for c in sub_events.pubs] == [{"i": 0}, {"i": 3}]
            assert sub_events.pubs[0].pub.tags == {"ticker": "AAPL", "price": "120"}

            async def publish_while_away():
                for i, (ticker, price) in enumerate([("AAPL", 150), ("GOOG", 150), ("AAPL", 99)], start=4):
                    await asyncio.to_thread(tick, i, ticker, price)
            events.on_drop = publish_while_away
            await client._conn.close()
            await async_wait_for(lambda: len(sub_events.subscribed) == 2, message="resubscribed")
            await async_wait_for(lambda: len(sub_events.pubs) >= 3, message="recovered")
            await asyncio.sleep(0.2)
            assert sub_events.subscribed[1].recovered is True
            assert [data(codec, c.pub.data) for c in sub_events.pubs] == [{"i": 0}, {"i": 3}, {"i": 4}]
        finally:
            await client.disconnect()
    arun(main())


@pytest.mark.parametrize("tf,why", [
    ({"key": "ticker", "cmp": "like", "val": "A"}, "unknown filter comparison"),
    ({"op": "xor", "nodes": [{"key": "a", "cmp": "ex"}]}, "unknown filter op"),
    ({"op": "not", "nodes": [{"key": "a", "cmp": "ex"}, {"key": "b", "cmp": "ex"}]}, "exactly one"),
    ({"key": "price", "cmp": "gt", "val": "cheap"}, "numeric"),
    ({"key": "ticker", "cmp": "in"}, "needs vals"),
    ({"cmp": "eq", "val": "x"}, "needs a key"),
    ("ticker == AAPL", "must be an object"),
])
def test_invalid_filters_are_bad_requests_and_subscribe_nothing(hub_factory, tf, why):
    hub = hub_factory(config=CONFIG)

    async def main():
        async with await hub.client("alice") as c:
            err = await c.error("subscribe", {"channel": "ticks:nasdaq", "tf": tf})
            assert err["code"] == 107 and why in err["message"], err
            deep = {"key": "a", "cmp": "ex"}
            for _ in range(12):
                deep = {"op": "not", "nodes": [deep]}
            err = await c.error("subscribe", {"channel": "ticks:nasdaq", "tf": deep})
            assert err["code"] == 107
            err = await c.error("subscribe", {"channel": "plain:x", "tf": {"key": "a", "cmp": "ex"}})
            assert err["code"] == 107 and "not allowed" in err["message"]
            err = await c.error("subscribe", {"channel": "gw:gw01", "delta": "fossil",
                                              "tf": {"key": "a", "cmp": "ex"}})
            assert err["code"] == 107
            await c.subscribe("ticks:nasdaq")  # still free to subscribe properly
    arun(main())


def test_keep_latest_channel_gives_only_the_newest_state(hub_factory, codec):
    hub = hub_factory(config=CONFIG)

    async def main():
        for n in range(1, 6):
            await asyncio.to_thread(hub.publish, "state:gw01", {"status": "working", "n": n})
        events, sub_events = Events(), SubEvents()
        client = make_client(hub, events, codec)
        sub = client.new_subscription("state:gw01", sub_events)
        try:
            await client.connect()
            await sub.subscribe()
            await sub.ready(WAIT)
            # First subscribe: the current state at once, not the five before it.
            await async_wait_for(lambda: sub_events.pubs, message="the latest state")
            assert [data(codec, c.pub.data) for c in sub_events.pubs] == [{"status": "working", "n": 5}]

            async def publish_while_away():
                for n in range(6, 9):
                    await asyncio.to_thread(hub.publish, "state:gw01", {"status": "stopped", "n": n})
            events.on_drop = publish_while_away
            await client._conn.close()
            await async_wait_for(lambda: len(sub_events.subscribed) == 2, message="resubscribed")
            await async_wait_for(lambda: len(sub_events.pubs) >= 2, message="the newest state")
            await asyncio.sleep(0.2)
            assert sub_events.subscribed[1].recovered is True
            assert [data(codec, c.pub.data)["n"] for c in sub_events.pubs] == [5, 8]
        finally:
            await client.disconnect()
    arun(main())
