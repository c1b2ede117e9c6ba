"""No secret, token or password reaches a log: every log this test run wrote (each hub's and
each worker's, in test-artifacts/) is searched, after all other tests (the file name sorts
last), for

- every credential the suite configured a hub with (recorded by hubtest.HubFactory),
- every password the tests send (string literals named password in the test sources),
- anything shaped like a JWT (`eyJ….eyJ…`), since tokens are minted in many places.

The lines the harness itself writes (`$ argv`) are not the product's and are skipped.
test_authz_matrix.py checks the same at log level trace for one hub that sees every kind of
credential; the JSON log format gets the same check below, from a hub at trace level that is
handed a password, the tokens it issues, the API key, a gateway token and a connection JWT.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import hubtest
from hubtest import ARTIFACTS, WAIT, WSClient, arun, conn_token

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")
PASSWORD_LITERAL = re.compile(r"""["']?\w*password\w*["']?\s*[:=]\s*["']([^"'\s]{8,})["']""", re.I)


def passwords_in_tests() -> set:
    found = set()
    for source in Path(__file__).parent.glob("*.py"):
        found |= set(PASSWORD_LITERAL.findall(source.read_text(errors="replace")))
    return found


JSON_ADMIN_PASSWORD = "json-admin-pass-5678"
JSON_GATEWAY_TOKEN = "json-log-gateway-token"


def test_a_json_format_log_at_trace_level_holds_no_secret(hub_factory):
    hub = hub_factory("--log-format", "json", "--log-level", "trace",
                      env={"HUB_ADMIN_USER": "json-admin", "HUB_ADMIN_PASSWORD": JSON_ADMIN_PASSWORD,
                           "HUB_GATEWAY_ALLOWED_TOKEN": JSON_GATEWAY_TOKEN,
                           "HUB_GATEWAY_ADMIN_TOKEN": JSON_GATEWAY_TOKEN + "-admin"})
    login = hub.http.post(hub.url + "/auth/login", json={"username": "json-admin", "password": JSON_ADMIN_PASSWORD},
                          timeout=WAIT)
    assert login.status_code == 200, login.text
    issued = [login.json()["access_token"], login.json()["refresh_token"]]
    assert hub.get("/admin/users", headers={"Authorization": f"Bearer {issued[0]}"}).status_code == 200
    assert hub.get("/status", headers={"Authorization": f"Bearer {JSON_GATEWAY_TOKEN}"}).status_code != 401
    assert hub.api_result("info", {})
    token = conn_token("json-log-user")

    async def connect():
        async with await WSClient.open(hub.ws_url) as ws:
            assert (await ws.connect(token))["client"]
    arun(connect())
    assert hub.stop() == 0

    lines = hub.log().splitlines()[1:]  # the first line is the harness's record of argv
    assert any(json.loads(line).get("route") == "/auth/login" for line in lines), "the login was not logged"
    secrets = [JSON_ADMIN_PASSWORD, JSON_GATEWAY_TOKEN, hub.api_key, hub.secret, token, *issued]
    leaked = [s[:6] + "…" for s in secrets if s and any(s in line for line in lines)]
    assert not leaked, f"secrets in the JSON log: {leaked}"
    assert not any(JWT.search(line) for line in lines)


def test_no_secret_token_or_password_reaches_a_log():
    logs = [p for p in ARTIFACTS.glob("*.log") if p.stat().st_mtime >= hubtest.SESSION_START]
    if not logs:
        pytest.skip("no other test wrote a log in this run: nothing to search")
    # A secret counts where it stands alone, not inside a longer word: the tests' made-up
    # tokens ("allowed-token") are also parts of the hub's own option names in `--help`.
    secrets = [(s, re.compile(r"(?<![A-Za-z0-9_-])" + re.escape(s) + r"(?![A-Za-z0-9_-])"))
               for s in hubtest.SECRETS_USED | passwords_in_tests()]
    assert hubtest.SECRETS_USED, "the hubs of this run were configured with no credential at all?"
    findings = []
    for path in logs:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if line.startswith("$ "):
                continue
            where = f"{path.name}:{number}"
            if JWT.search(line):
                findings.append(f"{where}: a JWT")
            for secret, pattern in secrets:
                if secret in line and pattern.search(line):
                    findings.append(f"{where}: {secret[:4]}… ({len(secret)} characters)")
    assert not findings, f"{len(findings)} secrets in logs:\n" + "\n".join(sorted(set(findings))[:50])
