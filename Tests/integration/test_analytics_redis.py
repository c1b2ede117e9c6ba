"""Seed 003's analytics and search on the Redis store, from its counters and word index.

A fixture of 100,000 chat messages is piped straight into a real redis-server in the hub's key
layout (docs/channels.md) before the hub starts, as an older hub or another tool would have
left them; the hub backfills its counters at start. More messages then go through the REST API
(a real chat with the reference workers and the fake LLM) and a conversation is deleted. Every
figure of the dashboard, the report and the metrics must equal a recount done here from the
messages themselves, and the calls must cost the same on 1,000 messages as on 100,000
(docs/admin.md, "Cost").
"""

from __future__ import annotations

import calendar
import math
import random
import statistics
import subprocess
import time
from collections import Counter, defaultdict

import pytest

from hubtest import HubFactory, wait_for
from test_admin import CONFIG, ENV, Admin
from test_chat import ADMIN
from test_redis import REDIS_CLI, RedisServer

DAY = 86_400
BASE = calendar.timegm((2025, 3, 1, 0, 0, 0))  # 30 days of messages from here
DAYS = 30
USERS = 40
CONVERSATIONS_PER_USER = 5
WORDS = ("refund policy order shipping canada invoice account password reset delivery late broken "
         "warranty exchange price discount coupon tracking address payment card").split()


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t))) + ".%03dZ" % round((t - int(t)) * 1000)


def fixture(count: int, seed: int):
    """`count` messages over the same users, conversations and days whatever the count."""
    rng = random.Random(seed)
    messages = []
    for seq in range(count):
        user = f"u{seq % USERS:02d}"
        conv = f"c{(seq // USERS) % CONVERSATIONS_PER_USER}"
        millis = (BASE + rng.randrange(DAYS * DAY)) * 1000 + rng.randrange(1000)
        role = "user" if rng.random() < 0.55 else "assistant"
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 12))]
        message = {"key": f"june:msg:{user}:{conv}:{millis:013d}-{seq}", "message_id": f"m{seq}", "user_id": user,
                   "conversation_id": conv, "role": role, "type": "text", "content": " ".join(words),
                   "created_at": iso(millis / 1000)}
        if role == "assistant" and rng.random() < 0.8:
            message["response_time"] = round(rng.uniform(0.05, 6.0), 3)
        messages.append(message)
    return messages


def resp(*args: str) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def pipe(redis: RedisServer, messages) -> None:
    """SETs every message and its conversation summary and indexes the keys in `hub:keys`, as
    ChatService does, through `redis-cli --pipe`."""
    import json
    out = []
    summaries = {}
    for m in messages:
        value = {k: v for k, v in m.items() if k != "key"}
        out.append(resp("SET", m["key"], json.dumps(value)))
        s = summaries.setdefault((m["user_id"], m["conversation_id"]), {
            "user_id": m["user_id"], "conversation_id": m["conversation_id"], "created_at": m["created_at"],
            "updated_at": m["created_at"], "message_count": 0, "recent": []})
        s["message_count"] += 1
        s["created_at"] = min(s["created_at"], m["created_at"])
        s["updated_at"] = max(s["updated_at"], m["created_at"])
    for (user, conv), s in summaries.items():
        out.append(resp("SET", f"june:conv:{user}:{conv}", json.dumps(s)))
    keys = [m["key"] for m in messages] + [f"june:conv:{u}:{c}" for u, c in summaries]
    for i in range(0, len(keys), 1000):
        chunk = keys[i:i + 1000]
        out.append(resp("ZADD", "hub:keys", *[x for key in chunk for x in ("0", key)]))
    done = subprocess.run([REDIS_CLI, "-p", str(redis.port), "--pipe"], input=b"".join(out), capture_output=True, timeout=120)
    assert done.returncode == 0 and b"errors: 0" in done.stdout, done.stdout + done.stderr


# ------------------------------------------------------------------------------------------
# the recount: the formulas of docs/admin.md over the messages themselves

def parse_time(text: str) -> float:
    if len(text) == 10:
        return calendar.timegm(time.strptime(text, "%Y-%m-%d"))
    return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))


def created(m) -> float:
    return parse_time(m["created_at"]) + int(m["created_at"][20:23]) / 1000


def window_of(start, end):
    lo = parse_time(start) if start else None
    hi = (parse_time(end) + (DAY if len(end) == 10 else 0)) if end else None
    return lambda t: (lo is None or t >= lo) and (hi is None or t < hi)


