"""Seed 003 (June Agent): auth, /ws/{user_id}, /chat, LLM, TTS over service channels.

The hub, the reference workers (clients/june/worker.py: espeak-ng, pocketsphinx, LLM
forwarder) and a fake OpenAI-compatible server (clients/june/fake_llm.py, the one mock: no
model can run here) are real subprocesses.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import subprocess
import sys
import time
import wave

import pytest
import requests
import websockets

from hubtest import REPO_ROOT, WAIT, HubFactory, WSClient, arun, free_port, make_jwt, stop_processes, wait_for

WORKER = str(REPO_ROOT / "clients" / "python" / "src" / "hub_clients" / "june_worker.py")
FAKE_LLM = str(REPO_ROOT / "clients" / "python" / "src" / "hub_clients" / "fake_llm.py")
ADMIN, ADMIN_PASSWORD = "admin", "admin-password-1"
FAST_HASH = {"HUB_ADMIN_USER": ADMIN, "HUB_ADMIN_PASSWORD": ADMIN_PASSWORD, "HUB_PASSWORD_ITERATIONS": "20000"}


class Stack:
    """A hub plus the processes serving its services."""

    def __init__(self, hub):
        self.hub = hub
        self.procs = []
        self.llm_url = None

    def spawn(self, *argv):
        log = open(self.hub.workdir / f"proc{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, *argv], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def start_llm(self):
        port = free_port()
        self.spawn(FAKE_LLM, "--port", str(port))
        self.llm_url = f"http://127.0.0.1:{port}/v1/chat/completions"

        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        # A loaded machine may start the worker's first request before the fake LLM listens.
        wait_for(listening, timeout=10, message="the fake LLM")

    def start_worker(self, *services):
        proc = self.spawn(WORKER, "--hub", self.hub.url, "--api-key", self.hub.api_key,
                          "--llm-url", self.llm_url or "http://127.0.0.1:9/none", *services)
        for service in services:
            wait_for(lambda: self.workers(service) > 0, timeout=10, message=f"{service} worker")
        return proc

    def workers(self, service):
        out = self.hub.api("presence_stats", {"channel": f"service:{service}"})
        return out.get("result", {}).get("num_clients", 0)

    def stop(self):
        stop_processes(self.procs)

    # HTTP helpers
    def login(self, username, password):
        r = requests.post(self.hub.url + "/auth/login", json={"username": username, "password": password}, timeout=WAIT)
        assert r.status_code == 200, r.text
        return r.json()

    def admin_headers(self):
        return {"Authorization": "Bearer " + self.login(ADMIN, ADMIN_PASSWORD)["access_token"]}

    def create_user(self, username, password="password-123", **fields):
        r = requests.post(self.hub.url + "/admin/users", headers=self.admin_headers(),
                          json={"username": username, "password": password, **fields}, timeout=WAIT)
        assert r.status_code == 200, r.text
        return r.json()

    def user_token(self, username):
        self.create_user(username)
        return self.login(username, "password-123")["access_token"]


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    factory = HubFactory(request, tmp_path_factory)
    hub = factory("--service-timeout", "5", env=FAST_HASH)
    s = Stack(hub)
    s.start_llm()
    s.start_worker("llm", "agent", "tts", "stt")
    yield s
    s.stop()
    assert not factory.teardown()


@pytest.fixture
def bare(hub_factory):
    """A hub with a 3 s service timeout and no worker yet."""
    s = Stack(hub_factory("--service-timeout", "3", env=FAST_HASH))
    yield s
    s.stop()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------------------
# auth


def test_login_refresh_logout_and_revocation(stack):
    url = stack.hub.url
    stack.create_user("carol", "carol-password")
    tokens = requests.post(url + "/auth/login", json={"username": "carol", "password": "carol-password"}).json()
    assert set(tokens) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 3600

    r = requests.post(url + "/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200
    assert set(r.json()) == {"access_token", "token_type", "expires_in"}
    fresh = r.json()["access_token"]
    assert requests.post(url + "/api/v1/llm/generate", headers=bearer(fresh), json={"prompt": "hi"}).status_code == 200

    assert requests.post(url + "/auth/logout", json={"refresh_token": tokens["refresh_token"]}).status_code == 200
    r = requests.post(url + "/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 401 and r.json() == {"detail": "Refresh token has been revoked"}

    # Each kind of token works only where it belongs.
    assert requests.post(url + "/auth/refresh", json={"refresh_token": fresh}).status_code == 401
    r = requests.post(url + "/chat", headers=bearer(tokens["refresh_token"]), json={"type": "text", "content": "x"})
    assert r.status_code == 401


def test_login_errors(stack):
    url = stack.hub.url
    r = requests.post(url + "/auth/login", json={"username": ADMIN, "password": "wrong"})
    assert r.status_code == 401 and r.json() == {"detail": "Invalid credentials"}
    r = requests.post(url + "/auth/login", json={"username": "nobody", "password": "whatever"})
    assert r.status_code == 401 and r.json() == {"detail": "Invalid credentials"}
    r = requests.post(url + "/auth/login", json={})
    assert r.status_code == 400 and "detail" in r.json()
    r = requests.post(url + "/auth/login", data="not json")
    assert r.status_code == 400
    # A bare user_id is legacy access, off unless configured.
    assert requests.post(url + "/auth/login", json={"user_id": "someone"}).status_code == 401
    assert requests.post(url + "/auth/refresh", json={}).status_code == 400
    assert requests.post(url + "/auth/refresh", json={"refresh_token": "garbage"}).status_code == 401
    assert requests.post(url + "/auth/logout", json={"refresh_token": "garbage"}).status_code == 401


def test_admin_login_and_user_management_errors(stack):
    url = stack.hub.url
    r = requests.post(url + "/admin/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    assert r.status_code == 200 and r.json()["token_type"] == "bearer"
    stack.create_user("dave")
    r = requests.post(url + "/admin/auth/login", json={"username": "dave", "password": "password-123"})
    assert r.status_code == 403 and r.json() == {"detail": "Admin access required"}
    dave = stack.login("dave", "password-123")["access_token"]
    r = requests.post(url + "/admin/users", headers=bearer(dave), json={"username": "eve"})
    assert r.status_code == 403
    r = requests.post(url + "/admin/users", json={"username": "eve"})
    assert r.status_code == 401 and r.json() == {"detail": "Not authenticated"}
    r = requests.post(url + "/admin/users", headers=stack.admin_headers(), json={"username": "dave", "password": "password-123"})
    assert r.status_code == 409 and r.json() == {"detail": "User already exists"}
    r = requests.post(url + "/admin/users", headers=stack.admin_headers(), json={"username": "frank", "password": "short"})
    assert r.status_code == 400
    r = requests.put(url + "/admin/users/nobody", headers=stack.admin_headers(), json={"status": "blocked"})
    assert r.status_code == 404 and r.json() == {"detail": "User not found"}


def test_auth_token_backward_compatible(stack):
    url = stack.hub.url
    token = stack.user_token("gina")
    r = requests.post(url + "/auth/token", headers=bearer(token))
    assert r.status_code == 200 and set(r.json()) == {"access_token", "token_type"}
    assert requests.post(url + "/auth/token", params={"user_id": "other"}, headers=bearer(token)).status_code == 403
    r = requests.post(url + "/auth/token", params={"user_id": "other"}, headers=stack.admin_headers())
    assert r.status_code == 200
    assert requests.post(url + "/auth/token", params={"user_id": "gina"}).status_code == 401


def test_expired_token_is_refused_on_rest_and_websocket(stack):
    expired = make_jwt({"sub": "harry", "exp": int(time.time()) - 60}, secret=stack.hub.secret)
    r = requests.post(stack.hub.url + "/chat", headers=bearer(expired), json={"type": "text", "content": "x"})
    assert r.status_code == 401 and r.json() == {"detail": "Token has expired"}

    async def body():
        async with websockets.connect(f"ws://127.0.0.1:{stack.hub.port}/ws/harry?token={expired}", proxy=None) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), WAIT)
            assert closed.value.rcvd.code == 1008 and "expired" in closed.value.rcvd.reason
    arun(body())


def test_websocket_token_must_match_user_id(stack):
    token = stack.hub.token("ivan")

    async def body():
        async with websockets.connect(f"ws://127.0.0.1:{stack.hub.port}/ws/someone-else?token={token}", proxy=None) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), WAIT)
            assert closed.value.rcvd.code == 1008
        # Without any credential the first message must be an auth message.
        async with websockets.connect(f"ws://127.0.0.1:{stack.hub.port}/ws/ivan", proxy=None) as ws:
            await ws.send(json.dumps({"type": "text", "content": "Hello!"}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), WAIT)
            assert closed.value.rcvd.code == 1008
        async with websockets.connect(f"ws://127.0.0.1:{stack.hub.port}/ws/ivan", proxy=None) as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            await ws.send(json.dumps({"type": "text", "content": "Hello!"}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            assert reply["content"] == "You said: Hello!"
    arun(body())


# ------------------------------------------------------------------------------------------
# the seed's examples


def test_seed_rest_examples(stack):
    token = stack.user_token("june-rest")
    response = requests.post(
        f"{stack.hub.url}/api/v1/llm/generate",
        headers={"Authorization": f"Bearer {token}"},
        json={"prompt": "Hello, how are you?"}
    )
    result = response.json()
    assert response.status_code == 200 and result == {"text": "You said: Hello, how are you?"}

    response = requests.post(
        f"{stack.hub.url}/api/v1/tts/speak",
        headers={"Authorization": f"Bearer {token}"},
        json={"text": "Hello world", "language": "en", "voice_id": "default"}
    )
    result = response.json()
    audio_data = base64.b64decode(result["audio_b64"])
    assert result["sample_rate"] == 16000
    with wave.open(io.BytesIO(audio_data)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getnframes() > 8000

    response = requests.post(f"{stack.hub.url}/chat", headers={"Authorization": f"Bearer {token}"},
                             json={"type": "text", "content": "Hello!"})
    body = response.json()
    assert response.status_code == 200 and set(body) == {"type", "content", "conversation_id"}
    assert body["type"] == "text" and body["content"] == "You said: Hello!"


def test_seed_websocket_example(stack):
    token = stack.user_token("user123")
    printed = []

    async def chat():
        uri = f"ws://127.0.0.1:{stack.hub.port}/ws/user123?token={token}"
        async with websockets.connect(uri, proxy=None) as websocket:
            # Send message
            message = {
                "type": "text",
                "content": "Hello!"
            }
            await websocket.send(json.dumps(message))

            # Receive response
            response = await websocket.recv()
            result = json.loads(response)
            printed.append(result)

    arun(chat())
    result = printed[0]
    assert result["type"] == "text" and result["content"] == "You said: Hello!"
    assert result["conversation_id"] and result["timestamp"].endswith("Z")


def test_conversation_history_reaches_the_agent(stack):
    token = stack.user_token("kate")
    first = requests.post(stack.hub.url + "/chat", headers=bearer(token), json={"type": "text", "content": "one"}).json()
    second = requests.post(stack.hub.url + "/chat", headers=bearer(token),
                           json={"type": "text", "content": "two", "conversation_id": first["conversation_id"]}).json()
    assert second["conversation_id"] == first["conversation_id"]
    assert second["content"] == "You said: two (turn 2)"
    other = requests.post(stack.hub.url + "/chat", headers=bearer(token), json={"type": "text", "content": "three"}).json()
    assert other["content"] == "You said: three" and other["conversation_id"] != first["conversation_id"]


def test_own_conversations_with_messages_newest_first_paged(stack):
    token, other = stack.user_token("nora"), stack.user_token("olaf")
    url = stack.hub.url + "/conversations/mine"

    def say(who, content, conversation=None):
        body = {"type": "text", "content": content, **({"conversation_id": conversation} if conversation else {})}
        r = requests.post(stack.hub.url + "/chat", headers=bearer(who), json=body, timeout=WAIT)
        assert r.status_code == 200, r.text
        return r.json()["conversation_id"]

    first = say(token, "first")
    second = say(token, "second")
    third = say(token, "third")
    say(token, "first again", first)  # updated last: now the newest
    say(other, "not yours")

    r = requests.get(url, headers=bearer(token), params={"limit": 2}, timeout=WAIT)
    assert r.status_code == 200, r.text
    page = r.json()
    assert [c["conversation_id"] for c in page["conversations"]] == [first, third]
    assert [(m["role"], m["content"]) for m in page["conversations"][0]["messages"]] == [
        ("user", "first"), ("assistant", "You said: first"),
        ("user", "first again"), ("assistant", "You said: first again (turn 2)"),
    ]
    assert page["next_cursor"]
    rest = requests.get(url, headers=bearer(token), params={"limit": 2, "cursor": page["next_cursor"]}, timeout=WAIT).json()
    assert [c["conversation_id"] for c in rest["conversations"]] == [second] and rest["next_cursor"] is None
    assert all(c["user_id"] == "nora" for c in page["conversations"] + rest["conversations"])

    theirs = requests.get(url, headers=bearer(other), timeout=WAIT).json()["conversations"]
    assert [[m["content"] for m in c["messages"]] for c in theirs] == [["not yours", "You said: not yours"]]

    assert requests.get(url, timeout=WAIT).status_code == 401
    assert requests.get(url, headers=bearer("not-a-jwt"), timeout=WAIT).status_code == 401
    for bad in ({"limit": 0}, {"limit": 51}, {"cursor": "nonsense"}):
        r = requests.get(url, headers=bearer(token), params=bad, timeout=WAIT)
        assert r.status_code == 400 and "detail" in r.json(), (bad, r.text)


def test_websocket_resumes_a_conversation_with_its_earlier_turns(stack):
    # A reload opens a new /ws connection: naming the conversation_id sends the earlier turns to the
    # LLM (the fake counts the user turns it received); another user's id starts afresh.
    token, other = stack.user_token("pia"), stack.user_token("rex")

    async def say(user, who, content, conversation=None):
        uri = f"ws://127.0.0.1:{stack.hub.port}/ws/{user}?token={who}"
        async with websockets.connect(uri, proxy=None) as ws:
            await ws.send(json.dumps({"type": "text", "content": content,
                                      **({"conversation_id": conversation} if conversation else {})}))
            return json.loads(await asyncio.wait_for(ws.recv(), WAIT))

    async def body():
        first = await say("pia", token, "hello")
        conversation = first["conversation_id"]
        assert first["content"] == "You said: hello"
        assert (await say("pia", token, "again", conversation))["content"] == "You said: again (turn 2)"
        resumed = await say("pia", token, "after reload", conversation)
        assert resumed["content"] == "You said: after reload (turn 3)" and resumed["conversation_id"] == conversation
        theirs = await say("rex", other, "guess", conversation)
        assert theirs["content"] == "You said: guess", "another user's conversation id carries none of its turns"
    arun(body())


def test_two_tabs_and_a_centrifuge_client_see_the_exchange(stack):
    token = stack.user_token("liam")
    hub = stack.hub

    async def body():
        centrifuge = await hub.client("liam", token=token)
        await centrifuge.subscribe("chat:liam#liam")
        # Someone else cannot listen in.
        intruder = await hub.client("mallory")
        err = await intruder.error("subscribe", {"channel": "chat:liam#liam"})
        assert err["code"] == 103
        tab_a = await websockets.connect(f"ws://127.0.0.1:{hub.port}/ws/liam", additional_headers=bearer(token), proxy=None)
        tab_b = await websockets.connect(f"ws://127.0.0.1:{hub.port}/ws/liam?token={token}", proxy=None)
        await asyncio.sleep(0.3)  # both tabs subscribed
        await tab_a.send(json.dumps({"type": "text", "content": "Hi from A", "conversation_id": "shared"}))
        a = json.loads(await asyncio.wait_for(tab_a.recv(), WAIT))
        assert a["role"] == "assistant" and a["content"] == "You said: Hi from A" and a["conversation_id"] == "shared"
        b1 = json.loads(await asyncio.wait_for(tab_b.recv(), WAIT))
        b2 = json.loads(await asyncio.wait_for(tab_b.recv(), WAIT))
        assert (b1["role"], b1["content"]) == ("user", "Hi from A")
        assert (b2["role"], b2["content"]) == ("assistant", "You said: Hi from A")
        pubs = await centrifuge.pubs(2, channel="chat:liam#liam")
        assert [p["data"]["role"] for p in pubs] == ["user", "assistant"]
        assert pubs[1]["data"]["conversation_id"] == "shared" and pubs[1]["data"]["response_time"] >= 0
        for c in (tab_a, tab_b):
            await c.close()
        await centrifuge.close()
        await intruder.close()
    arun(body())


def test_blocked_user_is_disconnected_live_and_locked_out(stack):
    stack.create_user("nina")
    tokens = stack.login("nina", "password-123")
    hub = stack.hub

    async def body():
        async with websockets.connect(f"ws://127.0.0.1:{hub.port}/ws/nina?token={tokens['access_token']}", proxy=None) as ws:
            await ws.send(json.dumps({"type": "text", "content": "still here"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["content"] == "You said: still here"
            r = requests.put(hub.url + "/admin/users/nina", headers=stack.admin_headers(), json={"status": "blocked"})
            assert r.status_code == 200 and r.json()["status"] == "blocked"
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), WAIT)
    arun(body())
    r = requests.post(hub.url + "/auth/login", json={"username": "nina", "password": "password-123"})
    assert r.status_code == 403
    assert requests.post(hub.url + "/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 403
    r = requests.post(hub.url + "/chat", headers=bearer(tokens["access_token"]), json={"type": "text", "content": "x"})
    assert r.status_code == 403


def test_validation_errors(stack):
    token = stack.user_token("oscar")
    url = stack.hub.url
    cases = [
        ("/api/v1/llm/generate", {"prompt": ""}),
        ("/api/v1/llm/generate", {"prompt": "x" * 100_001}),
        ("/api/v1/llm/generate", {}),
        ("/api/v1/tts/speak", {"text": ""}),
        ("/api/v1/tts/speak", {"text": "x" * 50_001}),
        ("/api/v1/tts/speak", {"text": "hi", "language": "english"}),
        ("/chat", {"type": "video", "content": "x"}),
        ("/chat", {"type": "text"}),
        ("/chat", {"type": "text", "content": "x", "conversation_id": "bad id with spaces"}),
        ("/chat", {"type": "audio", "content": "%%% not base64 %%%"}),
    ]
    for path, body in cases:
        r = requests.post(url + path, headers=bearer(token), json=body)
        assert r.status_code == 400, (path, body, r.text)
        assert isinstance(r.json()["detail"], str)
    r = requests.post(url + "/api/v1/llm/generate", json={"prompt": "hi"})
    assert r.status_code == 401 and r.json() == {"detail": "Not authenticated"}
    # The longest allowed prompt goes through.
    r = requests.post(url + "/api/v1/llm/generate", headers=bearer(token), json={"prompt": "y" * 100_000})
    assert r.status_code == 200

    async def ws_error():
        async with websockets.connect(f"ws://127.0.0.1:{stack.hub.port}/ws/oscar?token={token}", proxy=None) as ws:
            await ws.send(json.dumps({"type": "video", "content": "x"}))
            error = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            assert error["type"] == "error" and "type" in error["content"]
            await ws.send(json.dumps({"type": "text", "content": "fine"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["content"] == "You said: fine"
    arun(ws_error())


def test_rate_limit_429(stack):
    token = stack.user_token("pat")
    statuses = []
    for _ in range(11):
        r = requests.post(stack.hub.url + "/api/v1/llm/generate", headers=bearer(token), json={"prompt": "same"})
        statuses.append(r.status_code)
    assert statuses[:10] == [200] * 10 and statuses[10] == 429
    assert r.json()["detail"] == "Rate limit exceeded" and r.json()["retry_after"] > 0
    assert r.headers["X-RateLimit-Limit"] == "10" and r.headers["X-RateLimit-Remaining"] == "0"


def test_cache_hits_show_in_metrics(stack):
    token = stack.user_token("quinn")

    def hits():
        for line in requests.get(stack.hub.url + "/metrics").text.splitlines():
            if line.startswith('hub_service_cache_hits_total{service="tts"}'):
                return float(line.split()[-1])
        return 0.0
    before = hits()
    body = {"text": "cache me", "language": "en", "voice_id": "default"}
    first = requests.post(stack.hub.url + "/api/v1/tts/speak", headers=bearer(token), json=body).json()
    second = requests.post(stack.hub.url + "/api/v1/tts/speak", headers=bearer(token), json=body).json()
    assert first == second, (first, second)
    assert hits() == before + 1, (first, [l for l in requests.get(stack.hub.url + "/metrics").text.splitlines() if "service" in l])


def test_audio_round_trip_through_chat(stack):
    """espeak-ng speaks → the chat's audio path transcribes it (pocketsphinx) → agent → TTS."""
    token = stack.user_token("rita")
    spoken = requests.post(stack.hub.url + "/api/v1/tts/speak", headers=bearer(token),
                           json={"text": "hello world how are you today", "language": "en"}).json()["audio_b64"]

    async def body():
        async with websockets.connect(f"ws://127.0.0.1:{stack.hub.port}/ws/rita?token={token}", proxy=None) as other_tab:
            await asyncio.sleep(0.3)
            r = await asyncio.to_thread(requests.post, stack.hub.url + "/chat", headers=bearer(token),
                                        json={"type": "audio", "content": spoken}, timeout=30)
            assert r.status_code == 200, r.text
            reply = r.json()
            assert reply["type"] == "audio"
            with wave.open(io.BytesIO(base64.b64decode(reply["content"]))) as w:
                assert w.getframerate() == 16000 and w.getnframes() > 8000
            heard = json.loads(await asyncio.wait_for(other_tab.recv(), 30))
            assert heard["role"] == "user" and heard["type"] == "audio"
            assert "hello" in heard["content"] and "world" in heard["content"], heard
    arun(body())


