"""The `cache.jobs` RPC a dashboard starts from: the newest jobs exactly as the REST API shows them,
and the position of `cache:jobs` from which a subscriber misses no change (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import time

from hubtest import WAIT, arun, wait_for

KEY = "snapshot-cache-key"


def test_cache_jobs_rpc_matches_rest_and_positions_the_jobs_channel(hub_factory, tmp_path):
    root = tmp_path / "root"
    for folder in ("a", "b"):
        (root / folder).mkdir(parents=True)
        for i in range(3):
            (root / folder / f"f{i}.bin").write_bytes(b"x" * (1000 + i))
    hub = hub_factory(env={"API_GATEWAY_KEY": KEY, "CACHE_ROOT": str(root)})

    def create(folder):
        r = hub.http.post(hub.url + "/api/v1/cache/jobs", json={"directories": [folder]}, headers={"X-API-Key": KEY}, timeout=WAIT)
        assert r.status_code in (200, 201, 202), r.text
        return r.json()["jobId"]

    def rest(job_id):
        return hub.get(f"/api/v1/cache/jobs/{job_id}", headers={"X-API-Key": KEY}).json()["job"]

    first = create("a")
    wait_for(lambda: rest(first)["status"] == "completed", message="the first job")

    async def body():
        dash = await hub.client("wall-screen")
        snap = (await dash.result("rpc", {"method": "cache.jobs", "data": {"limit": 5}}))["data"]
        assert [j["id"] for j in snap["jobs"]] == [first]
        done = rest(first)
        assert snap["jobs"][0]["progress"] == done["progress"] and snap["jobs"][0]["status"] == "completed"
        # A job created between the snapshot and the subscribe is recovered from the position.
        second = create("b")
        sub = await dash.subscribe("cache:jobs", recover=True, offset=snap["offset"], epoch=snap["epoch"])
        assert sub.get("recovered") is True
        seen = [p["data"] for p in sub.get("publications", [])]
        while not any(e["jobId"] == second and e["event"] == "finished" for e in seen):
            seen += [p["data"] for p in await dash.pubs(1, channel="cache:jobs", timeout=WAIT * 2)]
        assert [e["event"] for e in seen if e["jobId"] == second][0] == "created"
        assert all(e["jobId"] == second for e in seen), "nothing of the first job is repeated"
        # One listing serves every call for a second, so the new job shows within about that.
        async def newest():
            return [j["id"] for j in (await dash.result("rpc", {"method": "cache.jobs", "data": {}}))["data"]["jobs"]]
        deadline = time.monotonic() + 3
        while (ids := await newest()) != [second, first] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert ids == [second, first], "newest first"
        one = (await dash.result("rpc", {"method": "cache.jobs", "data": {"limit": 1}}))["data"]["jobs"]
        assert [j["id"] for j in one] == [second]
        for bad in (0, 101, "5", -1):
            error = await dash.error("rpc", {"method": "cache.jobs", "data": {"limit": bad}})
            assert error["code"] == 107 and "limit" in error["message"], (bad, error)
        await dash.close()

    arun(body())


def test_cache_jobs_rpc_refuses_anonymous_clients(hub_factory):
    hub = hub_factory("--allow-anonymous")

    async def body():
        anonymous = await hub.client(user=None)
        error = await anonymous.error("rpc", {"method": "cache.jobs", "data": {}})
        assert error["code"] == 103
        await anonymous.close()

    arun(body())
