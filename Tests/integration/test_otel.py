"""OpenTelemetry traces (issue 22): the hub posts OTLP/HTTP JSON spans to a collector — here a
tiny real OTLP receiver — with a server span per REST request (a child of the caller's
`traceparent`), a span per server API call, and a client span per call to a gateway, whose
`traceparent` the gateway (a small real HTTP server) receives. Off unless configured; a dead
collector costs spans, never answers."""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hubtest import WAIT, free_port, wait_for

TOKEN = "otel-gateway-token"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
FAST = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


class Recorder:
    """A real HTTP server on a free port that keeps every request (headers, parsed JSON body)."""

    def __init__(self, answer):
        self.requests: list = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                entry = {"method": self.command, "path": self.path,
                         "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                with recorder.lock:
                    recorder.requests.append(entry)
                status, reply = answer(entry)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def taken(self) -> list:
        with self.lock:
            return list(self.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Collector(Recorder):
    """An OTLP/HTTP receiver: POST /v1/traces with the JSON encoding."""

    def __init__(self):
        super().__init__(lambda entry: (200, {}) if entry["path"] == "/v1/traces" else (404, {}))

    def spans(self) -> list:
        found = []
        for request in self.taken():
            assert request["path"] == "/v1/traces" and request["method"] == "POST", request
            assert request["headers"]["content-type"] == "application/json"
            for resource in request["body"]["resourceSpans"]:
                for scope in resource["scopeSpans"]:
                    for span in scope["spans"]:
                        found.append({**span, "resource": attributes(resource["resource"])})
        return found

    def wait_span(self, predicate, message: str) -> dict:
        return wait_for(lambda: next((s for s in self.spans() if predicate(s)), None), message=message)


def attributes(holder: dict) -> dict:
    """OTLP's key/value list as a dict of plain values (intValue is a string in OTLP JSON)."""
    out = {}
    for pair in holder.get("attributes", []):
        value = pair["value"]
        if "intValue" in value:
            out[pair["key"]] = int(value["intValue"])
        else:
            (out[pair["key"]],) = value.values()
    return out


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


@pytest.fixture
def gateway():
    """A fake media gateway: seed 002's /gateway/start answers success and records its headers."""
    def answer(entry):
        if entry["path"].startswith("/gateway/start"):
            return 200, {"status": "success", "processing_state": "working"}
        return 200, {"processing_state": "idle"}
    g = Recorder(answer)
    yield g
    g.close()


def traced_hub(hub_factory, collector=None, env=None, *args):
    full = {"HUB_GATEWAY_ALLOWED_TOKEN": TOKEN, "HUB_GATEWAY_ADMIN_TOKEN": TOKEN + "-admin", **FAST, **(env or {})}
    flags = ["--otel-endpoint", collector.url] if collector else []
    # No monitor polls during a test: only the calls a request makes reach the gateway.
    return hub_factory("--gateway-monitor-interval", "600", *flags, *args, env=full)


def register(hub, gateway, gw_id="gw-otel"):
    r = hub.http.post(hub.url + "/register", json={"gw_ip": f"127.0.0.1:{gateway.port}", "gw_id": gw_id, "gw_type": "Record"},
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=WAIT)
    assert r.status_code == 200, r.text


def caller_context():
    return secrets.token_hex(16), secrets.token_hex(8)


def test_start_is_a_child_of_the_callers_span_and_the_gateway_sees_the_client_span(hub_factory, collector, gateway):
    hub = traced_hub(hub_factory, collector)
    register(hub, gateway)
    trace_id, caller_span = caller_context()
    r = hub.http.post(hub.url + "/start", json={"room": "otel-room"}, timeout=WAIT * 2,
                      headers={"Authorization": f"Bearer {TOKEN}", "traceparent": f"00-{trace_id}-{caller_span}-01"})
    assert r.status_code == 200 and r.json()["status"] == "success", r.text

    server = collector.wait_span(lambda s: s["traceId"] == trace_id and s["kind"] == 2, "the /start server span")
    assert server["parentSpanId"] == caller_span
    assert server["name"] == "POST /start" and HEX16.match(server["spanId"]) and server["spanId"] != caller_span
    assert attributes(server).items() >= {"http.request.method": "POST", "http.route": "/start", "http.response.status_code": 200}.items()
    assert server["status"]["code"] == 0
    assert int(server["endTimeUnixNano"]) >= int(server["startTimeUnixNano"]) > (time.time() - 60) * 1e9
    assert server["resource"]["service.name"] == "hub"

    client = collector.wait_span(lambda s: s["traceId"] == trace_id and s["kind"] == 3, "the gateway call's client span")
    assert client["parentSpanId"] == server["spanId"]
    assert client["name"] == "POST /gateway/start"
    assert attributes(client).items() >= {"http.request.method": "POST", "http.response.status_code": 200,
                                          "server.address": "127.0.0.1", "server.port": gateway.port}.items()
    # the client span lies within the server span
    assert int(server["startTimeUnixNano"]) <= int(client["startTimeUnixNano"]) <= int(client["endTimeUnixNano"]) \
        <= int(server["endTimeUnixNano"])

    (start,) = [g for g in gateway.taken() if g["path"] == "/gateway/start"]
    assert start["headers"]["traceparent"] == f"00-{trace_id}-{client['spanId']}-01"


def test_a_request_without_traceparent_starts_its_own_trace_and_a_bad_one_is_ignored(hub_factory, collector):
    hub = traced_hub(hub_factory, collector)
    assert hub.get("/health", headers={"x-request-id": "plain-1"}).status_code == 200
    zero = "00-" + "0" * 32 + "-" + "1" * 16 + "-01"  # an all-zero trace id is invalid
    assert hub.get("/health", headers={"x-request-id": "zero-2", "traceparent": zero}).status_code == 200
    assert hub.get("/no/such/thing", headers={"traceparent": "garbage"}).status_code == 404
    health = [collector.wait_span(lambda s: attributes(s).get("hub.request_id") == rid, f"the span of {rid}")
              for rid in ("plain-1", "zero-2")]
    for span in health:
        assert span["name"] == "GET /health"
        assert HEX32.match(span["traceId"]) and span["traceId"] != "0" * 32 and "parentSpanId" not in span
    assert health[0]["traceId"] != health[1]["traceId"]
    # an unmatched path is named by its method only: raw paths never become span names
    missing = collector.wait_span(lambda s: attributes(s).get("http.response.status_code") == 404, "the 404 span")
    assert missing["name"] == "GET" and "http.route" not in attributes(missing) and "parentSpanId" not in missing


def test_server_api_calls_are_spans_with_their_method(hub_factory, collector):
    hub = traced_hub(hub_factory, collector)
    trace_id, caller_span = caller_context()
    parent = {"traceparent": f"00-{trace_id}-{caller_span}-01"}
    assert "result" in hub.post_raw("/api/publish", {"channel": "news", "data": {"n": 1}}, headers=parent).json()
    batch = hub.post_raw("/api/batch", {"commands": [{"publish": {"channel": "news", "data": 2}}, {"nosuch": {}}]}, headers=parent)
    assert batch.status_code == 200 and len(batch.json()["replies"]) == 2

    def spans(n):
        found = [s for s in collector.spans() if s["traceId"] == trace_id]
        return found if len(found) >= n else None
    found = wait_for(lambda: spans(5), message="server, server API and batch spans")  # the unknown command runs nothing
    by_name = {}
    for span in found:
        by_name.setdefault(span["name"], []).append(span)
    (publish_request,) = by_name["POST /api/publish"]
    assert publish_request["parentSpanId"] == caller_span
    assert attributes(publish_request)["http.route"] == "/api/publish"
    publish_calls = by_name["server-api publish"]
    (direct,) = [s for s in publish_calls if s["parentSpanId"] == publish_request["spanId"]]
    assert direct["kind"] == 1 and attributes(direct)["rpc.method"] == "publish" and direct["status"]["code"] == 0

    (batch_request,) = by_name["POST /api/batch"]
    (batch_call,) = by_name["server-api batch"]
    assert batch_call["parentSpanId"] == batch_request["spanId"]
    assert attributes(batch_call)["hub.server_api.commands"] == 2
    (inner,) = [s for s in publish_calls if s["parentSpanId"] == batch_call["spanId"]]
    assert attributes(inner)["rpc.method"] == "publish"


def test_an_unsampled_caller_is_propagated_but_not_exported(hub_factory, collector, gateway):
    hub = traced_hub(hub_factory, collector)
    register(hub, gateway)
    trace_id, caller_span = caller_context()
    r = hub.http.post(hub.url + "/start", json={"room": "quiet-room"}, timeout=WAIT * 2,
                      headers={"Authorization": f"Bearer {TOKEN}", "traceparent": f"00-{trace_id}-{caller_span}-00"})
    assert r.status_code == 200, r.text
    (start,) = [g for g in gateway.taken() if g["path"] == "/gateway/start"]
    assert re.fullmatch(f"00-{trace_id}-[0-9a-f]{{16}}-00", start["headers"]["traceparent"])
    assert hub.get("/health").status_code == 200  # a sampled request after it, to know the export ran
    collector.wait_span(lambda s: s["name"] == "GET /health", "the later health span")
    assert not [s for s in collector.spans() if s["traceId"] == trace_id]


def test_the_environment_and_config_file_turn_it_on_and_name_the_service(hub_factory, collector):
    env_hub = hub_factory(env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url + "/", "OTEL_SERVICE_NAME": "hub-east", **FAST})
    assert env_hub.get("/health").status_code == 200
    span = collector.wait_span(lambda s: s["resource"].get("service.name") == "hub-east", "a span from the env-configured hub")
    assert span["resource"]["service.version"] and span["name"] == "GET /health"

    file_hub = hub_factory(config={"otel_endpoint": collector.url, "otel_service_name": "hub-west"}, env=FAST)
    assert file_hub.get("/health").status_code == 200
    collector.wait_span(lambda s: s["resource"].get("service.name") == "hub-west", "a span from the file-configured hub")


def test_spans_still_queued_are_sent_at_shutdown(hub_factory, collector):
    hub = hub_factory("--otel-endpoint", collector.url, env={"OTEL_BSP_SCHEDULE_DELAY": "600000"})
    assert hub.get("/health").status_code == 200
    time.sleep(0.3)
    assert collector.taken() == []  # the interval is ten minutes away
    assert hub.stop() == 0
    assert any(s["name"] == "GET /health" for s in collector.spans())


def test_a_dead_collector_never_slows_or_breaks_rest(hub_factory):
    dead = f"http://127.0.0.1:{free_port()}"
    hub = hub_factory("--otel-endpoint", dead, env={**FAST, "OTEL_BSP_MAX_QUEUE_SIZE": "5", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "5"})
    started = time.monotonic()
    for _ in range(40):
        assert hub.api_result("info", {})["nodes"]
    assert time.monotonic() - started < WAIT

    def dropped():
        text = hub.get("/metrics").text
        match = re.search(r"^hub_trace_spans_dropped_total (\S+)$", text, re.M)
        return match and float(match.group(1)) >= 80 and text  # 40 request spans + 40 server API spans
    text = wait_for(dropped, message="every span counted as dropped")
    assert re.search(r"^hub_trace_spans_exported_total 0(\.0)?$", text, re.M)
    assert hub.get("/health").status_code == 200
    assert hub.stop() == 0
    # the failure is logged once, not per batch
    assert hub.log().count("trace export to") == 1, hub.log()


def test_off_by_default_nothing_reaches_a_collector_or_a_gateway(hub_factory, collector, gateway):
    # the batch variables alone do not turn anything on
    hub = traced_hub(hub_factory, None)
    register(hub, gateway)
    trace_id, caller_span = caller_context()
    r = hub.http.post(hub.url + "/start", json={"room": "dark-room"}, timeout=WAIT * 2,
                      headers={"Authorization": f"Bearer {TOKEN}", "traceparent": f"00-{trace_id}-{caller_span}-01"})
    assert r.status_code == 200, r.text
    assert hub.api_result("info", {})["nodes"]
    (start,) = [g for g in gateway.taken() if g["path"] == "/gateway/start"]
    assert "traceparent" not in start["headers"]
    assert "hub_trace_" not in hub.get("/metrics").text
    time.sleep(0.5)  # five export intervals, were it on
    assert hub.stop() == 0
    assert collector.taken() == []


@pytest.mark.parametrize("endpoint, problem", [
    ("https://127.0.0.1:4318", "https is not supported"),
    ("http://collector.internal:4318", "must be an IP address or localhost"),
    ("127.0.0.1:4318", "must be an http:// URL"),
])
def test_an_endpoint_the_hub_cannot_use_is_refused_at_start(hub_factory, endpoint, problem):
    result = hub_factory.run("--otel-endpoint", endpoint)
    assert result.returncode == 64 and problem in result.stderr, result.stderr
