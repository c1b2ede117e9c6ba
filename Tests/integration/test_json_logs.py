"""`--log-format json`: every line the hub writes is one JSON object a log shipper can parse,
and each HTTP request's access line carries its request id, route, status and duration as fields."""

from __future__ import annotations

import json
import re

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LEVELS = {"trace", "debug", "info", "notice", "warning", "error", "critical"}


def json_lines(hub) -> list:
    lines = hub.log().splitlines()[1:]  # the first line is the harness's record of argv
    assert lines, "the hub wrote no log at all"
    entries = []
    for number, line in enumerate(lines, 2):
        try:
            entry = json.loads(line)
        except ValueError as e:
            raise AssertionError(f"line {number} is not JSON ({e}): {line!r}") from None
        assert isinstance(entry, dict), f"line {number} is not an object: {line!r}"
        entries.append(entry)
    return entries


def test_every_line_is_an_object_and_the_access_log_has_its_fields(hub_factory):
    hub = hub_factory("--log-format", "json", "--log-level", "debug")
    assert hub.api_result("info", {})
    assert hub.get("/no/such/route").status_code == 404
    assert hub.stop() == 0  # the shutdown lines are JSON too

    entries = json_lines(hub)
    for entry in entries:
        assert TIMESTAMP.match(entry["timestamp"]), entry
        assert entry["level"] in LEVELS, entry
        assert isinstance(entry["message"], str) and entry["message"], entry
        assert isinstance(entry["label"], str), entry
    access = [e for e in entries if "route" in e and "status" in e]
    by_route = {(e["method"], e["route"]): e for e in access}
    info = by_route[("POST", "/api/info")]
    assert info["status"] == 200 and info["level"] == "info"
    assert isinstance(info["duration_ms"], float) and info["duration_ms"] >= 0 and info["request_id"] not in ("", "-")
    missing = by_route[("GET", "/no/such/route")]
    assert missing["status"] == 404 and missing["request_id"] != info["request_id"]


def test_the_config_key_and_env_select_json_too(hub_factory):
    for hub in (hub_factory(config={"log_format": "json"}), hub_factory(env={"HUB_LOG_FORMAT": "json"})):
        assert hub.get("/no/such/route").status_code == 404
        assert hub.stop() == 0
        assert any(e.get("route") == "/no/such/route" and e["status"] == 404 for e in json_lines(hub))


def test_text_stays_the_default_and_an_unknown_format_is_refused(hub_factory):
    hub = hub_factory()
    assert hub.get("/no/such/route").status_code == 404
    assert hub.stop() == 0  # the access line is written just after the answer: wait for it
    access = [line for line in hub.log().splitlines()[1:] if "GET /no/such/route 404" in line]
    assert access and not access[0].startswith("{")

    refused = hub_factory.run("--log-format", "xml")
    assert refused.returncode == 64  # EX_USAGE, as for every bad option
    assert "log_format must be text or json" in refused.stdout + refused.stderr