def metrics(ms):
    users = sum(m["role"] == "user" for m in ms)
    replies = sum(m["role"] == "assistant" for m in ms)
    times = [m["response_time"] for m in ms if m["role"] == "assistant" and "response_time" in m]
    score = 0 if users == 0 else 0.5 * min(1, users / 10) + 0.5 * min(1, replies / users)
    return {"message_count": len(ms), "user_message_count": users, "assistant_message_count": replies,
            "average_response_time": sum(times) / len(times) if times else 0, "engagement_score": score,
            "first_message_at": min(m["created_at"] for m in ms), "last_message_at": max(m["created_at"] for m in ms)}


def recount(messages, start=None, end=None):
    inside = window_of(start, end)
    ms = [m for m in messages if inside(created(m))]
    times = [m["response_time"] for m in ms if m["role"] == "assistant" and "response_time" in m]
    per = defaultdict(list)
    for m in ms:
        per[(m["user_id"], m["conversation_id"])].append(m)
    dashboard = {"total_conversations": len(per), "total_messages": len(ms),
                 "active_users": len({m["user_id"] for m in ms if m["role"] == "user"}),
                 "average_response_time": sum(times) / len(times) if times else 0}
    rows = [{"user_id": u, "conversation_id": c, **metrics(per[(u, c)])} for u, c in sorted(per)]
    return dashboard, rows


def same(got, want, what):
    """Counts and times exactly; averages and scores as the hub rounds them (3 decimals)."""
    assert set(got) >= set(want), what
    for key, value in want.items():
        if isinstance(value, float) or key in ("average_response_time", "engagement_score"):
            assert got[key] == pytest.approx(value, abs=0.0006), f"{what}: {key} {got[key]} != {value}"
        else:
            assert got[key] == value, f"{what}: {key} {got[key]} != {value}"


WINDOWS = [
    (None, None),
    ("2025-03-05", "2025-03-12"),                        # whole days (a bare end date includes that day)
    ("2025-03-05T06:30:00Z", "2025-03-09T18:15:00Z"),    # partial days at both ends
    ("2025-03-10T01:00:00Z", "2025-03-10T23:00:00Z"),    # inside one day
    ("2025-03-20", None),
    (None, "2025-03-03"),
    ("2026-01-01", None),                                # nothing in it
]


def query(start, end):
    parts = [f"start_date={start}"] if start else []
    if end:
        parts.append(f"end_date={end}")
    return "?" + "&".join(parts) if parts else ""


class Archive:
    """A redis-server holding a piped fixture and a hub started on it (backfill done)."""

    def __init__(self, hub_factory, tmp_path_factory, messages, name):
        self.redis = RedisServer(tmp_path_factory.mktemp("redis"), name).start()
        pipe(self.redis, messages)
        self.node = Admin(hub_factory("--engine", "redis", "--redis-url", self.redis.url, env=ENV, config=CONFIG))
        # Until the backfill is done the hub walks every message (right, but slow): wait for it.
        wait_for(lambda: "analytics counters and word index ready" in self.node.hub.log(), timeout=180, message="analytics backfill")
        self.admin = self.node.token(ADMIN)

    def get(self, path):
        r = self.node.call("GET", path, self.admin)
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self):
        self.node.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def factory(request, tmp_path_factory):
    made = HubFactory(request, tmp_path_factory)
    yield made
    assert not made.teardown()


@pytest.fixture(scope="module")
def big(factory, tmp_path_factory):
    archive = Archive(factory, tmp_path_factory, fixture(100_000, seed=3), "big")
    yield archive
    archive.stop()


