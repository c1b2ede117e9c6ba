"""The Centrifugo v2 JSON client protocol over a real WebSocket connection to the hub."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
import requests
from websockets.exceptions import InvalidHandshake

from hubtest import WAIT, WSClient, arun, async_wait_for, conn_token, make_jwt

UUID_LEN = 36


# --------------------------------------------------------------------------------------------
# connect


def test_connect_reply_fields(hub):
    async def main():
        async with await hub.ws() as c:
            rep = await c.call("connect", {"token": hub.token("alice"), "name": "pytest"})
            assert rep["id"] == 1
            res = rep["connect"]
            assert len(res["client"]) == UUID_LEN and res["client"].count("-") == 4
            assert res["version"]
            assert res["expires"] is True
            assert 3500 <= res["ttl"] <= 3600
            assert res["ping"] == 25 and res["pong"] is True
            assert res["node"]
            assert "subs" not in res or res["subs"] == {}
    arun(main())


def test_connect_without_expiry_has_no_ttl(hub):
    async def main():
        async with await hub.ws() as c:
            res = await c.connect(hub.token("alice", exp=None))
            assert not res.get("expires")
            assert not res.get("ttl")
    arun(main())


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_connect_with_other_hmac_algorithms(hub, alg):
    async def main():
        async with await hub.ws() as c:
            res = await c.connect(conn_token("alice", secret=hub.secret, alg=alg))
            assert res["client"]
    arun(main())


@pytest.mark.parametrize("token_kind", ["bad_signature", "malformed", "alg_none", "alg_unknown"])
def test_bad_token_closes_with_3500(hub, token_kind):
    token = {
        "bad_signature": conn_token("alice", secret="not-the-secret"),
        "malformed": "this-is-not-a-jwt",
        "alg_none": make_jwt({"sub": "alice", "exp": int(time.time()) + 600}, alg="none"),
        "alg_unknown": make_jwt({"sub": "alice", "exp": int(time.time()) + 600}, alg="XX999"),
    }[token_kind]

    async def main():
        async with await hub.ws() as c:
            await c.send("connect", {"token": token})
            assert await c.closed() == 3500
            assert not any("connect" in r for r in c.replies.values())
    arun(main())


def test_expired_token_gets_109_and_socket_stays_open(hub):
    async def main():
        async with await hub.ws() as c:
            err = await c.error("connect", {"token": hub.token("alice", exp=int(time.time()) - 30)})
            assert err == {"code": 109, "message": "token expired"}
            # Still open and usable: a connect with a fresh token now succeeds.
            res = await c.connect(hub.token("alice"))
            assert res["client"]
    arun(main())


def test_no_token_without_anonymous_is_101(hub):
    async def main():
        async with await hub.ws() as c:
            err = await c.error("connect", {})
            assert err["code"] == 101
    arun(main())


def test_anonymous_connect_when_allowed(hub_factory):
    hub = hub_factory("--allow-anonymous",
                      config={"channel": {"allow_subscribe_for_anonymous": True,
                                          "presence": True, "history_size": 10,
                                          "history_ttl": 60}})

    async def main():
        async with await hub.ws() as c:
            res = await c.connect()
            assert res["client"]
            await c.subscribe("anon-room")
            pres = (await c.result("presence", {"channel": "anon-room"}))["presence"]
            assert pres[res["client"]]["user"] == ""
    arun(main())


def test_anonymous_subscribe_denied_by_default(hub_factory):
    hub = hub_factory("--allow-anonymous")

    async def main():
        async with await hub.ws() as c:
            await c.connect()
            err = await c.error("subscribe", {"channel": "news"})
            assert err["code"] == 103
    arun(main())


def test_command_before_connect_is_101(hub):
    async def main():
        async with await hub.ws() as c:
            for method, params in [("subscribe", {"channel": "news"}),
                                   ("presence", {"channel": "news"}),
                                   ("rpc", {"method": "info"})]:
                err = await c.error(method, params)
                assert err["code"] == 101, (method, err)
            # and connect still works afterwards
            assert (await c.connect(hub.token("alice")))["client"]
    arun(main())


def test_second_connect_is_107(hub):
    async def main():
        async with await hub.client("alice") as c:
            err = await c.error("connect", {"token": hub.token("alice")})
            assert err["code"] == 107
            # the first session is unaffected
            assert (await c.result("rpc", {"method": "info"}))["data"]["nodes"]
    arun(main())


def test_connect_timeout_closes_with_3502(hub_factory):
    hub = hub_factory("--connect-timeout", "1")

    async def main():
        async with await hub.ws() as idle, await hub.ws() as active:
            await active.connect(hub.token("alice"))
            t0 = time.monotonic()
            assert await idle.closed(WAIT) == 3502
            assert time.monotonic() - t0 < 4
            # a connected client is not affected
            assert (await active.result("rpc", {"method": "info"}))["data"]
    arun(main())


def test_unknown_websocket_path_is_refused(hub):
    async def main():
        with pytest.raises(InvalidHandshake):
            await hub.ws("/connection/other")
        with pytest.raises(InvalidHandshake):
            await hub.ws("/")
    arun(main())


# --------------------------------------------------------------------------------------------
# framing, errors


def test_malformed_json_gets_107_without_id_and_connection_stays_usable(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.send_raw("{this is not json")
            err = await c.id_less_error()
            assert "id" not in err
            assert err["error"]["code"] == 107
            assert err["error"]["message"].startswith("malformed JSON")
            assert (await c.result("rpc", {"method": "info"}))["data"]["nodes"]
    arun(main())


def test_several_commands_in_one_frame(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.send_raw('{"id":101,"subscribe":{"channel":"multi"}}\n'
                             '{"id":102,"presence_stats":{"channel":"multi"}}\n'
                             '{"id":103,"rpc":{"method":"info"}}')
            r1, r2, r3 = await c.reply(101), await c.reply(102), await c.reply(103)
            assert r1["subscribe"]["recoverable"] is True
            assert r2["presence_stats"] == {"num_clients": 1, "num_users": 1}
            assert r3["rpc"]["data"]["nodes"]
    arun(main())


def test_unknown_method_is_104(hub):
    async def main():
        async with await hub.client("alice") as c:
            cmd_id = await c.send("frobnicate", {"x": 1})
            rep = await c.reply(cmd_id)
            assert rep["id"] == cmd_id
            assert rep["error"]["code"] == 104
    arun(main())


@pytest.mark.parametrize("method", ["subscribe", "unsubscribe", "publish", "presence",
                                    "presence_stats", "history"])
def test_missing_channel_is_107(hub, method):
    async def main():
        async with await hub.client("alice") as c:
            err = await c.error(method, {"data": {"x": 1}} if method == "publish" else {})
            assert err["code"] == 107
    arun(main())


def test_invalid_utf8_closes_with_1007(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.ws.send(b'{"id":5,"rpc":{"method":"\xff\xfe"}}', text=True)
            assert await c.closed() == 1007
    arun(main())


def test_oversize_message_closes_with_1009(hub_factory):
    hub = hub_factory("--max-message-size", "1024")

    async def main():
        async with await hub.client("alice") as ok:
            # just under the limit is fine
            small = json.dumps({"id": 9, "rpc": {"method": "info", "data": "x" * 900}})
            assert len(small) < 1024
            await ok.send_raw(small)
            assert "rpc" in await ok.reply(9)
            big = json.dumps({"id": 10, "rpc": {"method": "info", "data": "x" * 3000}})
            await ok.send_raw(big)
            assert await ok.closed() == 1009
    arun(main())


def test_send_gets_no_reply(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.send_raw(json.dumps({"send": {"data": {"hello": 1}}}))
            sid = await c.send("send", {"data": {"hello": 2}})
            rid = await c.send("rpc", {"method": "info"})
            await c.reply(rid)
            assert sid not in c.replies
            assert not c.errors
    arun(main())


def test_ping_command(hub):
    async def main():
        async with await hub.client("alice") as c:
            rep = await c.call("ping", {})
            assert "error" not in rep
    arun(main())


def test_fragmented_message_is_reassembled(hub):
    async def main():
        async with await hub.ws() as c:
            msg = json.dumps({"id": 1, "connect": {"token": hub.token("alice")}})
            await c.ws.send([msg[:7], msg[7:40], msg[40:]])  # three WebSocket frames
            rep = await c.reply(1)
            assert rep["connect"]["client"]
    arun(main())


def test_fragmented_oversize_message_closes_with_1009(hub_factory):
    hub = hub_factory("--max-message-size", "1024")

    async def main():
        async with await hub.client("alice") as c:
            body = json.dumps({"id": 9, "rpc": {"method": "info", "data": "y" * 3000}})
            await c.ws.send([body[i:i + 500] for i in range(0, len(body), 500)])
            assert await c.closed() == 1009
    arun(main())


def test_websocket_ping_frame_gets_pong(hub):
    async def main():
        async with await hub.client("alice") as c:
            waiter = await c.ws.ping(b"hello")
            await asyncio.wait_for(waiter, WAIT)
    arun(main())


def test_binary_frame_with_json_is_accepted(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.ws.send(b'{"id":77,"rpc":{"method":"info"}}')
            assert (await c.reply(77))["rpc"]["data"]["nodes"]
    arun(main())


@pytest.mark.parametrize("raw", ["[1]", "\"x\"", "1", "null"])
def test_command_that_is_not_an_object_is_107(hub, raw):
    async def main():
        async with await hub.client("alice") as c:
            await c.send_raw(raw)
            err = await c.id_less_error()
            assert err["error"]["code"] == 107
            assert (await c.result("rpc", {"method": "info"}))["data"]
    arun(main())


@pytest.mark.parametrize("raw", ['{"id":"abc","rpc":{"method":"info"}}',
                                 '{"id":-1,"rpc":{"method":"info"}}',
                                 '{"id":4294967296,"rpc":{"method":"info"}}'])
def test_invalid_command_id_is_107(hub, raw):
    async def main():
        async with await hub.client("alice") as c:
            await c.send_raw(raw)
            err = await c.id_less_error()
            assert err["error"]["code"] == 107
    arun(main())


def test_largest_command_id_is_echoed(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.send_raw('{"id":4294967295,"rpc":{"method":"info"}}')
            assert "rpc" in await c.reply(4294967295)
    arun(main())


@pytest.mark.parametrize("channel", ["", "a\u0001b", "x" * 256])
def test_invalid_channel_names_are_107(hub, channel):
    async def main():
        async with await hub.client("alice") as c:
            err = await c.error("subscribe", {"channel": channel})
            assert err["code"] == 107
        assert hub.api("publish", {"channel": channel, "data": 1})["error"]["code"] == 107
    arun(main())


def test_longest_channel_name_is_accepted(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.subscribe("x" * 255)
            hub.publish("x" * 255, "ok")
            assert (await c.push(kind="pub"))["pub"]["data"] == "ok"
    arun(main())


def test_publication_data_round_trips_exactly(hub):
    data = {"s": "héllo ✓ 😀 \"q\" \\ \n\t\u0000 \u2028 </script>",
            "int64": 9223372036854775807, "beyond_double": 9007199254740993, "neg": -12,
            "f": 1.5e300, "small": 1e-7, "frac": 0.1,
            "arr": [None, True, False, {}, [], ""], "nested": {"a": {"b": {"c": [1, 2]}}}}

    async def main():
        async with await hub.client("alice") as c:
            await c.subscribe("unicode")
            hub.publish("unicode", data)
            assert (await c.push(kind="pub"))["pub"]["data"] == data
            hist = await c.result("history", {"channel": "unicode", "limit": 1})
            assert hist["publications"][0]["data"] == data
        assert hub.api_result("history", {"channel": "unicode", "limit": 1}
                              )["publications"][0]["data"] == data
    arun(main())


# --------------------------------------------------------------------------------------------
# subscribe / unsubscribe / publish


def test_subscribe_receives_api_publications(hub):
    async def main():
        async with await hub.client("alice") as c:
            res = await c.subscribe("news")
            assert res["recoverable"] is True and res["positioned"] is True
            assert res["epoch"]
            assert "offset" not in res  # 0 is omitted
            assert not res.get("recovered")
            for i in range(3):
                out = hub.publish("news", {"n": i})
                assert out["offset"] == i + 1 and out["epoch"] == res["epoch"]
            pubs = await c.pubs(3, channel="news")
            assert [p["data"] for p in pubs] == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert [p["offset"] for p in pubs] == [1, 2, 3]
            assert all("info" not in p for p in pubs)
    arun(main())


def test_subscribe_reports_current_offset(hub):
    hub.publish("counted", 1)
    hub.publish("counted", 2)

    async def main():
        async with await hub.client("alice") as c:
            res = await c.subscribe("counted")
            assert res["offset"] == 2
    arun(main())


def test_already_subscribed_is_105(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.subscribe("dup")
            err = await c.error("subscribe", {"channel": "dup"})
            assert err["code"] == 105
    arun(main())


def test_unknown_namespace_is_102(hub):
    async def main():
        async with await hub.client("alice") as c:
            err = await c.error("subscribe", {"channel": "unknown:x"})
            assert err["code"] == 102
    arun(main())


def test_unsubscribe_stops_delivery(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.subscribe("unsub-me")
            hub.publish("unsub-me", "one")
            assert (await c.pubs(1))[0]["data"] == "one"
            assert await c.result("unsubscribe", {"channel": "unsub-me"}) == {}
            hub.publish("unsub-me", "two")
            # a probe publication on another channel proves ordering: nothing from unsub-me first
            await c.subscribe("probe")
            hub.publish("probe", "probe")
            p = await c.push(kind="pub")
            assert p["channel"] == "probe", f"got a publication after unsubscribe: {p}"
            # resubscribing works again
            await c.subscribe("unsub-me")
    arun(main())


def test_max_subscriptions_is_106(hub_factory):
    hub = hub_factory("--max-subscriptions", "2")

    async def main():
        async with await hub.client("alice") as c:
            await c.subscribe("s1")
            await c.subscribe("s2")
            err = await c.error("subscribe", {"channel": "s3"})
            assert err["code"] == 106
            await c.result("unsubscribe", {"channel": "s1"})
            await c.subscribe("s3")
    arun(main())


def test_client_publish_denied_in_default_namespace(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.subscribe("news")
            err = await c.error("publish", {"channel": "news", "data": {"x": 1}})
            assert err["code"] == 103
    arun(main())


PUBLISH_CONFIG = {
    "namespaces": [
        {"name": "subpub", "allow_publish_for_subscriber": True},
        {"name": "anypub", "allow_publish_for_client": True},
        {"name": "nopub"},
    ]
}


def test_publish_permissions_from_namespace_config(hub_factory):
    hub = hub_factory(config=PUBLISH_CONFIG)

    async def main():
        async with await hub.client("alice") as alice, await hub.client("bob") as bob:
            # allow_publish_for_subscriber: only once subscribed
            err = await alice.error("publish", {"channel": "subpub:room", "data": {"a": 1}})
            assert err["code"] == 103
            await alice.subscribe("subpub:room")
            await bob.subscribe("subpub:room")
            assert await alice.result("publish", {"channel": "subpub:room",
                                                  "data": {"a": 2}}) == {}
            pub = (await bob.push(kind="pub", channel="subpub:room"))["pub"]
            assert pub["data"] == {"a": 2}
            assert pub["info"]["user"] == "alice"
            assert pub["info"]["client"] == alice.connect_reply["client"]

            # allow_publish_for_client: without subscribing
            await bob.subscribe("anypub:room")
            assert await alice.result("publish", {"channel": "anypub:room",
                                                  "data": "hi"}) == {}
            pub = (await bob.push(kind="pub", channel="anypub:room"))["pub"]
            assert pub["data"] == "hi" and pub["info"]["user"] == "alice"

            # a namespace without either: denied even for subscribers
            await alice.subscribe("nopub:room")
            err = await alice.error("publish", {"channel": "nopub:room", "data": 1})
            assert err["code"] == 103
    arun(main())


# --------------------------------------------------------------------------------------------
# recovery


def test_recovery_after_dropped_connection(hub):
    async def main():
        c = await hub.client("alice")
        hub.publish("rec", {"n": 0})
        res = await c.subscribe("rec")
        epoch, offset = res["epoch"], res["offset"]
        assert offset == 1
        await c.close()
        await async_wait_for(lambda: hub.api_result("presence_stats", {"channel": "rec"})
                             ["num_clients"] == 0, message="the hub to drop the connection")
        for n in (1, 2, 3):
            hub.publish("rec", {"n": n})

        async with await hub.client("alice") as c2:
            res = await c2.subscribe("rec", recover=True, offset=offset, epoch=epoch)
            assert res["recovered"] is True
            assert res["was_recovering"] is True
            assert res["epoch"] == epoch
            assert res["offset"] == 4
            pubs = res["publications"]
            assert [p["offset"] for p in pubs] == [2, 3, 4]
            assert [p["data"] for p in pubs] == [{"n": 1}, {"n": 2}, {"n": 3}]
            # nothing is delivered twice as a push afterwards; a later one arrives once
            hub.publish("rec", {"n": 4})
            nxt = (await c2.push(kind="pub", channel="rec"))["pub"]
            assert nxt["offset"] == 5 and nxt["data"] == {"n": 4}

        async with await hub.client("alice") as c3:
            res = await c3.subscribe("rec", recover=True, offset=offset, epoch="bogus-epoch")
            assert not res.get("recovered")
            assert res["was_recovering"] is True
            assert res["epoch"] == epoch
            assert res["offset"] == 5
            assert not res.get("publications")
    arun(main())


def test_recovery_with_nothing_missed(hub):
    async def main():
        hub.publish("rec-none", 1)
        async with await hub.client("alice") as c:
            first = await c.subscribe("rec-none")
        async with await hub.client("alice") as c:
            res = await c.subscribe("rec-none", recover=True, offset=first["offset"],
                                    epoch=first["epoch"])
            assert res["recovered"] is True
            assert not res.get("publications")
    arun(main())


def test_recovery_impossible_when_history_trimmed(hub_factory):
    hub = hub_factory(config={"namespaces": [{"name": "short", "history_size": 2,
                                              "history_ttl": 60}]})

    async def main():
        async with await hub.client("alice") as c:
            first = await c.subscribe("short:x")
        for i in range(5):
            hub.publish("short:x", i)
        async with await hub.client("alice") as c:
            res = await c.subscribe("short:x", recover=True, offset=first.get("offset", 0),
                                    epoch=first["epoch"])
            assert not res.get("recovered")
            assert res["offset"] == 5
    arun(main())


def test_recovery_through_connect_subs_for_server_side_channels(hub):
    async def main():
        token = hub.token("alice", channels=["srv-feed"])
        async with await hub.ws() as c:
            res = await c.connect(token)
            sub = res["subs"]["srv-feed"]
            assert sub["recoverable"] is True and sub["epoch"]
            epoch, offset = sub["epoch"], sub.get("offset", 0)
            hub.publish("srv-feed", {"live": 1})
            pub = await c.push(kind="pub", channel="srv-feed")
            assert pub["pub"]["data"] == {"live": 1}
            offset = pub["pub"]["offset"]
        await async_wait_for(lambda: hub.api_result("presence_stats", {"channel": "srv-feed"})
                             ["num_clients"] == 0, message="the hub to drop the connection")
        for n in (1, 2, 3):
            hub.publish("srv-feed", {"missed": n})
        async with await hub.ws() as c:
            res = await c.connect(token, subs={"srv-feed": {"recover": True, "offset": offset,
                                                            "epoch": epoch}})
            sub = res["subs"]["srv-feed"]
            assert sub["recovered"] is True
            assert sub["was_recovering"] is True
            assert [p["offset"] for p in sub["publications"]] == [offset + 1, offset + 2,
                                                                  offset + 3]
            assert [p["data"] for p in sub["publications"]] == [{"missed": 1}, {"missed": 2},
                                                                {"missed": 3}]
            # and it is live again
            hub.publish("srv-feed", {"live": 2})
            pub = await c.push(kind="pub", channel="srv-feed")
            assert pub["pub"]["offset"] == offset + 4
        async with await hub.ws() as c:
            res = await c.connect(token, subs={"srv-feed": {"recover": True, "offset": offset,
                                                            "epoch": "other"}})
            assert not res["subs"]["srv-feed"].get("recovered")
    arun(main())


def test_no_gap_or_duplicate_when_subscribing_during_publishing(hub_factory):
    """Subscribes (plain and recovering) while publications stream in: every client sees a
    contiguous run of offsets up to the last one, each exactly once."""
    hub = hub_factory(config={"namespaces": [{"name": "race", "history_size": 1000,
                                              "history_ttl": 60}]})
    ch, total = "race:x", 400
    published = []

    def publish_all():
        s = requests.Session()
        s.trust_env = False
        for i in range(total):
            r = s.post(hub.url + "/api/publish", headers={"X-API-Key": hub.api_key},
                       data=json.dumps({"channel": ch, "data": i}), timeout=WAIT)
            published.append(r.json()["result"]["offset"])

    async def collect(c, first_offsets):
        offsets = list(first_offsets)
        while not offsets or offsets[-1] < total:
            offsets.append((await c.push(kind="pub", channel=ch))["pub"]["offset"])
        return offsets

    async def main():
        publisher = asyncio.ensure_future(asyncio.to_thread(publish_all))
        await async_wait_for(lambda: len(published) >= 100, message="100 publications")
        epoch = hub.api_result("history", {"channel": ch})["epoch"]
        plain = await hub.client("alice")
        recovering = await hub.client("bob")
        try:
            res = await plain.subscribe(ch)
            start = res.get("offset", 0)
            res2 = await recovering.subscribe(ch, recover=True, offset=50, epoch=epoch)
            assert res2["recovered"] is True
            recovered = [p["offset"] for p in res2["publications"]]
            got_plain, got_rec = await asyncio.gather(collect(plain, []),
                                                      collect(recovering, recovered))
            await publisher
            assert start < total, "subscribed after publishing ended: test did not race"
            assert got_plain == list(range(start + 1, total + 1))
            assert got_rec == list(range(51, total + 1))
        finally:
            await plain.close()
            await recovering.close()
    arun(main())


def test_recover_from_position_ahead_of_stream(hub):
    async def main():
        hub.publish("ahead", 1)
        epoch = hub.api_result("history", {"channel": "ahead"})["epoch"]
        async with await hub.client("alice") as c:
            res = await c.subscribe("ahead", recover=True, offset=10, epoch=epoch)
            assert not res.get("recovered")
            assert res["offset"] == 1
    arun(main())


def test_fan_out_across_service_threads(hub_factory):
    hub = hub_factory("--threads", "4")
    n_clients, n_pubs = 40, 20

    async def main():
        clients = await asyncio.gather(*(hub.client(f"user{i % 10}") for i in range(n_clients)))
        try:
            await asyncio.gather(*(c.subscribe("fan") for c in clients))
            assert hub.api_result("presence_stats", {"channel": "fan"}) == \
                {"num_clients": n_clients, "num_users": 10}
            for i in range(n_pubs):
                hub.publish("fan", i)
            results = await asyncio.gather(*(c.pubs(n_pubs, channel="fan") for c in clients))
            for pubs in results:
                assert [p["data"] for p in pubs] == list(range(n_pubs))
                assert [p["offset"] for p in pubs] == list(range(1, n_pubs + 1))
        finally:
            await asyncio.gather(*(c.close() for c in clients))
    arun(main())


def test_recovery_limits_from_namespace_config(hub_factory):
    hub = hub_factory(config={"namespaces": [
        {"name": "capped", "history_size": 50, "history_ttl": 60,
         "recovery_max_publications": 2},
        {"name": "norec", "history_size": 50, "history_ttl": 60, "recovery": False}]})

    async def main():
        for ns, missed, expect in (("capped", 2, True), ("capped", 3, False),
                                   ("norec", 1, False)):
            ch = f"{ns}:x{missed}"
            async with await hub.client("alice") as c:
                first = await c.subscribe(ch)
            for i in range(missed):
                hub.publish(ch, i)
            async with await hub.client("alice") as c:
                res = await c.subscribe(ch, recover=True, offset=first.get("offset", 0),
                                        epoch=first["epoch"])
                assert bool(res.get("recovered")) is expect, (ch, res)
                if expect:
                    assert [p["offset"] for p in res["publications"]] == [1, 2]
                else:
                    assert not res.get("publications")
                    assert res["offset"] == missed
    arun(main())


# --------------------------------------------------------------------------------------------
# user-limited channels, subscription tokens


def test_user_limited_channel(hub):
    async def main():
        async with await hub.client("alice") as a, await hub.client("bob") as b, \
                await hub.client("carol") as c:
            await a.subscribe("room#alice,bob")
            await b.subscribe("room#alice,bob")
            err = await c.error("subscribe", {"channel": "room#alice,bob"})
            assert err["code"] == 103
            # personal channel
            await a.subscribe("#alice")
            err = await b.error("subscribe", {"channel": "#alice"})
            assert err["code"] == 103
    arun(main())


def test_user_limited_channels_can_be_disabled(hub_factory):
    hub = hub_factory(config={"namespaces": [{"name": "flat",
                                              "allow_user_limited_channels": False},
                                             {"name": "limited"}]})

    async def main():
        async with await hub.client("carol") as c:
            await c.subscribe("flat:room#alice")  # '#' is just part of the name here
            err = await c.error("subscribe", {"channel": "limited:room#alice"})
            assert err["code"] == 103
    arun(main())


def test_token_audience_and_issuer(hub_factory):
    hub = hub_factory("--token-audience", "hub-clients", "--token-issuer", "auth.example")

    async def main():
        async with await hub.ws() as c:
            res = await c.connect(hub.token("alice", aud="hub-clients", iss="auth.example"))
            assert res["client"]
        for claims in ({"aud": "someone-else", "iss": "auth.example"},
                       {"aud": "hub-clients", "iss": "evil.example"},
                       {"iss": "auth.example"},
                       {"aud": "hub-clients"}):
            async with await hub.ws() as c:
                await c.send("connect", {"token": hub.token("alice", **claims)})
                assert await c.closed() == 3500, claims
    arun(main())


PRIVATE_CONFIG = {"namespaces": [{"name": "private", "presence": True,
                                  "allow_subscribe_for_client": False}]}


def test_subscription_token_required_and_chan_info_in_presence(hub_factory):
    hub = hub_factory(config=PRIVATE_CONFIG)
    ch = "private:vault"

    async def main():
        async with await hub.client("alice", token=hub.token("alice", info={"name": "Alice"})) \
                as a:
            err = await a.error("subscribe", {"channel": ch})
            assert err["code"] == 103
            # token for someone else
            err = await a.error("subscribe", {"channel": ch,
                                              "token": hub.sub_token("bob", ch)})
            assert err["code"] == 103
            # token for another channel
            err = await a.error("subscribe", {"channel": ch,
                                              "token": hub.sub_token("alice", "private:other")})
            assert err["code"] == 103
            # token signed with another key
            err = await a.error("subscribe", {
                "channel": ch, "token": conn_token("alice", secret="wrong", channel=ch)})
            assert err["code"] == 103
            # expired token
            err = await a.error("subscribe", {
                "channel": ch, "token": hub.sub_token("alice", ch, exp=int(time.time()) - 10)})
            assert err["code"] == 109
            # valid token
            res = await a.subscribe(ch, token=hub.sub_token("alice", ch, info={"role": "owner"}))
            assert "error" not in res
            pres = (await a.result("presence", {"channel": ch}))["presence"]
            me = pres[a.connect_reply["client"]]
            assert me["user"] == "alice"
            assert me["client"] == a.connect_reply["client"]
            assert me["conn_info"] == {"name": "Alice"}
            assert me["chan_info"] == {"role": "owner"}
    arun(main())


def test_sub_refresh(hub_factory):
    hub = hub_factory(config=PRIVATE_CONFIG)
    ch = "private:refresh"

    async def main():
        async with await hub.client("alice") as a:
            res = await a.subscribe(ch, token=hub.sub_token("alice", ch,
                                                            exp=int(time.time()) + 60))
            assert res["expires"] is True and 0 < res["ttl"] <= 60
            out = await a.result("sub_refresh", {
                "channel": ch, "token": hub.sub_token("alice", ch, exp=int(time.time()) + 3600)})
            assert out["expires"] is True and out["ttl"] > 3000
            err = await a.error("sub_refresh", {"channel": ch,
                                                "token": hub.sub_token("bob", ch)})
            assert err["code"] == 103
            err = await a.error("sub_refresh", {
                "channel": ch, "token": hub.sub_token("alice", ch, exp=int(time.time()) - 5)})
            assert err["code"] == 109
    arun(main())


# --------------------------------------------------------------------------------------------
# presence, join/leave


def test_presence_and_presence_stats(hub):
    async def main():
        a1 = await hub.client("alice", token=hub.token("alice", info={"device": "phone"}))
        a2 = await hub.client("alice")
        b = await hub.client("bob")
        try:
            for c in (a1, a2, b):
                await c.subscribe("lobby")
            stats = await a1.result("presence_stats", {"channel": "lobby"})
            assert stats == {"num_clients": 3, "num_users": 2}
            pres = (await b.result("presence", {"channel": "lobby"}))["presence"]
            assert set(pres) == {a1.connect_reply["client"], a2.connect_reply["client"],
                                 b.connect_reply["client"]}
            assert pres[a1.connect_reply["client"]]["conn_info"] == {"device": "phone"}
            assert pres[b.connect_reply["client"]]["user"] == "bob"
            assert "conn_info" not in pres[b.connect_reply["client"]]
            await b.close()
            await async_wait_for(
                lambda: hub.api_result("presence_stats", {"channel": "lobby"})
                == {"num_clients": 2, "num_users": 1}, message="bob to leave presence")
            stats = await a2.result("presence_stats", {"channel": "lobby"})
            assert stats == {"num_clients": 2, "num_users": 1}
        finally:
            for c in (a1, a2, b):
                await c.close()
    arun(main())


def test_presence_and_history_permissions_from_namespace_config(hub_factory):
    hub = hub_factory(config={"namespaces": [
        {"name": "open", "presence": True, "history_size": 10, "history_ttl": 60,
         "allow_presence_for_client": True, "allow_history_for_client": True},
        {"name": "closed", "presence": True, "history_size": 10, "history_ttl": 60,
         "allow_presence_for_subscriber": False, "allow_history_for_subscriber": False}]})
    hub.publish("open:x", 1)
    hub.publish("closed:x", 1)

    async def main():
        async with await hub.client("alice") as c:
            # any client may read presence/history in "open" without subscribing
            assert (await c.result("presence_stats", {"channel": "open:x"})) == \
                {"num_clients": 0, "num_users": 0}
            assert (await c.result("presence", {"channel": "open:x"}))["presence"] == {}
            h = await c.result("history", {"channel": "open:x", "limit": -1})
            assert [p["data"] for p in h["publications"]] == [1]
            # even subscribers may not in "closed"
            await c.subscribe("closed:x")
            for method, params in (("presence", {}), ("presence_stats", {}),
                                   ("history", {"limit": 1})):
                err = await c.error(method, {"channel": "closed:x", **params})
                assert err["code"] == 103, method
    arun(main())


def test_presence_requires_subscription_by_default(hub):
    async def main():
        async with await hub.client("alice") as c:
            err = await c.error("presence", {"channel": "elsewhere"})
            assert err["code"] == 103
            err = await c.error("history", {"channel": "elsewhere", "limit": 1})
            assert err["code"] == 103
    arun(main())


def test_presence_not_available_in_namespace_without_it(hub_factory):
    hub = hub_factory(config={"namespaces": [{"name": "plain"}]})

    async def main():
        async with await hub.client("alice") as c:
            await c.subscribe("plain:x")
            err = await c.error("presence", {"channel": "plain:x"})
            assert err["code"] == 108
            err = await c.error("history", {"channel": "plain:x", "limit": 1})
            assert err["code"] == 108
    arun(main())


def test_join_and_leave_pushes(hub_factory):
    hub = hub_factory(config={"namespaces": [{"name": "chat", "presence": True,
                                              "join_leave": True}]})

    async def main():
        async with await hub.client("alice") as a:
            await a.subscribe("chat:lobby")
            b = await hub.client("bob", token=hub.token("bob", info={"nick": "B"}))
            await b.subscribe("chat:lobby")
            join = await a.push(kind="join", channel="chat:lobby")
            if join["join"]["info"]["user"] == "alice":  # alice may see her own join first
                join = await a.push(kind="join", channel="chat:lobby")
            assert join["join"]["info"]["user"] == "bob"
            assert join["join"]["info"]["client"] == b.connect_reply["client"]
            assert join["join"]["info"].get("conn_info") == {"nick": "B"}
            await b.result("unsubscribe", {"channel": "chat:lobby"})
            leave = await a.push(kind="leave", channel="chat:lobby")
            assert leave["leave"]["info"]["user"] == "bob"
            assert leave["leave"]["info"]["client"] == b.connect_reply["client"]
            # a dropped connection leaves too
            await b.subscribe("chat:lobby")
            await a.push(kind="join", channel="chat:lobby")
            await b.close()
            leave = await a.push(kind="leave", channel="chat:lobby")
            assert leave["leave"]["info"]["user"] == "bob"
    arun(main())


def test_no_join_leave_in_default_namespace(hub):
    async def main():
        async with await hub.client("alice") as a, await hub.client("bob") as b:
            await a.subscribe("quiet")
            await b.subscribe("quiet")
            await b.result("unsubscribe", {"channel": "quiet"})
            hub.publish("quiet", "marker")
            p = await a.push()
            assert "pub" in p and p["pub"]["data"] == "marker", f"unexpected push {p}"
    arun(main())


# --------------------------------------------------------------------------------------------
# history


def test_history_limit_since_reverse(hub):
    for i in range(1, 6):
        hub.publish("hist", {"i": i})

    async def main():
        async with await hub.client("alice") as c:
            sub = await c.subscribe("hist")
            epoch = sub["epoch"]
            # position only
            for params in ({"channel": "hist"}, {"channel": "hist", "limit": 0}):
                h = await c.result("history", params)
                assert not h.get("publications")
                assert h["epoch"] == epoch and h["offset"] == 5
            h = await c.result("history", {"channel": "hist", "limit": 2})
            assert [p["offset"] for p in h["publications"]] == [1, 2]
            assert h["publications"][0]["data"] == {"i": 1}
            assert all(p["time"] > 0 for p in h["publications"])
            h = await c.result("history", {"channel": "hist", "limit": -1})
            assert [p["offset"] for p in h["publications"]] == [1, 2, 3, 4, 5]
            h = await c.result("history", {"channel": "hist", "limit": 2, "reverse": True})
            assert [p["offset"] for p in h["publications"]] == [5, 4]
            h = await c.result("history", {"channel": "hist", "limit": 10,
                                           "since": {"offset": 2, "epoch": epoch}})
            assert [p["offset"] for p in h["publications"]] == [3, 4, 5]
            h = await c.result("history", {"channel": "hist", "limit": 2,
                                           "since": {"offset": 4, "epoch": epoch},
                                           "reverse": True})
            assert [p["offset"] for p in h["publications"]] == [3, 2]
            h = await c.result("history", {"channel": "hist", "limit": 10,
                                           "since": {"offset": 5, "epoch": epoch}})
            assert not h.get("publications") and h["offset"] == 5
            # wrong epoch / ahead of the stream
            err = await c.error("history", {"channel": "hist", "limit": 10,
                                            "since": {"offset": 2, "epoch": "nope"}})
            assert err["code"] == 112
            err = await c.error("history", {"channel": "hist", "limit": 10,
                                            "since": {"offset": 50, "epoch": epoch}})
            assert err["code"] == 112
    arun(main())


def test_history_since_trimmed_position_is_112(hub_factory):
    hub = hub_factory(config={"namespaces": [{"name": "small", "history_size": 3,
                                              "history_ttl": 60}]})
    for i in range(1, 7):
        hub.publish("small:x", i)

    async def main():
        async with await hub.client("alice") as c:
            sub = await c.subscribe("small:x")
            h = await c.result("history", {"channel": "small:x", "limit": -1})
            assert [p["offset"] for p in h["publications"]] == [4, 5, 6]
            err = await c.error("history", {"channel": "small:x", "limit": 10,
                                            "since": {"offset": 1, "epoch": sub["epoch"]}})
            assert err["code"] == 112
            h = await c.result("history", {"channel": "small:x", "limit": 10,
                                           "since": {"offset": 3, "epoch": sub["epoch"]}})
            assert [p["offset"] for p in h["publications"]] == [4, 5, 6]
    arun(main())


def test_history_includes_publisher_info(hub_factory):
    hub = hub_factory(config={"namespaces": [{"name": "talk", "history_size": 10,
                                              "history_ttl": 60,
                                              "allow_publish_for_subscriber": True}]})

    async def main():
        async with await hub.client("alice") as c:
            await c.subscribe("talk:x")
            await c.result("publish", {"channel": "talk:x", "data": {"m": 1}})
            h = await c.result("history", {"channel": "talk:x", "limit": -1})
            (p,) = h["publications"]
            assert p["data"] == {"m": 1} and p["offset"] == 1
            assert p["info"]["user"] == "alice"
    arun(main())


# --------------------------------------------------------------------------------------------
# rpc, refresh


def test_rpc_info_and_unknown_method(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.subscribe("rpc-ch")
            data = (await c.result("rpc", {"method": "info"}))["data"]
            (node,) = data["nodes"]
            assert node["uid"] == c.connect_reply["node"]
            assert node["num_clients"] == 1 and node["num_users"] == 1
            assert node["num_channels"] == 1 and node["num_subs"] == 1
            err = await c.error("rpc", {"method": "no-such-method"})
            assert err["code"] == 104
    arun(main())


def test_token_expiry_disconnects_with_3005_and_refresh_extends(hub):
    async def main():
        exp = int(time.time()) + 2
        lazy = await hub.client("alice", token=hub.token("alice", exp=exp))
        eager = await hub.client("bob", token=hub.token("bob", exp=exp))
        try:
            assert lazy.connect_reply["expires"] is True
            assert lazy.connect_reply["ttl"] <= 2
            out = await eager.result("refresh", {"token": hub.token("bob")})
            assert out["client"] == eager.connect_reply["client"]
            assert out["version"]
            assert out["expires"] is True and out["ttl"] > 3000
            assert await lazy.closed(WAIT) == 3005
            # The refreshed connection outlives the original expiry.
            await asyncio.sleep(max(0.0, exp + 1.5 - time.time()))
            assert (await eager.result("rpc", {"method": "info"}))["data"]
        finally:
            await lazy.close()
            await eager.close()
    arun(main())


def test_refresh_with_expired_token_is_rejected(hub):
    async def main():
        async with await hub.client("alice") as c:
            err = await c.error("refresh", {"token": hub.token("alice",
                                                               exp=int(time.time()) - 5)})
            assert err["code"] == 109
    arun(main())


# --------------------------------------------------------------------------------------------
# ping / pong


def test_ping_pong(hub_factory):
    hub = hub_factory("--ping-interval", "1", "--pong-timeout", "1")

    async def main():
        good = await hub.client("alice")
        bad = await WSClient.open(hub.ws_url, auto_pong=False)
        try:
            t0 = time.monotonic()
            res = await bad.connect(hub.token("bob"))
            assert res["ping"] == 1 and res["pong"] is True
            # the answering client keeps reading (and answering pings) meanwhile
            code, _ = await asyncio.gather(bad.closed(WAIT), good.pump(2.0))
            assert code == 3012
            assert bad.pings >= 1
            # the answering client stays well beyond ping interval + pong timeout
            await good.pump(max(0.0, 3.2 - (time.monotonic() - t0)))
            assert (await good.result("rpc", {"method": "info"}))["data"]
            assert good.pings >= 1
            assert good.close_code is None
        finally:
            await good.close()
            await bad.close()
    arun(main())


def test_server_ping_cadence(hub_factory):
    """Pings come every ping-interval seconds (here 1 s), not every other interval."""
    hub = hub_factory("--ping-interval", "1", "--pong-timeout", "5")

    async def main():
        async with await hub.client("alice") as c:
            t0 = time.monotonic()
            await c.pump(4.4)
            times = [t0] + c.ping_times
            gaps = [round(b - a, 2) for a, b in zip(times, times[1:])]
            assert len(c.ping_times) >= 3, f"{len(c.ping_times)} pings in 4.4 s, gaps {gaps}"
            assert max(gaps) <= 1.5, f"gaps between pings: {gaps} (interval 1 s)"
    arun(main())


# --------------------------------------------------------------------------------------------
# slow consumer


@pytest.mark.parametrize("limit_args, n_channels, n_requests, payload_size", [
    # 1 KB publications into one channel through /api/publish, 2 MB more than the kernel may
    # buffer for the socket (None: from tcp_wmem): the hub writes into the socket while the
    # kernel takes bytes, so its own queue only fills once the kernel's send buffer is full
    (("--client-queue-max-bytes", "65536", "--max-message-size", "65536"), 1, None, 1000),
    # 1000 broadcasts of 100 B into 20 channels (20000 small publications, bursts of 20); the
    # limit leaves the reading client room for fifteen bursts while its loop thread is busy
    # (a limit of 50 cut off the fast client too on a loaded CI machine)
    (("--client-queue-max-messages", "300"), 20, 1000, 100),
], ids=["queue-bytes", "queue-messages"])
def test_slow_consumer_is_disconnected_with_3008(hub_factory, limit_args, n_channels,
                                                 n_requests, payload_size):
    hub = hub_factory(*limit_args)
    if n_requests is None:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            n_requests = (int(f.read().split()[2]) + 2_000_000) // payload_size
    payload = "x" * payload_size
    channels = ["firehose"] if n_channels == 1 else [f"fh{i}" for i in range(n_channels)]
    total = n_channels * n_requests

    async def main():
        # The slow client: a small kernel receive buffer and a websockets client that stops
        # reading after subscribing.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", hub.port))
        sock.setblocking(False)
        slow = await WSClient.open(hub.ws_url, sock=sock, max_queue=1)
        fast = await hub.client("bob")
        try:
            await slow.connect(hub.token("alice"))
            for ch in channels:
                await slow.subscribe(ch)
                await fast.subscribe(ch)

            def publish_all():
                s = requests.Session()
                s.trust_env = False
                for i in range(n_requests):
                    data = {"i": i, "p": payload}
                    if n_channels == 1:
                        method, body = "publish", {"channel": channels[0], "data": data}
                    else:
                        method, body = "broadcast", {"channels": channels, "data": data}
                    r = s.post(hub.url + "/api/" + method, timeout=WAIT,
                               headers={"X-API-Key": hub.api_key}, data=json.dumps(body))
                    assert r.status_code == 200 and "result" in r.json(), r.text

            publisher = asyncio.ensure_future(asyncio.to_thread(publish_all))
            received = {ch: [] for ch in channels}
            deadline = time.monotonic() + 30
            for _ in range(total):
                assert time.monotonic() < deadline, f"only {sum(map(len, received.values()))}"
                p = await fast.push(kind="pub")
                received[p["channel"]].append(p["pub"])
            await publisher
            for ch in channels:
                assert [p["offset"] for p in received[ch]] == list(range(1, n_requests + 1)), ch
                assert [p["data"]["i"] for p in received[ch]] == list(range(n_requests)), ch

            # now drain the slow client: it was cut off with 3008
            code = await slow.closed(WAIT)
            assert code == 3008, f"slow client closed with {code} after {len(slow.pushes)} pushes"
            assert len(slow.pushes) < total
        finally:
            await slow.close()
            await fast.close()
    arun(main())