def test_transcribe_endpoint_and_full_round_trip(stack):
    """The seed's /api/v1/audio/transcribe: a WAV espeak-ng spoke, as a multipart upload →
    pocketsphinx transcript; with full_round_trip the LLM answers it and TTS speaks the answer."""
    token = stack.user_token("tess")
    spoken = base64.b64decode(requests.post(stack.hub.url + "/api/v1/tts/speak", headers=bearer(token),
                                            json={"text": "hello world how are you today", "language": "en"}).json()["audio_b64"])
    url = stack.hub.url + "/api/v1/audio/transcribe"
    # the seed's Python example: file in `audio`, options as query parameters
    r = requests.post(url, headers=bearer(token), files={"audio": ("audio.wav", spoken)}, params={"language": "en"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"transcript", "detected_language"} and body["detected_language"] == "en"
    assert "hello" in body["transcript"] and "world" in body["transcript"], body
    # the seed's curl example: options as form fields
    r = requests.post(url, headers=bearer(token), files={"audio": ("audio.wav", spoken)},
                      data={"full_round_trip": "true", "language": "en"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"transcript", "detected_language", "llm_response", "audio_b64", "sample_rate"} <= set(body)
    assert body["llm_response"] and body["sample_rate"] == 16000
    with wave.open(io.BytesIO(base64.b64decode(body["audio_b64"]))) as w:
        assert w.getframerate() == 16000 and w.getnframes() > 8000
    # bad input: no audio part, a JSON body, a bad language, no token
    r = requests.post(url, headers=bearer(token), files={"other": ("x.wav", spoken)})
    assert r.status_code == 400 and "audio" in r.json()["detail"]
    r = requests.post(url, headers=bearer(token), json={"audio": "x"})
    assert r.status_code == 400
    r = requests.post(url, headers=bearer(token), files={"audio": ("a.wav", spoken)}, params={"language": "english"})
    assert r.status_code == 400 and "language" in r.json()["detail"]
    assert requests.post(url, files={"audio": ("a.wav", spoken)}).status_code == 401


# ------------------------------------------------------------------------------------------
# workers missing, slow or dying


def test_no_worker_is_503_slow_is_504_dead_is_503(bare):
    hub = bare.hub
    token = bare.user_token("sam")
    r = requests.post(hub.url + "/api/v1/llm/generate", headers=bearer(token), json={"prompt": "hi"})
    assert r.status_code == 503 and "no worker" in r.json()["detail"]
    r = requests.post(hub.url + "/chat", headers=bearer(token), json={"type": "text", "content": "hi"})
    assert r.status_code == 503

    bare.start_llm()
    worker = bare.start_worker("llm")
    started = time.monotonic()
    r = requests.post(hub.url + "/api/v1/llm/generate", headers=bearer(token), json={"prompt": "sleep:6"}, timeout=10)
    assert r.status_code == 504 and 2.5 < time.monotonic() - started < 5
    assert "did not answer" in r.json()["detail"]

    # The worker dies mid-request: the caller hears 503 well before the timeout.
    def kill_soon():
        time.sleep(0.5)
        worker.kill()
    import threading
    threading.Thread(target=kill_soon).start()
    started = time.monotonic()
    r = requests.post(hub.url + "/api/v1/llm/generate", headers=bearer(token), json={"prompt": "sleep:5 again"}, timeout=10)
    assert r.status_code == 503 and time.monotonic() - started < 2.9, (r.status_code, r.text)


def test_anonymous_legacy_access_when_configured(hub_factory):
    s = Stack(hub_factory("--chat-allow-anonymous", env=FAST_HASH))
    try:
        s.start_llm()
        s.start_worker("agent")
        r = requests.post(s.hub.url + "/auth/login", json={"user_id": "legacy-user"})
        assert r.status_code == 200 and r.json()["token_type"] == "bearer"
        # A registered user's name is not enough.
        assert requests.post(s.hub.url + "/auth/login", json={"user_id": ADMIN}).status_code == 401
        printed = []

        async def chat():
            uri = f"ws://127.0.0.1:{s.hub.port}/ws/user123"
            async with websockets.connect(uri, proxy=None) as websocket:
                message = {"type": "text", "content": "Hello!"}
                await websocket.send(json.dumps(message))
                response = await websocket.recv()
                printed.append(json.loads(response))
        arun(chat())
        assert printed[0]["content"] == "You said: Hello!"
    finally:
        s.stop()


# ------------------------------------------------------------------------------------------
# two nodes sharing Redis


@pytest.fixture
def redis_url(tmp_path):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False
    wait_for(up, message="redis-server")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(5)


def test_revocation_and_blocking_hold_on_every_node(hub_factory, redis_url):
    node_a = Stack(hub_factory("--engine", "redis", "--redis-url", redis_url, env=FAST_HASH))
    node_b = Stack(hub_factory("--engine", "redis", "--redis-url", redis_url, env=FAST_HASH))
    node_a.create_user("uma")
    tokens = node_a.login("uma", "password-123")
    # Logged out on A: B refuses the refresh token too.
    assert requests.post(node_a.hub.url + "/auth/logout", json={"refresh_token": tokens["refresh_token"]}).status_code == 200
    assert requests.post(node_b.hub.url + "/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401

    async def body():
        async with websockets.connect(f"ws://127.0.0.1:{node_b.hub.port}/ws/uma?token={tokens['access_token']}", proxy=None) as ws:
            await asyncio.sleep(0.3)
            r = requests.put(node_a.hub.url + "/admin/users/uma", headers=node_a.admin_headers(), json={"status": "blocked"})
            assert r.status_code == 200
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), WAIT)
    arun(body())
    assert requests.post(node_b.hub.url + "/auth/login", json={"username": "uma", "password": "password-123"}).status_code == 403
