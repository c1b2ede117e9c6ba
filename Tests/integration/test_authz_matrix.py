"""The authorization matrix: every operation in /openapi.json, called by each of {no credentials,
wrong credentials, user, other user, moderator, admin}, answers what its declared auth scheme
promises.

The rows come from the hub's own /openapi.json, and the expected answer of each cell from the
operation's `x-auth` (the route declaration's scheme: which JWT roles, whether a static token
must be the admin one). A route added later is in the matrix without anyone editing this file;
a scheme this file does not know fails the test instead of being skipped.

What "passes auth" means: anything but 401 and 403 (the request may still be refused for its
missing body, 404 for a made-up id, 503 with no worker connected). For resources owned by a user
(meetings, their files, voice profiles) the other user gets 404, as seed 004 asks, so ids do not
leak; that column uses real resources the user created.

The hub runs at log level trace with every secret configured, and at the end its whole log is
searched for each credential used here: none may appear.
"""

from __future__ import annotations

import re
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest
import requests

from hubtest import WAIT, make_jwt, silent_wav

CALLERS = ("anonymous", "wrong", "user", "other", "moderator", "admin")
ROLES = {"user", "moderator", "admin"}
PLACEHOLDER = "matrix-none-1"

GATEWAY_ALLOWED = "matrix-gateway-allowed-token"
GATEWAY_ADMIN = "matrix-gateway-admin-token"
CACHE_KEY = "matrix-cache-api-key"
BOT_TOKEN = "987654:matrix-bot-token"
PASSWORDS = {"matrix-admin": "admin-pass-1234", "alice": "alice-pass-1234", "bob": "bob-pass-1234",
             "matrix-mod": "mod-pass-1234"}

# Path parameters naming a resource a user owns: (who besides the owner may reach it).
# Seed 004: meetings and their files are visible to admins too; voice profiles only to their user.
OWNED = {"meeting_id": {"admin"}, "file_id": {"admin"}, "profile_id": set()}

NO_AUTH = {401, 403}


@pytest.fixture
def mhub(hub_factory, tmp_path):
    cache_root = tmp_path / "cache-root"
    cache_root.mkdir()
    limits = {name: ["100000/minute"] for name in (
        "teamcache", "june-llm", "june-tts", "june-transcribe", "june-chat", "june-default",
        "meetings-uploads", "meetings-status", "meetings-downloads", "meetings-auth")}
    hub = hub_factory("--log-level", "trace", "--cache-root", str(cache_root), "--password-iterations", "10000",
                      env={"HUB_GATEWAY_ALLOWED_TOKEN": GATEWAY_ALLOWED, "HUB_GATEWAY_ADMIN_TOKEN": GATEWAY_ADMIN,
                           "HUB_CACHE_API_KEY": CACHE_KEY, "HUB_TELEGRAM_BOT_TOKEN": BOT_TOKEN,
                           "HUB_ADMIN_USER": "matrix-admin", "HUB_ADMIN_PASSWORD": PASSWORDS["matrix-admin"]},
                      config={"rate_limits": limits})
    return hub


