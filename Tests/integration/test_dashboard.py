"""The dashboard at `/` in a real browser (Debian's Chromium, driven by Playwright).

A real hub serves the page from the repository's dashboard/ folder; two gateway simulators, the
agent worker with the fake LLM (the one mock: no model runs here), the meetings worker and the
built-in cache worker make things move. The browser signs in like a person would and the test
watches the page change without ever reloading it. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

from hubtest import API_KEY, ARTIFACTS, REPO_ROOT, WAIT, HubFactory, conn_token, free_port, stop_processes, wait_for

CHROMIUM = os.environ.get("HUB_TEST_CHROMIUM", "/usr/bin/chromium")
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - requirements.txt installs it
    sync_playwright = None

pytestmark = pytest.mark.skipif(
    sync_playwright is None or not os.access(CHROMIUM, os.X_OK),
    reason=f"dashboard browser test needs Chromium at {CHROMIUM} (Debian package `chromium`, installed by "
           "scripts/test.sh where the distribution has it) and Playwright (Tests/integration/requirements.txt)")

ADMIN, PASSWORD = "admin", "admin-password-1"
GATEWAY_TOKEN, GATEWAY_ADMIN = "1234", "admin-secret-key"
CACHE_KEY = "dashboard-cache-key"
CLIENTS = REPO_ROOT / "clients" / "python" / "src" / "hub_clients"
SIMULATOR, JUNE_WORKER = CLIENTS / "gateway_sim.py", CLIENTS / "june_worker.py"
FAKE_LLM, MEETINGS_WORKER = CLIENTS / "fake_llm.py", CLIENTS / "meetings_worker.py"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


class Proxy:
    """A TCP proxy in front of the hub: the browser loads the page through it, so its WebSocket
    goes through it too, and `cut()` drops the connection the way a network blip does."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.refusing = False
        self.sockets: set = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=WAIT)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source, sink):
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.sockets.clear()

    def close(self):
        self.listener.close()
        self.cut()


