"""Tokens checked with public keys: a JWKS served by the test (keys picked by `kid`, rotated,
withdrawn, served slowly or not at all) and ECDSA/RSA PEM files without one.

The JWKS server is Python's http.server on a thread; it counts the fetches, so the refetch
rate limit is measured at the source. Tokens are signed by PyJWT with keys from `cryptography`:
nothing in the hub's own code makes them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional

import jwt
import pytest
from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from hubtest import WAIT, arun, async_wait_for, free_port, note_secrets, wait_for

AUD, ISS = "hub-clients", "auth.example"
OCT_SECRET = "an-hmac-key-that-a-jwks-must-never-supply"
note_secrets([("oct_secret", OCT_SECRET)])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_pem(private) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class SigningKey:
    """A private key, and its public half as a JWK."""

    def __init__(self, kid: str, private, jwk_alg: Optional[str] = None):
        self.kid, self.private = kid, private
        if isinstance(private, rsa.RSAPrivateKey):
            jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
        elif isinstance(private, ec.EllipticCurvePrivateKey):
            jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
        jwk["kid"] = kid
        jwk["use"] = "sig"
        if jwk_alg:
            jwk["alg"] = jwk_alg
        self.jwk = jwk

    def sign(self, claims: Dict[str, Any], alg: str, kid: Optional[str] = "same") -> str:
        headers = {} if kid is None else {"kid": self.kid if kid == "same" else kid}
        return jwt.encode(claims, self.private, algorithm=alg, headers=headers)


@pytest.fixture(scope="module")
def keys() -> Dict[str, SigningKey]:
    return {
        "rsa": SigningKey("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "rsa_rs256_only": SigningKey("rsa-rs256-only", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        "p256": SigningKey("ec-256", ec.generate_private_key(ec.SECP256R1()), "ES256"),
        "p384": SigningKey("ec-384", ec.generate_private_key(ec.SECP384R1())),
        "ed": SigningKey("ed-1", ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
    }


class JWKSServer:
    """Serves `keys` at /jwks.json; `status` other than 200 answers that instead, `delay` holds
    each answer. `fetches` counts the GETs."""

    def __init__(self, port: int = 0):
        self.keys: List[Dict[str, Any]] = []
        self.status = 200
        self.delay = 0.0
        self.fetches = 0
        self.body: Optional[bytes] = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.fetches += 1
                time.sleep(server.delay)
                body = server.body if server.body is not None else json.dumps({"keys": server.keys}).encode()
                if server.status != 200:
                    body = b'{"error":"down"}'
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks(keys):
    server = JWKSServer()
    server.keys = [k.jwk for k in keys.values()] + [{"kty": "oct", "kid": "hmac-1", "k": b64(OCT_SECRET.encode())}]
    yield server
    server.stop()


def jwks_hub(hub_factory, server: JWKSServer, *extra: str, refetch: float = 1):
    hub = hub_factory("--token-jwks-url", server.url, "--token-jwks-refetch-interval", str(refetch),
                      "--token-audience", AUD, "--token-issuer", ISS, *extra)
    wait_for(lambda: server.fetches >= 1 and "JWKS loaded" in hub.log(), message="the JWKS fetched at start")
    return hub


def claims(sub="alice", **extra):
    c = {"sub": sub, "exp": int(time.time()) + 600, "aud": AUD, "iss": ISS}
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def good_tokens(keys):
    return {
        "RS256": keys["rsa"].sign(claims(), "RS256"),
        "RS384": keys["rsa"].sign(claims(), "RS384"),
        "RS512": keys["rsa"].sign(claims(), "RS512"),
        "RS256 with a JWK limited to it": keys["rsa_rs256_only"].sign(claims(), "RS256"),
        "ES256": keys["p256"].sign(claims(), "ES256"),
        "ES384": keys["p384"].sign(claims(), "ES384"),
        "EdDSA": keys["ed"].sign(claims(), "EdDSA"),
    }


def hs(header: Dict[str, Any], body: Dict[str, Any], key: bytes) -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(body).encode())
    return signing_input + "." + b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def bad_tokens(keys):
    """Each token a JWKS hub must refuse, by the promise it breaks."""
    good = claims()
    es = keys["p256"].sign(good, "ES256")
    head, payload, sig = es.split(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    stranger = ec.generate_private_key(ec.SECP256R1())
    return {
        "alg_none_with_kid": b64(json.dumps({"alg": "none", "kid": "ec-256"}).encode()) + "." + payload + ".",
        # Algorithm confusion: HS256 keyed with the RSA public key's PEM, naming that key.
        "hs256_keyed_with_jwks_public_key": hs({"alg": "HS256", "kid": "rsa-1"}, good, public_pem(keys["rsa"].private)),
        # A JWKS may carry an HMAC key (kty oct): the hub must not take it.
        "hs256_with_jwks_oct_key": hs({"alg": "HS256", "kid": "hmac-1"}, good, OCT_SECRET.encode()),
        "rs256_naming_an_ec_key": keys["rsa"].sign(good, "RS256", kid="ec-256"),
        "es384_naming_a_p256_key": keys["p384"].sign(good, "ES384", kid="ec-256"),
        "rs384_on_a_jwk_limited_to_rs256": keys["rsa_rs256_only"].sign(good, "RS384"),
        "eddsa_naming_an_rsa_key": keys["ed"].sign(good, "EdDSA", kid="rsa-1"),
        "es256_signature_too_short": f"{head}.{payload}.{b64(raw[:63])}",
        "es256_signature_too_long": f"{head}.{payload}.{b64(raw + b'0')}",
        "es256_signature_as_der": f"{head}.{payload}.{b64(bytes([0x30, 0x44, 0x02, 0x20]) + raw[:32] + bytes([0x02, 0x20]) + raw[32:])}",
        "es256_signed_by_another_key": SigningKey("ec-256", stranger).sign(good, "ES256"),
        "tampered_payload": f"{head}.{b64(json.dumps(claims(sub='admin')).encode())}.{sig}",
        "wrong_audience": keys["p256"].sign(claims(aud="someone-else"), "ES256"),
        "wrong_issuer": keys["ed"].sign(claims(iss="evil.example"), "EdDSA"),
        "unknown_kid": keys["rsa"].sign(good, "RS256", kid="nobody-has-this"),
        "no_kid": keys["p256"].sign(good, "ES256", kid=None),
    }


async def refused(hub, token: str) -> int:
    async with await hub.ws() as c:
        await c.send("connect", {"token": token})
        code = await c.closed()
        assert not any("connect" in r for r in c.replies.values())
        return code


async def outcome(hub, token: str) -> Optional[int]:
    """The close code a connect with `token` gets, or None when it is accepted: for waiting on a
    change the hub applies a moment after the JWKS answer (a still accepted token is no failure)."""
    async with await hub.ws() as c:
        cmd_id = await c.send("connect", {"token": token})
        try:
            await c.reply(cmd_id)
            return None
        except AssertionError:  # closed instead of answered
            return c.ws.close_code


async def accepted(hub, token: str) -> Dict[str, Any]:
    async with await hub.ws() as c:
        return await c.connect(token)


def test_jwks_tokens_of_every_algorithm_connect_and_subscribe(hub_factory, jwks, keys):
    hub = jwks_hub(hub_factory, jwks)
    # The oct key was skipped, and said so.
    assert 'JWKS key "hmac-1" skipped: HMAC keys (kty oct) are never taken from a JWKS' in hub.log()

    async def main():
        for alg, token in good_tokens(keys).items():
            assert (await accepted(hub, token))["client"], alg
        async with await hub.ws() as c:
            await c.connect(keys["ed"].sign(claims(), "EdDSA"))
            # A subscription token from the JWKS too, for a channel the client could not join alone.
            sub = keys["p384"].sign(claims(channel="jwks-private"), "ES384")
            assert await c.subscribe("jwks-private", token=sub) is not None
            other = keys["p384"].sign(claims(channel="jwks-private2", aud="someone-else"), "ES384")
            err = await c.error("subscribe", {"channel": "jwks-private2", "token": other})
            assert err["code"] == 103, err
            # A refresh with a JWKS token keeps the connection.
            res = await c.result("refresh", {"token": keys["rsa"].sign(claims(), "RS512")})
            assert res["expires"] is True
    arun(main())


def test_jwks_refuses_every_bad_token(hub_factory, jwks, keys):
    hub = jwks_hub(hub_factory, jwks)

    async def main():
        assert (await accepted(hub, good_tokens(keys)["ES256"]))["client"]
        for name, token in bad_tokens(keys).items():
            assert await refused(hub, token) == 3500, name
        # Expired: the SDK is told to fetch another token (109), the connection stays.
        async with await hub.ws() as c:
            err = await c.error("connect", {"token": keys["p256"].sign(claims(exp=int(time.time()) - 60), "ES256")})
            assert err == {"code": 109, "message": "token expired"}
            assert (await c.connect(keys["p256"].sign(claims(), "ES256")))["client"]
        # A refresh with a bad token ends the connection instead of extending it.
        for name in ("hs256_keyed_with_jwks_public_key", "unknown_kid", "es256_signature_too_short"):
            async with await hub.ws() as c:
                await c.connect(good_tokens(keys)["EdDSA"])
                await c.send("refresh", {"token": bad_tokens(keys)[name]})
                assert await c.closed() == 3500, name
    arun(main())
    # The hub's HMAC secret still works for tokens without a kid; with a kid it is never used.
    arun(accepted(hub, hub.token("bob", aud=AUD, iss=ISS)))
    assert arun(refused(hub, hs({"alg": "HS256", "kid": "rsa-1"}, claims(), hub.secret.encode()))) == 3500


def test_centrifuge_python_connects_and_subscribes_with_jwks_tokens(hub_factory, jwks, keys):
    hub = jwks_hub(hub_factory, jwks)

    async def main():
        events, sub_events = ClientEventHandler(), SubscriptionEventHandler()
        client = Client(hub.ws_url, token=keys["p256"].sign(claims(), "ES256"), events=events, timeout=WAIT,
                        min_reconnect_delay=0.05, max_reconnect_delay=0.5, proxy=None)
        sub = client.new_subscription("jwks-news", sub_events, token=keys["ed"].sign(claims(channel="jwks-news"), "EdDSA"))
        try:
            await client.connect()
            await client.ready(WAIT)
            await sub.subscribe()
            await sub.ready(WAIT)
            hub.publish("jwks-news", {"n": 1})
            history = await sub.history(limit=-1)
            assert [p.data for p in history.publications] == [{"n": 1}]
        finally:
            await client.disconnect()
    arun(main())


def test_a_new_kid_is_fetched_while_the_connect_waits(hub_factory, jwks, keys):
    hub = jwks_hub(hub_factory, jwks, refetch=0.5)
    rotated = SigningKey("rotated-2", ec.generate_private_key(ec.SECP256R1()))
    token = rotated.sign(claims(), "ES256")
    time.sleep(0.6)
    before = jwks.fetches
    jwks.keys = [rotated.jwk]  # the old keys withdrawn in the same rotation
    # One connect: the hub holds it while it fetches the JWKS again, then accepts it.
    assert arun(accepted(hub, token))["client"]
    assert jwks.fetches == before + 1
    # The set was swapped whole: the withdrawn key is refused now, the new one still works.
    assert arun(refused(hub, good_tokens(keys)["ES256"])) == 3500
    assert arun(accepted(hub, token))["client"]


def test_a_slow_refetch_holds_the_connect_until_it_ends(hub_factory, jwks, keys):
    hub = jwks_hub(hub_factory, jwks, refetch=0.5)
    rotated = SigningKey("slow-1", ed25519.Ed25519PrivateKey.generate())
    time.sleep(0.6)
    jwks.keys = jwks.keys + [rotated.jwk]
    jwks.delay = 1.0

    async def main():
        started = time.monotonic()
        # Several connects naming the new kid at once share the one refetch.
        results = await asyncio.gather(*(accepted(hub, rotated.sign(claims(sub=f"u{i}"), "EdDSA")) for i in range(5)))
        assert all(r["client"] for r in results)
        assert time.monotonic() - started >= 0.9
    before = jwks.fetches
    arun(main())
    assert jwks.fetches - before == 1


def test_a_jwks_slower_than_the_timeout_refuses_the_waiting_connect(hub_factory, jwks, keys):
    hub = jwks_hub(hub_factory, jwks, "--token-jwks-timeout", "0.5", refetch=0.5)
    late = SigningKey("late-1", ec.generate_private_key(ec.SECP384R1()))
    time.sleep(0.6)
    jwks.keys = jwks.keys + [late.jwk]
    jwks.delay = 3.0
    started = time.monotonic()
    assert arun(refused(hub, late.sign(claims(), "ES384"))) == 3500
    assert time.monotonic() - started < 2.5
    wait_for(lambda: "JWKS fetch failed" in hub.log(), message="the timeout logged")
    # The keys held before still work.
    assert arun(accepted(hub, good_tokens(keys)["RS256"]))["client"]


def test_unknown_kids_cause_a_bounded_number_of_fetches(hub_factory, jwks, keys):
    hub = jwks_hub(hub_factory, jwks, refetch=3)
    wait_for(lambda: jwks.fetches == 1, message="the start fetch")
    time.sleep(3.1)

    async def storm():
        tokens = [keys["rsa"].sign(claims(), "RS256", kid=f"made-up-{i}") for i in range(40)]
        codes = await asyncio.gather(*(refused(hub, t) for t in tokens))
        assert set(codes) == {3500}

    arun(storm())
    assert jwks.fetches == 2  # one refetch for all forty
    arun(storm())
    assert jwks.fetches == 2  # within the interval: none
    # Known kids never fetch.
    for _ in range(5):
        arun(accepted(hub, good_tokens(keys)["EdDSA"]))
    assert jwks.fetches == 2


def test_hub_starts_with_the_jwks_down_and_takes_keys_once_it_is_up(hub_factory, keys):
    port = free_port()
    hub = hub_factory("--token-jwks-url", f"http://127.0.0.1:{port}/jwks.json", "--token-jwks-refetch-interval", "0.5",
                      "--token-audience", AUD, "--token-issuer", ISS)
    wait_for(lambda: "JWKS fetch failed" in hub.log(), message="the failed start fetch logged")
    token = good_tokens(keys)["ES384"]
    assert arun(refused(hub, token)) == 3500
    # Other doors still work: the HMAC secret needs no JWKS.
    assert arun(accepted(hub, hub.token("bob", aud=AUD, iss=ISS)))["client"]
    server = JWKSServer(port)
    try:
        server.keys = [keys["p384"].jwk]
        time.sleep(0.6)
        assert arun(accepted(hub, token))["client"]
        assert server.fetches == 1
        # Down again (an error status, then a body that is no JWKS): the keys held stay.
        for status, body in ((503, None), (200, b"<html>not json</html>")):
            server.status, server.body = status, body
            time.sleep(0.6)
            assert arun(refused(hub, keys["rsa"].sign(claims(), "RS256"))) == 3500
            assert arun(accepted(hub, token))["client"]
        assert "JWKS refused, keeping the keys held" in hub.log()
    finally:
        server.stop()


def test_withdrawn_keys_stop_working_after_the_refresh_interval(hub_factory, jwks, keys):
    hub = jwks_hub(hub_factory, jwks, "--token-jwks-refresh-interval", "2", refetch=0.5)
    token = good_tokens(keys)["RS512"]
    assert arun(accepted(hub, token))["client"]
    jwks.keys = [keys["ed"].jwk]
    before = jwks.fetches
    # No token asks for it: the periodic refresh alone notices the withdrawal.
    wait_for(lambda: jwks.fetches > before, timeout=5, message="the periodic refresh")
    # The new key set is installed just after its answer: until then the token is still accepted.
    wait_for(lambda: arun(outcome(hub, token)) == 3500, timeout=5, message="the withdrawn key refused")
    assert arun(accepted(hub, good_tokens(keys)["EdDSA"]))["client"]


def test_a_jwks_with_too_many_keys_is_capped(hub_factory, jwks, keys):
    many = [SigningKey(f"k{i}", ed25519.Ed25519PrivateKey.generate()) for i in range(105)]
    jwks.keys = [k.jwk for k in many]
    hub = jwks_hub(hub_factory, jwks)
    assert arun(accepted(hub, many[0].sign(claims(), "EdDSA")))["client"]
    assert arun(accepted(hub, many[99].sign(claims(), "EdDSA")))["client"]
    assert arun(refused(hub, many[104].sign(claims(), "EdDSA"))) == 3500
    assert 'JWKS key "k104" skipped: more than 100 keys' in hub.log()


def test_jwks_urls_the_client_cannot_fetch_are_refused_at_start(hub_factory):
    for url, why in (("https://127.0.0.1:9/jwks.json", "https is not supported"),
                     ("http://issuer.example/jwks.json", "the host must be an IP address or localhost"),
                     ("ftp://127.0.0.1/jwks", "must be an http:// URL")):
        cp = hub_factory.run("--token-jwks-url", url)
        assert cp.returncode != 0, url
        assert why in cp.stderr, (url, cp.stderr)


# ------------------------------------------------------------------------------------------
# PEM keys without a JWKS


def pem_file(tmp_path, name, private) -> str:
    path = tmp_path / name
    path.write_bytes(public_pem(private))
    return str(path)


@pytest.mark.parametrize("curve,alg,other", [(ec.SECP256R1(), "ES256", "ES384"), (ec.SECP384R1(), "ES384", "ES256")])
def test_ecdsa_public_key_pem(hub_factory, tmp_path, curve, alg, other):
    private = ec.generate_private_key(curve)
    hub = hub_factory("--token-ecdsa-public-key", pem_file(tmp_path, "ec.pem", private))
    good = jwt.encode({"sub": "alice"}, private, algorithm=alg)
    assert arun(accepted(hub, good))["client"]
    # A kid means nothing without a JWKS: the configured key checks it.
    assert arun(accepted(hub, jwt.encode({"sub": "alice"}, private, algorithm=alg, headers={"kid": "x"})))["client"]
    stranger = ec.generate_private_key(curve)
    head, payload, sig = good.split(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    for name, token in {
        "signed by another key": jwt.encode({"sub": "alice"}, stranger, algorithm=alg),
        "the other curve's algorithm": jwt.encode({"sub": "alice"}, ec.generate_private_key(
            ec.SECP384R1() if alg == "ES256" else ec.SECP256R1()), algorithm=other),
        "signature one byte short": f"{head}.{payload}.{b64(raw[:-1])}",
        "r and s swapped": f"{head}.{payload}.{b64(raw[len(raw) // 2:] + raw[:len(raw) // 2])}",
        "hs256 keyed with the public key": hs({"alg": "HS256"}, {"sub": "alice"}, public_pem(private)),
        "eddsa without any Ed25519 key": jwt.encode({"sub": "alice"}, ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA"),
    }.items():
        assert arun(refused(hub, token)) == 3500, name


def test_rs384_and_rs512_with_the_rsa_public_key(hub_factory, tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    hub = hub_factory("--token-rsa-public-key", pem_file(tmp_path, "rsa.pem", private))
    for alg in ("RS256", "RS384", "RS512"):
        assert arun(accepted(hub, jwt.encode({"sub": "alice"}, private, algorithm=alg)))["client"], alg
    # An ES256 token has no key here, whatever its signature.
    assert arun(refused(hub, jwt.encode({"sub": "alice"}, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"))) == 3500


def test_a_key_file_of_the_wrong_type_is_refused_at_start(hub_factory, tmp_path):
    rsa_pem = pem_file(tmp_path, "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    cp = hub_factory.run("--token-ecdsa-public-key", rsa_pem)
    assert cp.returncode != 0 and "is not a PEM ECDSA (P-256 or P-384) public key" in cp.stderr, cp.stderr
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    cp = hub_factory.run("--token-rsa-public-key", str(garbage))
    assert cp.returncode != 0 and "is not a PEM RSA public key" in cp.stderr, cp.stderr