def test_figures_on_a_hundred_thousand_messages_equal_a_full_recount(big):
    messages = fixture(100_000, seed=3)
    assert big.get("/conversations/analytics/dashboard")["total_messages"] == 100_000

    # Through the API: a real chat (each turn stores the user's message and the reply), then a
    # deleted conversation, whose messages must leave every counter.
    big.node.start_llm()
    big.node.start_worker("llm", "agent")
    rita = big.node.token("rita")
    for i in range(4):
        big.node.chat(rita, f"where is my refund number {i}", "live")
    r = big.node.call("DELETE", "/admin/conversations/c3?user_id=u07", big.admin)
    assert r.status_code == 200, r.text
    gone = [m for m in messages if m["user_id"] == "u07" and m["conversation_id"] == "c3"]
    assert r.json()["deleted_messages"] == len(gone) > 0
    messages = [m for m in messages if not (m["user_id"] == "u07" and m["conversation_id"] == "c3")]
    live = big.get("/admin/conversations/live?user_id=rita")["messages"]
    assert len(live) == 8
    messages += [{**m, "user_id": "rita", "conversation_id": "live"} for m in live]
    for m in messages:
        if m.get("response_time") is None:
            m.pop("response_time", None)

    for start, end in WINDOWS:
        want_dashboard, want_rows = recount(messages, start, end)
        got = big.get("/conversations/analytics/dashboard" + query(start, end))
        same(got, want_dashboard, f"dashboard {start}..{end}")
        report = big.get("/conversations/analytics/report" + query(start, end))
        same(report["summary"], want_dashboard, f"report summary {start}..{end}")
        assert [(r["user_id"], r["conversation_id"]) for r in report["conversations"]] == \
            [(r["user_id"], r["conversation_id"]) for r in want_rows], f"report rows {start}..{end}"
        for got_row, want_row in zip(report["conversations"], want_rows):
            same(got_row, want_row, f"report row {start}..{end} {want_row['user_id']}/{want_row['conversation_id']}")

    for user, conv in (("u00", "c0"), ("u39", "c4"), ("rita", "live")):
        ms = [m for m in messages if m["user_id"] == user and m["conversation_id"] == conv]
        same(big.get(f"/conversations/analytics/metrics?user_id={user}&chat_id={conv}"), metrics(ms), f"metrics {user}/{conv}")
    r = big.node.call("GET", "/conversations/analytics/metrics?user_id=u07&chat_id=c3", big.admin)
    assert r.status_code == 404, "a deleted conversation has no metrics"

    # A restart does not count anything twice (the backfill ran once; the version key says so).
    assert big.redis.cli("GET", "hub:an:version") == "1"
    stats = big.get("/admin/bot/stats")
    want_dashboard, _ = recount(messages)
    assert (stats["total_messages"], stats["total_conversations"], stats["users"]) == (
        want_dashboard["total_messages"], want_dashboard["total_conversations"], want_dashboard["active_users"])

    # Search goes through the word index: bm25 as the embedded store ranks (checked here
    # against the formula over the whole archive) and only messages holding a query word.
    results = big.get("/admin/conversations/search?query=warranty%20coupon&limit=5")["results"]
    assert len(results) == 5
    docs = [(m, Counter(m["content"].split())) for m in messages]
    n = len(docs)
    mean = sum(sum(c.values()) for _, c in docs) / n
    idf = {w: max(1e-6, math.log((n - df + 0.5) / (df + 0.5)))
           for w in ("warranty", "coupon") for df in [sum(1 for _, c in docs if w in c)]}

    def bm25(counts):
        length = sum(counts.values())
        return sum(idf[w] * counts[w] * 2.2 / (counts[w] + 1.2 * (0.25 + 0.75 * length / mean)) for w in idf if w in counts)
    best = max(bm25(c) for _, c in docs)
    assert results[0]["score"] == pytest.approx(best, abs=0.002)
    for hit in results:
        for match in hit["matches"]:
            assert {"warranty", "coupon"} & set(match["content"].split())
            assert match["score"] == pytest.approx(bm25(Counter(match["content"].split())), abs=0.002)
    assert [h["score"] for h in results] == sorted((h["score"] for h in results), reverse=True)


def median_time(archive, path, calls=9):
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        archive.get(path)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def test_call_time_does_not_grow_with_the_archive(big, factory, tmp_path_factory):
    """The same users, conversations and days with 100 times the messages: a complexity check,
    not a benchmark, so the bound is generous."""
    small = Archive(factory, tmp_path_factory, fixture(1_000, seed=3), "small")
    try:
        _compare(small, big)
    finally:
        small.stop()


def _compare(small, big):
    assert small.get("/conversations/analytics/dashboard")["total_messages"] == 1_000
    for path in ("/conversations/analytics/dashboard",
                 "/conversations/analytics/dashboard?start_date=2025-03-02&end_date=2025-03-28",
                 # every conversation is in both reports: the same rows, 100 times the messages under them
                 "/conversations/analytics/report",
                 "/conversations/analytics/report?start_date=2025-03-01",
                 "/conversations/analytics/metrics?user_id=u05&chat_id=c1"):
        median_time(small, path, 3), median_time(big, path, 3)  # warm both
        t_small, t_big = median_time(small, path), median_time(big, path)
        print(f"{path}: {t_small * 1000:.1f} ms on 1,000, {t_big * 1000:.1f} ms on 100,000")
        assert t_big < 3 * t_small, f"{path}: {t_big * 1000:.1f} ms on 100,000 vs {t_small * 1000:.1f} ms on 1,000"
