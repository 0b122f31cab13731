"""One contract suite, parametrized over every adapter against its sandbox.

Real loopback HTTP end to end: client -> gateway -> adapter -> sandbox. The
sandbox was written from the provider documents separately from the adapter,
so a misreading on either side fails here.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import CLIENT_KEY, KEYS, OTHER_CLIENT_KEY, Sandbox, auth
from tests.contract.cases import CASES, Case

pytestmark = pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))


async def _assign(gw: Any, case: Case, assignee: dict[str, str],
                  contact: dict[str, str] | None = None, **extra: Any) -> Any:
    body = {"tenant": case.tenant, "contact": contact or case.contact, "assignee": assignee,
            **extra}
    return await gw.post("/v1/assign", json=body, headers=auth())


async def test_assign_by_assignee_email(gw: Any, sandboxes_up: dict[str, Sandbox],
                                        case: Case) -> None:
    resp = await _assign(gw, case, {"email": case.assignee_email})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["status"] == "assigned"
    assert body["provider"] == case.type
    assert body["tenant"] == case.tenant
    assert body["contact"]["provider_id"] == case.contact_provider_id
    assert body["attempts"] == 1
    assert body["operation_id"].startswith("op_")
    if case.assignee_name is not None:
        assert body["assignee"] == {"provider_id": case.assignee_id, "name": case.assignee_name}
    state = await sandboxes_up[case.type].state()
    assert case.assignee_id in case.assigned(state)


async def test_assign_by_assignee_id_replaces(gw: Any, sandboxes_up: dict[str, Sandbox],
                                              case: Case) -> None:
    for uid in (case.assignee_id, case.other_assignee_id):
        resp = await _assign(gw, case, {"id": uid})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["assignee"]["provider_id"] == uid
    assert case.assigned(await sandboxes_up[case.type].state()) == {case.other_assignee_id}


async def test_unassign(gw: Any, sandboxes_up: dict[str, Sandbox], case: Case) -> None:
    await _assign(gw, case, {"id": case.assignee_id})
    resp = await gw.post("/v1/unassign", headers=auth(),
                         json={"tenant": case.tenant, "contact": case.contact})
    body = await resp.json()
    if not case.unassign:
        assert resp.status == 422
        assert body["code"] == "unsupported_operation"
        return
    assert resp.status == 200, body
    assert body["status"] == "unassigned"
    assert body["assignee"] is None
    assert body["contact"]["provider_id"] == case.contact_provider_id
    assert case.assigned(await sandboxes_up[case.type].state()) == set()


async def test_contact_not_found(gw: Any, case: Case) -> None:
    resp = await _assign(gw, case, {"id": case.assignee_id}, contact=case.missing_contact)
    body = await resp.json()
    assert (resp.status, body["code"], body["provider"]) == (404, "contact_not_found", case.type)


async def test_assignee_not_found(gw: Any, case: Case) -> None:
    resp = await _assign(gw, case, {"email": case.missing_assignee_email})
    body = await resp.json()
    assert (resp.status, body["code"]) == (404, "assignee_not_found"), body


async def test_lookups_are_cached(gw: Any, sandboxes_up: dict[str, Sandbox], case: Case) -> None:
    for _ in range(3):
        assert (await _assign(gw, case, {"email": case.assignee_email})).status == 200
    journal = await sandboxes_up[case.type].journal()
    lookups = [e for e in journal if e["method"] == "GET"]
    writes = [e for e in journal if e["method"] == "POST"]
    assert len(writes) == 3
    assert len(lookups) <= 2  # at most one contact search and one user list, once each


async def test_credentials_reach_only_their_provider(
        gw: Any, sandboxes_up: dict[str, Sandbox], case: Case) -> None:
    assert (await _assign(gw, case, {"email": case.assignee_email})).status == 200
    journal = await sandboxes_up[case.type].journal()
    assert journal
    others = [k for t, k in KEYS.items() if t != case.type]
    for entry in journal:
        dump = repr(entry)
        assert KEYS[case.type] in dump
        for secret in (*others, CLIENT_KEY, OTHER_CLIENT_KEY):
            assert secret not in dump
        assert not any(h.lower() == "cookie" for h in entry["headers"])


async def test_documented_path_reached(gw: Any, sandboxes_up: dict[str, Sandbox],
                                       case: Case) -> None:
    resp = await _assign(gw, case, {"id": case.assignee_id}, contact=case.direct_contact)
    assert resp.status == 200, await resp.text()
    journal = await sandboxes_up[case.type].journal()
    assert [e["path"] for e in journal if e["method"] == "POST"] == [case.assign_path]


async def test_wrong_provider_credential(sandboxes_up: dict[str, Sandbox], aiohttp_client: Any,
                                         case: Case) -> None:
    from gateway.app import create_app
    from gateway.config import build_config
    from tests.conftest import gateway_config_dict

    raw = gateway_config_dict(sandboxes_up)
    raw["providers"][f"{case.type}-sb"]["api_key"] = "wrong-key"
    gw = await aiohttp_client(create_app(build_config(raw, env={})))
    resp = await _assign(gw, case, {"id": case.assignee_id}, contact=case.direct_contact)
    body = await resp.json()
    assert (resp.status, body["code"]) == (502, "upstream_auth_failed")
    assert "wrong-key" not in await resp.text()
