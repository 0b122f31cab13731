"""Per-contact ordering: a newer operation supersedes a queued older one, and an older
one is never applied after a newer one, in memory and through Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Sandbox
from tests.contract.cases import CASES
from tests.retry.helpers import (
    assign_body,
    gateway,
    post,
    retry_config,
    sample,
    wait_final,
    writes,
)

AELYST_WRITE = CASES["aelyst"].assign_path


def _assign(assignee: str) -> dict[str, Any]:
    return assign_body("aelyst", assignee={"id": assignee})


def _applied(state: dict[str, Any]) -> list[int]:
    """Who the sandbox's contact 3 was assigned to, in the order it happened."""
    return [a["assignee"] for a in state["assignments"] if a["contactId"] == 3]


async def _until_sent(sbx: Sandbox) -> None:
    """Until the provider has received a write (bounded: 5 s, a poll every 10 ms)."""
    for _ in range(500):
        if writes(await sbx.journal(), AELYST_WRITE):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no write reached the provider")


async def _clear(sbx: Sandbox) -> None:
    async with sbx.session.delete(sbx.server.make_url("/_sandbox/faults")) as r:
        assert r.status == 200


async def test_a_newer_operation_supersedes_a_queued_older_one(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    raw = retry_config(sandboxes_up, redis_url=redis_url, queued_backoff_s=2.0, deadline_s=0.5)
    gw = await gateway(aiohttp_client, raw)
    aelyst = sandboxes_up["aelyst"]
    await aelyst.fault(status=449, count=1)  # A's first attempt only
    status_a, a, _ = await post(gw, "assign", _assign("17"))
    assert (status_a, a["status"]) == (202, "queued")
    status_b, b, _ = await post(gw, "assign", _assign("18"))
    assert (status_b, b["status"]) == (200, "assigned")
    await _clear(aelyst)
    final_a = await wait_final(gw, a["operation_id"])
    assert final_a["status"] == "superseded" and final_a["attempts"] == 1
    state = await aelyst.state()
    assert CASES["aelyst"].assigned(state) == {"18"}
    assert _applied(state) == [18]  # A was never applied
    assert [e["status"] for e in writes(await aelyst.journal(), AELYST_WRITE)] == [449, 200]
    assert sample(gw, "gateway_operations_total", status="superseded") == 1


async def test_adds_commute_a_newer_add_does_not_supersede_a_queued_older_one(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    """Vambe keeps several agents per contact. A's add is queued (a 429 asking for 1 s,
    past the 0.3 s deadline); B's add of another agent arrives meanwhile. Both agents
    must end up on the contact: an add does not undo another."""
    raw = retry_config(sandboxes_up, redis_url=redis_url, deadline_s=0.3)
    gw = await gateway(aiohttp_client, raw)
    vambe, case = sandboxes_up["vambe"], CASES["vambe"]
    await vambe.fault(status=429, retry_after=1.0, count=1)  # A's first attempt only
    status_a, a, _ = await post(gw, "assign", assign_body("vambe", mode="add"))
    assert (status_a, a["status"]) == (202, "queued"), a
    body_b = assign_body("vambe", mode="add", assignee={"id": case.other_assignee_id})
    status_b, b, _ = await post(gw, "assign", body_b, {"Prefer": "respond-async"})
    assert status_b == 202, b
    final_a = await wait_final(gw, a["operation_id"])
    final_b = await wait_final(gw, b["operation_id"])
    assert (final_a["status"], final_b["status"]) == ("succeeded", "succeeded"), (final_a,
                                                                                  final_b)
    assert {case.assignee_id, case.other_assignee_id} <= case.assigned(await vambe.state())


async def test_a_newer_request_refused_by_the_gateway_limit_does_not_supersede(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    """A is queued (449); B for the same contact is refused by the gateway's own limit
    before it sends anything (429). B never happened: A still runs and lands."""
    raw = retry_config(sandboxes_up, redis_url=redis_url, queued_backoff_s=0.5,
                       deadline_s=0.3)
    raw["providers"]["aelyst-sb"]["rate_limit"] = {"rate": 1, "burst": 1, "scope": "account",
                                                   "max_wait_s": 0.05}
    gw = await gateway(aiohttp_client, raw)
    aelyst = sandboxes_up["aelyst"]
    await aelyst.fault(status=449, count=1)  # A's first attempt only
    status_a, a, _ = await post(gw, "assign", _assign("17"))
    assert (status_a, a["status"]) == (202, "queued"), a
    status_b, b, _ = await post(gw, "assign", _assign("18"))  # the one slot is spent
    assert (status_b, b["code"]) == (429, "rate_limited"), b
    final_a = await wait_final(gw, a["operation_id"])
    assert final_a["status"] == "succeeded", final_a
    assert _applied(await aelyst.state()) == [17]


async def test_a_newer_operation_waits_for_an_older_attempt_in_flight(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    raw = retry_config(sandboxes_up, redis_url=redis_url, timeout_s=2, deadline_s=3)
    gw = await gateway(aiohttp_client, raw)
    aelyst = sandboxes_up["aelyst"]
    await aelyst.fault("delay", delay_s=0.5, count=1)  # A's attempt is slow
    status_a, a, _ = await post(gw, "assign", _assign("17"), {"Prefer": "respond-async"})
    assert status_a == 202
    await _until_sent(aelyst)
    status_b, b, _ = await post(gw, "assign", _assign("18"))
    assert (status_b, b["status"]) == (200, "assigned")
    final_a = await wait_final(gw, a["operation_id"])
    # A was in flight when B arrived: A lands first, then B; never the other way.
    assert final_a["status"] == "succeeded"
    assert _applied(await aelyst.state()) == [17, 18]
    assert CASES["aelyst"].assigned(await aelyst.state()) == {"18"}


async def test_identical_requests_share_the_contact(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    # The same intent in any order leaves the same state: they run side by side.
    raw = retry_config(sandboxes_up, redis_url=redis_url, timeout_s=2, deadline_s=3)
    gw = await gateway(aiohttp_client, raw)
    await sandboxes_up["teli"].fault("delay", delay_s=0.3, count=10)
    answers = await asyncio.gather(*(post(gw, "assign", assign_body("teli")) for _ in range(10)))
    assert {(s, b["status"]) for s, b, _ in answers} == {(200, "assigned")}
    assert len({b["operation_id"] for _, b, _ in answers}) == 10


async def test_a_timed_out_attempt_keeps_the_lock_whatever_the_operation_does_next(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    """A's first attempt times out while the provider still works on it (1 s); its second
    is refused (400) and A fails. The lock A's timed-out request holds must outlive that
    failure: a newer B must not reach the provider while A's first request may still be
    applied (the provider's own clock in its journal says when each arrived)."""
    raw = retry_config(sandboxes_up, redis_url=redis_url, timeout_s=0.3, deadline_s=3)
    gw = await gateway(aiohttp_client, raw)
    aelyst = sandboxes_up["aelyst"]
    await aelyst.fault(kind="delay", delay_s=1.0, count=1)  # still in the works at 0.3 s
    await aelyst.fault(status=400, count=1)  # A's second attempt: a final refusal
    status_a, a, _ = await post(gw, "assign", _assign("17"))
    assert (status_a, a["code"]) == (502, "upstream_rejected"), a  # the provider's 400
    status_b, b, _ = await post(gw, "assign", _assign("18"))
    if status_b == 202:  # the lock outlived B's deadline: B runs in the background
        b = await wait_final(gw, b["operation_id"])
    assert b["status"] in ("assigned", "succeeded"), b
    first_a, _, b_write = writes(await aelyst.journal(), AELYST_WRITE)
    assert b_write["at"] >= first_a["at"] + 1.0
