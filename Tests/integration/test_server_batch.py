"""The server API's `batch` (Centrifugo's shape), driven through `cent`'s BatchRequest."""

from __future__ import annotations

from cent import BatchRequest, ChannelsRequest, Client as CentClient, HistoryRequest, PublishRequest

from hubtest import WAIT


def _cent(hub) -> CentClient:
    return CentClient(f"{hub.url}/api", hub.api_key, timeout=WAIT)


def test_cent_batch_runs_commands_in_order(hub):
    result = _cent(hub).batch(BatchRequest(requests=[
        PublishRequest(channel="batch-news", data={"n": 1}),
        PublishRequest(channel="batch-news", data={"n": 2}),
        HistoryRequest(channel="batch-news", limit=10),
    ]))
    first, second, history = result.replies
    assert (first.offset, second.offset) == (1, 2)
    # the history command ran after both publishes, so it sees them
    assert [p.data for p in history.publications] == [{"n": 1}, {"n": 2}]


def test_cent_batch_parallel_keeps_reply_order(hub):
    channels = [f"par-{i}" for i in range(20)]
    result = _cent(hub).batch(BatchRequest(parallel=True, requests=[
        PublishRequest(channel=channel, data={"c": channel}) for channel in channels
    ] + [ChannelsRequest(pattern="par-*")]))
    assert len(result.replies) == 21
    assert all(reply.offset == 1 for reply in result.replies[:20])
    for channel in channels:
        history = hub.api_result("history", {"channel": channel, "limit": 5})
        assert [p["data"] for p in history["publications"]] == [{"c": channel}]


def test_batch_per_command_errors(hub):
    out = hub.api("batch", {"commands": [
        {"publish": {"channel": "ok", "data": 1}},
        {"no_such_method": {}},
        {"publish": {"channel": "ok"}},
        {"batch": {"commands": []}},
        {"publish": {"channel": "ok", "data": 2}},
    ]})
    replies = out["replies"]
    assert replies[0] == {"publish": {"offset": 1, "epoch": replies[0]["publish"]["epoch"]}}
    assert replies[1]["error"]["code"] == 104
    assert replies[2]["error"]["code"] == 107
    assert replies[3]["error"]["code"] == 104  # no nested batches
    assert replies[4]["publish"]["offset"] == 2


def test_malformed_batch_runs_nothing(hub):
    for body in ({}, {"commands": {"publish": {}}},
                 {"commands": [{"publish": {"channel": "bad", "data": 1}}, "oops"]},
                 {"commands": [{"publish": {"channel": "bad", "data": 1}, "history": {"channel": "bad"}}]},
                 {"commands": [{"publish": {"channel": "bad", "data": 1}}], "parallel": "yes"},
                 {"commands": [{"publish": {"channel": "bad", "data": 1}}] * 1001}):
        out = hub.api("batch", body)
        assert out["error"]["code"] == 107, body
        assert "replies" not in out
    history = hub.api_result("history", {"channel": "bad", "limit": 10})
    assert history.get("publications", []) == [] and history.get("offset", 0) == 0


def test_empty_batch_and_missing_key(hub):
    assert hub.api("batch", {"commands": []}) == {"replies": []}
    r = hub.post_raw("/api/batch", {"commands": [{"publish": {"channel": "x", "data": 1}}]}, with_key=False)
    assert r.status_code == 401
    assert hub.api_result("history", {"channel": "x"}).get("offset", 0) == 0


def test_the_largest_batch_of_immediate_commands_answers(hub):
    # 1,000 commands that answer at once (one after another on the calling thread) and 1,000 bad ones
    out = hub.api("batch", {"commands": [{"channels": {}}] * 500 + [{"publish": {}}] * 500})
    assert len(out["replies"]) == 1000
    assert out["replies"][0] == {"channels": {"channels": {}}} and out["replies"][-1]["error"]["code"] == 107
    assert hub.get("/health").status_code == 200
