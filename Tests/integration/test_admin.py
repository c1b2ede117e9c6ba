"""Seed 003 (June Agent): analytics, admin, monitoring, configuration, /health /status /metrics.

Real hub processes, the reference workers and the fake LLM (the one mock) as in test_chat.py;
a real redis-server for the two-node and hand-counted-fixture tests. Role matrix and formulas:
docs/admin.md.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import math
import re
import time
from collections import Counter

import pytest
import requests

from hubtest import WAIT, HubFactory, arun, wait_for
from test_chat import ADMIN, ADMIN_PASSWORD, FAST_HASH, Stack, bearer
from test_redis import RedisServer

GATEWAY_TOKEN = "gw-allowed-token"
ENV = {**FAST_HASH, "HUB_GATEWAY_ALLOWED_TOKEN": GATEWAY_TOKEN, "HUB_GATEWAY_ADMIN_TOKEN": "gw-admin-token"}
# The role matrix alone makes more admin calls than the seed's 60 a minute (tested in test_chat.py).
CONFIG = {"rate_limits": {"june-default": ["10000/minute"], "june-chat": ["10000/minute"]}}


class Admin(Stack):
    def token(self, username, password="password-123", role="user", **fields):
        if username != ADMIN:
            r = requests.post(self.hub.url + "/admin/users", headers=self.admin_headers(),
                              json={"username": username, "password": password, "role": role, **fields}, timeout=WAIT)
            assert r.status_code in (200, 409), r.text
        return self.login(username, password if username != ADMIN else ADMIN_PASSWORD)["access_token"]

    def call(self, method, path, token=None, **kwargs):
        headers = bearer(token) if token else {}
        return requests.request(method, self.hub.url + path, headers=headers, timeout=WAIT, **kwargs)

    def chat(self, token, content, conversation):
        r = self.call("POST", "/chat", token, json={"type": "text", "content": content, "conversation_id": conversation})
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    factory = HubFactory(request, tmp_path_factory)
    s = Admin(factory("--service-timeout", "5", env=ENV, config=CONFIG))
    s.start_llm()
    s.start_worker("llm", "agent", "tts", "stt")
    s.admin = s.token(ADMIN)
    s.moderator = s.token("mona", role="moderator")
    s.user = s.token("uma")
    yield s
    s.stop()
    assert not factory.teardown()


async def admin_feed(hub, token, channel, user=ADMIN):
    """A protocol client subscribed to an admin channel with a token from the hub."""
    r = requests.get(hub.url + "/admin/channels/token", params={"channel": channel}, headers=bearer(token), timeout=WAIT)
    assert r.status_code == 200, r.text
    client = await hub.client(user, token=token)
    await client.result("subscribe", {"channel": channel, "token": r.json()["token"]})
    return client


async def next_event(client, channel, event):
    while True:
        pub = (await client.push(kind="pub", channel=channel))["pub"]
        if pub["data"]["event"] == event:
            return pub["data"]


# ------------------------------------------------------------------------------------------
# roles, route by route

# (method, path, body, roles that pass): requests that change nothing whoever sends them
# (unknown ids, invalid bodies) so the matrix can run in any order.
MATRIX = [
    ("GET", "/admin/users", None, {"admin", "moderator"}),
    ("GET", "/admin/users/stats", None, {"admin", "moderator"}),
    ("GET", "/admin/users/nobody", None, {"admin", "moderator"}),
    ("POST", "/admin/users", {"username": "x", "password": "short"}, {"admin"}),
    ("PUT", "/admin/users/nobody", {"role": "admin"}, {"admin"}),
    ("DELETE", "/admin/users/nobody", None, {"admin"}),
    ("GET", "/admin/conversations", None, {"admin", "moderator"}),
    ("GET", "/admin/conversations/nothing", None, {"admin", "moderator"}),
    ("GET", "/admin/conversations/search?query=hello", None, {"admin", "moderator"}),
    ("DELETE", "/admin/conversations/nothing", None, {"admin"}),
    ("GET", "/conversations/analytics/metrics?user_id=mona&chat_id=none", None, {"admin", "moderator"}),  # users: their own only
    ("GET", "/conversations/analytics/dashboard", None, {"admin", "moderator"}),
    ("GET", "/conversations/analytics/report", None, {"admin", "moderator"}),
    ("GET", "/admin/bot/config", None, {"admin"}),
    ("PUT", "/admin/bot/config", {"config": {"enabled": "no"}}, {"admin"}),
    ("GET", "/admin/bot/status", None, {"admin"}),
    ("GET", "/admin/bot/stats", None, {"admin"}),
    ("GET", "/admin/bot/commands", None, {"admin"}),
    ("POST", "/admin/bot/commands", {"name": "Bad Name!", "response": "x"}, {"admin"}),
    ("PUT", "/admin/bot/commands/nothing", {"response": "x"}, {"admin"}),
    ("DELETE", "/admin/bot/commands/nothing", None, {"admin"}),
    ("GET", "/admin/monitoring/services", None, {"admin"}),
    ("GET", "/admin/monitoring/metrics", None, {"admin"}),
    ("GET", "/admin/monitoring/health", None, {"admin"}),
    ("GET", "/admin/config", None, {"admin"}),
    ("PUT", "/admin/config", {"config": {"maintenance_mode": "yes"}}, {"admin"}),
    ("GET", "/admin/config/history", None, {"admin"}),
    ("GET", "/admin/channels/token?channel=admin:users", None, {"admin", "moderator"}),
    ("POST", "/admin/inspector/info", {}, {"admin"}),
    ("POST", "/admin/inspector/channels", {"pattern": "*"}, {"admin"}),
    ("POST", "/admin/inspector/presence", {"channel": "nothing"}, {"admin"}),
    ("POST", "/admin/inspector/history", {"channel": "nothing"}, {"admin"}),
    ("POST", "/admin/inspector/connections", {"user": "nobody"}, {"admin"}),
    ("POST", "/admin/inspector/disconnect", {"user": "nobody"}, {"admin"}),
]


@pytest.mark.parametrize("method,path,body,allowed", MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
def test_every_admin_route_answers_each_role_as_documented(stack, method, path, body, allowed):
    r = stack.call(method, path, json=body)
    assert r.status_code == 401 and r.json() == {"detail": "Not authenticated"}
    assert r.headers["www-authenticate"] == "Bearer"
    assert stack.call(method, path, "not-a-jwt", json=body).status_code == 401
    for role, token in (("user", stack.user), ("moderator", stack.moderator), ("admin", stack.admin)):
        r = stack.call(method, path, token, json=body)
        if role in allowed:
            assert r.status_code not in (401, 403), f"{role}: {r.status_code} {r.text}"
        else:
            assert r.status_code == 403 and r.json() == {"detail": "Insufficient permissions"}, f"{role}: {r.text}"


def test_channel_inspector_shows_live_channels_and_disconnects_a_connection(stack):
    """The inspector's routes answer as the server API does, under the admin JWT instead of the API key."""
    hub = stack.hub

    def inspect(method, body):
        r = stack.call("POST", f"/admin/inspector/{method}", stack.admin, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    async def body():
        viewer = await hub.client("ivy")
        await viewer.subscribe("inspected")
        hub.publish("inspected", {"n": 1})
        channels = inspect("channels", {"pattern": "insp*"})["result"]["channels"]
        assert channels == {"inspected": {"num_clients": 1}}
        history = inspect("history", {"channel": "inspected", "limit": 5})["result"]
        assert [p["data"] for p in history["publications"]] == [{"n": 1}]
        connections = inspect("connections", {"user": "ivy"})["result"]["connections"]
        assert list(connections) == [viewer.connect_reply["client"]]
        assert inspect("disconnect", {"user": "ivy", "client": viewer.connect_reply["client"]}) == {"result": {}}
        assert await viewer.closed() == 3503
        assert inspect("channels", {"pattern": "insp*"})["result"]["channels"] == {}
        assert inspect("presence", {})["error"]["code"] == 107
    arun(body())


def test_moderators_follow_users_and_conversations_but_not_config(stack):
    assert stack.call("GET", "/admin/channels/token?channel=admin:conversations", stack.moderator).status_code == 200
    for channel in ("admin:config", "admin:services"):
        r = stack.call("GET", f"/admin/channels/token?channel={channel}", stack.moderator)
        assert r.status_code == 403
    r = stack.call("GET", "/admin/channels/token?channel=chat:uma%23uma", stack.admin)
    assert r.status_code == 400 and "admin:users" in r.json()["detail"]

    async def body():
        # Without a token from the hub nobody subscribes, an admin's access token included.
        client = await stack.hub.client(ADMIN, token=stack.admin)
        assert (await client.error("subscribe", {"channel": "admin:users"}))["code"] == 103
        user = await stack.hub.client("uma", token=stack.user)
        assert (await user.error("subscribe", {"channel": "admin:config"}))["code"] == 103
        # A token for one channel does not open another.
        token = stack.call("GET", "/admin/channels/token?channel=admin:users", stack.moderator).json()["token"]
        mod = await stack.hub.client("mona", token=stack.moderator)
        assert (await mod.error("subscribe", {"channel": "admin:config", "token": token}))["code"] == 103
        await mod.result("subscribe", {"channel": "admin:users", "token": token})
        for c in (client, user, mod):
            await c.ws.close()
    arun(body())


# ------------------------------------------------------------------------------------------
# users


def test_user_management_with_live_events_and_pagination(stack):
    async def body():
        feed = await admin_feed(stack.hub, stack.admin, "admin:users")
        r = stack.call("POST", "/admin/users", stack.admin, json={"username": "vic", "password": "vic-password",
                                                                   "email": "vic@example.com", "role": "user"})
        assert r.status_code == 200
        vic = r.json()
        assert {k: vic[k] for k in ("user_id", "username", "email", "role", "status")} == \
            {"user_id": "vic", "username": "vic", "email": "vic@example.com", "role": "user", "status": "active"}
        event = await next_event(feed, "admin:users", "user_created")
        assert event["user"]["user_id"] == "vic" and event["by"] == ADMIN and "password_hash" not in json.dumps(event)

        assert stack.call("POST", "/admin/users", stack.admin, json={"username": "vic", "password": "another-pass"}).status_code == 409
        r = stack.call("POST", "/admin/users", stack.admin, json={"username": "wes", "password": "1234567"})
        assert r.status_code == 400 and "8 characters" in r.json()["detail"]
        assert stack.call("GET", "/admin/users/wes", stack.admin).status_code == 404, "a refused creation changes nothing"

        assert stack.call("GET", "/admin/users/vic", stack.moderator).json() == vic
        r = stack.call("PUT", "/admin/users/vic", stack.admin, json={"role": "moderator"})
        assert r.status_code == 200 and r.json()["role"] == "moderator"
        assert (await next_event(feed, "admin:users", "user_updated"))["previous"]["role"] == "user"
        vic_tokens = stack.login("vic", "vic-password")
        vic_token = vic_tokens["access_token"]
        r = stack.call("PUT", "/admin/users/vic", stack.admin, json={"status": "blocked"})
        assert r.json()["status"] == "blocked"
        assert (await next_event(feed, "admin:users", "user_blocked"))["user"]["status"] == "blocked"

        stats = stack.call("GET", "/admin/users/stats", stack.moderator).json()
        users = []
        offset = 0
        while True:  # walk every page of one
            page = stack.call("GET", f"/admin/users?limit=1&offset={offset}", stack.admin).json()
            if not page:
                break
            assert len(page) == 1
            users += page
            offset += 1
        everyone = stack.call("GET", "/admin/users?limit=1000", stack.admin).json()
        assert users == everyone and [u["user_id"] for u in everyone] == sorted(u["user_id"] for u in everyone)
        assert stats == {"total_users": len(everyone),
                         "active_users": sum(u["status"] == "active" for u in everyone),
                         "blocked_users": sum(u["status"] == "blocked" for u in everyone),
                         "inactive_users": sum(u["status"] == "inactive" for u in everyone)}
        assert stats["blocked_users"] >= 1
        assert stack.call("GET", f"/admin/users?offset={len(everyone)}", stack.admin).json() == []
        for bad in ("limit=0", "limit=1001", "limit=abc", "offset=-1", "offset=1.5"):
            r = stack.call("GET", f"/admin/users?{bad}", stack.admin)
            assert r.status_code == 400 and "detail" in r.json(), bad

        r = stack.call("DELETE", "/admin/users/vic", stack.admin)
        assert r.status_code == 200
        assert (await next_event(feed, "admin:users", "user_deleted"))["user"]["user_id"] == "vic"
        assert stack.call("GET", "/admin/users/vic", stack.admin).status_code == 404
        assert stack.call("DELETE", "/admin/users/vic", stack.admin).status_code == 404
        # A token issued before the deletion no longer chats.
        r = stack.call("POST", "/chat", vic_token, json={"type": "text", "content": "still here?"})
        assert r.status_code in (401, 403), r.text
        r = requests.post(stack.hub.url + "/auth/refresh", json={"refresh_token": vic_tokens["refresh_token"]}, timeout=WAIT)
        assert r.status_code == 403 and r.json() == {"detail": "User account is deleted"}
        assert stack.call("DELETE", f"/admin/users/{ADMIN}", stack.admin).status_code == 400, "an admin cannot delete themselves"
        await feed.ws.close()
    arun(body())


# ------------------------------------------------------------------------------------------
# conversations and analytics from real chats


def test_real_chats_show_up_in_analytics_conversations_and_bot_stats(stack):
    dana = stack.token("dana")

    async def body():
        feed = await admin_feed(stack.hub, stack.admin, "admin:conversations")
        stack.chat(dana, "plan my trip to Lisbon", "trip")
        created = await next_event(feed, "admin:conversations", "conversation_created")
        assert (created["user_id"], created["conversation_id"]) == ("dana", "trip")
        stack.chat(dana, "sleep:0.4 and book the hotel", "trip")
        stack.chat(dana, "thanks", "trip")
        await feed.ws.close()
    arun(body())

    r = stack.call("GET", "/conversations/analytics/metrics?user_id=dana&chat_id=trip", dana)
    assert r.status_code == 200, r.text
    m = r.json()
    assert set(m) == {"message_count", "user_message_count", "assistant_message_count", "average_response_time",
                      "engagement_score", "first_message_at", "last_message_at"}
    assert (m["message_count"], m["user_message_count"], m["assistant_message_count"]) == (6, 3, 3)
    # One reply waited 0.4 s in the fake LLM: the mean over three is at least 0.4 / 3.
    assert 0.4 / 3 <= m["average_response_time"] < 5
    assert m["engagement_score"] == 0.65  # 0.5 * min(1, 3/10) + 0.5 * min(1, 3/3)
    assert m["first_message_at"] < m["last_message_at"]
    assert stack.call("GET", "/conversations/analytics/metrics?user_id=dana&chat_id=trip", stack.user).status_code == 403
    assert stack.call("GET", "/conversations/analytics/metrics?user_id=dana&chat_id=trip", stack.moderator).json() == m
    assert stack.call("GET", "/conversations/analytics/metrics?user_id=dana&chat_id=nope", dana).status_code == 404
    assert stack.call("GET", "/conversations/analytics/metrics?user_id=dana", dana).status_code == 400

    listed = stack.call("GET", "/admin/conversations?user_id=dana", stack.moderator).json()
    assert [(c["user_id"], c["conversation_id"], c["message_count"]) for c in listed] == [("dana", "trip", 6)]
    detail = stack.call("GET", "/admin/conversations/trip", stack.moderator).json()
    assert [(x["role"], x["content"]) for x in detail["messages"][::2]] == [
        ("user", "plan my trip to Lisbon"), ("user", "sleep:0.4 and book the hotel"), ("user", "thanks")]
    assert all(x["role"] == "assistant" and x["content"].startswith("You said:") for x in detail["messages"][1::2])
    assert detail["metrics"] == m

    hits = stack.call("GET", "/admin/conversations/search?query=lisbon", stack.admin).json()["results"]
    assert [(h["user_id"], h["conversation_id"]) for h in hits] == [("dana", "trip")]

    stats = stack.call("GET", "/admin/bot/stats", stack.admin).json()
    dashboard = stack.call("GET", "/conversations/analytics/dashboard", stack.admin).json()
    assert stats["total_messages"] == dashboard["total_messages"] >= 6
    assert stats["user_messages"] + stats["bot_messages"] <= stats["total_messages"]


def test_search_on_the_embedded_store_ranks_by_relevance(stack):
    # The embedded store answers from its FTS5 index (bm25); the corpus is real chats, each
    # also echoed by the fake LLM ("You said: …").
    kim = stack.token("kim")
    stack.chat(kim, "question about the refund policy: is the refund policy fair", "k1")
    stack.chat(kim, "where is my parcel", "k2")
    stack.chat(kim, "a refund, please", "k3")
    stack.chat(kim, "nothing to see here", "k4")
    results = stack.call("GET", "/admin/conversations/search?query=refund+policy", stack.moderator).json()["results"]
    assert [h["conversation_id"] for h in results] == ["k1", "k3"]
    assert results[0]["score"] > results[1]["score"] > 0
    assert results[0]["matching_messages"] == 2 and results[0]["matches"][0]["content"].count("refund") >= 2
    assert [h["conversation_id"] for h in stack.call("GET", "/admin/conversations/search?query=Parcel",
                                                     stack.admin).json()["results"]] == ["k2"]
    assert len(stack.call("GET", "/admin/conversations/search?query=refund&limit=1", stack.admin).json()["results"]) == 1
    r = stack.call("GET", '/admin/conversations/search?query="OR" NEAR(refund', stack.admin)
    assert r.status_code == 200 and [h["conversation_id"] for h in r.json()["results"]][:2] in (["k1", "k3"], ["k3", "k1"])


def test_deleting_a_conversation_removes_its_messages(stack):
    erin = stack.token("erin")
    stack.chat(erin, "first words", "gone")
    stack.chat(erin, "second words", "gone")
    stack.token("fay")
    fay = stack.login("fay", "password-123")["access_token"]
    stack.chat(fay, "same id, other user", "gone")

    r = stack.call("GET", "/admin/conversations/gone", stack.admin)
    assert r.status_code == 409 and "user_id" in r.json()["detail"]

    async def body():
        feed = await admin_feed(stack.hub, stack.admin, "admin:conversations")
        assert stack.call("DELETE", "/admin/conversations/gone?user_id=erin", stack.moderator).status_code == 403
        r = stack.call("DELETE", "/admin/conversations/gone?user_id=erin", stack.admin)
        assert r.status_code == 200 and r.json()["deleted_messages"] == 4
        event = await next_event(feed, "admin:conversations", "conversation_deleted")
        assert (event["user_id"], event["conversation_id"], event["deleted_messages"]) == ("erin", "gone", 4)
        await feed.ws.close()
    arun(body())
    assert stack.call("GET", "/admin/conversations/gone?user_id=erin", stack.admin).status_code == 404
    assert stack.call("GET", "/conversations/analytics/metrics?user_id=erin&chat_id=gone", stack.admin).status_code == 404
    assert stack.call("GET", "/admin/conversations/gone", stack.admin).json()["user_id"] == "fay"
    assert stack.call("GET", "/admin/conversations/search?query=first+words", stack.admin).json()["results"] == []


# ------------------------------------------------------------------------------------------
# bot, monitoring, /status


def test_bot_config_commands_and_status_change_what_chat_does(stack):
    gus = stack.token("gus")
    r = stack.call("GET", "/admin/bot/config", stack.admin)
    assert r.json()["config"]["enabled"] is True
    r = stack.call("PUT", "/admin/bot/config", stack.admin, json={"config": {"max_file_size": 10485760, "supported_languages": ["en", "es", "fr"]}})
    assert r.status_code == 200 and r.json()["config"]["supported_languages"] == ["en", "es", "fr"]
    for bad in ({"enabled": "no"}, {"max_file_size": -1}, {"supported_languages": ["english"]}, {}):
        r = stack.call("PUT", "/admin/bot/config", stack.admin, json={"config": bad})
        assert r.status_code == 400, bad
    assert stack.call("PUT", "/admin/bot/config", stack.admin, json={"nope": 1}).status_code == 400
    assert stack.call("GET", "/admin/bot/config", stack.admin).json()["config"]["supported_languages"] == ["en", "es", "fr"]

    status = stack.call("GET", "/admin/bot/status", stack.admin).json()
    assert status["status"] == "online" and status["workers"]["agent"] >= 1

    r = stack.call("POST", "/admin/bot/commands", stack.admin, json={"name": "hours", "description": "Opening hours",
                                                                      "response": "We are open 9 to 5."})
    assert r.status_code == 200
    command = r.json()
    assert stack.call("POST", "/admin/bot/commands", stack.admin, json={"name": "hours", "response": "again"}).status_code == 409
    assert stack.call("POST", "/admin/bot/commands", stack.admin, json={"name": "help"}).status_code == 400
    assert stack.chat(gus, "/hours please", "cmd")["content"] == "We are open 9 to 5."
    r = stack.call("PUT", f"/admin/bot/commands/{command['command_id']}", stack.admin, json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert stack.chat(gus, "/hours", "cmd")["content"].startswith("You said: /hours"), "a disabled command goes to the agent"
    assert [c["name"] for c in stack.call("GET", "/admin/bot/commands", stack.admin).json()] == ["hours"]
    assert stack.call("DELETE", f"/admin/bot/commands/{command['command_id']}", stack.admin).status_code == 200
    assert stack.call("DELETE", f"/admin/bot/commands/{command['command_id']}", stack.admin).status_code == 404
    assert stack.call("GET", "/admin/bot/commands", stack.admin).json() == []

    assert stack.call("PUT", "/admin/bot/config", stack.admin, json={"config": {"enabled": False}}).status_code == 200
    try:
        r = stack.call("POST", "/chat", gus, json={"type": "text", "content": "hello?"})
        assert r.status_code == 503 and r.json() == {"detail": "The bot is disabled"}
        assert stack.call("GET", "/admin/bot/status", stack.admin).json()["status"] == "disabled"
    finally:
        stack.call("PUT", "/admin/bot/config", stack.admin, json={"config": {"enabled": True}})
    assert stack.chat(gus, "hello again", "cmd")["content"].startswith("You said:")


def test_health_status_metrics_and_monitoring_follow_the_workers(stack):
    health = stack.hub.get("/health").json()
    assert health["status"] == "healthy" and health["service"] == "gateway"
    assert {"version", "uptime", "timestamp"} <= set(health)
    status = stack.hub.get("/status").json()
    assert status["status"] == "operational" and status["services"] == {"stt": "online", "tts": "online", "llm": "online"}
    assert {"uptime", "timestamp"} <= set(status)
    # The same path is still seed 000's gateway status for gateway callers.
    r = stack.hub.get("/status", headers=bearer(GATEWAY_TOKEN))
    assert r.status_code == 400 and r.json() == {"detail": "Missing parameters"}
    r = stack.hub.get("/status?gw_id=gw01", headers=bearer(GATEWAY_TOKEN))
    assert r.status_code == 404 and r.json() == {"detail": "Gateway or room not found"}
    assert stack.hub.get("/status?gw_id=gw01").status_code == 401
    assert stack.hub.get("/status?room=math101", headers=bearer("wrong")).status_code == 401
    assert stack.hub.get("/status", headers=bearer(stack.user)).json()["services"]["llm"] == "online"
    metrics = stack.hub.get("/metrics")
    assert metrics.status_code == 200 and "hub_http_requests_total" in metrics.text
    assert 'hub_service_up{service="llm"} 1' in metrics.text.splitlines()
    assert 'hub_service_workers{service="tts"} 1' in metrics.text.splitlines()

    services = stack.call("GET", "/admin/monitoring/services", stack.admin).json()
    assert set(services) == {"gateway", "stt", "tts", "llm", "agent"}
    assert all(services[s]["healthy"] for s in services)
    assert services["gateway"]["uptime"] >= 0
    assert stack.call("GET", "/admin/monitoring/health", stack.admin).json()["status"] == "healthy"
    m = stack.call("GET", "/admin/monitoring/metrics", stack.admin).json()
    assert m["connections"] >= 1 and m["uptime"] >= 0


def test_a_service_going_down_and_up_is_pushed_and_reported(hub_factory):
    s = Admin(hub_factory("--service-timeout", "3", env=ENV, config=CONFIG))
    try:
        admin = s.token(ADMIN)
        assert s.hub.get("/status").json()["services"] == {"stt": "offline", "tts": "offline", "llm": "offline"}
        assert s.call("GET", "/admin/monitoring/health", admin).json()["status"] == "degraded"

        async def body():
            feed = await admin_feed(s.hub, admin, "admin:services")
            worker = s.start_worker("tts")
            up = await next_event(feed, "admin:services", "service_up")
            assert up["service"] == "tts" and up["workers"] == 1
            services = s.call("GET", "/admin/monitoring/services", admin).json()
            assert services["tts"]["healthy"] is True and services["llm"]["healthy"] is False
            assert s.hub.get("/status").json()["services"]["tts"] == "online"
            worker.terminate()
            worker.wait(5)
            down = await next_event(feed, "admin:services", "service_down")
            assert down["service"] == "tts" and down["workers"] == 0
            wait_for(lambda: 'hub_service_up{service="tts"} 0' in s.hub.get("/metrics").text.splitlines(), timeout=3)
            assert s.call("GET", "/admin/monitoring/services", admin).json()["tts"] == {
                "healthy": False, "uptime": 0, "workers": 0, "answering": True}
            await feed.ws.close()
        arun(body())

        # Connected is not enough: a worker that lets a request time out is not healthy.
        s.start_llm()
        s.start_worker("llm")
        user = s.token("ivy")
        r = s.call("POST", "/api/v1/llm/generate", user, json={"prompt": "sleep:4"})
        assert r.status_code == 504
        llm = s.call("GET", "/admin/monitoring/services", admin).json()["llm"]
        assert (llm["healthy"], llm["answering"], llm["workers"]) == (False, False, 1)
        assert s.call("POST", "/api/v1/llm/generate", user, json={"prompt": "hello"}).status_code == 200
        llm = s.call("GET", "/admin/monitoring/services", admin).json()["llm"]
        assert (llm["healthy"], llm["answering"]) == (True, True)
    finally:
        s.stop()


# ------------------------------------------------------------------------------------------
# two nodes on one Redis: configuration everywhere, hand-counted analytics, search ranking


def message(user, conv, seq, role, content, at, response_time=None):
    """A message record exactly as ChatService stores it (docs/channels.md)."""
    millis = calendar.timegm(time.strptime(at, "%Y-%m-%dT%H:%M:%SZ")) * 1000
    key = f"june:msg:{user}:{conv}:{millis:013d}-{seq}"
    value = {"message_id": f"{conv}-{seq}", "user_id": user, "conversation_id": conv, "role": role, "type": "text",
             "content": content, "created_at": at.replace("Z", ".000Z")}
    if response_time is not None:
        value["response_time"] = response_time
    return key, value


# Counted by hand: see the expectations in the test below.
FIXTURE = [
    message("alice", "a1", 1, "user", "Hello, I need help with my order", "2025-01-01T10:00:00Z"),
    message("alice", "a1", 2, "assistant", "Sure, what is the order number?", "2025-01-01T10:00:02Z", 2.0),
    message("alice", "a1", 3, "user", "Order 42, I would like a refund", "2025-01-01T10:01:00Z"),
    message("alice", "a1", 4, "assistant", "Refunds take five days", "2025-01-01T10:01:01Z", 1.0),
    message("alice", "a1", 5, "user", "What is your refund policy exactly?", "2025-01-01T10:02:00Z"),
    message("bob", "b1", 1, "user", "Do you ship to Canada?", "2025-01-02T09:00:00Z"),
    message("bob", "b1", 2, "assistant", "Yes, we ship to Canada and Mexico", "2025-01-02T09:00:04Z", 4.0),
    message("carol", "c1", 1, "user", "refund refund refund policy", "2025-02-01T00:00:00Z"),
    message("carol", "c1", 2, "assistant", "Our refund policy: thirty days", "2025-02-01T00:00:03Z", 3.0),
]


@pytest.fixture
def two_nodes(hub_factory, tmp_path_factory):
    redis = RedisServer(tmp_path_factory.mktemp("redis"), "admin").start()
    nodes = []
    try:
        for name in ("a", "b"):
            nodes.append(Admin(hub_factory("--engine", "redis", "--redis-url", redis.url, "--node-name", name, env=ENV, config=CONFIG)))
        yield redis, nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


def test_config_change_on_one_node_applies_on_every_node_with_history(two_nodes):
    redis, a, b = two_nodes
    admin_a, admin_b = a.token(ADMIN), b.token(ADMIN)
    hana = a.token("hana")
    b.start_llm()
    b.start_worker("llm", "agent")

    async def body():
        feed = await admin_feed(b.hub, admin_b, "admin:config")
        r = a.call("PUT", "/admin/config", admin_a, json={"config": {"maintenance_mode": True, "greeting": "hi"}})
        assert r.status_code == 200, r.text
        assert r.json()["config"] == {"maintenance_mode": True, "greeting": "hi"}
        event = await next_event(feed, "admin:config", "config_changed")
        assert event["changed_by"] == ADMIN and event["config"]["maintenance_mode"] is True
        await feed.ws.close()
    arun(body())
    # Node b runs with it: its own config, its /status, and chat on it refused.
    assert b.call("GET", "/admin/config", admin_b).json()["config"]["maintenance_mode"] is True
    assert b.hub.get("/status").json()["status"] == "maintenance"
    r = b.call("POST", "/chat", hana, json={"type": "text", "content": "hello"})
    assert r.status_code == 503 and r.json() == {"detail": "The service is in maintenance mode"}

    assert b.call("PUT", "/admin/config", admin_b, json={"config": {"maintenance_mode": "yes"}}).status_code == 400
    assert b.call("PUT", "/admin/config", admin_b, json={"config": {"greeting": "hello"}}).status_code == 200
    assert a.call("PUT", "/admin/config", admin_a, json={"config": {"maintenance_mode": False, "greeting": None}}).status_code == 200
    wait_for(lambda: b.call("GET", "/admin/config", admin_b).json()["config"] == {"maintenance_mode": False}, timeout=5)
    assert b.chat(hana, "hello", "c")["content"].startswith("You said:")

    history = b.call("GET", "/admin/config/history", admin_b).json()
    assert [[(c["key"], c["old_value"], c["new_value"]) for c in h["changes"]] for h in history] == [
        [("maintenance_mode", True, False), ("greeting", "hello", None)],
        [("greeting", "hi", "hello")],
        [("maintenance_mode", False, True), ("greeting", None, "hi")],
    ], "newest first; the refused edit is not there"
    assert all(h["changed_by"] == ADMIN for h in history)
    assert history[0]["changed_at"] >= history[1]["changed_at"] >= history[2]["changed_at"]
    assert b.call("GET", "/admin/config/history?limit=1&offset=1", admin_b).json() == [history[1]]
    assert b.call("GET", "/admin/config/history?limit=0", admin_b).status_code == 400

    # Concurrent edits on both nodes: none is lost, and both nodes end with the stored config.
    from concurrent.futures import ThreadPoolExecutor
    def edit(i):
        node, token = (a, admin_a) if i % 2 else (b, admin_b)
        return node.call("PUT", "/admin/config", token, json={"config": {f"k{i}": i}}).status_code
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(edit, range(12)))
    assert all(code in (200, 409) for code in statuses), statuses
    done = {f"k{i}" for i, code in enumerate(statuses) if code == 200}
    assert len(done) >= 6
    stored = json.loads(redis.cli("GET", "june:config"))
    assert done <= set(stored["value"]) and stored["version"] == 3 + len(done)
    for node, token in ((a, admin_a), (b, admin_b)):
        wait_for(lambda: node.call("GET", "/admin/config", token).json()["config"] == stored["value"], timeout=5)


@pytest.fixture
def nodes_on_fixture(hub_factory, tmp_path_factory):
    """FIXTURE written into Redis first, as an older hub or another tool left it; then two
    nodes, which count it into their analytics counters and word index at start."""
    redis = RedisServer(tmp_path_factory.mktemp("redis"), "fixture").start()
    conversations = {}
    for key, value in FIXTURE:
        redis.cli("SET", key, json.dumps(value))
        redis.cli("ZADD", "hub:keys", "0", key)
        conv = conversations.setdefault((value["user_id"], value["conversation_id"]), {
            "user_id": value["user_id"], "conversation_id": value["conversation_id"], "created_at": value["created_at"],
            "message_count": 0, "recent": []})
        conv["message_count"] += 1
        conv["updated_at"] = value["created_at"]
    for (user, conv), value in conversations.items():
        redis.cli("SET", f"june:conv:{user}:{conv}", json.dumps(value))
        redis.cli("ZADD", "hub:keys", "0", f"june:conv:{user}:{conv}")
    nodes = []
    try:
        for name in ("a", "b"):
            nodes.append(Admin(hub_factory("--engine", "redis", "--redis-url", redis.url, "--node-name", name, env=ENV, config=CONFIG)))
        for node in nodes:
            wait_for(lambda: "analytics counters and word index ready" in node.hub.log(), timeout=10, message="analytics counters")
        yield redis, nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


def words(text):
    return re.findall(r"[^\W_]+", text.lower())


def bm25(query, contents):
    """SQLite FTS5's bm25 (k1 = 1.2, b = 0.75, idf at least 1e-6) of each content, as positive numbers."""
    docs = [Counter(words(c)) for c in contents]
    mean = sum(sum(d.values()) for d in docs) / len(docs)
    terms = set(words(query))
    idf = {w: max(1e-6, math.log((len(docs) - df + 0.5) / (df + 0.5))) for w in terms for df in [sum(1 for d in docs if w in d)]}
    return [sum(idf[w] * d[w] * 2.2 / (d[w] + 1.2 * (0.25 + 0.75 * sum(d.values()) / mean)) for w in terms if w in d) for d in docs]


def test_analytics_and_search_match_hand_counted_fixtures(nodes_on_fixture):
    redis, a, b = nodes_on_fixture
    admin = b.token(ADMIN)

    def get(path):
        r = b.call("GET", path, admin)
        assert r.status_code == 200, r.text
        return r.json()

    assert get("/conversations/analytics/metrics?user_id=alice&chat_id=a1") == {
        "message_count": 5, "user_message_count": 3, "assistant_message_count": 2, "average_response_time": 1.5,
        "engagement_score": 0.483,  # 0.5 * 3/10 + 0.5 * 2/3
        "first_message_at": "2025-01-01T10:00:00.000Z", "last_message_at": "2025-01-01T10:02:00.000Z"}
    assert get("/conversations/analytics/metrics?user_id=bob&chat_id=b1")["engagement_score"] == 0.55
    assert get("/conversations/analytics/dashboard") == {
        "total_conversations": 3, "total_messages": 9, "active_users": 3, "average_response_time": 2.5}
    assert get("/conversations/analytics/dashboard?start_date=2025-01-01&end_date=2025-01-31") == {
        "total_conversations": 2, "total_messages": 7, "active_users": 2, "average_response_time": 2.333}
    assert get("/conversations/analytics/dashboard?start_date=2025-01-02T00:00:00Z") == {
        "total_conversations": 2, "total_messages": 4, "active_users": 2, "average_response_time": 3.5}
    assert get("/conversations/analytics/dashboard?end_date=2025-01-01") == {
        "total_conversations": 1, "total_messages": 5, "active_users": 1, "average_response_time": 1.5}
    for bad in ("start_date=yesterday", "end_date=2025-13-01", "start_date=2025-02-01&end_date=2025-01-01"):
        assert b.call("GET", f"/conversations/analytics/dashboard?{bad}", admin).status_code == 400, bad

    report = get("/conversations/analytics/report?start_date=2025-01-01&end_date=2025-01-31")
    assert report["summary"]["total_messages"] == 7
    assert [(r["user_id"], r["conversation_id"], r["message_count"]) for r in report["conversations"]] == [
        ("alice", "a1", 5), ("bob", "b1", 2)]
    r = b.call("GET", "/conversations/analytics/report?start_date=2025-01-01&end_date=2025-01-31&format=csv", admin)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.text.startswith('"user_id","conversation_id"')
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(row["user_id"], row["conversation_id"], row["message_count"], row["user_message_count"],
             row["assistant_message_count"], row["average_response_time"], row["engagement_score"],
             row["first_message_at"], row["last_message_at"]) for row in rows] == [
        ("alice", "a1", "5", "3", "2", "1.5", "0.483", "2025-01-01T10:00:00.000Z", "2025-01-01T10:02:00.000Z"),
        ("bob", "b1", "2", "1", "1", "4.0", "0.55", "2025-01-02T09:00:00.000Z", "2025-01-02T09:00:04.000Z")]
    assert b.call("GET", "/conversations/analytics/report?format=xml", admin).status_code == 400

    # Search through the word index, ranked by bm25 as the embedded store ranks (docs/admin.md):
    # c1 has "refund" three times in a short message; a1 has the phrase once and "refund" once
    # more; b1 has neither word.
    results = get("/admin/conversations/search?query=Refund%20Policy")["results"]
    scores = bm25("refund policy", [value["content"] for _, value in FIXTURE])
    best = {}
    for (_, value), score in zip(FIXTURE, scores):
        best[value["conversation_id"]] = max(best.get(value["conversation_id"], 0), score)
    assert [(h["conversation_id"], h["matching_messages"]) for h in results] == [("c1", 2), ("a1", 2)]
    assert [h["score"] for h in results] == [round(best["c1"], 3), round(best["a1"], 3)]
    assert results[1]["matches"][0]["content"] == "What is your refund policy exactly?"
    assert [h["conversation_id"] for h in get("/admin/conversations/search?query=refund+policy&limit=1")["results"]] == ["c1"]
    assert [(h["conversation_id"], h["matching_messages"]) for h in get("/admin/conversations/search?query=ORDER")["results"]] == [("a1", 3)]
    assert [h["conversation_id"] for h in get("/admin/conversations/search?query=canada")["results"]] == ["b1"]
    assert get("/admin/conversations/search?query=zebra")["results"] == []
    for bad in ("query=", "query=%21%21", "query=x&limit=0", "query=x&limit=101"):
        assert b.call("GET", f"/admin/conversations/search?{bad}", admin).status_code == 400, bad

    # Conversation lists, paged, the same on both nodes.
    admin_a = a.token(ADMIN)
    pages = [a.call("GET", f"/admin/conversations?limit=2&offset={o}", admin_a).json() for o in (0, 2, 3)]
    assert [[(c["user_id"], c["conversation_id"], c["message_count"]) for c in p] for p in pages] == [
        [("alice", "a1", 5), ("bob", "b1", 2)], [("carol", "c1", 2)], []]
    assert get("/admin/conversations?user_id=bob") == pages[0][1:]
    assert get("/admin/conversations/c1")["metrics"]["average_response_time"] == 3.0


