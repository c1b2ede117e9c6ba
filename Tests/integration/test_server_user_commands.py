"""The server API's user-wide `send` and `refresh` (Centrifugo's shapes; `refresh` through cent's RefreshRequest)."""

from __future__ import annotations

import time

from cent import Client as CentClient, RefreshRequest

from hubtest import WAIT, arun, async_wait_for


def _cent(hub) -> CentClient:
    return CentClient(f"{hub.url}/api", hub.api_key, timeout=WAIT)


def test_send_reaches_every_connection_of_the_user_only(hub):
    async def body():
        tab1, tab2, other = await hub.client("alice"), await hub.client("alice"), await hub.client("bob")
        assert hub.api_result("send", {"user": "alice", "data": {"hello": 1}}) == {}
        for tab in (tab1, tab2):
            assert (await tab.push(kind="message"))["message"] == {"data": {"hello": 1}}
        await other.no_push(0.5)
        # one client only
        hub.api_result("send", {"user": "alice", "client": tab2.connect_reply["client"], "data": "two"})
        assert (await tab2.push(kind="message"))["message"] == {"data": "two"}
        await tab1.no_push(0.5)
    arun(body())


def test_send_bad_params_are_107(hub):
    for params in ({"data": 1}, {"user": "alice"}, {"user": "", "data": 1}):
        assert hub.api("send", params)["error"]["code"] == 107, params


def test_refresh_expired_ends_the_users_sessions(hub):
    async def body():
        alice, bob = await hub.client("alice"), await hub.client("bob")
        _cent(hub).refresh(RefreshRequest(user="alice", expired=True))
        assert await alice.closed() == 3005
        assert (await bob.call("ping", {})).get("ping") == {}
    arun(body())


def test_refresh_extends_and_sets_expiry(hub):
    async def body():
        # a token about to expire, extended by the server: the connection outlives it
        alice = await hub.client("alice", token=hub.token("alice", exp=int(time.time()) + 2))
        _cent(hub).refresh(RefreshRequest(user="alice", expire_at=int(time.time()) + 60))
        await alice.pump(3.5)
        assert (await alice.call("ping", {})).get("ping") == {}
        # an expiry given to a connection whose token had none ends it when it passes
        bob = await hub.client("bob")
        _cent(hub).refresh(RefreshRequest(user="bob", expire_at=int(time.time()) + 1))
        assert await bob.closed(timeout=5) == 3005
    arun(body())


def test_refresh_bad_params_are_107_and_change_nothing(hub):
    async def body():
        alice = await hub.client("alice")
        for params in ({}, {"user": "alice", "expired": "yes"}, {"user": "alice", "expire_at": "soon"},
                       {"user": "alice", "expire_at": -5}, {"user": "alice", "session": "s1", "expired": True}):
            assert hub.api("refresh", params)["error"]["code"] == 107, params
        await alice.pump(1.5)
        assert (await alice.call("ping", {})).get("ping") == {}
    arun(body())


def test_connections_lists_the_clients_with_their_channels(hub):
    async def body():
        alice = await hub.client("alice")
        await alice.subscribe("news")
        bob = await hub.client("bob")
        everyone = hub.api_result("connections")["connections"]
        assert set(everyone) == {alice.connect_reply["client"], bob.connect_reply["client"]}
        mine = hub.api_result("connections", {"user": "alice"})["connections"]
        assert list(mine) == [alice.connect_reply["client"]]
        entry = mine[alice.connect_reply["client"]]
        assert entry["user"] == "alice" and entry["protocol"] == "json"
        assert entry["state"]["channels"] == {"news": {}}
        await bob.close()
        await async_wait_for(lambda: len(hub.api_result("connections")["connections"]) == 1,
                             message="bob's connection gone from the listing")
        assert hub.api_result("connections", {"user": "nobody"}) == {"connections": {}}
        assert hub.api("connections", {"user": 5})["error"]["code"] == 107
    arun(body())
