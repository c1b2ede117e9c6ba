"""Process lifecycle: startup, configuration precedence, bad configurations, shutdown."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import pytest

from hubtest import API_KEY, SECRET, WAIT, arun, conn_token, free_port


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------------------------
# shutdown


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_clients_with_1001_and_exits_0(hub, sig):
    async def main():
        c1 = await hub.client("alice")
        c2 = await hub.client("bob")
        await c1.subscribe("bye")
        raw = await hub.ws()  # not even connected yet
        try:
            t0 = time.monotonic()
            hub.proc.send_signal(sig)
            codes = await asyncio.gather(c1.closed(WAIT), c2.closed(WAIT), raw.closed(WAIT))
            assert codes == [1001, 1001, 1001]
            rc = await asyncio.to_thread(hub.proc.wait, 5)
            assert rc == 0
            assert time.monotonic() - t0 < 5
            hub.stopped, hub.returncode = True, rc
        finally:
            for c in (c1, c2, raw):
                await c.close()
    arun(main())
    assert not _port_open(hub.port)
    log = hub.log()
    assert "hub serving http://" in log


def test_queued_publication_is_delivered_before_going_away(hub):
    async def main():
        async with await hub.client("alice") as c:
            await c.subscribe("last-words")
            hub.publish("last-words", "final")
            hub.proc.send_signal(signal.SIGTERM)
            code = await c.closed(WAIT)
            assert code == 1001
            pubs = [p for p in c.pushes if "pub" in p]
            assert [p["pub"]["data"] for p in pubs] == ["final"]
        assert await asyncio.to_thread(hub.proc.wait, 5) == 0
        hub.stopped = True
    arun(main())


def test_idle_hub_exits_0_on_sigterm_quickly(hub):
    t0 = time.monotonic()
    assert hub.stop(signal.SIGTERM, timeout=5) == 0
    assert time.monotonic() - t0 < 5


def test_startup_notice(hub):
    log = hub.log()
    line = next(l for l in log.splitlines() if "hub serving http://" in l)
    assert f"http://127.0.0.1:{hub.port}" in line
    # secrets are never logged
    assert SECRET not in log and API_KEY not in log


# --------------------------------------------------------------------------------------------
# command line


def test_help_lists_options(hub_factory):
    cp = hub_factory.run("--help", base_flags=False)
    assert cp.returncode == 0
    out = cp.stdout + cp.stderr
    for opt in ("--port", "--host", "--config", "--log-level", "--token-hmac-secret",
                "--api-key", "--allow-anonymous", "--ping-interval", "--pong-timeout",
                "--connect-timeout", "--max-message-size", "--max-body-size",
                "--client-queue-max-bytes", "--client-queue-max-messages",
                "--max-subscriptions", "--threads"):
        assert opt in out, f"{opt} missing from --help"


def test_version_flag(hub_factory):
    cp = hub_factory.run("--version", base_flags=False)
    assert cp.returncode == 0
    assert (cp.stdout + cp.stderr).strip()


def test_unknown_flag_fails(hub_factory):
    cp = hub_factory.run("--no-such-flag")
    assert cp.returncode != 0
    assert "no-such-flag" in cp.stderr + cp.stdout


# --------------------------------------------------------------------------------------------
# bad configurations


@pytest.mark.parametrize("config, needle", [
    ({"no_such_option": 1}, "no_such_option"),
    ({"namespaces": [{"name": "chat", "bogus_ns_option": True}]}, "bogus_ns_option"),
    ({"channel": {"weird_channel_option": 1}}, "weird_channel_option"),
    ({"ping_interval": "soon"}, "ping_interval"),
    ('{"port": 80', None),
], ids=["unknown-key", "unknown-namespace-key", "unknown-channel-key", "wrong-type",
        "invalid-json"])
def test_bad_config_file_exits_nonzero_with_message(hub_factory, config, needle):
    cp = hub_factory.run(config=config)
    assert cp.returncode == 64  # EX_USAGE, as documented
    err = cp.stderr + cp.stdout
    assert err.strip(), "no message at all"
    if needle:
        assert needle in err, err
    assert "hub serving" not in err


def test_missing_config_file_exits_nonzero(hub_factory, tmp_path):
    cp = hub_factory.run("--config", str(tmp_path / "does-not-exist.json"))
    assert cp.returncode != 0
    assert "does-not-exist.json" in cp.stderr + cp.stdout


@pytest.mark.parametrize("args, needle", [
    (("--max-message-size", "100"), "max_message_size"),
    (("--max-body-size", "10"), "max_body_size"),
    (("--max-message-size", "65536", "--client-queue-max-bytes", "2048"),
     "client_queue_max_bytes"),
], ids=["message-size-below-1024", "body-size-below-1024", "queue-smaller-than-message"])
def test_impossible_limits_exit_nonzero(hub_factory, args, needle):
    cp = hub_factory.run(*args)
    assert cp.returncode == 64  # EX_USAGE, as documented
    assert needle in cp.stderr + cp.stdout


# --------------------------------------------------------------------------------------------
# precedence: flags > environment > file > defaults


def test_flag_port_overrides_env_port(hub_factory):
    env_port, flag_port = free_port(), free_port()
    hub = hub_factory(port=flag_port, env={"HUB_PORT": str(env_port)})
    assert hub.get("/health").status_code == 200
    assert not _port_open(env_port)


def test_env_port_overrides_file_port(hub_factory):
    file_port, env_port = free_port(), free_port()
    hub = hub_factory(port=env_port, port_flag=False, env={"HUB_PORT": str(env_port)},
                      config={"port": file_port})
    assert hub.get("/health").status_code == 200
    assert not _port_open(file_port)


def test_config_file_settings_apply(hub_factory):
    port = free_port()
    hub = hub_factory(port=port, port_flag=False, secret=None, api_key=None,
                      config={"port": port, "token_hmac_secret": "file-secret",
                              "api_key": "file-key", "max_subscriptions": 1,
                              "namespaces": [{"name": "chat", "presence": True}]})
    r = hub.post_raw("/api/info", {}, headers={"X-API-Key": "file-key"}, with_key=False)
    assert r.status_code == 200

    async def main():
        async with await hub.ws() as c:
            await c.connect(conn_token("alice", secret="file-secret"))
            await c.subscribe("chat:x")
            err = await c.error("subscribe", {"channel": "chat:y"})
            assert err["code"] == 106
    arun(main())


def test_env_overrides_file_and_flag_overrides_env_for_api_key(hub_factory):
    hub = hub_factory(api_key=None, env={"HUB_API_KEY": "env-key"},
                      config={"api_key": "file-key"})

    def status(h, key):
        return h.post_raw("/api/info", {}, headers={"X-API-Key": key}, with_key=False).status_code

    assert status(hub, "env-key") == 200
    assert status(hub, "file-key") == 401

    hub2 = hub_factory("--api-key", "flag-key", api_key=None, env={"HUB_API_KEY": "env-key"},
                       config={"api_key": "file-key"})
    assert status(hub2, "flag-key") == 200
    assert status(hub2, "env-key") == 401


def test_boolean_env_allow_anonymous(hub_factory):
    hub = hub_factory(env={"HUB_ALLOW_ANONYMOUS": "true"})

    async def main():
        async with await hub.ws() as c:
            assert (await c.connect())["client"]
    arun(main())

    hub_off = hub_factory(env={"HUB_ALLOW_ANONYMOUS": "off"})

    async def main_off():
        async with await hub_off.ws() as c:
            assert (await c.error("connect", {}))["code"] == 101
    arun(main_off())


def test_env_secret_overrides_file_secret(hub_factory):
    hub = hub_factory(secret="env-secret", config={"token_hmac_secret": "file-secret"})

    async def main():
        async with await hub.ws() as c:
            assert (await c.connect(conn_token("alice", secret="env-secret")))["client"]
        async with await hub.ws() as c:
            await c.send("connect", {"token": conn_token("alice", secret="file-secret")})
            assert await c.closed() == 3500
    arun(main())


def test_default_threads_follow_the_cpu_affinity(hub_factory):
    """Pinned to one core (as taskset or a container's cpuset does), the hub starts one service
    thread, not one per core of the machine; unpinned, one per core it may use."""
    import os
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})  # the hub inherits the mask at spawn
        pinned = hub_factory()
    finally:
        os.sched_setaffinity(0, allowed)
    free = hub_factory()
    assert "threads=1 " in wait_for_notice(pinned)
    assert f"threads={len(allowed)} " in wait_for_notice(free)


def wait_for_notice(hub) -> str:
    from hubtest import wait_for
    return wait_for(lambda: next((l for l in hub.log().splitlines() if "hub serving" in l), None),
                    message="the startup notice")


def test_sigterm_right_after_startup_is_not_lost(tmp_path):
    """A supervisor (or a test) that stops the hub the moment /health answers gets a clean exit:
    the signal handlers are armed before the hub listens, so a SIGTERM during the rest of startup
    is neither ignored (a hang) nor fatal (exit by signal)."""
    import subprocess
    import urllib.request

    from hubtest import HUB_BINARY, _clean_env

    for attempt in range(10):
        port = free_port()
        env = {**_clean_env(), "HUB_TOKEN_HMAC_SECRET": SECRET}
        proc = subprocess.Popen([HUB_BINARY, "--port", str(port), "--host", "127.0.0.1", "--data-dir", str(tmp_path / str(attempt))],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the hub did not come up"
                time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"attempt {attempt}: SIGTERM right after startup was lost (still running after 10 s)")
        assert code == 0, f"attempt {attempt}: exit code {code}"
