"""Reloads: validated whole before anything changes; swaps take effect for new requests."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from gateway.app import create_app
from gateway.auth import hash_key
from gateway.config import build_config
from gateway.lifecycle import LIFECYCLE
from tests.conftest import CLIENT_KEY, Sandbox, auth, gateway_config_dict
from tests.procs import GatewayProcess

ADMIN_KEY = "admin-client-key"
BODY = {"tenant": "t-swap", "contact": {"phone": "+15551234567"},
        "assignee": {"email": "jane@acme.com"}}


def _config(sbx: dict[str, Sandbox], provider: str) -> dict[str, Any]:
    raw = gateway_config_dict(sbx)
    raw["tenants"]["t-swap"] = {"provider": provider, "campaign_id": "camp_abc123",
                                "organization_id": "org_456"}
    raw["clients"][0]["tenants"].append("t-swap")
    raw["clients"].append({"name": "ops", "key_sha256": hash_key(ADMIN_KEY),
                           "tenants": ["t-teli"], "admin": True})
    for p in raw["providers"].values():
        p["rate_limit"] = {"rate": 10_000, "burst": 10_000}
    return raw


async def _swap_target(sbx: dict[str, Sandbox]) -> None:
    # The Aelyst sandbox's own 5/s/path limit is not what these tests are about.
    async with sbx["aelyst"].session.post(
            str(sbx["aelyst"].server.make_url("/_sandbox/ratelimit")),
            json={"enabled": False}) as r:
        assert r.status == 200


async def test_admin_reload_swaps_provider(aiohttp_client: Any, sandboxes_up: dict[str, Sandbox],
                                           tmp_path: Path) -> None:
    await _swap_target(sandboxes_up)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(_config(sandboxes_up, "aelyst-sb")))
    cfg = build_config(_config(sandboxes_up, "aelyst-sb"), env={})
    gw = await aiohttp_client(create_app(cfg, config_path=str(path)))
    assert (await (await gw.post("/v1/assign", json=BODY, headers=auth())).json())[
        "provider"] == "aelyst"

    path.write_text(yaml.safe_dump(_config(sandboxes_up, "teli-sb")))
    resp = await gw.post("/admin/reload", headers=auth(CLIENT_KEY))
    assert resp.status == 403
    resp = await gw.post("/admin/reload", headers=auth(ADMIN_KEY))
    assert resp.status == 200, await resp.text()
    body = await (await gw.post("/v1/assign", json=BODY, headers=auth())).json()
    assert body["provider"] == "teli"
    tenants = await (await gw.get("/v1/tenants", headers=auth())).json()
    assert {t["name"]: t["provider"] for t in tenants["tenants"]}["t-swap"] == "teli"

    path.write_text("tenants: {t-swap: {provider: nowhere}}\n")
    resp = await gw.post("/admin/reload", headers=auth(ADMIN_KEY))
    err = await resp.json()
    assert resp.status == 400 and err["code"] == "invalid_request"
    assert any("nowhere" in e["message"] for e in err["errors"])
    assert (await (await gw.post("/v1/assign", json=BODY, headers=auth())).json())[
        "provider"] == "teli"
    metrics = await (await gw.get("/metrics")).text()
    assert 'gateway_config_reloads_total{result="success"} 1.0' in metrics
    assert 'gateway_config_reloads_total{result="failure"} 1.0' in metrics


async def test_restart_only_keys_are_refused(aiohttp_client: Any,
                                             sandboxes_up: dict[str, Sandbox],
                                             tmp_path: Path) -> None:
    raw = _config(sandboxes_up, "teli-sb")
    path = tmp_path / "gw.yaml"
    gw = await aiohttp_client(create_app(build_config(raw, env={}), config_path=str(path)))
    path.write_text(yaml.safe_dump({**raw, "listen": {"port": 9999}}))
    err = await (await gw.post("/admin/reload", headers=auth(ADMIN_KEY))).json()
    assert err["errors"] == [{"field": "config", "message": "listen: changing it needs a restart"}]


async def _load(url: str, stop: asyncio.Event, results: list[tuple[float, int, str]]) -> None:
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        for _ in range(100_000):
            if stop.is_set():
                return
            async with s.post(url + "/v1/assign", json=BODY, headers=auth()) as r:
                body = await r.json(content_type=None)
                results.append((loop.time(), r.status, body.get("provider", body.get("code"))))


async def test_sighup_swap_under_load(sandboxes_up: dict[str, Sandbox], tmp_path: Path) -> None:
    await _swap_target(sandboxes_up)
    gw = GatewayProcess(_config(sandboxes_up, "aelyst-sb"), tmp_path)
    await gw.start()
    loop = asyncio.get_running_loop()
    stop, results = asyncio.Event(), []
    workers = [asyncio.create_task(_load(gw.url, stop, results)) for _ in range(8)]
    try:
        await asyncio.sleep(1.0)
        gw.write_config({**_config(sandboxes_up, "teli-sb"), "listen": gw.config["listen"]})
        gw.signal(signal.SIGHUP)
        reloaded_at = loop.time()
        await asyncio.sleep(1.5)
        gw.write_config("tenants: [this is: not valid\n")
        gw.signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await gw.stop()
    statuses = {s for _, s, _ in results}
    assert statuses == {200}, [r for r in results if r[1] != 200][:5]
    late = [p for t, _, p in results if t > reloaded_at + 0.5]
    assert late and set(late) == {"teli"}, set(late)
    early = [p for t, _, p in results if t < reloaded_at]
    assert set(early) == {"aelyst"}
    assert sum(1 for line in gw.output if "refused" in line) == 1
    print(f"swap under load: {len(results)} requests, 0 failed; "
          f"{len(late)} after the swap all on teli")


def _slow_config(port: int, timeout_s: float, extra_client: bool) -> dict[str, Any]:
    clients: list[dict[str, Any]] = [{"name": "app", "key_sha256": hash_key(CLIENT_KEY),
                                      "tenants": ["t"]}]
    if extra_client:
        clients.append({"name": "x", "key_sha256": hash_key("another-key"), "tenants": ["t"]})
    return {"clients": clients, "tenants": {"t": {"provider": "a"}},
            "providers": {"a": {"type": "aelyst", "api_key": "k", "timeout_s": timeout_s,
                                "base_url": f"http://127.0.0.1:{port}/v1"}}}


async def test_a_client_carried_over_then_replaced_stays_open_for_requests_in_flight(
        aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> None:
    """Reload 1 carries provider a over unchanged; reload 2 replaces it. A request that
    started before both still uses the first client: it must not be closed under it."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def assignee(request: web.Request) -> web.Response:
        arrived.set()
        async with asyncio.timeout(10):
            await release.wait()
        return web.json_response({"contactId": 1})

    up = web.Application()
    up.router.add_post("/v1/contact/{id}/conversation/assignee", assignee)
    upstream = await aiohttp_server(up)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(_slow_config(upstream.port, 5, False)))
    gw = await aiohttp_client(create_app(build_config(_slow_config(upstream.port, 5, False),
                                                      env={}), config_path=str(path)))
    body = {"contact": {"phone": "+15551234567"}, "assignee": {"id": "17"}}
    in_flight = asyncio.create_task(gw.post("/v1/assign", json=body, headers=auth()))
    async with asyncio.timeout(10):
        await arrived.wait()
    lifecycle = gw.app[LIFECYCLE]
    path.write_text(yaml.safe_dump(_slow_config(upstream.port, 5, True)))  # a kept
    assert await lifecycle.reload("test") == []
    path.write_text(yaml.safe_dump(_slow_config(upstream.port, 6, True)))  # a replaced
    assert await lifecycle.reload("test") == []
    await asyncio.sleep(0)  # the retirement tasks run: the second runtime is idle
    release.set()
    resp = await in_flight
    assert resp.status == 200, await resp.text()
    resp = await gw.post("/v1/assign", json=body, headers=auth())
    assert resp.status == 200, await resp.text()


async def test_a_reload_during_a_drain_keeps_the_replica_unready(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(_config(sandboxes_up, "aelyst-sb")))
    gw = await aiohttp_client(create_app(build_config(_config(sandboxes_up, "aelyst-sb"),
                                                      env={}), config_path=str(path)))
    assert (await gw.get("/readyz")).status == 200
    lifecycle = gw.app[LIFECYCLE]
    lifecycle.begin_drain()
    path.write_text(yaml.safe_dump(_config(sandboxes_up, "teli-sb")))
    assert await lifecycle.reload("test") == []
    assert (await gw.get("/readyz")).status == 503
    assert (await gw.post("/v1/assign", json=BODY, headers=auth())).status == 503