@pytest.mark.parametrize("engine", ["memory", "redis"])
def test_config_history_keeps_only_the_newest_entries(hub_factory, tmp_path_factory, engine):
    # After N + k changes only the newest N remain, newest first; the dropped ones are gone from
    # the store (a restart with a larger bound does not bring them back), on SQLite and Redis.
    limit, extra = 5, 3
    data_dir = tmp_path_factory.mktemp("data")
    redis = RedisServer(tmp_path_factory.mktemp("redis"), "history").start() if engine == "redis" else None
    engine_flags = ("--engine", "redis", "--redis-url", redis.url) if redis else ()

    def node(size):
        return Admin(hub_factory("--data-dir", str(data_dir), "--config-history-size", str(size), *engine_flags,
                                 env=ENV, config=CONFIG))

    try:
        first = node(limit)
        admin = first.token(ADMIN)
        for i in range(limit + extra):
            r = first.call("PUT", "/admin/config", admin, json={"config": {"step": i}})
            assert r.status_code == 200, r.text
        steps = [h["changes"][0]["new_value"] for h in first.call("GET", "/admin/config/history?limit=100", admin).json()]
        assert steps == list(range(limit + extra - 1, extra - 1, -1)), "the newest five, newest first"
        if redis:
            assert len(redis.cli("KEYS", "june:config-history:*").split()) == limit
        first.hub.stop()

        again = node(100)
        history = again.call("GET", "/admin/config/history?limit=100", again.token(ADMIN)).json()
        assert [h["changes"][0]["new_value"] for h in history] == steps
        assert history[-1]["changes"][0]["old_value"] == extra - 1, "the oldest kept entry follows a dropped one"
        again.hub.stop()
    finally:
        if redis:
            redis.stop()


def test_config_history_size_is_checked_at_start(hub_factory):
    result = hub_factory.run("--config-history-size", "0", env=ENV)
    assert result.returncode != 0 and "config_history_size must be 1-100000" in result.stderr