class Board:
    """The hub and everything that makes the dashboard move."""

    def __init__(self, factory: HubFactory, tmp: Path):
        self.procs = []
        self.tmp = tmp
        self.cache_root = tmp / "cache-root"
        (self.cache_root / "00_Media" / "Farm").mkdir(parents=True)
        for i in range(12):
            (self.cache_root / "00_Media" / "Farm" / f"clip_{i:02d}.mov").write_bytes(os.urandom(2 << 20))
        self.hub = factory(
            "--dashboard-dir", str(REPO_ROOT / "dashboard"), "--dashboard-lib-dir", str(REPO_ROOT / "clients" / "js"),
            "--gateway-monitor-interval", "0.3", "--service-timeout", "10",
            "--cache-max-read-rate", "12", "--cache-concurrency", "2", "--cache-progress-time-threshold", "250",
            env={"HUB_ADMIN_USER": ADMIN, "HUB_ADMIN_PASSWORD": PASSWORD, "HUB_PASSWORD_ITERATIONS": "20000",
                 "HUB_GATEWAY_ALLOWED_TOKEN": GATEWAY_TOKEN, "HUB_GATEWAY_ADMIN_TOKEN": GATEWAY_ADMIN,
                 "API_GATEWAY_KEY": CACHE_KEY, "CACHE_ROOT": str(self.cache_root)},
            config={"rate_limits": {"teamcache": ["1000/minute"]}})
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        for gw in ("gw01", "gw02", "gw03"):
            self.spawn(SIMULATOR, "--hub", self.hub.url, "--token", GATEWAY_TOKEN, "--id", gw, "--type", "recorder", env=env)
        wait_for(lambda: len(self.statuses()) == 3, timeout=10, message="three registered gateways")
        llm_port = free_port()
        self.spawn(FAKE_LLM, "--port", str(llm_port), env=env)
        self.spawn(JUNE_WORKER, "--hub", self.hub.url, "--api-key", API_KEY,
                   "--llm-url", f"http://127.0.0.1:{llm_port}/v1/chat/completions", "agent", env=env)
        self.spawn(MEETINGS_WORKER, "--hub", self.hub.url, "--name", "dash-worker", "--poll", "1",
                   env={**env, "HUB_API_KEY": API_KEY})
        wait_for(lambda: self.hub.api("presence_stats", {"channel": "service:agent"}).get("result", {}).get("num_clients"),
                 timeout=15, message="the agent worker")

    def spawn(self, script: Path, *args: str, env=None):
        log = open(ARTIFACTS / f"dashboard.{script.stem}.{len(self.procs)}.log", "wb")
        self.procs.append(subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=log, stderr=log,
                                           stdin=subprocess.DEVNULL))

    def statuses(self) -> dict:
        r = self.hub.get("/admin/statuses", headers={"Authorization": f"Bearer {GATEWAY_ADMIN}"})
        return r.json() if r.status_code == 200 else {}

    def start_room(self, room: str) -> str:
        r = self.hub.http.post(self.hub.url + "/start", json={"room": room},
                               headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"}, timeout=WAIT * 2)
        assert r.status_code == 200, r.text
        return next(gw for gw, s in self.statuses().items() if s["room"] == room)

    def cache_job(self) -> str:
        r = self.hub.http.post(self.hub.url + "/api/v1/cache/jobs", json={"directories": ["00_Media/Farm"], "recursive": True},
                               headers={"X-API-Key": CACHE_KEY}, timeout=WAIT * 2)
        assert r.status_code in (200, 201, 202), r.text
        return r.json()["jobId"]

    def stop(self):
        stop_processes(self.procs)


@pytest.fixture(scope="module")
def board(request, tmp_path_factory):
    factory = HubFactory(request, tmp_path_factory)
    b = Board(factory, tmp_path_factory.mktemp("board"))
    yield b
    b.stop()
    assert not factory.teardown()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def open_board(browser, url: str, viewport=DESKTOP, user=ADMIN, password=PASSWORD):
    context = browser.new_context(viewport=viewport, device_scale_factor=1)
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(url + "/")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("#login-button")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected", timeout=10_000)
    expect(page.locator("#conn-text")).to_have_text("live")
    return page, problems


def shot(page, name: str, full_page: bool = False):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=full_page)


def test_the_page_is_served_with_its_scripts_and_nothing_outside_its_folders(board):
    hub = board.hub
    page = hub.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert hub.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert "export class HubClient" in hub.get("/ui/lib/hub-client.js").text
    # http.client sends the path as written (requests would normalise the dot segments away).
    assert b"Package" not in page.content
    for path in ("/ui/..%2F..%2FPackage.swift", "/ui/%2e%2e", "/ui/..", "/ui/.hidden.js", "/ui/lib/..%2Fpackage.json",
                 "/ui/lib/..%2F..%2Fjs%2Fhub-client.js", "/ui/nothing.js", "/ui/index.html.bak", "/ui/%5C..%5Cstyle.css"):
        conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=WAIT)
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        # libwebsockets resolves dot segments before routing (`/ui/%2e%2e` is `/`): such a path may
        # land on the page itself, never on a file outside the two folders.
        assert r.status == 404 or (r.status == 200 and body == page.content), (path, r.status, body[:100])
    assert hub.get("/health").status_code == 200, "the hub is still fine"