class Matrix:
    """The callers' credentials, made the way users get them: June users logged in with their
    passwords, the seeds' static tokens and keys."""

    def __init__(self, hub):
        self.hub = hub
        self.tokens: Dict[str, str] = {}
        self.secrets: List[str] = [GATEWAY_ALLOWED, GATEWAY_ADMIN, CACHE_KEY, BOT_TOKEN, hub.api_key, hub.secret,
                                   *PASSWORDS.values()]
        self.tokens["admin"] = self.login("matrix-admin")
        for name, role in (("alice", "user"), ("bob", "user"), ("matrix-mod", "moderator")):
            r = hub.http.post(hub.url + "/admin/users", headers=self.bearer(self.tokens["admin"]), timeout=WAIT,
                              json={"username": name, "password": PASSWORDS[name], "role": role})
            assert r.status_code in (200, 201), r.text
        self.tokens["user"] = self.login("alice")
        self.tokens["other"] = self.login("bob")
        self.tokens["moderator"] = self.login("matrix-mod")
        # Right shape, right claims, wrong key.
        self.tokens["wrong"] = make_jwt({"sub": "matrix-admin", "role": "admin", "exp": int(time.time()) + 3600},
                                        secret="not-the-hub-secret")

    def login(self, name: str) -> str:
        r = self.hub.http.post(self.hub.url + "/auth/login", json={"username": name, "password": PASSWORDS[name]},
                               timeout=WAIT)
        assert r.status_code == 200, r.text
        body = r.json()
        self.secrets += [body["access_token"], body["refresh_token"]]
        return body["access_token"]

    @staticmethod
    def bearer(token: str) -> Dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def headers(self, auth: Dict[str, Any], caller: str) -> Dict[str, str]:
        """What `caller` presents to a route of scheme `auth`: the credential of that kind they
        hold, or their JWT where they hold none of that kind."""
        scheme = auth["scheme"]
        if scheme == "optional":
            return self.headers(auth["inner"], caller)
        if caller == "anonymous":
            return {}
        if scheme == "serverAPIKey" or scheme == "apiKey":
            key = self.hub.api_key if scheme == "serverAPIKey" else CACHE_KEY
            if caller == "wrong":
                return {"X-API-Key": "not-the-key"}
            return {"X-API-Key": key} if caller == "admin" else self.bearer(self.tokens[caller])
        if scheme == "bearerToken":
            assert auth["name"] == "gateways", f"unknown static token set {auth['name']}"
            return {"wrong": self.bearer("not-a-gateway-token"), "user": self.bearer(GATEWAY_ALLOWED),
                    "other": self.bearer(GATEWAY_ALLOWED), "moderator": self.bearer(self.tokens["moderator"]),
                    "admin": self.bearer(GATEWAY_ADMIN)}[caller]
        return self.bearer(self.tokens[caller])

    def owned(self) -> Dict[str, str]:
        """Fresh resources of alice's, by path parameter name."""
        hub = self.hub
        r = hub.http.post(hub.url + "/v1/files", headers=self.bearer(self.tokens["user"]), timeout=WAIT,
                          files={"file": ("matrix.wav", silent_wav(0.2), "application/octet-stream")})
        assert r.status_code in (200, 201, 202), r.text
        created = r.json()
        r = hub.http.post(hub.url + "/v1/users/profiles", headers=self.bearer(self.tokens["user"]), timeout=WAIT,
                          files={"display_name": (None, "Alice")})
        assert r.status_code == 200, r.text
        return {"meeting_id": created["meeting_id"], "file_id": created["file_id"],
                "profile_id": r.json()["profile_id"]}


def expected(auth: Dict[str, Any], caller: str, owned_params: List[str]) -> Tuple[str, Optional[set]]:
    """('same', None): the answer must not depend on credentials; ('in', S): status in S;
    ('pass', None): status not 401/403 (nor 404 for the owner of owned resources); ('hidden',
    None): someone else's resource answers exactly as one that does not exist; ('any', None):
    the route decides."""
    scheme = auth["scheme"]
    if scheme in ("none", "clientProtocol"):
        # clientProtocol: open at the HTTP layer; the client protocol's token in the connect
        # request decides (test_transports.py covers those refusals).
        return ("same", None)
    if scheme == "optionalJWT" and caller == "anonymous":
        return ("any", None)  # without a bearer the route decides (seed 003's legacy /auth/token)
    if scheme == "optional":
        # The inner scheme's caller when it passes, anonymous otherwise: a wrong credential
        # is no credential (GET /status serves seed 000's gateway callers and seed 003's
        # public status on one path, and its handler decides).
        return ("same", None) if caller == "wrong" else ("any", None)
    if caller in ("anonymous", "wrong"):
        return ("in", {401})
    if scheme in ("serverAPIKey", "apiKey"):
        return ("pass", None) if caller == "admin" else ("in", {401})
    if scheme == "bearerToken":
        if caller == "moderator":
            return ("in", {401})  # a JWT is not a gateway token
        if caller == "admin" or not auth["admin"]:
            return ("pass", None)
        return ("in", {403})
    if scheme in ("jwt", "optionalJWT"):
        if scheme == "optionalJWT":
            auth = {"roles": []}
        role = {"user": "user", "other": "user", "moderator": "moderator", "admin": "admin"}[caller]
        if auth["roles"] and role not in auth["roles"]:
            return ("in", {403})
        if caller != "user" and any(role not in OWNED[p] for p in owned_params):
            return ("hidden", None)
        return ("pass", None)
    raise AssertionError(f"unknown auth scheme {auth}: teach this test what it promises")


