"""Helpers for the hub's integration tests (the fixtures are in conftest.py).

Every test drives the real `hub` binary (HUB_BINARY, default .build/debug/hub) started as a
subprocess on a free port, over real WebSocket and HTTP connections. Each hub's stderr is kept in
test-artifacts/ (at the repository root) for debugging.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import requests
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

REPO_ROOT = Path(__file__).resolve().parents[2]
HUB_BINARY = os.environ.get("HUB_BINARY", str(REPO_ROOT / ".build" / "debug" / "hub"))
ARTIFACTS = REPO_ROOT / "test-artifacts"

SECRET = "integration-secret"
API_KEY = "integration-api-key"

# Every single wait in the suite is bounded by this.
WAIT = 5.0
# Hard cap for one asyncio test body (several bounded waits in sequence).
TEST_BODY_TIMEOUT = 60.0

_hub_counter = itertools.count(1)

# Every credential the suite hands a hub (flags, environment, config file), so that
# test_zz_secrets_in_logs.py can check none of them reaches a log. SESSION_START is set by
# conftest.py: logs older than this run are not searched.
SECRETS_USED: set = set()
SESSION_START = 0.0
_SECRET_NAME = re.compile(r"secret|password|token|api_key|apikey|api-key", re.I)


def note_secrets(named: Iterable[Any]) -> None:
    """Records the values of (name, value) pairs whose name says they are credentials; paths
    (a key file's location) and short values (which occur in logs by chance) are left out."""
    for name, value in named:
        if isinstance(value, dict):
            note_secrets(value.items())
        elif isinstance(value, str) and _SECRET_NAME.search(str(name)) and len(value) >= 8 \
                and not value.startswith("/"):
            SECRETS_USED.add(value)


# --------------------------------------------------------------------------------------------
# tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: Dict[str, Any], secret: str = SECRET, alg: str = "HS256",
             header: Optional[Dict[str, Any]] = None) -> str:
    """A JWT with the given claims. alg HS256/HS384/HS512 signs with `secret`; any other alg
    (e.g. "none") yields an unsigned token with that alg in its header."""
    hdr = {"alg": alg, "typ": "JWT"} if header is None else header
    signing_input = f"{_b64(json.dumps(hdr).encode())}.{_b64(json.dumps(claims).encode())}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(alg)
    if digest is None:
        return signing_input + "."
    sig = hmac.new(secret.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(sig)}"


def conn_token(sub: str, secret: str = SECRET, alg: str = "HS256", **claims: Any) -> str:
    """Connection token for user `sub`. exp defaults to an hour from now; pass exp=None to
    leave it out."""
    claims = dict(claims)
    if "exp" not in claims:
        claims["exp"] = int(time.time()) + 3600
    elif claims["exp"] is None:
        del claims["exp"]
    claims["sub"] = sub
    return make_jwt(claims, secret=secret, alg=alg)


def sub_token(sub: str, channel: str, secret: str = SECRET, **claims: Any) -> str:
    """Subscription token for user `sub` and `channel`."""
    return conn_token(sub, secret=secret, channel=channel, **claims)


# --------------------------------------------------------------------------------------------
# misc helpers


def silent_wav(seconds: float) -> bytes:
    """A WAV file of silence (16 kHz, 16-bit mono): a valid recording for upload tests."""
    import io
    import wave
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return out.getvalue()


def stop_processes(procs: Iterable[subprocess.Popen], timeout: float = 5.0) -> None:
    """SIGTERM to every process still running, then wait for each (SIGKILL after `timeout`)."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


async def async_wait_for(predicate: Callable[[], Any], timeout: float = WAIT,
                         interval: float = 0.02, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def arun(coro, timeout: float = TEST_BODY_TIMEOUT):
    """Run an async test body with a hard upper bound, so nothing can hang the suite."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


# --------------------------------------------------------------------------------------------
# WebSocket client speaking the Centrifugo v2 JSON protocol