def test_gateways_jobs_and_chat_move_live_without_a_reload(board, browser):
    page, problems = open_board(browser, board.hub.url)
    rows = page.locator("#gw-rows tr")
    expect(rows).to_have_count(3)
    for gw in ("gw01", "gw02", "gw03"):
        expect(page.locator(f'tr[data-gw="{gw}"]')).to_have_attribute("data-state", "started")
    expect(page.locator("#gw-free")).to_have_text("3")
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    # A gateway started through REST shows as working, then its media duration and transcript grow.
    gw = board.start_room("math101")
    row = page.locator(f'tr[data-gw="{gw}"]')
    expect(row).to_have_attribute("data-state", "working", timeout=5_000)
    expect(row.locator("td").nth(1)).to_have_text("recorder")
    expect(row.locator("td").nth(3)).to_have_text("math101")
    expect(row.locator(".progress")).not_to_have_attribute("data-value", "0", timeout=5_000)
    expect(row.locator("td").nth(4)).to_have_text(re.compile(r"^00:00:\d\d$"))
    expect(page.locator("#gw-working")).to_have_text("1")

    # A cache job's bars reach 100% and its files scroll through the feed.
    job = board.cache_job()
    card = page.locator(f'.job[data-job="{job}"]')
    expect(card).to_be_visible(timeout=5_000)
    expect(card.locator(".tag")).to_have_text("running", timeout=5_000)
    expect(page.locator("#cache-rate")).not_to_have_text("0.0", timeout=5_000)
    shot(page, "desktop-working")
    expect(card).to_have_attribute("data-status", "completed", timeout=15_000)
    bars = card.locator(".progress")
    expect(bars.nth(0)).to_have_attribute("data-value", "100")
    expect(bars.nth(1)).to_have_attribute("data-value", "100")
    expect(card.locator(".job-row span").nth(2)).to_have_text("12 / 12")
    expect(page.locator('#cache-feed li[data-event="completed"]')).to_have_count(12)

    # A chat message gets the agent's reply.
    page.fill("#chat-input", "Hello from the wall screen")
    page.click("#chat-send")
    reply = page.locator(".msg.assistant:not(.pending)").last
    expect(reply).to_contain_text("Hello from the wall screen", timeout=10_000)

    assert navigations == [], "the page never reloaded"
    shot(page, "desktop")
    assert not problems, problems

    # The same board on a phone: one column, nothing wider than the screen.
    phone, phone_problems = open_board(browser, board.hub.url, viewport=PHONE)
    expect(phone.locator("#gw-rows tr")).to_have_count(3)
    expect(phone.locator(f'.job[data-job="{job}"]')).to_have_attribute("data-status", "completed")
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], "no sideways scrolling"
    shot(phone, "phone", full_page=True)
    assert not phone_problems, phone_problems
    page.context.close()
    phone.context.close()


def test_a_dropped_connection_recovers_the_changes_it_missed(board, browser):
    proxy = Proxy(board.hub.port)
    try:
        page, problems = open_board(browser, proxy.url)
        free = next(gw for gw, s in board.statuses().items() if s["status"] == "started")
        expect(page.locator(f'tr[data-gw="{free}"]')).to_have_attribute("data-state", "started")
        proxy.refusing = True
        proxy.cut()
        expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=5_000)
        shot(page, "reconnecting")
        started = board.start_room("history201")  # happens while the dashboard is away
        time.sleep(0.5)
        proxy.refusing = False
        expect(page.locator("#conn")).to_have_attribute("data-state", "recovered", timeout=15_000)
        expect(page.locator("#conn-text")).to_have_text(re.compile(r"recovered · [1-9]\d* missed"))
        row = page.locator(f'tr[data-gw="{started}"]')
        expect(row).to_have_attribute("data-state", "working")
        expect(row.locator("td").nth(3)).to_have_text("history201")
        shot(page, "recovered")
        # The cut itself shows as failed loads (the sockets and any fetch the page made while the
        # proxy refused); anything else — a script error, an unhandled rejection — is a defect.
        assert not [p for p in problems if "WebSocket" not in p and "net::ERR_CONNECTION_" not in p], problems
        page.context.close()
    finally:
        proxy.close()