def request_for(hub, method: str, path: str, op: Dict[str, Any], headers: Dict[str, str]) -> requests.Response:
    content = op.get("requestBody", {}).get("content", {})
    kwargs: Dict[str, Any] = {}
    if op.get("x-auth", {}).get("scheme") == "clientProtocol":
        # A streamed answer stays open: its status is the cell; the stream is let go at once.
        r = hub.http.request(method, hub.url + path, headers=headers, timeout=10, stream=True,
                             **({"json": {}} if "application/json" in content else {}))
        r.close()
        return r
    if "application/json" in content:
        kwargs["json"] = {}
    elif "multipart/form-data" in content:
        kwargs["files"] = {"matrix": (None, "probe")}
    return hub.http.request(method, hub.url + path, headers=headers, timeout=10, **kwargs)


def test_every_route_answers_each_kind_of_caller_as_its_scheme_declares(mhub):
    hub = mhub
    spec = hub.get("/openapi.json").json()
    matrix = Matrix(hub)
    owned = matrix.owned()
    rows = [(path, method.upper(), op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    # Deleting runs last, so the resources the other rows use still exist.
    rows.sort(key=lambda row: row[1] == "DELETE")
    assert len(rows) > 60, f"only {len(rows)} operations listed"

    failures: List[str] = []
    checked = 0
    seen_schemes = set()
    for path, method, op in rows:
        auth = op.get("x-auth")
        assert auth is not None, f"{method} {path} declares no x-auth"
        seen_schemes.add(auth["scheme"])
        if auth["scheme"] == "jwt":
            assert set(auth["roles"]) <= ROLES, f"{method} {path}: unknown role in {auth['roles']}"
        params = re.findall(r"\{([^}/]+)\}", path)
        use_owned = auth["scheme"] == "jwt"
        owned_params = [p for p in params if use_owned and p in OWNED]
        anonymous_status = None
        for caller in CALLERS:
            if method == "DELETE" and owned_params:
                owned = matrix.owned()  # a successful delete must not spoil the next cell
            concrete = re.sub(r"\{([^}/]+)\}", lambda m: owned[m.group(1)] if m.group(1) in owned_params else PLACEHOLDER, path)
            headers = matrix.headers(auth, caller)
            r = request_for(hub, method, concrete, op, headers)
            checked += 1
            status = r.status_code
            cell = f"{method} {path} as {caller}: {status} {r.text[:160]!r}"
            if status >= 500 and status not in (503, 504):
                failures.append(cell + " (server error)")
                continue
            kind, allowed = expected(auth, caller, owned_params)
            if caller == "anonymous":
                anonymous_status = status
            if kind == "same":
                if status != anonymous_status:
                    failures.append(cell + f" (anonymous got {anonymous_status}; credentials must not matter)")
            elif kind == "hidden":
                missing = request_for(hub, method, re.sub(r"\{([^}/]+)\}", PLACEHOLDER, path), op, headers)
                if status != missing.status_code or status in NO_AUTH:
                    failures.append(cell + f" (a made-up id gets {missing.status_code}: someone else's must look the same)")
            elif kind == "in":
                if status not in allowed:
                    failures.append(cell + f" (expected {sorted(allowed)})")
            elif kind == "pass":
                refused = NO_AUTH | ({404} if owned_params else set())
                if status in refused:
                    failures.append(cell + " (expected to pass auth)")
    assert not failures, f"{len(failures)} of {checked} cells wrong:\n" + "\n".join(failures)
    assert {"none", "serverAPIKey", "apiKey", "bearerToken", "jwt", "optionalJWT", "optional", "clientProtocol"} <= seen_schemes
    assert hub.alive()

    # Every credential above went through a hub logging at trace level; none may be in its log.
    log = hub.log().split("\n", 1)[1]  # the first line is the test's own record of argv
    leaked = [s[:12] + "…" for s in matrix.secrets if s and s in log]
    assert not leaked, f"secrets in the hub's log: {leaked}"
