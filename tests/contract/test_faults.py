"""One table of upstream faults, run against every provider.

Each fault is injected through the sandbox's control API (or, for a refused
connection, by pointing the provider at a closed port) on a request that needs
no look-up. Each fault persists, so retryable ones are retried (at most
``max_attempts: 2`` here) and the row is the canonical answer once retries
are exhausted; what a client sees must never carry a raw upstream body. The
attempt counts, and assign and unassign, are in tests/retry/test_fault_table.py.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import build_config
from tests.conftest import KEYS, Sandbox, auth, gateway_config_dict
from tests.contract.cases import CASES

# (fault id, fault spec, {provider: (status, code)} or one (status, code) for all)
Expect = tuple[int, str]
FAULTS: list[tuple[str, dict[str, Any], dict[str, Expect] | Expect]] = [
    ("400", {"kind": "status", "status": 400}, (502, "upstream_rejected")),
    ("401", {"kind": "status", "status": 401}, (502, "upstream_auth_failed")),
    ("403", {"kind": "status", "status": 403}, (502, "upstream_auth_failed")),
    ("404", {"kind": "status", "status": 404}, (404, "contact_not_found")),
    ("409", {"kind": "status", "status": 409}, (502, "upstream_rejected")),
    # A short Retry-After is waited for; once attempts run out it is passed on.
    ("429", {"kind": "status", "status": 429, "retry_after": 0.3},
     (503, "upstream_unavailable")),
    # 449 is Aelyst's "in queue": past the deadline the work is queued (202).
    # To the others it is an undocumented 4xx.
    ("449", {"kind": "status", "status": 449}, {
        "aelyst": (202, "queued"), "teli": (502, "upstream_rejected"),
        "vambe": (502, "upstream_rejected")}),
    ("500", {"kind": "status", "status": 500}, (503, "upstream_unavailable")),
    ("503", {"kind": "status", "status": 503}, (503, "upstream_unavailable")),
    ("timeout", {"kind": "hang", "delay_s": 30}, (504, "upstream_timeout")),
    ("drop", {"kind": "drop"}, (503, "upstream_unavailable")),
    ("html-502", {"kind": "html", "status": 502}, (503, "upstream_unavailable")),
    ("html-200", {"kind": "html", "status": 200}, (503, "upstream_unavailable")),
    ("malformed-json", {"kind": "malformed", "status": 200}, (503, "upstream_unavailable")),
]
RAW_BODY_MARKERS = ("powered_by", "<html", "Bad Gateway", "statusCode", "tru", "Unexpected error")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _gateway(aiohttp_client: Any, sbx: dict[str, Sandbox], **provider: Any) -> Any:
    raw = gateway_config_dict(sbx)
    for p in raw["providers"].values():
        p.update({"timeout_s": 0.5, "retry": {"deadline_s": 1, "max_attempts": 2,
                                              "backoff_base_s": 0.05}}, **provider)
    return await aiohttp_client(create_app(build_config(raw, env={})))


async def _direct_assign(gw: Any, ptype: str) -> Any:
    case = CASES[ptype]
    return await gw.post("/v1/assign", headers=auth(), json={
        "tenant": case.tenant, "contact": case.direct_contact,
        "assignee": {"id": case.assignee_id}})


@pytest.mark.parametrize("ptype", list(CASES))
@pytest.mark.parametrize(("fault_id", "fault", "expect"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_fault_table(aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], ptype: str,
                           fault_id: str, fault: dict[str, Any],
                           expect: dict[str, Expect] | Expect) -> None:
    gw = await _gateway(aiohttp_client, sandboxes_up)
    await sandboxes_up[ptype].fault(**{"count": 1000, **fault})
    resp = await _direct_assign(gw, ptype)
    status, code = expect[ptype] if isinstance(expect, dict) else expect
    text = await resp.text()
    body = await resp.json(content_type=None)
    if status == 202:
        assert (resp.status, body["status"]) == (202, code), body
        assert resp.headers["Location"] == f"/v1/operations/{body['operation_id']}"
        return
    assert (resp.status, body["code"]) == (status, code), body
    assert resp.content_type == "application/problem+json"
    assert body["provider"] == ptype
    for marker in RAW_BODY_MARKERS:
        assert marker not in text, f"raw upstream text {marker!r} leaked: {text}"
    assert KEYS[ptype] not in text
    if fault_id == "429":
        assert resp.headers["Retry-After"] == "1"


@pytest.mark.parametrize("ptype", list(CASES))
async def test_refused_connection(aiohttp_client: Any, sandboxes_up: dict[str, Sandbox],
                                  ptype: str) -> None:
    raw = gateway_config_dict(sandboxes_up)
    closed = f"http://127.0.0.1:{_free_port()}"
    raw["providers"][f"{ptype}-sb"]["base_url"] = closed + ("/v1" if ptype == "aelyst" else "")
    gw = await aiohttp_client(create_app(build_config(raw, env={})))
    resp = await _direct_assign(gw, ptype)
    body = await resp.json(content_type=None)
    assert (resp.status, body["code"]) == (503, "upstream_unavailable")
    assert "127.0.0.1" not in body["detail"]