def test_an_uploaded_recording_shows_progress_and_its_transcript_link(board, browser, tmp_path):
    wav = tmp_path / "standup.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "the budget meeting starts now"], check=True, capture_output=True, timeout=20)
    page, problems = open_board(browser, board.hub.url)
    page.set_input_files("#meet-file", str(wav))
    item = page.locator(".meeting").first
    expect(item.locator(".meeting-title")).to_have_text("standup.wav", timeout=10_000)
    expect(item).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(item.locator(".progress")).to_have_attribute("data-value", "100")
    link = item.locator('a:text("transcript.txt")')
    expect(link).to_be_visible(timeout=5_000)
    transcript = requests.get(board.hub.url + link.get_attribute("href"), timeout=WAIT)
    # What pocketsphinx hears in espeak's voice varies; the link serves the worker's words.
    assert transcript.status_code == 200 and transcript.headers["content-type"].startswith("text/plain")
    assert len(transcript.text.split()) >= 2, transcript.text
    shot(page, "meetings")
    assert not problems, problems
    page.context.close()


def test_an_upload_in_one_tab_appears_in_the_users_other_tab_and_nowhere_else(board, browser, tmp_path):
    wav = tmp_path / "retro.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "the retro starts now"], check=True, capture_output=True, timeout=20)
    admin_headers = {"Authorization": "Bearer " + requests.post(board.hub.url + "/auth/login", json={
        "username": ADMIN, "password": PASSWORD}, timeout=WAIT).json()["access_token"]}
    r = requests.post(board.hub.url + "/admin/users", headers=admin_headers,
                      json={"username": "vera", "password": "password-123"}, timeout=WAIT)
    assert r.status_code in (200, 409), r.text
    uploader, problems = open_board(browser, board.hub.url)
    watcher, watcher_problems = open_board(browser, board.hub.url)  # a second context: another tab of the same user
    stranger, stranger_problems = open_board(browser, board.hub.url, user="vera", password="password-123")
    expect(stranger.locator("#meet-empty")).to_be_visible(timeout=5_000)
    navigations = []
    watcher.on("framenavigated", lambda frame: navigations.append(frame.url))

    uploader.set_input_files("#meet-file", str(wav))
    mine = uploader.locator(".meeting", has_text="retro.wav")
    expect(mine).to_have_count(1, timeout=10_000)
    meeting = mine.get_attribute("data-meeting")
    seen = watcher.locator(f'.meeting[data-meeting="{meeting}"]')
    expect(seen.locator(".meeting-title")).to_have_text("retro.wav", timeout=10_000)
    expect(seen).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(seen.locator('a:text("transcript.txt")')).to_be_visible(timeout=5_000)
    assert navigations == [], "the other tab never reloaded"

    # The other user's board heard nothing of it, and may not subscribe to the owner's channel.
    expect(stranger.locator(".meeting")).to_have_count(0)
    refused = stranger.evaluate("""async () => {
        const { HubClient } = await import("/ui/lib/hub-client.js");
        const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/connection/websocket";
        const session = JSON.parse(localStorage.getItem("hub.session"));
        const client = new HubClient(url, { token: session.access });
        await client.connect();
        const outcome = await new Promise((resolve) => {
            client.subscribe("meetings:user#admin", { onSubscribed: () => resolve("subscribed"), onError: (e) => resolve("refused " + (e.code ?? e.message)) });
            setTimeout(() => resolve("no answer"), 4000);
        });
        client.disconnect();
        return outcome;
    }""")
    assert refused.startswith("refused"), refused
    for page, found in ((uploader, problems), (watcher, watcher_problems), (stranger, stranger_problems)):
        assert not found, found
        page.context.close()


def test_chat_history_survives_a_reload_and_the_conversation_continues(board, browser):
    page, problems = open_board(browser, board.hub.url)
    page.fill("#chat-input", "Remember the blue folder")
    page.click("#chat-send")
    expect(page.locator(".msg.assistant:not(.pending)").last).to_contain_text("Remember the blue folder", timeout=10_000)

    page.reload()
    expect(page.locator("#conn-text")).to_have_text("live", timeout=10_000)
    # Drawn from GET /conversations/mine, not typed again.
    expect(page.locator(".msg.user", has_text="Remember the blue folder")).to_have_count(1, timeout=5_000)
    expect(page.locator(".msg.assistant", has_text="You said: Remember the blue folder")).to_have_count(1)
    # The next message continues that conversation: the agent got the earlier turns.
    page.fill("#chat-input", "What did I say?")
    page.click("#chat-send")
    expect(page.locator(".msg.assistant:not(.pending)").last).to_contain_text(re.compile(r"What did I say\? \(turn \d+\)"),
                                                                               timeout=10_000)
    assert not problems, problems
    page.context.close()


