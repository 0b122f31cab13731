"""Every client key against every tenant and operation.

Six clients (one per tenant, one for two tenants, one admin that serves one
tenant, one for all three) x three tenants (and an unknown one) x four ways to
write (assign, unassign, assign answered asynchronously, assign under an
Idempotency-Key). A forbidden combination gets 403 ``forbidden`` and causes no
upstream call at all, now or later; an allowed one is never 403. Operations are
visible to the client that made them only.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import Sandbox
from tests.hardening.conftest import clear_journal
from tests.hardening.support import (
    CLIENT_KEYS,
    CLIENT_TENANTS,
    PROVIDERS,
    TENANT,
    auth,
    conforms,
    count,
)

DIRECT: dict[str, dict[str, Any]] = {
    "t-teli": {"contact": {"phone": "+15551234567"}, "assignee": {"id": "user_xyz789"}},
    "t-vambe": {"contact": {"id": "22222222-2222-4222-8222-000000000001"},
                "assignee": {"id": "11111111-1111-4111-8111-000000000001"}},
    "t-aelyst": {"contact": {"id": "3"}, "assignee": {"id": "17"}},
}
WAYS = ("assign", "unassign", "assign-async", "assign-idempotent")


def _request(way: str, tenant: str, client: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    body = {"tenant": tenant, **DIRECT.get(tenant, DIRECT["t-aelyst"])}
    headers = auth(client)
    if way == "unassign":
        body.pop("assignee")
    if way == "assign-async":
        headers["Prefer"] = "respond-async"
    if way == "assign-idempotent":
        headers["Idempotency-Key"] = f"matrix-{client}-{tenant}"
    return ("/v1/unassign" if way == "unassign" else "/v1/assign"), body, headers


async def _journals(sbx: dict[str, Sandbox]) -> int:
    return sum([len(await s.journal()) for s in sbx.values()])


async def test_tenant_matrix(hgw: TestClient[Any, Any], hsandboxes: dict[str, Sandbox]) -> None:
    for s in hsandboxes.values():
        await clear_journal(s)
    tenants = [*TENANT.values(), "t-nope"]
    allowed_ops: dict[str, list[str]] = {c: [] for c in CLIENT_KEYS}
    # Forbidden first, all of them: no provider may see a single request.
    for client in CLIENT_KEYS:
        for tenant in tenants:
            if tenant in CLIENT_TENANTS[client]:
                continue
            for way in WAYS:
                path, body, headers = _request(way, tenant, client)
                resp = await hgw.post(path, json=body, headers=headers)
                problem = await resp.json()
                conforms(resp.status, problem)
                want = (404, "unknown_tenant") if tenant == "t-nope" else (403, "forbidden")
                assert (resp.status, problem["code"]) == want, (client, tenant, way, problem)
                assert "provider" not in problem
                count("tenant matrix", f"{resp.status} {problem['code']}")
    # None now, and none later: a refused request leaves no background work.
    assert await _journals(hsandboxes) == 0
    await asyncio.sleep(0.3)
    assert await _journals(hsandboxes) == 0
    # Allowed: never 403, whatever the provider makes of it.
    for client in CLIENT_KEYS:
        for tenant in CLIENT_TENANTS[client]:
            for way in WAYS:
                path, body, headers = _request(way, tenant, client)
                resp = await hgw.post(path, json=body, headers=headers)
                answer = await resp.json()
                conforms(resp.status, answer)
                assert resp.status in (200, 202, 422), (client, tenant, way, answer)
                if resp.status == 422:  # Vambe cannot unassign: refused, not forbidden
                    assert (tenant, way, answer["code"]) == (
                        "t-vambe", "unassign", "unsupported_operation"), answer
                else:
                    allowed_ops[client].append(answer["operation_id"])
                count("tenant matrix", f"{resp.status} {answer.get('code', 'ok')}")
    await _operations_are_private(hgw, allowed_ops)
    await _tenant_lists(hgw)
    for ptype in PROVIDERS:
        entries = await hsandboxes[ptype].journal()
        count("tenant matrix upstream requests", ptype, len(entries))


async def _operations_are_private(hgw: TestClient[Any, Any],
                                  ops: dict[str, list[str]]) -> None:
    for owner, ids in ops.items():
        for op_id in ids[:3]:
            for client in CLIENT_KEYS:
                resp = await hgw.get(f"/v1/operations/{op_id}", headers=auth(client))
                if client == owner:
                    assert resp.status == 200, await resp.text()
                else:
                    assert resp.status == 404, (owner, client, await resp.text())
                count("tenant matrix operation views", str(resp.status))


async def _tenant_lists(hgw: TestClient[Any, Any]) -> None:
    for client in CLIENT_KEYS:
        resp = await hgw.get("/v1/tenants", headers=auth(client))
        names = [t["name"] for t in (await resp.json())["tenants"]]
        assert names == CLIENT_TENANTS[client], (client, names)
