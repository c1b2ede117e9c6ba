"""The third-party SDKs, unchanged: centrifuge-python (client) and cent (server API).

Every client scenario runs twice: over the JSON flavour of the protocol and over the Protobuf
flavour (`use_protobuf=True`, subprotocol `centrifuge-protobuf`, binary frames)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import List

import pytest
from cent import BroadcastRequest, Client as CentClient, HistoryRequest, InfoRequest, \
    PresenceStatsRequest, PublishRequest
from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    PublicationContext,
    ServerPublicationContext,
    ServerSubscribedContext,
    SubscribedContext,
    SubscriptionEventHandler,
)

from hubtest import WAIT, arun, async_wait_for

logging.getLogger("centrifuge").setLevel(logging.WARNING)


def cent_client(hub) -> CentClient:
    return CentClient(f"{hub.url}/api", hub.api_key, timeout=WAIT)


class Events(ClientEventHandler):
    """Client events; `on_drop` (async callable) runs inside on_connecting after a lost
    connection, i.e. before the SDK schedules its reconnect."""

    def __init__(self):
        self.connected: List[ConnectedContext] = []
        self.connecting: List[ConnectingContext] = []
        self.disconnected: List[DisconnectedContext] = []
        self.server_subscribed: List[ServerSubscribedContext] = []
        self.server_pubs: List[ServerPublicationContext] = []
        self.on_drop = None

    async def on_connected(self, ctx):
        self.connected.append(ctx)

    async def on_connecting(self, ctx):
        self.connecting.append(ctx)
        if ctx.code != 0 and self.on_drop is not None:
            drop, self.on_drop = self.on_drop, None
            await drop()

    async def on_disconnected(self, ctx):
        self.disconnected.append(ctx)

    async def on_subscribed(self, ctx):
        self.server_subscribed.append(ctx)

    async def on_publication(self, ctx):
        self.server_pubs.append(ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self):
        self.pubs: List[PublicationContext] = []
        self.subscribed: List[SubscribedContext] = []

    async def on_subscribed(self, ctx):
        self.subscribed.append(ctx)

    async def on_publication(self, ctx):
        self.pubs.append(ctx)


@pytest.fixture(params=["json", "protobuf"])
def codec(request) -> str:
    return request.param


def make_client(hub, events, codec, user="alice", **kwargs) -> Client:
    kwargs.setdefault("token", hub.token(user))
    return Client(hub.ws_url, events=events, timeout=WAIT, min_reconnect_delay=0.05,
                  max_reconnect_delay=0.5, proxy=None, use_protobuf=codec == "protobuf", **kwargs)


def data(codec, value):
    """A payload as the SDK receives it, back to JSON: Protobuf carries the JSON bytes."""
    return json.loads(value) if codec == "protobuf" else value


def datas(codec, contexts):
    return [data(codec, c.pub.data) for c in contexts]


def test_sdk_subscribe_receives_cent_publications(hub, codec):
    cent = cent_client(hub)

    async def main():
        events, sub_events = Events(), SubEvents()
        client = make_client(hub, events, codec)
        sub = client.new_subscription("sdk-news", sub_events)
        try:
            await client.connect()
            await client.ready(WAIT)
            await sub.subscribe()
            await sub.ready(WAIT)
            assert events.connected and events.connected[0].client
            assert sub_events.subscribed[0].recoverable is True

            for i in range(3):
                res = await asyncio.to_thread(
                    cent.publish, PublishRequest(channel="sdk-news", data={"i": i}))
                assert res.offset == i + 1 and res.epoch
            await async_wait_for(lambda: len(sub_events.pubs) >= 3, message="3 publications")
            assert datas(codec, sub_events.pubs) == [{"i": 0}, {"i": 1}, {"i": 2}]
            assert [c.pub.offset for c in sub_events.pubs] == [1, 2, 3]

            # broadcast through cent, read history and presence through the SDK
            out = await asyncio.to_thread(
                cent.broadcast, BroadcastRequest(channels=["sdk-news", "other"], data="b"))
            assert len(out.responses) == 2
            await async_wait_for(lambda: len(sub_events.pubs) >= 4, message="broadcast")
            assert data(codec, sub_events.pubs[3].pub.data) == "b"
            hist = await sub.history(limit=-1)
            assert [p.offset for p in hist.publications] == [1, 2, 3, 4]
            stats = await sub.presence_stats()
            assert stats.num_clients == 1 and stats.num_users == 1
            stats = await asyncio.to_thread(
                cent.presence_stats, PresenceStatsRequest(channel="sdk-news"))
            assert stats.num_clients == 1
            info = await asyncio.to_thread(cent.info, InfoRequest())
            assert info.nodes[0].num_clients == 1
            hist = await asyncio.to_thread(
                cent.history, HistoryRequest(channel="sdk-news", limit=2, reverse=True))
            assert [p.offset for p in hist.publications] == [4, 3]
        finally:
            await client.disconnect()
    arun(main())


@pytest.mark.parametrize("drop", ["transport_closed", "server_disconnect_3000"])
def test_sdk_recovers_missed_publications_after_reconnect(hub, drop, codec):
    cent = cent_client(hub)
    channel = f"sdk-rec-{drop}"

    async def main():
        events, sub_events = Events(), SubEvents()
        client = make_client(hub, events, codec)
        sub = client.new_subscription(channel, sub_events)
        try:
            await client.connect()
            await sub.subscribe()
            await sub.ready(WAIT)
            await asyncio.to_thread(cent.publish, PublishRequest(channel=channel, data="live-1"))
            await async_wait_for(lambda: len(sub_events.pubs) == 1, message="first publication")
            first_client_id = events.connected[0].client

            async def publish_while_away():
                # Runs while the SDK is between connections (before it schedules a reconnect).
                for n in (1, 2, 3):
                    await asyncio.to_thread(
                        cent.publish, PublishRequest(channel=channel, data={"missed": n}))
            events.on_drop = publish_while_away

            if drop == "transport_closed":
                await client._conn.close()  # the SDK's websocket: a lost connection to it
            else:
                await asyncio.to_thread(hub.api_result, "disconnect", {
                    "user": "alice", "disconnect": {"code": 3000, "reason": "reconnect"}})

            await async_wait_for(lambda: len(sub_events.subscribed) == 2, timeout=WAIT,
                                 message="the SDK to resubscribe")
            await async_wait_for(lambda: len(sub_events.pubs) >= 4, message="recovered pubs")
            assert events.on_drop is None, "the SDK never reported the lost connection"
            assert len(events.connected) == 2
            assert events.connected[1].client != first_client_id
            assert not events.disconnected

            again = sub_events.subscribed[1]
            assert again.was_recovering is True
            assert again.recovered is True
            offsets = [c.pub.offset for c in sub_events.pubs]
            assert offsets == [1, 2, 3, 4]
            assert datas(codec, sub_events.pubs[1:]) == [{"missed": 1}, {"missed": 2},
                                                                 {"missed": 3}]
            # live again, and nothing arrives twice
            await asyncio.to_thread(cent.publish, PublishRequest(channel=channel, data="live-2"))
            await async_wait_for(lambda: len(sub_events.pubs) >= 5, message="live publication")
            await asyncio.sleep(0.2)
            assert [c.pub.offset for c in sub_events.pubs] == [1, 2, 3, 4, 5]
        finally:
            await client.disconnect()
    arun(main())


def test_sdk_server_side_subscription_recovers(hub, codec):
    cent = cent_client(hub)
    channel = "sdk-server-side"

    async def main():
        events = Events()
        client = make_client(hub, events, codec, token=hub.token("alice", channels=[channel]))
        try:
            await client.connect()
            await client.ready(WAIT)
            await async_wait_for(lambda: events.server_subscribed, message="server subscribe")
            assert events.server_subscribed[0].channel == channel
            assert events.server_subscribed[0].recoverable is True
            await asyncio.to_thread(cent.publish, PublishRequest(channel=channel, data=0))
            await async_wait_for(lambda: len(events.server_pubs) == 1, message="publication")

            async def publish_while_away():
                for n in (1, 2):
                    await asyncio.to_thread(cent.publish,
                                            PublishRequest(channel=channel, data=n))
            events.on_drop = publish_while_away
            await client._conn.close()

            await async_wait_for(lambda: len(events.server_pubs) >= 3 and
                                 len(events.server_subscribed) >= 2,
                                 message="server-side recovery")
            assert events.server_subscribed[1].recovered is True
            assert [c.pub.offset for c in events.server_pubs] == [1, 2, 3]
            assert datas(codec, events.server_pubs) == [0, 1, 2]
        finally:
            await client.disconnect()
    arun(main())


def test_sdk_gets_new_token_after_109(hub, codec):
    async def main():
        calls = []

        async def get_token():
            calls.append(time.time())
            return hub.token("alice")

        events = Events()
        client = make_client(hub, events, codec, token=hub.token("alice", exp=int(time.time()) - 60),
                             get_token=get_token)
        try:
            await client.connect()
            await client.ready(WAIT)
            assert client.state == ClientState.CONNECTED
            assert len(calls) == 1
        finally:
            await client.disconnect()
    arun(main())


def test_sdk_terminal_disconnect_on_bad_token(hub, codec):
    async def main():
        events = Events()
        client = make_client(hub, events, codec, token="garbage.token.value")
        await client.connect()
        await async_wait_for(lambda: events.disconnected, message="disconnected event")
        assert events.disconnected[0].code == 3500
        assert client.state == ClientState.DISCONNECTED
    arun(main())


CHAT_CONFIG = {"namespaces": [{"name": "room", "allow_publish_for_subscriber": True,
                               "presence": True, "allow_presence_for_subscriber": True,
                               "history_size": 10, "history_ttl": 300,
                               "allow_history_for_subscriber": True}]}


def test_sdk_client_publishes_and_reads_presence(hub_factory, codec):
    hub = hub_factory(config=CHAT_CONFIG)

    def payload(value):
        return json.dumps(value).encode() if codec == "protobuf" else value

    async def main():
        events, sub_events = Events(), SubEvents()
        client = make_client(hub, events, codec)
        bob_events, bob_sub_events = Events(), SubEvents()
        bob = make_client(hub, bob_events, codec, user="bob")
        sub = client.new_subscription("room:1", sub_events)
        bob_sub = bob.new_subscription("room:1", bob_sub_events)
        try:
            await client.connect()
            await bob.connect()
            await sub.subscribe()
            await bob_sub.subscribe()
            await sub.ready(WAIT)
            await bob_sub.ready(WAIT)
            await sub.publish(payload({"text": "hi bob", "n": 1}))
            await async_wait_for(lambda: bob_sub_events.pubs and sub_events.pubs,
                                 message="the publication on both clients")
            got = bob_sub_events.pubs[0].pub
            assert data(codec, got.data) == {"text": "hi bob", "n": 1}
            assert got.offset == 1 and got.info.user == "alice"
            presence = await bob_sub.presence()
            assert sorted(c.user for c in presence.clients.values()) == ["alice", "bob"]
            hist = await bob_sub.history(limit=10)
            assert [data(codec, p.data) for p in hist.publications] == [{"text": "hi bob", "n": 1}]
        finally:
            await client.disconnect()
            await bob.disconnect()
    arun(main())