def test_sign_in_errors_reload_and_sign_out(board, browser):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(board.hub.url + "/")
    page.fill("#username", ADMIN)
    page.fill("#password", "not-the-password")
    page.click("#login-button")
    expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")
    expect(page.locator("#board")).to_be_hidden()
    page.fill("#password", PASSWORD)
    page.click("#login-button")
    expect(page.locator("#conn-text")).to_have_text("live", timeout=10_000)
    expect(page.locator("#who")).to_have_text(ADMIN)
    # A wall screen survives a reload without signing in again.
    page.reload()
    expect(page.locator("#conn-text")).to_have_text("live", timeout=10_000)
    refresh = page.evaluate("JSON.parse(localStorage.getItem('hub.session')).refresh")
    # Signing out revokes the refresh token on the hub and forgets it in the browser.
    page.click("#signout")
    expect(page.locator("#login")).to_be_visible(timeout=5_000)
    assert page.evaluate("localStorage.getItem('hub.session')") is None
    r = requests.post(board.hub.url + "/auth/refresh", json={"refresh_token": refresh}, timeout=WAIT)
    assert r.status_code == 401, r.text
    context.close()


class WatchedClient(threading.Thread):
    """A protocol client subscribed to `channel` in its own event loop, recording its close code."""

    def __init__(self, hub, user: str, channel: str):
        super().__init__(daemon=True)
        self.hub, self.user, self.channel = hub, user, channel
        self.ready = threading.Event()
        self.client_id = None
        self.close_code = None
        self.start()
        assert self.ready.wait(WAIT), "client connected and subscribed"

    def run(self):
        import asyncio

        async def body():
            client = await self.hub.client(self.user)
            await client.subscribe(self.channel)
            self.client_id = client.connect_reply["client"]
            self.ready.set()
            self.close_code = await client.closed(timeout=60)

        asyncio.run(body())


def test_admin_inspects_a_live_channel_and_disconnects_a_connection(board, browser):
    page, problems = open_board(browser, board.hub.url)
    inspector = page.locator("#inspector")
    expect(inspector).to_be_visible()
    page.fill("#insp-pattern", "inspected-*")
    page.dispatch_event("#insp-pattern", "change")
    first = WatchedClient(board.hub, "ivy", "inspected-room")
    row = page.locator('#insp-channels tr[data-channel="inspected-room"]')
    expect(row.locator("td").nth(1)).to_have_text("1", timeout=5_000)
    second = WatchedClient(board.hub, "jon", "inspected-room")
    expect(row.locator("td").nth(1)).to_have_text("2", timeout=5_000)
    board.hub.publish("inspected-room", {"note": "hello inspector"})
    row.click()
    expect(page.locator("#insp-channel")).to_have_text("inspected-room")
    expect(page.locator("#insp-presence")).to_contain_text(f"ivy · {first.client_id}", timeout=5_000)
    expect(page.locator("#insp-presence")).to_contain_text("jon")
    expect(page.locator("#insp-history")).to_contain_text('"note":"hello inspector"', timeout=5_000)

    connection = page.locator(f'#insp-connections tr[data-client="{first.client_id}"]')
    expect(connection.locator("td").nth(0)).to_have_text("ivy")
    connection.locator("button.disconnect").click()
    first.join(WAIT)
    assert first.close_code == 3503, "the client saw the disconnect"
    expect(row.locator("td").nth(1)).to_have_text("1", timeout=5_000)
    expect(connection).to_have_count(0, timeout=5_000)
    assert second.close_code is None, "the other user's connection stays"
    assert not problems, problems
    page.context.close()


