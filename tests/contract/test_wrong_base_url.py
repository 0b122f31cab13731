"""A provider pointed at the wrong base path: an operator's mistake, never the client's.

Each sandbox answers a route it does not serve with a 404 that is not its
documented not-found answer (Teli's ``{"error": "Not found"}``, NestJS's
``Cannot POST /...`` for Vambe, aiohttp's plain text for Aelyst). The gateway
must answer ``upstream_rejected`` (502), not ``contact_not_found`` or
``assignee_not_found``, and must not cache the miss as a negative look-up.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import build_config
from tests.conftest import KEYS, Sandbox, auth, gateway_config_dict
from tests.contract.cases import CASES


def _wrong_base_url(ptype: str, sandbox: Sandbox) -> str:
    root = str(sandbox.server.make_url("")).rstrip("/")
    # The mistakes a configuration is likely to make: Teli's documented paths
    # already start with /v1, Vambe's with /api/public, and Aelyst's base is /v1.
    return {"teli": root + "/v1", "vambe": root + "/api/public", "aelyst": root}[ptype]


async def _gateway(aiohttp_client: Any, sbx: dict[str, Sandbox], ptype: str) -> Any:
    raw = gateway_config_dict(sbx)
    raw["providers"][f"{ptype}-sb"]["base_url"] = _wrong_base_url(ptype, sbx[ptype])
    return await aiohttp_client(create_app(build_config(raw, env={})))


async def _expect_rejected(resp: Any, ptype: str) -> None:
    text = await resp.text()
    body = await resp.json(content_type=None)
    assert (resp.status, body["code"], body["provider"]) == (502, "upstream_rejected", ptype), body
    assert resp.content_type == "application/problem+json"
    for marker in ("Cannot", "Not found", "powered_by", "statusCode", KEYS[ptype]):
        assert marker not in text, f"raw upstream text {marker!r} leaked: {text}"


@pytest.mark.parametrize("ptype", list(CASES))
async def test_wrong_base_path_assign_is_upstream_rejected(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], ptype: str) -> None:
    case = CASES[ptype]
    gw = await _gateway(aiohttp_client, sandboxes_up, ptype)
    for assignee in ({"id": case.assignee_id}, {"email": case.assignee_email}):
        resp = await gw.post("/v1/assign", headers=auth(), json={
            "tenant": case.tenant, "contact": case.direct_contact, "assignee": assignee})
        await _expect_rejected(resp, ptype)
    # Every answer was the sandbox's unknown-route 404: nothing reached a real route.
    statuses = {e["status"] for e in await sandboxes_up[ptype].journal()}
    assert statuses == {404}


@pytest.mark.parametrize("ptype", [t for t, c in CASES.items() if c.unassign])
async def test_wrong_base_path_unassign_is_upstream_rejected(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], ptype: str) -> None:
    case = CASES[ptype]
    gw = await _gateway(aiohttp_client, sandboxes_up, ptype)
    resp = await gw.post("/v1/unassign", headers=auth(), json={
        "tenant": case.tenant, "contact": case.direct_contact})
    await _expect_rejected(resp, ptype)


async def test_wrong_base_path_vambe_search_is_not_cached_as_not_found(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    case = CASES["vambe"]
    gw = await _gateway(aiohttp_client, sandboxes_up, "vambe")
    body = {"tenant": case.tenant, "contact": case.contact, "assignee": {"id": case.assignee_id}}
    for _ in range(2):
        await _expect_rejected(await gw.post("/v1/assign", headers=auth(), json=body), "vambe")
    # No negative entry: the second request searched again.
    searches = [e for e in await sandboxes_up["vambe"].journal() if e["method"] == "GET"]
    assert [e["status"] for e in searches] == [404, 404]
