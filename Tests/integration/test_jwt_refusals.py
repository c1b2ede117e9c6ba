"""JWTs the hub must refuse, at every door that takes one: the Centrifugo `connect` over
/connection/websocket, seed 003's REST routes (Bearer) and its /ws/{user_id}?token= socket.

The hub runs with an HMAC secret, an RS256 public key, a required audience and a required
issuer; every bad token is tried next to a good one, so a door that let everything through, or
nothing, fails the test."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import time

import pytest
import requests
import websockets

from hubtest import SECRET, WAIT, HubFactory, arun, make_jwt

AUD, ISS = "hub-clients", "auth.example"
# seed 003 routes behind `Authorization: Bearer <jwt>` (the auth check runs before the body is read)
JWT_ROUTES = [("POST", "/chat"), ("POST", "/api/v1/llm/generate"), ("POST", "/api/v1/tts/speak"),
              ("POST", "/api/v1/audio/transcribe"), ("POST", "/admin/users")]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: dict, claims: dict, key: bytes, digest=hashlib.sha256) -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return signing_input + "." + b64(hmac.new(key, signing_input.encode(), digest).digest())


def rs256(claims: dict, private_key_path) -> str:
    signing_input = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(private_key_path)],
                         input=signing_input.encode(), capture_output=True, check=True).stdout
    return signing_input + "." + b64(sig)


def claims(sub="alice", **extra):
    c = {"sub": sub, "exp": int(time.time()) + 600, "aud": AUD, "iss": ISS, "role": "admin"}
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("rsa")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(d / "key.pem")], check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(d / "key.pem"), "-pubout", "-out", str(d / "pub.pem")],
                   check=True, capture_output=True)
    return d / "key.pem", d / "pub.pem"


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory, rsa_keys):
    factory = HubFactory(request, tmp_path_factory)
    yield factory("--token-audience", AUD, "--token-issuer", ISS, "--token-rsa-public-key", str(rsa_keys[1]))
    assert not factory.teardown()


def bad_tokens(rsa_keys):
    """Each token the hub must refuse, by the promise it breaks."""
    private, public = rsa_keys
    now = int(time.time())
    good = claims()
    payload = b64(json.dumps(good).encode())
    hs = signed({"alg": "HS256", "typ": "JWT"}, good, SECRET.encode())
    return {
        "alg_none": make_jwt(good, alg="none"),
        "alg_none_uppercase": make_jwt(good, alg="NONE"),
        # A valid HS256 signature kept, the header switched to none: the signature must not count.
        "alg_none_with_signature": b64(b'{"alg":"none","typ":"JWT"}') + "." + payload + "." + hs.split(".")[2],
        # Algorithm confusion: HS256 "signed" with the RSA public key as the HMAC secret.
        "hs256_keyed_with_rsa_public_key": signed({"alg": "HS256", "typ": "JWT"}, good, public.read_bytes()),
        # The reverse: an RS256 header over an HMAC signature.
        "rs256_header_hmac_signature": b64(b'{"alg":"RS256","typ":"JWT"}') + "." + payload + "." + hs.split(".")[2],
        "alg_unsupported_es256": signed({"alg": "ES256", "typ": "JWT"}, good, SECRET.encode()),
        "bad_signature": signed({"alg": "HS256", "typ": "JWT"}, good, b"not-the-secret"),
        "not_yet_valid_nbf": signed({"alg": "HS256"}, claims(nbf=now + 600), SECRET.encode()),
        "wrong_audience": signed({"alg": "HS256"}, claims(aud="someone-else"), SECRET.encode()),
        "audience_list_without_ours": signed({"alg": "HS256"}, claims(aud=["a", "b"]), SECRET.encode()),
        "missing_audience": signed({"alg": "HS256"}, claims(aud=None), SECRET.encode()),
        "wrong_issuer": signed({"alg": "HS256"}, claims(iss="evil.example"), SECRET.encode()),
        "missing_issuer": signed({"alg": "HS256"}, claims(iss=None), SECRET.encode()),
        "rs256_wrong_audience": rs256(claims(aud="someone-else"), private),
    }


def expired_tokens(rsa_keys):
    past = int(time.time()) - 60
    return {"hs256_expired": signed({"alg": "HS256"}, claims(exp=past), SECRET.encode()),
            "rs256_expired": rs256(claims(exp=past), rsa_keys[0])}


def good_tokens(rsa_keys):
    return {"hs256": signed({"alg": "HS256", "typ": "JWT"}, claims(), SECRET.encode()),
            "hs512": signed({"alg": "HS512"}, claims(aud=["x", AUD]), SECRET.encode(), hashlib.sha512),
            "rs256": rs256(claims(), rsa_keys[0])}


# ------------------------------------------------------------------------------------------
# Centrifugo connect


def test_websocket_connect_accepts_good_tokens_and_refuses_every_bad_one(hub, rsa_keys):
    async def main():
        for name, token in good_tokens(rsa_keys).items():
            async with await hub.ws() as c:
                res = await c.connect(token)
                assert res["client"], name
        for name, token in bad_tokens(rsa_keys).items():
            async with await hub.ws() as c:
                await c.send("connect", {"token": token})
                assert await c.closed() == 3500, name  # invalid token: do not reconnect
                assert not any("connect" in r for r in c.replies.values()), name
        for name, token in expired_tokens(rsa_keys).items():
            async with await hub.ws() as c:
                err = await c.error("connect", {"token": token})
                assert err == {"code": 109, "message": "token expired"}, name
                # Not connected: a command before a good connect is refused.
                assert (await c.error("presence", {"channel": "x"}))["code"] == 101, name
    arun(main())


def test_refresh_with_a_bad_token_does_not_extend_the_connection(hub, rsa_keys):
    async def main():
        for name, token in bad_tokens(rsa_keys).items():
            async with await hub.ws() as c:
                await c.connect(good_tokens(rsa_keys)["hs256"])
                await c.send("refresh", {"token": token})
                assert await c.closed() == 3500, name
    arun(main())


# ------------------------------------------------------------------------------------------
# seed 003 REST routes


def test_rest_jwt_routes_refuse_every_bad_token(hub, rsa_keys):
    url = hub.url
    good = good_tokens(rsa_keys)
    # Control: the same door opens for a good token (HS and RS), so the refusals below mean something.
    for name, token in good.items():
        r = requests.post(url + "/auth/token", headers={"Authorization": "Bearer " + token}, timeout=WAIT)
        assert r.status_code == 200, (name, r.text)
        r = requests.post(url + "/admin/users", headers={"Authorization": "Bearer " + token},
                          json={"username": "u" + name, "password": "password-123"}, timeout=WAIT)
        assert r.status_code == 200, (name, r.text)
    for name, token in bad_tokens(rsa_keys).items():
        for method, path in JWT_ROUTES:
            r = requests.request(method, url + path, headers={"Authorization": "Bearer " + token},
                                 json={"username": "mallory", "password": "password-123"}, timeout=WAIT)
            assert r.status_code == 401, (name, path, r.status_code, r.text)
            assert r.json() == {"detail": "Not authenticated"}, (name, path)
            assert r.headers.get("www-authenticate") == "Bearer", (name, path)
        r = requests.post(url + "/auth/token", headers={"Authorization": "Bearer " + token}, timeout=WAIT)
        assert r.status_code == 401, (name, r.text)
    for name, token in expired_tokens(rsa_keys).items():
        for method, path in JWT_ROUTES:
            r = requests.request(method, url + path, headers={"Authorization": "Bearer " + token}, json={}, timeout=WAIT)
            assert r.status_code == 401 and r.json() == {"detail": "Token has expired"}, (name, path, r.text)
    # Nothing a refused token asked for happened.
    r = requests.post(url + "/admin/users", headers={"Authorization": "Bearer " + good["hs256"]},
                      json={"username": "mallory", "password": "password-123"}, timeout=WAIT)
    assert r.status_code == 200, r.text


def test_tokens_the_hub_issues_carry_the_configured_audience_and_issuer(hub, rsa_keys):
    r = requests.post(hub.url + "/auth/token", headers={"Authorization": "Bearer " + good_tokens(rsa_keys)["hs256"]}, timeout=WAIT)
    issued = r.json()["access_token"]
    body = json.loads(base64.urlsafe_b64decode(issued.split(".")[1] + "=="))
    assert body["aud"] == AUD and body["iss"] == ISS and body["sub"] == "alice"

    async def main():
        async with await hub.ws() as c:
            assert (await c.connect(issued))["client"]
    arun(main())


# ------------------------------------------------------------------------------------------
# seed 003 /ws/{user_id}


def test_legacy_chat_socket_refuses_every_bad_token(hub, rsa_keys):
    async def close_of(token, user="alice"):
        async with websockets.connect(f"ws://127.0.0.1:{hub.port}/ws/{user}?token={token}", proxy=None) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), WAIT)
            return closed.value.rcvd

    async def stays_open(token):
        async with websockets.connect(f"ws://127.0.0.1:{hub.port}/ws/alice?token={token}", proxy=None) as ws:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)
            await ws.ping()

    async def main():
        await stays_open(good_tokens(rsa_keys)["hs256"])
        for name, token in bad_tokens(rsa_keys).items():
            rcvd = await close_of(token)
            assert rcvd.code == 1008 and rcvd.reason == "invalid token", (name, rcvd)
        for name, token in expired_tokens(rsa_keys).items():
            rcvd = await close_of(token)
            assert rcvd.code == 1008 and "expired" in rcvd.reason, (name, rcvd)
    arun(main())


def test_rsa_only_hub_refuses_hs256_keyed_with_its_public_key(request, tmp_path_factory, rsa_keys):
    """With no HMAC secret at all, an HS256 token made with the (public) RSA key must not pass."""
    factory = HubFactory(request, tmp_path_factory)
    hub = factory("--token-rsa-public-key", str(rsa_keys[1]), secret=None)
    try:
        confused = signed({"alg": "HS256", "typ": "JWT"}, claims(aud=None, iss=None), rsa_keys[1].read_bytes())

        async def main():
            async with await hub.ws() as c:
                assert (await c.connect(rs256(claims(aud=None, iss=None), rsa_keys[0])))["client"]
            async with await hub.ws() as c:
                await c.send("connect", {"token": confused})
                assert await c.closed() == 3500
        arun(main())
        r = requests.post(hub.url + "/chat", headers={"Authorization": "Bearer " + confused}, json={}, timeout=WAIT)
        assert r.status_code == 401
    finally:
        assert not factory.teardown()
