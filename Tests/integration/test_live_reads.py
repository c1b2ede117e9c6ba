"""Legacy REST reads as live streams: with `Accept: text/event-stream`, seed 000's `/status` and
`/progress`, seed 001's job read and seed 004's file status answer their current state as the
first event, then again after every change, and resume from `Last-Event-ID`; same auth, rate
limit and errors as the plain GET, which stays as it was."""

from __future__ import annotations

import json

import pytest

from hubtest import API_KEY, WAIT, silent_wav
from test_cache import KEY, cache_hub, post_job, tree  # noqa: F401 (fixture)
from test_gateways import simulators  # noqa: F401 (fixture)
from test_transports import RawStream

ALLOWED = "1234"
SSE = {"Accept": "text/event-stream"}


def gateway_hub(hub_factory, **kwargs):
    return hub_factory("--gateway-monitor-interval", "60",
                       env={"HUB_GATEWAY_ALLOWED_TOKEN": ALLOWED, "HUB_GATEWAY_ADMIN_TOKEN": "admin-secret-key"}, **kwargs)


def register(hub, gw_id: str, ip: str):
    r = hub.http.post(hub.url + "/register", json={"gw_ip": ip, "gw_id": gw_id, "gw_type": "media"},
                      headers={"Authorization": f"Bearer {ALLOWED}"}, timeout=WAIT)
    assert r.status_code == 200, r.text


def live(hub, path: str, headers=None, last_event_id=None) -> RawStream:
    h = dict(SSE, **(headers or {}))
    if last_event_id:
        h["Last-Event-ID"] = last_event_id
    return RawStream(hub.port, "GET", path, h)


def no_event_within(stream: RawStream, seconds: float) -> bool:
    try:
        stream.event(timeout=seconds)
    except TimeoutError:
        return True
    return False


@pytest.mark.parametrize("path", ["/status?gw_id=gw01", "/progress?gw_id=gw01"])
def test_gateway_state_streams_then_resumes(hub_factory, path):
    hub = gateway_hub(hub_factory)
    register(hub, "gw01", "10.0.0.1")
    auth = {"Authorization": f"Bearer {ALLOWED}"}
    plain = hub.get(path, headers=auth)
    s = live(hub, path, auth)
    assert s.status == 200 and s.headers["content-type"].startswith("text/event-stream")
    first = s.event()
    assert json.loads(first["data"]) == plain.json()
    offset, epoch = first["id"].split(":")
    register(hub, "gw01", "10.0.0.2")  # the gateway re-registers from another address
    second = s.event()
    assert json.loads(second["data"]) == hub.get(path, headers=auth).json()
    assert json.loads(second["data"])["data"]["gw_id"] == "10.0.0.2"
    assert int(second["id"].split(":")[0]) > int(offset) and second["id"].endswith(":" + epoch)
    s.close()
    # Back with the last id and nothing missed: quiet until the next change.
    s = live(hub, path, auth, last_event_id=second["id"])
    assert no_event_within(s, 1.0)
    register(hub, "gw01", "10.0.0.3")
    assert json.loads(s.event()["data"])["data"]["gw_id"] == "10.0.0.3"
    s.close()
    # Back with an older id: the current state at once.
    s = live(hub, path, auth, last_event_id=second["id"])
    assert json.loads(s.event()["data"])["data"]["gw_id"] == "10.0.0.3"
    # The gateway goes away: an error event in seed 000's shape, and the stream ends.
    r = hub.http.post(hub.url + "/unregister", json={"gw_id": "gw01"}, headers=auth, timeout=WAIT)
    assert r.status_code == 200
    gone = s.event()
    assert gone.get("event") == "error", gone
    assert json.loads(gone["data"]) == {"detail": "Gateway or room not found"}
    assert s.rest() == b""
    # Plain GETs are unchanged: JSON with a length, not a stream.
    r = hub.get("/status?gw_id=nope", headers=auth)
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"


def test_room_progress_streams_while_the_gateway_works(hub_factory, simulators):
    hub = hub_factory("--gateway-monitor-interval", "0.2",
                      env={"HUB_GATEWAY_ALLOWED_TOKEN": ALLOWED, "HUB_GATEWAY_ADMIN_TOKEN": "admin-secret-key"})
    simulators("gw01", hub=hub)
    auth = {"Authorization": f"Bearer {ALLOWED}"}
    r = hub.http.post(hub.url + "/start", json={"room": "math101", "transcript": True}, headers=auth, timeout=WAIT)
    assert r.status_code == 200, r.text
    s = live(hub, "/progress?room=math101", auth)
    first = json.loads(s.event()["data"])
    assert first["data"]["room"] == "math101" and first["data"]["gw_state"] == "working"
    # The monitor's polls move the transcript on; each change is an event with the new answer.
    seen = first
    while seen["data"]["transcript_progress"] in ("0", "0%"):
        seen = json.loads(s.event(timeout=WAIT * 2)["data"])
    assert seen["data"]["transcript_progress"].endswith("%")
    r = hub.http.post(hub.url + "/stop", json={"gw_id": "gw01"}, headers=auth, timeout=WAIT)
    assert r.status_code == 200
    while True:
        event = s.event()
        if event.get("event") == "error":
            break
    assert json.loads(event["data"]) == {"detail": "Gateway or room not found"}
    assert s.rest() == b""


