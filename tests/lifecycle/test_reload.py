"""Reloads: validated whole before anything changes; swaps take effect for new requests."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.app import create_app
from gateway.auth import hash_key
from gateway.config import build_config
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
