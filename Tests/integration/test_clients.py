"""The Python package in clients/python as a user installs it (scripts/test.sh runs
`pip install ./clients/python[stt]` into the test environment): its console scripts start, the
gateway simulator registers through its entry point, and the helpers talk to a real hub."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hubtest import WAIT, arun, wait_for

try:
    import hub_clients
    from hub_clients import HubAPI, HubAPIError, connection_token
except ImportError:  # pragma: no cover
    hub_clients = None

pytestmark = pytest.mark.skipif(hub_clients is None, reason="clients/python is not installed here: "
                                "`pip install ./clients/python` (scripts/test.sh does)")

SCRIPTS = ["hub-gateway-sim", "hub-watch-gateways", "hub-june-worker", "hub-fake-llm", "hub-meetings-worker"]


def script(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else shutil.which(name)


@pytest.mark.parametrize("name", [s for s in SCRIPTS if s != "hub-watch-gateways"])
def test_each_entry_point_is_installed_and_starts(name):
    path = script(name)
    assert path, f"{name} is not on PATH"
    out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=WAIT * 2)
    assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr


def test_gateway_simulator_entry_point_registers_and_the_watcher_sees_it(hub_factory):
    hub = hub_factory(env={"HUB_GATEWAY_ALLOWED_TOKEN": "1234", "HUB_GATEWAY_ADMIN_TOKEN": "admin-key"})
    sim = subprocess.Popen([script("hub-gateway-sim"), "--hub", hub.url, "--token", "1234", "--id", "gw-pkg"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(sim.stdout.readline())
        assert info["ids"] == ["gw-pkg"]
        statuses = lambda: hub.get("/admin/statuses", headers={"Authorization": "Bearer admin-key"}).json()
        wait_for(lambda: "gw-pkg" in statuses(), message="the simulator's registration")
        # The watcher prints the current state first, then each change.
        env = {"HUB_TOKEN_HMAC_SECRET": hub.secret, "PATH": "/usr/bin:/bin"}
        watcher = subprocess.Popen([script("hub-watch-gateways"), hub.ws_url], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        try:
            first = watcher.stdout.readline().split()
            assert first[:3] == ["now", "gw-pkg", "started"], first
        finally:
            watcher.terminate()
            watcher.wait(WAIT)
    finally:
        sim.terminate()
        sim.wait(WAIT)
    wait_for(lambda: "gw-pkg" not in statuses(), message="the unregistration on SIGTERM")


def test_helpers_publish_read_history_and_sign_tokens(hub):
    api = HubAPI(hub.url, api_key=hub.api_key)
    token = connection_token("alice", hub.secret)

    async def body():
        client = await hub.client(token=token)
        assert client.connect_reply["client"]
        await client.subscribe("news")
        result = api.publish("news", {"text": "from python"})
        assert result["offset"] >= 1
        pub = (await client.pubs(1, channel="news"))[0]
        assert pub["data"] == {"text": "from python"} and pub["offset"] == result["offset"]
        assert api.presence_stats("news") == {"num_clients": 1, "num_users": 1}
        assert [p["user"] for p in api.presence("news").values()] == ["alice"]
        await client.close()

    arun(body())
    history = api.history("news", limit=5)
    assert [p["data"] for p in history["publications"]] == [{"text": "from python"}]
    assert len(api.info()["nodes"]) == 1
    with pytest.raises(HubAPIError) as refused:
        HubAPI(hub.url, api_key="wrong").publish("news", {})
    assert refused.value.code == 401
    with pytest.raises(HubAPIError) as unknown:
        api.publish("nowhere:x", {})
    assert unknown.value.code == 102