class WSClient:
    """A minimal protocol client. `send()` numbers commands; `reply(id)` waits for the reply with
    that id while buffering pushes; `push()` waits for the next push. Server pings (`{}`) are
    answered automatically unless auto_pong is False. Every wait is bounded (≤ WAIT)."""

    def __init__(self, ws, auto_pong: bool = True):
        self.ws = ws
        self.auto_pong = auto_pong
        self._ids = itertools.count(1)
        self.replies: Dict[int, Dict[str, Any]] = {}
        self.pushes: collections.deque = collections.deque()
        self.errors: collections.deque = collections.deque()  # replies without id
        self.pings = 0
        self.ping_times: List[float] = []  # time.monotonic() of each server ping
        self.frames = 0

    @classmethod
    async def open(cls, url: str, auto_pong: bool = True, **kwargs: Any) -> "WSClient":
        kwargs.setdefault("max_size", None)
        kwargs.setdefault("ping_interval", None)  # no protocol-level pings of our own
        kwargs.setdefault("close_timeout", 1)
        kwargs.setdefault("open_timeout", WAIT)
        kwargs.setdefault("proxy", None)
        ws = await asyncio.wait_for(ws_connect(url, **kwargs), WAIT)
        return cls(ws, auto_pong=auto_pong)

    # sending

    async def send_raw(self, text) -> None:
        await self.ws.send(text)

    async def send(self, method: str, params: Optional[Dict[str, Any]] = None,
                   with_id: bool = True) -> Optional[int]:
        cmd: Dict[str, Any] = {method: params if params is not None else {}}
        cmd_id = None
        if with_id:
            cmd_id = next(self._ids)
            cmd = {"id": cmd_id, **cmd}
        await self.ws.send(json.dumps(cmd))
        return cmd_id

    def next_id(self) -> int:
        return next(self._ids)

    # receiving

    async def _read(self, timeout: float) -> None:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        self.frames += 1
        if isinstance(frame, bytes):
            frame = frame.decode()
        for line in frame.split("\n"):
            if not line.strip():
                continue
            msg = json.loads(line)
            if msg == {}:
                self.pings += 1
                self.ping_times.append(time.monotonic())
                if self.auto_pong:
                    await self.ws.send("{}")
            elif "id" in msg:
                self.replies[msg["id"]] = msg
            elif "push" in msg:
                self.pushes.append(msg["push"])
            else:
                self.errors.append(msg)

    async def _read_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            try:
                await self._read(remaining)
            except asyncio.TimeoutError:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
            except ConnectionClosed as e:
                raise AssertionError(
                    f"connection closed (code {self.ws.close_code}, reason "
                    f"{self.ws.close_reason!r}) while waiting for {what}") from e

    async def reply(self, cmd_id: int, timeout: float = WAIT) -> Dict[str, Any]:
        await self._read_until(lambda: cmd_id in self.replies, timeout, f"reply id={cmd_id}")
        return self.replies.pop(cmd_id)

    async def call(self, method: str, params: Optional[Dict[str, Any]] = None,
                   timeout: float = WAIT) -> Dict[str, Any]:
        """Send a command and return the whole reply (`{"id":..,method:..}` or `{"id":..,"error":..}`)."""
        cmd_id = await self.send(method, params)
        return await self.reply(cmd_id, timeout)

    async def result(self, method: str, params: Optional[Dict[str, Any]] = None,
                     timeout: float = WAIT) -> Dict[str, Any]:
        """Send a command, assert it succeeded, return its result object."""
        rep = await self.call(method, params, timeout)
        assert "error" not in rep, f"{method} {params} failed: {rep}"
        assert method in rep, f"reply to {method} lacks the result: {rep}"
        return rep[method]

    async def error(self, method: str, params: Optional[Dict[str, Any]] = None,
                    timeout: float = WAIT) -> Dict[str, Any]:
        """Send a command, assert it failed, return the error object."""
        rep = await self.call(method, params, timeout)
        assert "error" in rep, f"{method} {params} was expected to fail: {rep}"
        return rep["error"]

    async def push(self, timeout: float = WAIT, kind: Optional[str] = None,
                   channel: Optional[str] = None) -> Dict[str, Any]:
        """Next push (optionally the next of a kind — pub/join/leave/unsubscribe/subscribe — and/or
        of a channel; others are dropped)."""
        def match(p):
            return (kind is None or kind in p) and (channel is None or p.get("channel") == channel)

        def ready():
            while self.pushes and not match(self.pushes[0]):
                self.pushes.popleft()
            return bool(self.pushes)

        await self._read_until(ready, timeout, f"push kind={kind} channel={channel}")
        return self.pushes.popleft()

    async def pubs(self, n: int, channel: Optional[str] = None,
                   timeout: float = WAIT) -> List[Dict[str, Any]]:
        return [(await self.push(timeout, kind="pub", channel=channel))["pub"] for _ in range(n)]

    async def id_less_error(self, timeout: float = WAIT) -> Dict[str, Any]:
        await self._read_until(lambda: bool(self.errors), timeout, "an error without id")
        return self.errors.popleft()

    async def no_push(self, duration: float) -> None:
        """Assert no push arrives for `duration` seconds (for negative checks only)."""
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            assert not self.pushes, f"unexpected push: {self.pushes[0]}"
            try:
                await self._read(deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        assert not self.pushes, f"unexpected push: {self.pushes[0]}"

    async def pump(self, duration: float) -> None:
        """Keep reading (and answering pings) for `duration` seconds, buffering what arrives."""
        deadline = time.monotonic() + duration
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await self._read(remaining)
            except asyncio.TimeoutError:
                return

    async def closed(self, timeout: float = WAIT) -> int:
        """Wait for the server to close the connection (answering pings as configured, buffering
        whatever arrives). Returns the close code the server sent."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"connection still open after {timeout}s")
            try:
                await self._read(remaining)
            except asyncio.TimeoutError:
                raise AssertionError(f"connection still open after {timeout}s") from None
            except ConnectionClosed:
                return self.ws.close_code

    @property
    def close_code(self) -> Optional[int]:
        return self.ws.close_code

    # protocol shortcuts

    async def connect(self, token: Optional[str] = None, **params: Any) -> Dict[str, Any]:
        if token is not None:
            params["token"] = token
        return await self.result("connect", params)

    async def subscribe(self, channel: str, **params: Any) -> Dict[str, Any]:
        return await self.result("subscribe", {"channel": channel, **params})

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), WAIT)
        except Exception:
            pass

    async def __aenter__(self) -> "WSClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


# --------------------------------------------------------------------------------------------
# the hub process


class HubStartError(AssertionError):
    pass


class Hub:
    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path, secret: Optional[str],
                 api_key: Optional[str], workdir: Path):
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.secret = secret or SECRET
        self.api_key = api_key
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/connection/websocket"
        self.http = requests.Session()
        self.http.trust_env = False  # never go through a proxy from the environment
        self.stopped = False
        self.returncode: Optional[int] = None

    # HTTP / server API

    def post_raw(self, path: str, data: Any = None, headers: Optional[Dict[str, str]] = None,
                 with_key: bool = True, timeout: float = WAIT) -> requests.Response:
        hdrs = {"Content-Type": "application/json"}
        if with_key and self.api_key:
            hdrs["X-API-Key"] = self.api_key
        hdrs.update(headers or {})
        if data is not None and not isinstance(data, (str, bytes)):
            data = json.dumps(data)
        return self.http.post(self.url + path, data=data, headers=hdrs, timeout=timeout)

    def api(self, method: str, body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """POST /api/<method>; asserts HTTP 200 and returns the decoded JSON body."""
        r = self.post_raw(f"/api/{method}", body if body is not None else {})
        assert r.status_code == 200, f"/api/{method} -> HTTP {r.status_code}: {r.text}"
        return r.json()

    def api_result(self, method: str, body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """POST /api/<method>; asserts success and returns `result`."""
        out = self.api(method, body)
        assert "error" not in out, f"/api/{method} {body} failed: {out}"
        return out.get("result", {})

    def publish(self, channel: str, data: Any) -> Dict[str, Any]:
        return self.api_result("publish", {"channel": channel, "data": data})

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", WAIT)
        return self.http.get(self.url + path, **kwargs)

    # tokens

    def token(self, sub: str, **claims: Any) -> str:
        return conn_token(sub, secret=self.secret, **claims)

    def sub_token(self, sub: str, channel: str, **claims: Any) -> str:
        return sub_token(sub, channel, secret=self.secret, **claims)

    # WebSocket

    async def ws(self, path: str = "/connection/websocket", **kwargs: Any) -> WSClient:
        return await WSClient.open(f"ws://127.0.0.1:{self.port}{path}", **kwargs)

    async def client(self, user: Optional[str] = "alice", token: Optional[str] = None,
                     **connect_params: Any) -> WSClient:
        """An open WS connection that has sent `connect` successfully (user=None: no token)."""
        c = await self.ws()
        if token is None and user is not None:
            token = self.token(user)
        c.connect_reply = await c.connect(token, **connect_params)
        return c

    # process

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send `sig` and wait for exit. Kills with SIGKILL if it does not exit in time and
        raises then. Returns the exit code."""
        if self.stopped:
            return self.returncode
        self.stopped = True
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            self.returncode = self.proc.returncode
            raise AssertionError(f"hub did not exit within {timeout}s of signal {sig}; killed")
        return self.returncode


def _clean_env() -> Dict[str, str]:
    # OTEL_*: a tracing setup of the machine running the tests must not turn traces on.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "OTEL_")) and k != "CORS_ORIGINS"}
    # Never route the tests' localhost traffic through a proxy.
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    return env


def _artifact_name(node_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", node_name)[:150]


class HubFactory:
    def __init__(self, request, tmp_path_factory):
        self._request = request
        self._tmp = tmp_path_factory
        self.hubs: List[Hub] = []

    def _paths(self):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        n = next(_hub_counter)
        log_path = ARTIFACTS / f"{_artifact_name(self._request.node.name)}.{n}.log"
        workdir = self._tmp.mktemp(f"hub{n}")
        return log_path, workdir

    def command(self, args: Iterable[str] = (), env: Optional[Dict[str, str]] = None,
                config: Optional[Dict[str, Any]] = None, secret: Optional[str] = SECRET,
                api_key: Optional[str] = API_KEY, port: Optional[int] = None,
                port_flag: bool = True, base_flags: bool = True):
        """Build (argv, env, port, log_path, workdir) for one hub run."""
        log_path, workdir = self._paths()
        port = port or free_port()
        argv = [HUB_BINARY]
        if base_flags:
            if port_flag:
                argv += ["--port", str(port)]
            argv += ["--host", "127.0.0.1", "--log-level", "info",
                     "--data-dir", str(workdir / "data")]
        if config is not None:
            cfg_path = workdir / "hub.json"
            cfg_path.write_text(config if isinstance(config, str) else json.dumps(config))
            argv += ["--config", str(cfg_path)]
        argv += list(args)
        full_env = _clean_env()
        if secret is not None:
            full_env["HUB_TOKEN_HMAC_SECRET"] = secret
        if api_key is not None:
            full_env["HUB_API_KEY"] = api_key
        full_env.update(env or {})
        note_secrets([("secret", secret), ("api_key", api_key), *(env or {}).items(),
                      *(config.items() if isinstance(config, dict) else []),
                      *zip(argv, argv[1:])])  # `--some-token VALUE` pairs
        return argv, full_env, port, log_path, workdir

    def __call__(self, *args: str, env: Optional[Dict[str, str]] = None,
                 config: Optional[Dict[str, Any]] = None, secret: Optional[str] = SECRET,
                 api_key: Optional[str] = API_KEY, port: Optional[int] = None,
                 port_flag: bool = True, startup_timeout: float = 10.0) -> Hub:
        argv, full_env, port, log_path, workdir = self.command(
            args, env, config, secret, api_key, port, port_flag)
        with open(log_path, "wb") as log:
            log.write(("$ " + " ".join(argv) + "\n").encode())
            log.flush()
            proc = subprocess.Popen(argv, env=full_env, cwd=workdir, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log)
        hub = Hub(proc, port, log_path, secret, api_key, workdir)
        self.hubs.append(hub)
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise HubStartError(
                    f"hub exited with {proc.returncode} during startup:\n{hub.log()}")
            try:
                r = hub.http.get(hub.url + "/health", timeout=1)
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise HubStartError(f"hub not healthy within {startup_timeout}s:\n{hub.log()}")
            time.sleep(0.02)
        return hub

    def run(self, *args: str, timeout: float = 10.0, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run the hub to completion (for --help, bad configurations): returns CompletedProcess
        with stdout/stderr text. Kills it if it is still running after `timeout`."""
        argv, full_env, port, log_path, workdir = self.command(args, **kwargs)
        try:
            cp = subprocess.run(argv, env=full_env, cwd=workdir, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            log_path.write_text(f"$ {' '.join(argv)}\n(timed out)\n{e.stderr or ''}")
            raise AssertionError(f"hub still running after {timeout}s: {argv}") from None
        log_path.write_text(f"$ {' '.join(argv)}\nexit {cp.returncode}\n--- stdout\n{cp.stdout}"
                            f"\n--- stderr\n{cp.stderr}")
        return cp

    def teardown(self) -> List[str]:
        problems = []
        for hub in self.hubs:
            if hub.stopped:
                continue
            try:
                rc = hub.stop(signal.SIGTERM, timeout=10.0)
                if rc != 0:
                    problems.append(f"hub on port {hub.port} exited with {rc} after SIGTERM "
                                    f"(log: {hub.log_path})")
            except AssertionError as e:
                problems.append(f"hub on port {hub.port}: {e} (log: {hub.log_path})")
        return problems
