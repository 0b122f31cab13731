"""The retry layer's table: three providers x assign/unassign x upstream outcomes.

Each row injects one persistent outcome in the provider's sandbox (or points
the provider at a closed port) and states how many upstream attempts the
gateway makes and the canonical answer the client gets. The policy here:
``max_attempts: 3``, ``deadline_s: 3``, ``timeout_s: 0.3``, backoff 0.02 s
doubling to 0.1 s, ``queued_backoff_s: 10`` (so a 449 cannot be waited for
within the deadline). Attempts are counted in the sandbox's journal, and by
the gateway's own exchange metric for a refused connection.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Sandbox
from tests.contract.cases import CASES
from tests.procs import free_port
from tests.retry.helpers import (
    assign_body,
    gateway,
    operation,
    post,
    retry_config,
    unassign_body,
    upstream_exchanges,
    writes,
)

# (outcome, how to cause it, {provider: (status, code or result status, attempts)})
Row = tuple[int, str, int]
UNAVAILABLE: Row = (503, "upstream_unavailable", 3)
TIMEOUT: Row = (504, "upstream_timeout", 3)
QUEUED: Row = (202, "queued", 1)


def _all(row: Row) -> dict[str, Row]:
    return dict.fromkeys(CASES, row)


OUTCOMES: list[tuple[str, dict[str, Any] | None, dict[str, Row]]] = [
    ("200", None, _all((200, "ok", 1))),
    ("400", {"kind": "status", "status": 400}, _all((502, "upstream_rejected", 1))),
    ("401", {"kind": "status", "status": 401}, _all((502, "upstream_auth_failed", 1))),
    ("404", {"kind": "status", "status": 404}, _all((404, "contact_not_found", 1))),
    ("409", {"kind": "status", "status": 409}, _all((502, "upstream_rejected", 1))),
    # A Retry-After longer than the deadline is not slept on: the work is queued.
    ("429", {"kind": "status", "status": 429, "retry_after": 7}, _all(QUEUED)),
    # Aelyst's "in queue" is queued work; to the others an undocumented 4xx.
    ("449", {"kind": "status", "status": 449}, {
        "aelyst": QUEUED, "teli": (502, "upstream_rejected", 1),
        "vambe": (502, "upstream_rejected", 1)}),
    ("500", {"kind": "status", "status": 500}, _all(UNAVAILABLE)),
    ("502", {"kind": "status", "status": 502}, _all(UNAVAILABLE)),
    ("503", {"kind": "status", "status": 503}, _all(UNAVAILABLE)),
    ("504", {"kind": "status", "status": 504}, _all(UNAVAILABLE)),
    ("refused", None, _all(UNAVAILABLE)),
    ("reset", {"kind": "drop"}, _all(UNAVAILABLE)),
    ("read-timeout", {"kind": "delay", "delay_s": 1.0}, _all(TIMEOUT)),
    ("hang", {"kind": "hang"}, _all(TIMEOUT)),
]
OPERATIONS = ("assign", "unassign")
_UNASSIGN_PATH = {"teli": "/v1/threads/unassign",
                  "aelyst": "/v1/contact/id:3/conversation/assignee"}


def _expected(ptype: str, op: str, rows: dict[str, Row]) -> Row:
    if op == "unassign" and not CASES[ptype].unassign:
        # Refused before any provider call, whatever the provider would have said.
        return 422, "unsupported_operation", 0
    status, code, attempts = rows[ptype]
    if code == "ok":
        code = "assigned" if op == "assign" else "unassigned"
    return status, code, attempts


def _raw(sbx: dict[str, Sandbox], ptype: str, outcome: str) -> dict[str, Any]:
    raw = retry_config(sbx)
    if outcome == "refused":
        closed = f"http://127.0.0.1:{free_port()}" + ("/v1" if ptype == "aelyst" else "")
        raw["providers"][f"{ptype}-sb"]["base_url"] = closed
    return raw


@pytest.mark.parametrize("op", OPERATIONS)
@pytest.mark.parametrize("ptype", list(CASES))
@pytest.mark.parametrize(("outcome", "fault", "rows"), OUTCOMES, ids=[o[0] for o in OUTCOMES])
async def test_retry_table(aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], ptype: str,
                           op: str, outcome: str, fault: dict[str, Any] | None,
                           rows: dict[str, Row]) -> None:
    gw = await gateway(aiohttp_client, _raw(sandboxes_up, ptype, outcome))
    sbx = sandboxes_up[ptype]
    if fault is not None:
        await sbx.fault(**{**fault, "count": 1000})
    body = assign_body(ptype) if op == "assign" else unassign_body(ptype)
    status, answer, headers = await post(gw, op, body)
    want_status, want_code, want_attempts = _expected(ptype, op, rows)
    got_code = answer.get("code") or answer.get("status")
    if outcome == "refused":
        attempts = upstream_exchanges(gw, f"{ptype}-sb")
    else:
        path = CASES[ptype].assign_path if op == "assign" else _UNASSIGN_PATH.get(ptype, "-")
        attempts = len(writes(await sbx.journal(), path))
    assert (status, got_code, attempts) == (want_status, want_code, want_attempts), answer
    if status == 200:
        assert answer["attempts"] == want_attempts
    if status == 202:
        await _check_queued(gw, answer, headers)
    elif status >= 400:
        assert headers["Content-Type"].startswith("application/problem+json")


async def _check_queued(gw: Any, answer: dict[str, Any], headers: Any) -> None:
    op_id = answer["operation_id"]
    assert headers["Location"] == f"/v1/operations/{op_id}"
    status, view = await operation(gw, op_id)
    assert status == 200 and view["status"] in ("queued", "running") and view["attempts"] == 1


@pytest.mark.parametrize("ptype", list(CASES))
async def test_a_503_retry_after_reaches_the_client_when_retries_end(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], ptype: str) -> None:
    """DESIGN: upstream_unavailable carries ``Retry-After`` when known; a provider's 503
    with ``Retry-After`` makes it known."""
    gw = await gateway(aiohttp_client, retry_config(sandboxes_up))
    await sandboxes_up[ptype].fault(status=503, retry_after=4, count=1000)
    status, answer, headers = await post(gw, "assign", assign_body(ptype))
    assert (status, answer["code"]) == (503, "upstream_unavailable"), answer
    assert headers["Retry-After"] == "4"
    await sandboxes_up[ptype].reset()
    await sandboxes_up[ptype].fault(status=503, count=1000)  # none sent: none invented
    status, answer, headers = await post(gw, "assign", assign_body(ptype))
    assert status == 503 and "Retry-After" not in headers, answer
