"""The server HTTP API (/api/<method>), health, CORS and HTTP error handling."""

from __future__ import annotations

import json

import pytest

from hubtest import WAIT, arun, async_wait_for

UNAUTHORIZED = {"error": {"code": 101, "message": "unauthorized"}}


# --------------------------------------------------------------------------------------------
# health, routing, HTTP errors


def test_health_needs_no_auth(hub):
    r = hub.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy"
    assert r.headers["content-type"].startswith("application/json")


def test_unknown_path_is_404_json(hub):
    for path in ("/nope", "/api", "/api/nope/deeper"):
        r = hub.get(path)
        assert r.status_code == 404, path
        assert r.json() == {"error": {"code": 404, "message": "not found"}}
    r = hub.post_raw("/api/no_such_method", {})
    assert r.status_code == 404
    assert r.json() == {"error": {"code": 404, "message": "not found"}}


def test_wrong_http_method_is_405(hub):
    r = hub.get("/api/publish", headers={"X-API-Key": hub.api_key})
    assert r.status_code == 405
    r = hub.post_raw("/health", {})
    assert r.status_code == 405


def test_body_over_max_body_size_is_413(hub_factory):
    hub = hub_factory("--max-body-size", "1024")
    r = hub.post_raw("/api/publish", {"channel": "big", "data": "x" * 2000})
    assert r.status_code == 413
    # just under the limit still works
    r = hub.post_raw("/api/publish", {"channel": "big", "data": "x" * 900})
    assert r.status_code == 200 and r.json()["result"]["offset"] == 1


def _raw_exchange(port: int, parts, pause: float = 0.1):
    """Sends `parts` on one connection with pauses between them (as clients that write the
    headers and the body separately do), then a second request on the same connection.
    Returns (first status line, second status line or the error)."""
    import socket
    import time

    def read_response(sock):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return head.split(b"\r\n")[0].decode()

    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        for part in parts:
            sock.sendall(part)
            time.sleep(pause)
        first = read_response(sock)
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            second = read_response(sock)
        except OSError as error:
            second = type(error).__name__
        return first, second


@pytest.mark.parametrize("method,path", [("GET", "/health"), ("DELETE", "/api/v1/cache/jobs/x"),
                                         ("POST", "/api/info")])
def test_keep_alive_after_a_body_sent_separately(hub, method, path):
    """A body that arrives after the headers is read before the response completes, so the
    next request on the same connection is answered (it used to go unanswered)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nX-API-Key: {hub.api_key}\r\nContent-Length: 2\r\n\r\n"
    first, second = _raw_exchange(hub.port, [head.encode(), b"{}"])
    assert first is not None and first.startswith("HTTP/1.1 ")
    assert second == "HTTP/1.1 200 OK"


def test_413_closes_the_connection_and_the_hub_keeps_serving(hub_factory):
    hub = hub_factory("--max-body-size", "1024")
    head = b"POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"
    first, second = _raw_exchange(hub.port, [head, b"x" * 5000])
    assert first == "HTTP/1.1 413 Request Entity Too Large"
    assert second in (None, "BrokenPipeError", "ConnectionResetError"), second
    assert hub.get("/health").status_code == 200


def test_chunked_request_body_is_411_not_a_hang(hub):
    head = b"POST /api/info HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    first, _ = _raw_exchange(hub.port, [head, b"2\r\n{}\r\n0\r\n\r\n"])
    assert first == "HTTP/1.1 411 Length Required"
    assert hub.get("/health").status_code == 200


def test_cors_preflight_and_headers(hub):
    r = hub.http.options(hub.url + "/api/publish", timeout=WAIT, headers={
        "Origin": "http://example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, content-type"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "x-api-key" in allowed and "content-type" in allowed and "authorization" in allowed
    # ordinary responses carry the origin header too
    r = hub.post_raw("/api/info", {}, headers={"Origin": "http://example.com"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert hub.get("/health").headers["access-control-allow-origin"] == "*"


def test_cors_origin_is_configurable(hub_factory):
    hub = hub_factory("--cors-origins", "https://app.example")
    r = hub.post_raw("/api/info", {}, headers={"Origin": "https://app.example"})
    assert r.headers["access-control-allow-origin"] == "https://app.example"


# --------------------------------------------------------------------------------------------
# auth and body validation


def test_missing_api_key_is_401(hub):
    r = hub.post_raw("/api/publish", {"channel": "x", "data": 1}, with_key=False)
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "unauthorized"
    # nothing was published
    assert hub.publish("x", 2)["offset"] == 1


def test_401_body_carries_protocol_error_code_101(hub):
    """The 401 body is the protocol's unauthorized error: {"error":{"code":101,...}}."""
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "apikey wrong"}):
        r = hub.post_raw("/api/info", {}, headers=headers, with_key=False)
        assert r.status_code == 401
        assert r.json() == UNAUTHORIZED, headers


