"""Backend proxies (docs/protocol.md "Backend proxies"): the hub asks a real HTTP backend, started
here on loopback, when a client connects without a token, subscribes, publishes, calls an RPC or
reaches its expiry; an unmodified centrifuge-python client sees what the backend decided."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from cent import Client as CentClient, HistoryRequest, PublishRequest
from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    ReplyError,
    SubscriptionEventHandler,
    SubscriptionState,
)

from hubtest import WAIT, WSClient, arun, async_wait_for, free_port, note_secrets, wait_for

logging.getLogger("centrifuge").setLevel(logging.CRITICAL)

SESSION_COOKIE = "session=alice-7f3a9c0e51d2b8a4"
STATIC_SECRET = "hub-to-backend-9d2f61c8"
note_secrets([("session_cookie_token", SESSION_COOKIE), ("static_secret", STATIC_SECRET)])
USERS_BY_COOKIE = {SESSION_COOKIE: "alice"}

Answer = Tuple[int, bytes, float]  # status, body, seconds to wait before answering


def ok(result: Dict[str, Any]) -> Answer:
    return 200, json.dumps({"result": result}).encode(), 0.0


def reply(body: Dict[str, Any]) -> Answer:
    return 200, json.dumps(body).encode(), 0.0


class Backend:
    """A real HTTP backend on loopback: each path (`/connect`, `/subscribe`, …) has a handler
    taking (request JSON, headers) and giving an Answer; every request is recorded."""

    def __init__(self) -> None:
        self.handlers: Dict[str, Callable[[Dict[str, Any], Dict[str, str]], Answer]] = {}
        self.requests: List[Tuple[str, Dict[str, Any], Dict[str, str]]] = []
        self.lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                headers = {k: v for k, v in self.headers.items()}
                with backend.lock:
                    backend.requests.append((self.path, body, headers))
                status, payload, delay = backend.handlers[self.path](body, headers)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the hub gave up waiting (the slow case)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def seen(self, path: str) -> List[Tuple[Dict[str, Any], Dict[str, str]]]:
        with self.lock:
            return [(b, h) for p, b, h in self.requests if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.close()


def session_connect(request: Dict[str, Any], headers: Dict[str, str]) -> Answer:
    """A session-cookie backend: the cookie names the user; the SDK's connect `data` picks how
    the backend misbehaves, so one hub serves every case."""
    case = (request.get("data") or {}).get("case", "allow")
    if case == "deny":
        return reply({"error": {"code": 1403, "message": "no session"}})
    if case == "ban":
        return reply({"disconnect": {"code": 4501, "reason": "banned"}})
    if case == "slow":
        return 200, json.dumps({"result": {"user": "late"}}).encode(), 3.0
    if case == "500":
        return 500, b"oops", 0.0
    if case == "garbage":
        return 200, b"<html>not json", 0.0
    user = USERS_BY_COOKIE.get(headers.get("Cookie", ""))
    if user is None:
        return reply({"error": {"code": 1401, "message": "unknown session"}})
    return ok({"user": user, "expire_at": int(time.time()) + 3600, "info": {"name": user.title()},
               "data": {"welcome": user}, "channels": ["news"]})


class Events(ClientEventHandler):
    def __init__(self):
        self.connected, self.disconnected, self.errors, self.server_subscribed, self.server_pubs = [], [], [], [], []
        self.connecting = []

    async def on_connecting(self, ctx):
        self.connecting.append(ctx)

    async def on_connected(self, ctx):
        self.connected.append(ctx)

    async def on_disconnected(self, ctx):
        self.disconnected.append(ctx)

    async def on_error(self, ctx):
        self.errors.append(ctx)

    async def on_subscribed(self, ctx):
        self.server_subscribed.append(ctx)

    async def on_publication(self, ctx):
        self.server_pubs.append(ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self):
        self.pubs, self.subscribed, self.unsubscribed, self.errors = [], [], [], []

    async def on_subscribed(self, ctx):
        self.subscribed.append(ctx)

    async def on_unsubscribed(self, ctx):
        self.unsubscribed.append(ctx)

    async def on_publication(self, ctx):
        self.pubs.append(ctx)

    async def on_error(self, ctx):
        self.errors.append(ctx)


def sdk(hub, events, **kwargs) -> Client:
    """An unmodified centrifuge-python client without a token: the connect proxy decides."""
    return Client(hub.ws_url, events=events, timeout=WAIT, min_reconnect_delay=0.05,
                  max_reconnect_delay=0.3, proxy=None, **kwargs)


def proxy_hub(hub_factory, backend, *args, config=None, **kwargs):
    """A hub with only a connect proxy (no token secret at all) plus `args`."""
    return hub_factory("--proxy-connect-endpoint", backend.url("/connect"),
                       "--proxy-http-headers", "Cookie,Authorization,X-Real-Ip,User-Agent",
                       *args, config=config, secret=None, **kwargs)


def as_json(value):
    """A payload as the Protobuf flavour hands it over (JSON bytes), or as it is."""
    return json.loads(value) if isinstance(value, (bytes, bytearray)) else value


@pytest.mark.parametrize("codec", ["json", "protobuf"])
def test_session_cookie_connects_through_the_connect_proxy(hub_factory, backend, codec):
    backend.handlers["/connect"] = session_connect
    hub = proxy_hub(hub_factory, backend, config={"proxy_static_http_headers": {"X-Hub-Secret": STATIC_SECRET}})
    cent = CentClient(f"{hub.url}/api", hub.api_key, timeout=WAIT)

    async def main():
        events = Events()
        client = sdk(hub, events, headers={"Cookie": SESSION_COOKIE, "X-Real-Ip": "203.0.113.7",
                                           "X-Not-Listed": "keep-me-here"}, use_protobuf=codec == "protobuf")
        try:
            await client.connect()
            await client.ready(WAIT)
            # The backend's `data` reaches the client; its `channels` are server-side subscriptions.
            assert as_json(events.connected[0].data) == {"welcome": "alice"}
            await async_wait_for(lambda: events.server_subscribed, message="server-side subscription to news")
            assert events.server_subscribed[0].channel == "news"
            await asyncio.to_thread(cent.publish, PublishRequest(channel="news", data={"n": 1}))
            await async_wait_for(lambda: events.server_pubs, message="publication on news")
            assert as_json(events.server_pubs[0].pub.data) == {"n": 1}
            # The backend named the user: the server API sees alice with the backend's info.
            conns = hub.api_result("connections", {})["connections"]
            (conn,) = conns.values()
            assert conn["user"] == "alice" and conn["state"]["conn_info"] == {"name": "Alice"}
        finally:
            await client.disconnect()

    arun(main())
    (request, headers), = backend.seen("/connect")
    assert request["client"] and request["transport"] == "websocket"
    assert request["protocol"] == codec and request["encoding"] == "json"
    assert request["name"] == "python"
    # Exactly the allow-listed headers the client sent, plus the static one; nothing else.
    assert headers["Cookie"] == SESSION_COOKIE
    assert headers["X-Real-Ip"] == "203.0.113.7"
    assert headers["User-Agent"].startswith("Python/")
    assert headers["X-Hub-Secret"] == STATIC_SECRET
    assert "X-Not-Listed" not in headers and "Authorization" not in headers


def test_a_connect_proxy_url_alone_lets_the_browser_cookie_through(hub_factory, backend):
    """The default allow-list: a session-cookie backend needs only `--proxy-connect-endpoint`."""
    backend.handlers["/connect"] = session_connect
    hub = hub_factory("--proxy-connect-endpoint", backend.url("/connect"), secret=None)

    async def main():
        events = Events()
        client = sdk(hub, events, headers={"Cookie": SESSION_COOKIE, "X-Not-Listed": "keep-me-here"})
        try:
            await client.connect()
            await client.ready(WAIT)
            assert as_json(events.connected[0].data) == {"welcome": "alice"}
        finally:
            await client.disconnect()

    arun(main())
    (_, headers), = backend.seen("/connect")
    assert headers["Cookie"] == SESSION_COOKIE and headers["User-Agent"].startswith("Python/")
    assert "X-Not-Listed" not in headers


def test_an_empty_header_allow_list_forwards_no_client_header(hub_factory, backend):
    backend.handlers["/connect"] = session_connect
    hub = hub_factory("--proxy-connect-endpoint", backend.url("/connect"), "--proxy-http-headers", "", secret=None)

    async def main():
        events = Events()
        client = sdk(hub, events, headers={"Cookie": SESSION_COOKIE})
        await client.connect()
        # Without the cookie the backend knows no user: the connect is refused.
        await async_wait_for(lambda: events.disconnected, message="refused connect")
        assert events.disconnected[0].code == 1401 and not events.connected

    arun(main())
    (_, headers), = backend.seen("/connect")
    assert "Cookie" not in headers and not headers["User-Agent"].startswith("Python/")  # the hub's own


def test_a_client_without_a_session_is_refused_as_the_backend_says(hub_factory, backend):
    backend.handlers["/connect"] = session_connect
    hub = proxy_hub(hub_factory, backend)

    async def main():
        events = Events()
        client = sdk(hub, events, headers={"Cookie": "session=forged"})
        await client.connect()
        await async_wait_for(lambda: events.disconnected, message="refused connect")
        # A backend error that is not temporary ends the SDK's attempts with that code.
        assert events.disconnected[0].code == 1401 and client.state == ClientState.DISCONNECTED

    arun(main())


@pytest.mark.parametrize("case", ["slow", "500", "garbage"])
def test_a_failing_backend_is_a_temporary_internal_error_and_others_are_served(hub_factory, backend, case):
    backend.handlers["/connect"] = session_connect
    hub = proxy_hub(hub_factory, backend, "--proxy-timeout", "1")

    async def main():
        failing_events, good_events = Events(), Events()
        failing = sdk(hub, failing_events, data={"case": case}, headers={"Cookie": SESSION_COOKIE})
        good = sdk(hub, good_events, headers={"Cookie": SESSION_COOKIE})
        try:
            await failing.connect()
            # While the backend fails (or, for "slow", still holds the first call), another
            # client connects normally.
            await good.connect()
            await good.ready(WAIT)
            await async_wait_for(lambda: failing_events.errors, message=f"{case}: an error")
            error = failing_events.errors[0].error
            assert isinstance(error, ReplyError)
            assert (error.code, error.temporary) == (100, True)
            # Temporary: the SDK keeps trying, and it is not connected.
            assert failing.state == ClientState.CONNECTING
            assert good.state == ClientState.CONNECTED
        finally:
            await failing.disconnect()
            await good.disconnect()

    arun(main())
    metrics = hub.get("/metrics").text
    assert 'hub_proxy_calls_total{kind="connect",outcome="failed"}' in metrics
    assert 'hub_proxy_calls_total{kind="connect",outcome="result"} 1' in metrics
    assert 'hub_proxy_call_duration_seconds_count{kind="connect"}' in metrics
    assert "backend answered" in hub.log() or "unreachable" in hub.log() or "proxy reply" in hub.log()


def test_a_backend_disconnect_closes_the_connection_with_its_code(hub_factory, backend):
    backend.handlers["/connect"] = session_connect
    hub = proxy_hub(hub_factory, backend)

    async def main():
        events = Events()
        client = sdk(hub, events, data={"case": "ban"})
        await client.connect()
        await async_wait_for(lambda: events.disconnected, message="disconnect")
        assert (events.disconnected[0].code, events.disconnected[0].reason) == (4501, "banned")

    arun(main())


def test_a_backend_that_refuses_connections_is_a_temporary_internal_error(hub_factory):
    hub = hub_factory("--proxy-connect-endpoint", f"http://127.0.0.1:{free_port()}/connect", secret=None)

    async def main():
        events = Events()
        client = sdk(hub, events)
        try:
            await client.connect()
            await async_wait_for(lambda: events.errors, message="an error")
            assert (events.errors[0].error.code, events.errors[0].error.temporary) == (100, True)
        finally:
            await client.disconnect()

    arun(main())
    assert hub.alive()


def test_proxy_calls_over_the_in_flight_bound_are_answered_at_once(hub_factory, backend):
    backend.handlers["/connect"] = session_connect
    hub = proxy_hub(hub_factory, backend, "--proxy-max-in-flight", "1", "--proxy-timeout", "2")

    async def main():
        async with await hub.ws() as held, await hub.ws() as over:
            await held.send("connect", {"data": {"case": "slow"}})
            await async_wait_for(lambda: backend.seen("/connect"), message="the held call")
            started = time.monotonic()
            err = await over.error("connect", {})
            # Not queued behind the held call: answered well before the proxy timeout.
            assert time.monotonic() - started < 1.0
            assert err["code"] == 100 and err.get("temporary") is True

    arun(main())
    assert 'hub_proxy_calls_total{kind="connect",outcome="overloaded"} 1' in hub.get("/metrics").text


def test_a_proxy_kind_has_its_own_timeout(hub_factory, backend):
    """`--proxy-connect-timeout` bounds connect calls; the other kinds keep `--proxy-timeout`."""
    backend.handlers["/connect"] = session_connect
    hub = proxy_hub(hub_factory, backend, "--proxy-timeout", "10", "--proxy-connect-timeout", "0.3")

    async def main():
        async with await hub.ws() as slow:
            started = time.monotonic()
            err = await slow.error("connect", {"data": {"case": "slow"}})  # the backend takes 3 s
            assert time.monotonic() - started < 2.0
            assert err["code"] == 100 and err.get("temporary") is True

    arun(main())


@pytest.mark.parametrize("flag", ["--proxy-connect-timeout", "--proxy-sub-refresh-timeout"])
def test_a_proxy_timeout_out_of_range_stops_the_hub(hub_factory, backend, flag):
    cp = hub_factory.run("--proxy-connect-endpoint", backend.url("/connect"), flag, "0")
    assert cp.returncode == 64
    assert "_timeout must be 0.01-60 seconds" in cp.stderr + cp.stdout


ROOMS = {"name": "room", "proxy_subscribe": True, "proxy_publish": True,
         "history_size": 10, "history_ttl": 300}


def test_subscribe_publish_and_rpc_proxies_decide_and_rewrite(hub_factory, backend):
    backend.handlers["/connect"] = session_connect

    def subscribe(request, headers):
        if request["channel"] == "room:closed":
            return reply({"error": {"code": 103, "message": "permission denied"}})
        return ok({"info": {"seat": 7}, "data": {"topic": "open talk"}})

    def publish(request, headers):
        text = request["data"]["text"]
        if text == "spam":
            return reply({"error": {"code": 1429, "message": "spam refused"}})
        return ok({"data": {"text": text.upper(), "by": request["user"]}})

    def rpc(request, headers):
        if request["method"] != "echo":
            return reply({"error": {"code": 104, "message": "method not found"}})
        return ok({"data": {"echo": request["data"], "user": request["user"], "cookie": headers.get("Cookie")}})

    backend.handlers.update({"/subscribe": subscribe, "/publish": publish, "/rpc": rpc})
    hub = proxy_hub(hub_factory, backend, "--proxy-subscribe-endpoint", backend.url("/subscribe"),
                    "--proxy-publish-endpoint", backend.url("/publish"),
                    "--proxy-rpc-endpoint", backend.url("/rpc"), config={"namespaces": [ROOMS]})
    cent = CentClient(f"{hub.url}/api", hub.api_key, timeout=WAIT)

    async def main():
        events, open_events, closed_events = Events(), SubEvents(), SubEvents()
        client = sdk(hub, events, headers={"Cookie": SESSION_COOKIE})
        room = client.new_subscription("room:open", open_events)
        closed = client.new_subscription("room:closed", closed_events)
        try:
            await client.connect()
            await client.ready(WAIT)
            await room.subscribe()
            await room.ready(WAIT)
            assert open_events.subscribed[0].data == {"topic": "open talk"}
            await closed.subscribe()
            await async_wait_for(lambda: closed_events.unsubscribed, message="denied subscription")
            assert closed_events.unsubscribed[0].code == 103 and closed.state == SubscriptionState.UNSUBSCRIBED

            # The backend's rewrite is what subscribers get and what history keeps.
            await room.publish({"text": "hello"})
            await async_wait_for(lambda: open_events.pubs, message="rewritten publication")
            assert open_events.pubs[0].pub.data == {"text": "HELLO", "by": "alice"}
            with pytest.raises(ReplyError) as refused:
                await room.publish({"text": "spam"})
            assert refused.value.code == 1429
            history = await asyncio.to_thread(cent.history, HistoryRequest(channel="room:open", limit=10))
            assert [p.data for p in history.publications] == [{"text": "HELLO", "by": "alice"}]

            result = await client.rpc("echo", {"x": 1})
            assert result.data == {"echo": {"x": 1}, "user": "alice", "cookie": SESSION_COOKIE}
            with pytest.raises(ReplyError) as unknown:
                await client.rpc("nope", {})
            assert unknown.value.code == 104
        finally:
            await client.disconnect()

    arun(main())
    (sub_request, _), _ = backend.seen("/subscribe")
    assert sub_request["user"] == "alice" and sub_request["channel"] == "room:open"


def test_a_namespace_can_name_its_own_proxy_backend(hub_factory, backend):
    """`proxy_subscribe_endpoint`/`proxy_publish_endpoint` in a namespace: its channels go to that
    backend; a namespace with only `proxy_subscribe` keeps the global endpoint."""
    backend.handlers["/connect"] = session_connect
    backend.handlers["/subscribe"] = lambda request, headers: ok({"data": {"by": "global"}})
    backend.handlers["/billing/subscribe"] = lambda request, headers: ok({"data": {"by": "billing"}})
    backend.handlers["/billing/publish"] = lambda request, headers: ok({"data": {"billed": request["data"]}})
    billing = {"name": "billing", "proxy_subscribe_endpoint": backend.url("/billing/subscribe"),
               "proxy_publish_endpoint": backend.url("/billing/publish"), "history_size": 10, "history_ttl": 300}
    rooms = {"name": "room", "proxy_subscribe": True}
    hub = proxy_hub(hub_factory, backend, "--proxy-subscribe-endpoint", backend.url("/subscribe"),
                    config={"namespaces": [billing, rooms]})

    async def main():
        events, bill_events, room_events = Events(), SubEvents(), SubEvents()
        client = sdk(hub, events, headers={"Cookie": SESSION_COOKIE})
        bill = client.new_subscription("billing:invoices", bill_events)
        room = client.new_subscription("room:lobby", room_events)
        try:
            await client.connect()
            await client.ready(WAIT)
            await bill.subscribe()
            await room.subscribe()
            await bill.ready(WAIT)
            await room.ready(WAIT)
            assert bill_events.subscribed[0].data == {"by": "billing"}
            assert room_events.subscribed[0].data == {"by": "global"}
            await bill.publish({"amount": 3})
            await async_wait_for(lambda: bill_events.pubs, message="publication rewritten by the billing backend")
            assert bill_events.pubs[0].pub.data == {"billed": {"amount": 3}}
        finally:
            await client.disconnect()

    arun(main())
    assert [r["channel"] for r, _ in backend.seen("/billing/subscribe")] == ["billing:invoices"]
    assert [r["channel"] for r, _ in backend.seen("/subscribe")] == ["room:lobby"]


def test_a_namespace_proxy_endpoint_must_be_a_plain_http_url(hub_factory, backend):
    cp = hub_factory.run(config={"namespaces": [{"name": "billing", "proxy_publish_endpoint": "https://10.0.0.1/p"}]})
    assert cp.returncode == 64
    assert "namespace billing" in cp.stderr + cp.stdout and "https is not supported" in cp.stderr + cp.stdout


def test_a_subscriber_recovering_after_a_drop_gets_the_rewritten_data(hub_factory, backend):
    """What the publish proxy rewrote is what history keeps, so recovery hands out the rewrite."""
    backend.handlers["/connect"] = session_connect
    backend.handlers["/subscribe"] = lambda request, headers: ok({})
    backend.handlers["/publish"] = lambda request, headers: ok({"data": {"text": request["data"]["text"].upper()}})
    hub = proxy_hub(hub_factory, backend, "--proxy-subscribe-endpoint", backend.url("/subscribe"),
                    "--proxy-publish-endpoint", backend.url("/publish"), config={"namespaces": [ROOMS]})

    async def main():
        away = asyncio.Event()

        class Away(Events):  # publishes while the subscriber is between connections
            async def on_connecting(self, ctx):
                await super().on_connecting(ctx)
                if ctx.code != 0 and not away.is_set():
                    for text in ("missed one", "missed two"):
                        await pub_room.publish({"text": text})
                    away.set()

        pub_events, sub_client_events, sub_events = Events(), Away(), SubEvents()
        publisher = sdk(hub, pub_events, headers={"Cookie": SESSION_COOKIE})
        subscriber = sdk(hub, sub_client_events, headers={"Cookie": SESSION_COOKIE})
        pub_room = publisher.new_subscription("room:recover", SubEvents())
        room = subscriber.new_subscription("room:recover", sub_events)
        try:
            await publisher.connect()
            await subscriber.connect()
            await pub_room.subscribe()
            await room.subscribe()
            await pub_room.ready(WAIT)
            await room.ready(WAIT)
            await pub_room.publish({"text": "live"})
            await async_wait_for(lambda: sub_events.pubs, message="the live publication")
            await subscriber._conn.close()  # the subscriber's websocket drops; it reconnects by itself
            await asyncio.wait_for(away.wait(), WAIT)
            await async_wait_for(lambda: len(sub_events.subscribed) == 2, message="resubscribed")
            await async_wait_for(lambda: len(sub_events.pubs) == 3, message="recovered publications")
            assert sub_events.subscribed[1].was_recovering is True and sub_events.subscribed[1].recovered is True
            assert [p.pub.data for p in sub_events.pubs] == [{"text": "LIVE"}, {"text": "MISSED ONE"}, {"text": "MISSED TWO"}]
        finally:
            await publisher.disconnect()
            await subscriber.disconnect()

    arun(main())


def test_the_refresh_proxy_extends_a_session_then_ends_it(hub_factory, backend):
    refreshes = []

    def connect(request, headers):
        return ok({"user": "alice", "expire_at": int(time.time()) + 2})

    def refresh(request, headers):
        refreshes.append(request)
        if len(refreshes) == 1:
            return ok({"expire_at": int(time.time()) + 2, "info": {"refreshed": True}})
        return ok({"expired": True})

    backend.handlers.update({"/connect": connect, "/refresh": refresh})
    hub = proxy_hub(hub_factory, backend, "--proxy-refresh-endpoint", backend.url("/refresh"))

    async def main():
        events = Events()
        client = sdk(hub, events)
        try:
            await client.connect()
            await client.ready(WAIT)
            await async_wait_for(lambda: len(refreshes) >= 1, timeout=4, message="first refresh")
            # Extended: still connected, with the backend's new info.
            await async_wait_for(lambda: hub.api_result("connections", {})["connections"], message="connection listed")
            (conn,) = hub.api_result("connections", {})["connections"].values()
            assert conn["state"]["conn_info"] == {"refreshed": True}
            assert client.state == ClientState.CONNECTED and len(events.connected) == 1
            # The second answer says expired: the session ends with 3005 and the SDK reconnects.
            await async_wait_for(lambda: any(c.code == 3005 for c in events.connecting), timeout=4,
                                 message="expired disconnect")
        finally:
            await client.disconnect()

    arun(main())
    assert refreshes[0]["user"] == "alice" and refreshes[0]["client"]


@pytest.mark.parametrize("args,config,says", [
    (["--proxy-connect-endpoint", "https://127.0.0.1:9/connect"], None, "https is not supported"),
    (["--proxy-rpc-endpoint", "http://backend.internal/rpc"], None, "must be an IP address"),
    ([], {"namespaces": [{"name": "room", "proxy_publish": True}]}, "proxy_publish needs proxy_publish_endpoint"),
    (["--proxy-connect-endpoint", "http://127.0.0.1:9/c", "--proxy-http-headers", "Cookie,Bad Header"], None,
     "'Bad Header' is not a header name"),
])
def test_bad_proxy_config_stops_the_hub(hub_factory, args, config, says):
    cp = hub_factory.run(*args, config=config)
    assert cp.returncode == 64
    assert says in cp.stderr + cp.stdout


def test_the_sub_refresh_proxy_extends_a_subscription_then_ends_it(hub_factory, backend):
    backend.handlers["/connect"] = session_connect
    refreshes = []

    def subscribe(request, headers):
        return ok({"expire_at": int(time.time()) + 2})

    def sub_refresh(request, headers):
        refreshes.append(request)
        return ok({"expire_at": int(time.time()) + 2} if len(refreshes) == 1 else {"expired": True})

    backend.handlers.update({"/subscribe": subscribe, "/sub_refresh": sub_refresh})
    hub = proxy_hub(hub_factory, backend, "--proxy-subscribe-endpoint", backend.url("/subscribe"),
                    "--proxy-sub-refresh-endpoint", backend.url("/sub_refresh"),
                    config={"namespaces": [{"name": "room", "proxy_subscribe": True, "proxy_sub_refresh": True}]})

    async def main():
        events, room_events = Events(), SubEvents()
        client = sdk(hub, events, headers={"Cookie": SESSION_COOKIE})
        room = client.new_subscription("room:a", room_events)
        try:
            await client.connect()
            await room.subscribe()
            await room.ready(WAIT)
            await async_wait_for(lambda: refreshes, timeout=4, message="first sub_refresh")
            # Extended by the backend: the client is still subscribed, on its first connection.
            assert room.state == SubscriptionState.SUBSCRIBED and len(events.connected) == 1
            await async_wait_for(lambda: any(c.code == 3006 for c in events.connecting), timeout=4,
                                 message="subscription expired disconnect")
        finally:
            await client.disconnect()

    arun(main())
    assert refreshes[0]["user"] == "alice" and refreshes[0]["channel"] == "room:a"


def test_a_uni_sse_client_with_a_cookie_connects_through_the_connect_proxy(hub_factory, backend):
    from test_transports import RawStream  # the raw socket reader the transport tests use

    backend.handlers["/connect"] = session_connect
    hub = proxy_hub(hub_factory, backend)
    stream = RawStream(hub.port, "GET", "/connection/uni_sse?cf_connect=%7B%7D",
                       {"Accept": "text/event-stream", "Cookie": SESSION_COOKIE, "X-Not-Listed": "x"})
    try:
        assert stream.status == 200
        push = json.loads(stream.event()["data"])
    finally:
        stream.close()
    assert push["connect"]["data"] == {"welcome": "alice"} and "news" in push["connect"]["subs"]
    (request, headers), = backend.seen("/connect")
    assert request["transport"] == "uni_sse"
    assert headers["Cookie"] == SESSION_COOKIE and "X-Not-Listed" not in headers


def test_the_publish_proxy_can_skip_history(hub_factory, backend):
    """Centrifugo's `skip_history` in the publish proxy result: subscribers get the publication,
    history does not keep it."""
    backend.handlers["/connect"] = session_connect

    def publish(request, headers):
        return ok({"skip_history": request["data"].get("ephemeral", False)})

    backend.handlers["/publish"] = publish
    hub = proxy_hub(hub_factory, backend, "--proxy-publish-endpoint", backend.url("/publish"),
                    config={"namespaces": [{"name": "room", "proxy_publish": True, "history_size": 10, "history_ttl": 300}]})
    cent = CentClient(f"{hub.url}/api", hub.api_key, timeout=WAIT)

    async def main():
        events, room_events = Events(), SubEvents()
        client = sdk(hub, events, headers={"Cookie": SESSION_COOKIE})
        room = client.new_subscription("room:typing", room_events)
        try:
            await client.connect()
            await room.subscribe()
            await room.ready(WAIT)
            await room.publish({"text": "kept"})
            await room.publish({"text": "typing…", "ephemeral": True})
            await room.publish({"text": "kept too"})
            await async_wait_for(lambda: len(room_events.pubs) == 3, message="three publications")
            assert [p.pub.data["text"] for p in room_events.pubs] == ["kept", "typing…", "kept too"]
        finally:
            await client.disconnect()

    arun(main())
    history = cent.history(HistoryRequest(channel="room:typing", limit=10))
    assert [p.data["text"] for p in history.publications] == ["kept", "kept too"]
    assert [p.offset for p in history.publications] == [1, 2]


# Publication stream (docs/channels.md "Publication stream")

STREAM_SECRET = "stream-backend-key-51c0ffee"
note_secrets([("stream_secret", STREAM_SECRET)])


class EventBackend:
    """A backend receiving the publication stream's POSTs on a fixed loopback port; it can be
    stopped (connections refused) and started again, and can answer 500 to the first POSTs."""

    def __init__(self, port: Optional[int] = None) -> None:
        self.port = port or free_port()
        self.batches: List[List[Dict[str, Any]]] = []
        self.headers: List[Dict[str, str]] = []
        self.fail_next = 0
        self.failed = 0
        self.lock = threading.Lock()
        self.server: Optional[ThreadingHTTPServer] = None
        self.start()

    def start(self) -> None:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                with backend.lock:
                    failing = backend.fail_next > 0
                    if failing:
                        backend.fail_next -= 1
                        backend.failed += 1
                    else:
                        backend.batches.append(body["events"])
                        backend.headers.append(dict(self.headers.items()))
                status, payload = (500, b"down for maintenance") if failing else (200, b"{}")
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hub/events"

    def events(self) -> List[Dict[str, Any]]:
        with self.lock:
            return [e for batch in self.batches for e in batch]


@pytest.fixture
def event_backend():
    b = EventBackend()
    yield b
    if b.server is not None:
        b.stop()


def stream_hub(hub_factory, url: str, *args, **options):
    feed = {"name": "feed", "history_size": 1000, "history_ttl": 600, "join_leave": True,
            "publication_stream_url": url, **options}
    return hub_factory("--publication-stream-retry-max-delay", "0.5", *args,
                       config={"namespaces": [feed], "publication_stream_http_headers": {"X-Stream-Key": STREAM_SECRET}})


def publications(events: List[Dict[str, Any]], channel: str) -> List[Dict[str, Any]]:
    return [e for e in events if e["type"] == "publication" and e["channel"] == channel]


def test_the_webhook_gets_every_publication_join_and_leave_once_in_order(hub_factory, event_backend):
    hub = stream_hub(hub_factory, event_backend.url)

    async def main():
        sub_events = SubEvents()
        client = Client(hub.ws_url, token=hub.token("alice"), timeout=WAIT, proxy=None)
        feed = client.new_subscription("feed:orders", sub_events)
        await client.connect()
        await feed.subscribe()
        await feed.ready(WAIT)
        for n in range(1, 51):
            await asyncio.to_thread(hub.publish, "feed:orders", {"n": n})
        await async_wait_for(lambda: len(sub_events.pubs) == 50, message="50 publications delivered")
        await feed.unsubscribe()
        await client.disconnect()

    arun(main())
    # A channel of a namespace without a stream is not sent.
    hub.publish("news", {"not": "streamed"})
    wait_for(lambda: any(e["type"] == "leave" for e in event_backend.events()), message="the leave event")
    events = event_backend.events()
    assert [e["type"] for e in events] == ["join"] + ["publication"] * 50 + ["leave"]
    join, leave = events[0], events[-1]
    assert join["channel"] == leave["channel"] == "feed:orders"
    assert join["info"]["user"] == "alice" and join["info"]["client"] == leave["info"]["client"]
    pubs = events[1:-1]
    assert [p["data"] for p in pubs] == [{"n": n} for n in range(1, 51)]
    assert [p["offset"] for p in pubs] == list(range(1, 51))
    epoch = pubs[0]["epoch"]
    assert [p["id"] for p in pubs] == [f"feed:orders@{epoch}:{n}" for n in range(1, 51)]
    assert len({e["id"] for e in events}) == len(events)
    assert all(isinstance(e["time"], int) and e["time"] > 1_600_000_000_000 for e in events)
    assert max(map(len, event_backend.batches)) <= 100
    assert all(h["X-Stream-Key"] == STREAM_SECRET for h in event_backend.headers)
    metrics = hub.get("/metrics").text
    target = f'target="webhook:127.0.0.1:{event_backend.port}"'  # never the URL's path
    assert f'hub_publication_stream_events_sent_total{{{target}}} 52' in metrics
    assert f'hub_publication_stream_queue_depth{{{target}}} 0' in metrics
    assert STREAM_SECRET not in hub.log()


def test_a_backend_answering_500_gets_the_batch_again(hub_factory, event_backend):
    event_backend.fail_next = 3
    hub = stream_hub(hub_factory, event_backend.url)
    for n in range(1, 11):
        hub.publish("feed:retry", {"n": n})
    wait_for(lambda: len(event_backend.events()) == 10, message="ten events after the 500s")
    assert event_backend.failed == 3
    assert [e["data"]["n"] for e in event_backend.events()] == list(range(1, 11))
    metrics = hub.get("/metrics").text
    target = f'target="webhook:127.0.0.1:{event_backend.port}"'
    assert f'hub_publication_stream_events_sent_total{{{target}}} 10' in metrics
    assert f'hub_publication_stream_events_retried_total{{{target}}}' in metrics
    assert "publication stream target failed" in hub.log() and "HTTP 500" in hub.log()


def test_a_backend_down_for_30_seconds_gets_everything_once_in_order_afterwards(hub_factory, event_backend):
    hub = stream_hub(hub_factory, event_backend.url)
    hub.publish("feed:outage", {"n": 0})
    wait_for(lambda: len(event_backend.events()) == 1, message="the first event")
    event_backend.stop()  # connection refused from now on
    published = [0]

    async def main():
        sub_events = SubEvents()
        client = Client(hub.ws_url, token=hub.token("bob"), timeout=WAIT, proxy=None)
        feed = client.new_subscription("feed:outage", sub_events)
        try:
            await client.connect()
            await feed.subscribe()
            await feed.ready(WAIT)
            started = time.monotonic()
            n = 0
            while time.monotonic() - started < 30:
                n += 1
                await asyncio.to_thread(hub.publish, "feed:outage", {"n": n})
                published.append(n)
                if n % 50 == 0:
                    # The hub keeps serving: subscribers get each publication, new clients connect.
                    await async_wait_for(lambda: len(sub_events.pubs) == n, message=f"publication {n} delivered")
                    late = Client(hub.ws_url, token=hub.token(f"late{n}"), timeout=WAIT, proxy=None)
                    await late.connect()
                    await late.ready(WAIT)
                    await late.disconnect()
                await asyncio.sleep(0.05)
            await async_wait_for(lambda: len(sub_events.pubs) == n, message="every publication delivered")
        finally:
            await client.disconnect()

    arun(main(), timeout=90)
    assert "publication stream target failed" in hub.log()
    depth = hub.get("/metrics").text
    assert f'hub_publication_stream_queue_depth{{target="webhook:127.0.0.1:{event_backend.port}"}} 0' not in depth
    event_backend.start()
    wait_for(lambda: len(publications(event_backend.events(), "feed:outage")) >= len(published), timeout=15,
             message="the backlog after the outage")
    pubs = publications(event_backend.events(), "feed:outage")
    assert [p["data"]["n"] for p in pubs] == published  # exactly once, in order
    assert [p["offset"] for p in pubs] == list(range(1, len(published) + 1))
    assert len(published) > 200
    # The backlog went in batches of at most the default 100 events per POST.
    assert len(event_backend.batches) < len(pubs) / 2 and max(map(len, event_backend.batches)) == 100
    assert "publication stream target reachable again" in hub.log()
    assert 'hub_publication_stream_events_dropped_total{' not in hub.get("/metrics").text


def test_a_full_stream_queue_drops_new_events_counts_and_says_so_once(hub_factory):
    # Nothing listens there: every event stays queued until the bound.
    port = free_port()
    hub = stream_hub(hub_factory, f"http://127.0.0.1:{port}/events", "--publication-stream-queue-max-bytes", "4096")
    for n in range(60):
        hub.publish("feed:full", {"n": n, "pad": "x" * 100})
    metrics = hub.get("/metrics").text
    dropped = [line for line in metrics.splitlines()
               if line.startswith(f'hub_publication_stream_events_dropped_total{{target="webhook:127.0.0.1:{port}"}}')]
    assert dropped and float(dropped[0].split()[-1]) > 0
    assert hub.log().count("publication stream queue full") == 1


@pytest.mark.parametrize("config,says", [
    ({"namespaces": [{"name": "feed", "publication_stream_redis_key": "events"}]}, "needs the redis engine"),
    ({"namespaces": [{"name": "feed", "publication_stream_url": "https://127.0.0.1/x"}]}, "https is not supported"),
    ({"namespaces": [{"name": "feed", "publication_stream_url": "http://127.0.0.1:9/x",
                      "publication_stream_redis_key": "events"}]}, "exclude each other"),
    ({"publication_stream_batch_size": 0}, "publication_stream_batch_size must be 1-10000"),
])
def test_bad_publication_stream_config_stops_the_hub(hub_factory, config, says):
    cp = hub_factory.run(config=config)
    assert cp.returncode == 64
    assert says in cp.stderr + cp.stdout


def test_the_redis_stream_target_holds_each_event_once_in_order(hub_factory, redis_factory):
    redis = redis_factory()
    feed = {"name": "feed", "history_size": 100, "history_ttl": 600,
            "publication_stream_redis_key": "archive:feed", "publication_stream_redis_maxlen": 1000}
    config = {"namespaces": [feed]}
    a = hub_factory("--engine", "redis", "--redis-url", redis.url, "--node-name", "a", config=config)
    b = hub_factory("--engine", "redis", "--redis-url", redis.url, "--node-name", "b", config=config)

    async def main():
        sub_events = SubEvents()
        # Subscribed on node b; publications made through node a.
        client = Client(b.ws_url, token=b.token("carol"), timeout=WAIT, proxy=None)
        sub = client.new_subscription("feed:ledger", sub_events)
        await client.connect()
        await sub.subscribe()
        await sub.ready(WAIT)
        for n in range(1, 21):
            await asyncio.to_thread(a.publish, "feed:ledger", {"n": n})
        await async_wait_for(lambda: len(sub_events.pubs) == 20, message="20 publications on node b")
        await sub.unsubscribe()
        await client.disconnect()

    arun(main())

    def entries():
        out = redis.cli("XRANGE", "archive:feed", "-", "+").splitlines()
        return [json.loads(line) for line in out if line.startswith("{")]

    wait_for(lambda: len(entries()) == 22, message="22 stream entries")
    events = entries()
    # Once overall: node a wrote the publications, node b (holding the client) the join and leave.
    assert [e["type"] for e in events] == ["join"] + ["publication"] * 20 + ["leave"]
    assert [e["data"]["n"] for e in events[1:-1]] == list(range(1, 21))
    assert [e["offset"] for e in events[1:-1]] == list(range(1, 21))
    assert {e["node"] for e in events[1:-1]} == {a.api_result("info", {})["nodes"][0]["uid"]}
    assert events[0]["info"]["user"] == "carol"


from test_redis import redis_factory  # noqa: E402,F401 (the fixture, shared with the Redis tests)