def test_gateway_stream_has_the_plain_gets_auth_and_errors(hub_factory):
    hub = gateway_hub(hub_factory)
    register(hub, "gw01", "10.0.0.1")
    for headers, status, body in [({}, 401, None), ({"Authorization": "Bearer wrong"}, 401, None),
                                  ({"Authorization": f"Bearer {ALLOWED}"}, 404, {"detail": "Gateway or room not found"})]:
        path = "/status?gw_id=" + ("nope" if status == 404 else "gw01")
        plain = hub.get(path, headers=headers)
        s = live(hub, path, headers)
        assert s.status == plain.status_code == status
        rest = s.rest()
        assert json.loads(rest) == plain.json()
        if body:
            assert plain.json() == body
    # Seed 003's open /status (no gateway asked for) is not a channel's state: answered plainly.
    s = live(hub, "/status")
    assert s.status == 200 and s.headers["content-type"] == "application/json"
    assert "services" in json.loads(s.rest())


def test_cache_job_streams_its_progress_until_it_finishes(hub_factory, tree):  # noqa: F811
    hub = cache_hub(hub_factory, tree)
    r = post_job(hub, {"directories": ["big"], "recursive": True})  # sparse 64 MiB files: a read that takes a moment
    assert r.status_code == 201, r.text
    job_id = r.json()["jobId"]
    path = f"/api/v1/cache/jobs/{job_id}"
    s = live(hub, path, {"X-API-Key": KEY})
    assert s.status == 200
    events = [json.loads(s.event()["data"])]
    while events[-1]["job"]["status"] not in ("completed", "failed", "cancelled"):
        events.append(json.loads(s.event(timeout=60)["data"]))
    assert all(e["success"] is True for e in events) and events[-1]["job"]["status"] == "completed"
    done = [e["job"]["progress"]["size"]["completedBytes"] for e in events]
    assert done == sorted(done), "progress never goes backwards"
    assert events[-1] == hub.http.get(hub.url + path, headers={"X-API-Key": KEY}, timeout=WAIT).json()
    # Without the API key: the same 401 as the plain GET.
    s = live(hub, path)
    assert s.status == 401
    s.close()


def test_meeting_file_status_streams_its_processing(hub):
    token = hub.token("alice")
    auth = {"Authorization": f"Bearer {token}"}
    r = hub.http.post(hub.url + "/v1/files", headers=auth, timeout=WAIT,
                      files={"file": ("live.wav", silent_wav(0.2), "application/octet-stream")})
    assert r.status_code in (200, 201, 202), r.text
    file_id = r.json()["file_id"]
    path = f"/v1/files/{file_id}/status"
    s = live(hub, path, auth)
    assert s.status == 200
    assert json.loads(s.event()["data"])["status"] == "pending"
    worker = {"X-API-Key": API_KEY}
    assert hub.http.post(hub.url + f"/v1/worker/tasks/{file_id}/claim", json={"worker": "w1"}, headers=worker, timeout=WAIT).status_code == 200
    seen = json.loads(s.event()["data"])
    assert seen["status"] == "processing"
    r = hub.http.post(hub.url + f"/v1/worker/tasks/{file_id}/progress", json={"worker": "w1", "progress": 40, "stage": "transcribing"},
                      headers=worker, timeout=WAIT)
    assert r.status_code == 200, r.text
    while seen.get("progress") != 40:
        seen = json.loads(s.event()["data"])
    assert seen["stage"] == "transcribing" and seen == hub.get(path, headers=auth).json()
    s.close()
    # Another user's file looks as missing as in the plain GET (seed 004's envelope).
    other = {"Authorization": f"Bearer {hub.token('mallory')}"}
    plain = hub.get(path, headers=other)
    s = live(hub, path, other)
    assert s.status == plain.status_code == 404 and json.loads(s.rest()) == plain.json()


def test_openapi_lists_the_event_stream_answers(hub):
    spec = hub.get("/openapi.json").json()
    for path in ["/status", "/progress", "/api/v1/cache/jobs/{jobId}", "/v1/files/{file_id}/status"]:
        content = spec["paths"][path]["get"]["responses"]["200"]["content"]
        assert "text/event-stream" in content, path
    assert "text/event-stream" not in spec["paths"]["/v1/meetings"]["get"]["responses"]["200"]["content"]