@pytest.mark.parametrize("headers", [{"X-API-Key": "wrong"},
                                     {"Authorization": "apikey wrong"},
                                     {"Authorization": "Bearer integration-api-key"}])
def test_wrong_api_key_is_401(hub, headers):
    r = hub.post_raw("/api/publish", {"channel": "x", "data": 1}, headers=headers,
                     with_key=False)
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "unauthorized"
    assert hub.publish("x", 2)["offset"] == 1


def test_both_api_key_header_forms_work(hub):
    r = hub.post_raw("/api/publish", {"channel": "k", "data": 1})
    assert r.status_code == 200 and r.json()["result"]["offset"] == 1
    r = hub.post_raw("/api/publish", {"channel": "k", "data": 2}, with_key=False,
                     headers={"Authorization": f"apikey {hub.api_key}"})
    assert r.status_code == 200 and r.json()["result"]["offset"] == 2


def test_no_api_key_configured_refuses_everything(hub_factory):
    hub = hub_factory(api_key=None)
    for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "anything"}):
        r = hub.post_raw("/api/info", {}, headers=headers, with_key=False)
        assert r.status_code == 401, headers


@pytest.mark.parametrize("body", ["not json", "[1, 2]", "\"a string\"", "42", "null"])
def test_body_not_a_json_object_is_400(hub, body):
    r = hub.post_raw("/api/publish", body)
    assert r.status_code == 400
    assert "error" in r.json()


def test_protocol_errors_are_http_200(hub):
    out = hub.api("publish", {"channel": "unknown:x", "data": 1})
    assert out["error"]["code"] == 102
    out = hub.api("publish", {"data": 1})
    assert out["error"]["code"] == 107
    out = hub.api("publish", {"channel": "x"})
    assert out["error"]["code"] == 107


# --------------------------------------------------------------------------------------------
# publish, broadcast, history


def test_publish_reaches_subscriber(hub):
    async def main():
        async with await hub.client("alice") as c:
            sub = await c.subscribe("api-news")
            res = hub.publish("api-news", {"headline": "hello"})
            assert res == {"offset": 1, "epoch": sub["epoch"]}
            push = await c.push(kind="pub")
            assert push["channel"] == "api-news"
            assert push["pub"]["data"] == {"headline": "hello"}
            assert push["pub"]["offset"] == 1
            assert "info" not in push["pub"]
    arun(main())