def test_a_non_admin_sees_no_inspector_and_its_routes_refuse(board, browser):
    admin = requests.post(board.hub.url + "/auth/login", json={"username": ADMIN, "password": PASSWORD}, timeout=WAIT).json()
    r = requests.post(board.hub.url + "/admin/users", headers={"Authorization": f"Bearer {admin['access_token']}"},
                      json={"username": "plainuser", "password": "password-123", "role": "user"}, timeout=WAIT)
    assert r.status_code in (200, 409), r.text
    user = requests.post(board.hub.url + "/auth/login", json={"username": "plainuser", "password": "password-123"}, timeout=WAIT).json()
    for method in ("channels", "connections", "disconnect"):
        r = requests.post(f"{board.hub.url}/admin/inspector/{method}", json={"user": "ivy"},
                          headers={"Authorization": f"Bearer {user['access_token']}"}, timeout=WAIT)
        assert r.status_code == 403 and r.json() == {"detail": "Insufficient permissions"}
    context = browser.new_context()
    page = context.new_page()
    page.goto(board.hub.url + "/")
    page.fill("#username", "plainuser")
    page.fill("#password", "password-123")
    page.click("#login-button")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected", timeout=10_000)
    expect(page.locator("#inspector")).to_be_hidden()
    context.close()


def test_a_browser_eventsource_subscribes_with_no_sdk_and_resumes_after_a_drop(board, browser):
    """uni_sse from a plain `EventSource`: the token's channels are subscribed, publications
    arrive as events, and when the stream drops the browser's own reconnect (with
    `Last-Event-ID`) brings what was published meanwhile."""
    hub = board.hub
    token = conn_token("eve", secret=hub.secret, channels=["eventsource-demo"])
    url = "/connection/uni_sse?cf_connect=" + urllib.parse.quote(json.dumps({"token": token}))
    context = browser.new_context()
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(hub.url + "/")
    # (Polled from here: the page's CSP forbids the eval Playwright's wait_for_function needs.)
    page.evaluate("""(url) => {
        window.got = [];
        window.opens = 0;
        const source = new EventSource(url);
        source.onopen = () => { window.opens += 1; };
        source.onmessage = (e) => window.got.push({id: e.lastEventId, message: JSON.parse(e.data)});
    }""", url)
    wait_for(lambda: page.evaluate("window.got.some(e => e.message.connect)"), timeout=10, message="window.got.some(e => e.message.connect)")
    hub.publish("eventsource-demo", {"n": 1})
    wait_for(lambda: page.evaluate("window.got.some(e => e.message.pub && e.message.pub.data.n === 1)"), timeout=10, message="window.got.some(e => e.message.pub && e.")
    first = next(e for e in page.evaluate("window.got") if "pub" in e["message"])
    assert first["id"].startswith("1:") and first["id"].endswith(":eventsource-demo")
    # The hub drops the stream; what is published before the browser is back must still arrive.
    hub.api_result("disconnect", {"user": "eve"})
    hub.publish("eventsource-demo", {"n": 2})
    wait_for(lambda: page.evaluate("window.opens >= 2"), timeout=15, message="window.opens >= 2")
    wait_for(lambda: page.evaluate("window.got.some(e => e.message.pub && e.message.pub.data.n === 2)"), timeout=10, message="window.got.some(e => e.message.pub && e.")
    hub.publish("eventsource-demo", {"n": 3})
    wait_for(lambda: page.evaluate("window.got.some(e => e.message.pub && e.message.pub.data.n === 3)"), timeout=10, message="window.got.some(e => e.message.pub && e.")
    numbers = [e["message"]["pub"]["data"]["n"] for e in page.evaluate("window.got") if "pub" in e["message"]]
    assert numbers == [1, 2, 3], "each publication once, in order, across the reconnect"
    assert not problems, problems
    context.close()