def test_publish_with_tags(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.subscribe("tagged")
            out = hub.api("publish", {"channel": "tagged", "data": 1, "tags": {"k": "v"}})
            assert out["result"]["offset"] == 1
            push = await c.push(kind="pub")
            assert push["pub"]["data"] == 1
            assert push["pub"].get("tags", {"k": "v"}) == {"k": "v"}
    arun(main())


def test_publish_without_history_has_no_offset(hub_factory):
    hub = hub_factory(config={"namespaces": [{"name": "nohist"}]})

    async def main():
        async with await hub.client("alice") as c:
            await c.subscribe("nohist:x")
            res = hub.publish("nohist:x", "v")
            assert not res.get("offset")
            push = await c.push(kind="pub")
            assert push["pub"]["data"] == "v"
            assert not push["pub"].get("offset")
    arun(main())


def test_broadcast(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.subscribe("b1")
            await c.subscribe("b2")
            hub.publish("b2", "earlier")
            out = hub.api_result("broadcast", {"channels": ["b1", "b2", "unknown:x"],
                                               "data": {"all": True}})
            r1, r2, r3 = out["responses"]
            assert r1["result"]["offset"] == 1
            assert r2["result"]["offset"] == 2
            assert r3["error"]["code"] == 102
            p1 = await c.push(kind="pub", channel="b1")
            assert p1["pub"]["data"] == {"all": True}
            p2 = await c.push(kind="pub", channel="b2")
            assert p2["pub"]["data"] == {"all": True} and p2["pub"]["offset"] == 2
    arun(main())


def test_history_and_history_remove(hub):
    for i in range(1, 5):
        hub.publish("api-hist", {"i": i})
    res = hub.api_result("history", {"channel": "api-hist", "limit": -1})
    assert [p["offset"] for p in res["publications"]] == [1, 2, 3, 4]
    assert [p["data"] for p in res["publications"]] == [{"i": i} for i in range(1, 5)]
    epoch = res["epoch"]
    assert res["offset"] == 4
    res = hub.api_result("history", {"channel": "api-hist", "limit": 2, "reverse": True})
    assert [p["offset"] for p in res["publications"]] == [4, 3]
    res = hub.api_result("history", {"channel": "api-hist", "limit": 10,
                                     "since": {"offset": 2, "epoch": epoch}})
    assert [p["offset"] for p in res["publications"]] == [3, 4]
    res = hub.api_result("history", {"channel": "api-hist"})
    assert not res.get("publications") and res["offset"] == 4 and res["epoch"] == epoch
    out = hub.api("history", {"channel": "api-hist", "limit": 10,
                              "since": {"offset": 2, "epoch": "other"}})
    assert out["error"]["code"] == 112

    assert hub.api_result("history_remove", {"channel": "api-hist"}) == {}
    res = hub.api_result("history", {"channel": "api-hist", "limit": -1})
    assert not res.get("publications")
    # the stream position survives: the next publication continues it
    assert hub.publish("api-hist", "after")["offset"] == 5


def test_history_not_available_without_history(hub_factory):
    hub = hub_factory(config={"namespaces": [{"name": "plain"}]})
    out = hub.api("history", {"channel": "plain:x", "limit": 10})
    assert out["error"]["code"] == 108
    out = hub.api("presence", {"channel": "plain:x"})
    assert out["error"]["code"] == 108


# --------------------------------------------------------------------------------------------
# presence, channels, info


def test_presence_presence_stats_channels_info(hub):
    async def main():
        a1 = await hub.client("alice", token=hub.token("alice", info={"n": 1}))
        a2 = await hub.client("alice")
        b = await hub.client("bob")
        try:
            await a1.subscribe("room-1")
            await a2.subscribe("room-1")
            await b.subscribe("room-1")
            await b.subscribe("room-2")

            pres = hub.api_result("presence", {"channel": "room-1"})["presence"]
            assert set(pres) == {a1.connect_reply["client"], a2.connect_reply["client"],
                                 b.connect_reply["client"]}
            me = pres[a1.connect_reply["client"]]
            assert me["user"] == "alice" and me["client"] == a1.connect_reply["client"]
            assert me["conn_info"] == {"n": 1}
            assert hub.api_result("presence_stats", {"channel": "room-1"}) == \
                {"num_clients": 3, "num_users": 2}
            assert hub.api_result("presence_stats", {"channel": "room-2"}) == \
                {"num_clients": 1, "num_users": 1}

            chans = hub.api_result("channels", {})["channels"]
            assert chans == {"room-1": {"num_clients": 3}, "room-2": {"num_clients": 1}}
            chans = hub.api_result("channels", {"pattern": "room-2"})["channels"]
            assert chans == {"room-2": {"num_clients": 1}}
            chans = hub.api_result("channels", {"pattern": "room-*"})["channels"]
            assert set(chans) == {"room-1", "room-2"}

            (node,) = hub.api_result("info", {})["nodes"]
            assert node["uid"] == a1.connect_reply["node"]
            assert node["name"] == "hub"
            assert node["version"]
            assert node["num_clients"] == 3
            assert node["num_users"] == 2
            assert node["num_channels"] == 2
            assert node["num_subs"] == 4
            assert node["uptime"] >= 0

            await b.close()
            await async_wait_for(lambda: hub.api_result("info", {})["nodes"][0]["num_clients"]
                                 == 2, message="info to drop bob")
            (node,) = hub.api_result("info", {})["nodes"]
            assert node["num_users"] == 1 and node["num_channels"] == 1
            assert node["num_subs"] == 2
            assert hub.api_result("channels", {})["channels"] == {"room-1": {"num_clients": 2}}
        finally:
            for c in (a1, a2, b):
                await c.close()
    arun(main())


def test_node_name_in_info(hub_factory):
    hub = hub_factory("--node-name", "edge-7")
    (node,) = hub.api_result("info", {})["nodes"]
    assert node["name"] == "edge-7"


# --------------------------------------------------------------------------------------------
# server-side subscribe / unsubscribe / disconnect, observed on live connections


def test_server_subscribe_pushes_and_delivers(hub):
    async def main():
        async with await hub.client("alice") as a1, await hub.client("alice") as a2, \
                await hub.client("bob") as b:
            hub.publish("srv-room", "before")
            assert hub.api_result("subscribe", {"user": "alice", "channel": "srv-room"}) == {}
            for c in (a1, a2):
                push = await c.push(kind="subscribe", channel="srv-room")
                sub = push["subscribe"]
                assert sub["recoverable"] is True and sub["epoch"]
                assert sub["offset"] == 1
            hub.publish("srv-room", "after")
            for c in (a1, a2):
                pub = await c.push(kind="pub", channel="srv-room")
                assert pub["pub"]["data"] == "after" and pub["pub"]["offset"] == 2
            stats = hub.api_result("presence_stats", {"channel": "srv-room"})
            assert stats == {"num_clients": 2, "num_users": 1}
            # bob was not subscribed
            await b.subscribe("marker")
            hub.publish("marker", "m")
            push = await b.push()
            assert push["channel"] == "marker", f"bob got {push}"
    arun(main())


def test_server_subscribe_single_client(hub):
    async def main():
        async with await hub.client("alice") as a1, await hub.client("alice") as a2:
            hub.api_result("subscribe", {"user": "alice", "channel": "one-client",
                                         "client": a2.connect_reply["client"]})
            push = await a2.push(kind="subscribe")
            assert push["channel"] == "one-client"
            stats = hub.api_result("presence_stats", {"channel": "one-client"})
            assert stats == {"num_clients": 1, "num_users": 1}
            await a1.subscribe("marker")
            hub.publish("marker", "m")
            push = await a1.push()
            assert push["channel"] == "marker", f"a1 got {push}"
    arun(main())


def test_server_unsubscribe_pushes(hub):
    async def main():
        async with await hub.client("alice") as a, await hub.client("bob") as b:
            await a.subscribe("kick-room")
            await b.subscribe("kick-room")
            assert hub.api_result("unsubscribe", {"user": "alice", "channel": "kick-room"}) == {}
            push = await a.push(kind="unsubscribe")
            assert push == {"channel": "kick-room",
                            "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}
            hub.publish("kick-room", "after-kick")
            assert (await b.push(kind="pub"))["pub"]["data"] == "after-kick"
            assert hub.api_result("presence_stats", {"channel": "kick-room"}) == \
                {"num_clients": 1, "num_users": 1}
            # alice may subscribe again
            await a.subscribe("kick-room")
    arun(main())


def test_server_unsubscribe_single_client(hub):
    async def main():
        async with await hub.client("alice") as a1, await hub.client("alice") as a2:
            await a1.subscribe("kick2")
            await a2.subscribe("kick2")
            hub.api_result("unsubscribe", {"user": "alice", "channel": "kick2",
                                           "client": a1.connect_reply["client"]})
            push = await a1.push(kind="unsubscribe")
            assert push["channel"] == "kick2"
            hub.publish("kick2", "x")
            assert (await a2.push(kind="pub"))["pub"]["data"] == "x"
    arun(main())


def test_server_disconnect_default_code_3503(hub):
    async def main():
        async with await hub.client("alice") as a1, await hub.client("alice") as a2, \
                await hub.client("bob") as b:
            assert hub.api_result("disconnect", {"user": "alice"}) == {}
            assert await a1.closed() == 3503
            assert await a2.closed() == 3503
            assert (await b.result("rpc", {"method": "info"}))["data"]
            (node,) = hub.api_result("info", {})["nodes"]
            assert node["num_clients"] == 1 and node["num_users"] == 1
    arun(main())


def test_server_disconnect_custom_code_and_single_client(hub):
    async def main():
        async with await hub.client("alice") as a1, await hub.client("alice") as a2:
            hub.api_result("disconnect", {"user": "alice",
                                          "client": a2.connect_reply["client"],
                                          "disconnect": {"code": 4501, "reason": "bye now"}})
            assert await a2.closed() == 4501
            assert a2.ws.close_reason == "bye now"
            assert (await a1.result("rpc", {"method": "info"}))["data"]
    arun(main())


def test_server_api_on_unknown_user_is_ok(hub):
    assert hub.api_result("disconnect", {"user": "nobody"}) == {}
    assert hub.api_result("subscribe", {"user": "nobody", "channel": "x"}) == {}
    assert hub.api_result("unsubscribe", {"user": "nobody", "channel": "x"}) == {}


def test_server_subscribe_unknown_namespace_is_102(hub):
    out = hub.api("subscribe", {"user": "alice", "channel": "unknown:x"})
    assert out["error"]["code"] == 102


def test_request_body_as_json_string(hub):
    # Content-Type is not required to be application/json
    r = hub.http.post(hub.url + "/api/publish", timeout=WAIT,
                      data=json.dumps({"channel": "ct", "data": 1}),
                      headers={"X-API-Key": hub.api_key, "Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json()["result"]["offset"] == 1
