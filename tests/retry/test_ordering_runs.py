"""Runs and withdrawals: an add queued before a replace stays superseded when more adds
follow; records of the previous version still order; withdrawals in turn give the contact
back; an older operation waits for a newer one that may still withdraw."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import orjson

from gateway import redis_keys
from gateway.operations import OperationStore, OpRecord
from gateway.opstore_redis import RedisStore
from gateway.redis_conn import connect
from gateway.spi import AssignCommand
from tests.conftest import Sandbox
from tests.contract.cases import CASES
from tests.redis_server import RedisServer
from tests.retry.helpers import (
    assign_body,
    gateway,
    operation,
    post,
    retry_config,
    wait_final,
)
from tests.retry.test_store import _add, _queue, _rec, store  # noqa: F401  (the two-backend fixture)

# -- runs: one intent for every add, one run until another intent comes ----------


async def test_an_add_older_than_a_replace_is_not_revived_by_a_newer_add(
        store: OperationStore) -> None:  # noqa: F811
    """A (add 17) is queued; R (replace 19) is applied; B (add 18) comes. A is older than
    the replace, so it must never run (it would re-add 17 after R removed it). Since every
    add has one intent, B's pointer makes A look "not superseded" again."""
    now = time.time()
    a = _add("op_a", "17")
    await _queue(store, a, now)
    r = _rec("op_r", "19")
    assert await store.accept_begin(r, now, 5) == "ok"
    r.status = "succeeded"
    await store.save(r, due=None)  # R applied
    assert await store.begin(a, 5) == "superseded"  # right: R is newer
    b = _add("op_b", "18")
    await store.accept(b, now)
    assert await store.begin(a, 5) == "busy"  # B may still withdraw: A waits, never runs
    b.status = "succeeded"
    await store.save(b, due=None)
    assert await store.begin(a, 5) == "superseded"  # was "ok": A ran after R


async def test_end_to_end_an_add_older_than_an_applied_replace_is_applied_after_it(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    """Vambe: A adds Jane (its background attempt gets a 503: queued for 5 s); R replaces
    with Bob (applied, 0.5 s slow); B adds Bob while R is in flight. In order: Jane, {Bob},
    {Bob}: Jane must not be on the contact. A is made due at R's save and finds B (an
    add) newest: it runs and re-adds Jane after the replace."""
    raw = retry_config(sandboxes_up, redis_url=redis_url, timeout_s=1.5, deadline_s=2,
                       backoff_base_s=5, backoff_max_s=5)
    gw = await gateway(aiohttp_client, raw)
    vambe, case = sandboxes_up["vambe"], CASES["vambe"]
    await vambe.fault(status=503, count=1)  # A's first attempt
    await vambe.fault("delay", delay_s=0.5, count=1)  # R's write
    status_a, a, _ = await post(gw, "assign", assign_body("vambe", mode="add"),
                                {"Prefer": "respond-async"})
    assert status_a == 202, a
    for _ in range(250):  # until A's first attempt got its 503 (bounded: 5 s)
        if (await operation(gw, a["operation_id"]))[1]["attempts"] >= 1:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("A was never attempted")
    bob = {"id": case.other_assignee_id}
    r_task = asyncio.create_task(post(gw, "assign", assign_body("vambe", mode="replace",
                                                                assignee=bob)))
    await asyncio.sleep(0.15)
    status_b, b, _ = await post(gw, "assign", assign_body("vambe", mode="add", assignee=bob))
    status_r, r, _ = await r_task
    assert (status_r, status_b) == (200, 200), (r, b)
    final_a = await wait_final(gw, a["operation_id"])
    assigned = case.assigned(await vambe.state())
    assert final_a["status"] == "superseded", (final_a, assigned)
    assert case.assignee_id not in assigned, assigned


def _old_intent(rec: OpRecord) -> str:
    """intent_of as the version before 053faad computed it (every command field)."""
    c = rec.plan.command
    assert isinstance(c, AssignCommand)
    t, contact = c.tenant, c.contact
    parts = [rec.plan.operation, t.name, t.default_region, t.campaign_id, t.organization_id,
             contact.kind, contact.value, c.campaign_id, c.assigned_by,
             c.assignee.kind, c.assignee.value, c.mode]
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:16]


async def test_rolling_upgrade_a_queued_add_accepted_by_the_old_version_is_not_superseded(
        redis_server: RedisServer) -> None:
    """The previous version accepted add A (pointer "<old intent>|op_a", the format it
    wrote) and queued it; nothing newer came. A new replica runs it: A is its contact's
    newest, so it must run. _BEGIN compares the whole pointer with "<new intent>|op_a"."""
    redis = connect(redis_server.url)
    try:
        store = RedisStore(redis)
        a = _add("op_a", "17")
        assert _old_intent(a) != a.intent
        await store.save(a, due=time.time())  # the record format is unchanged
        await redis.set(redis_keys.contact_latest(a.plan.tenant, a.contact),
                        f"{_old_intent(a)}|op_a", px=7 * 24 * 3600 * 1000)
        claimed = await store.claim(time.time(), 10, 5, "w")
        assert [c.id for c in claimed] == ["op_a"]
        assert await store.begin(claimed[0], 5) == "ok"  # fails: "superseded"
    finally:
        await redis.aclose()


# -- withdrawals -------------------------------------------------------------------


async def test_two_refused_newer_requests_both_withdraw(store: OperationStore) -> None:  # noqa: F811
    """A is queued. B (assign 18) and then C (assign 19) arrive; C waits for B's lock; the
    limiter refuses both before they send anything. Neither happened: A must be the newest
    again. B withdraws first (C's pointer stands), then C puts back B's pointer: A ends
    superseded by B, a request that never happened."""
    now = time.time()
    a, b, c = _rec("op_a"), _rec("op_b", "18"), _rec("op_c", "19")
    await _queue(store, a, now)
    assert await store.accept_begin(b, now, 5) == "ok"
    assert await store.accept_begin(c, now, 5) == "busy"  # B holds the contact
    b.status = "failed"
    await store.save(b, due=None, withdraw=True)  # refused: attempts == 0
    assert await store.begin(c, 5) == "ok"
    c.status = "failed"
    await store.save(c, due=None, withdraw=True)  # refused too
    assert await store.begin(a, 5) == "ok"  # fails: "superseded" (by B)


AELYST_WRITE = CASES["aelyst"].assign_path


async def test_the_withdraw_gap_spans_the_newer_requests_wait_for_the_lock(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    """README: the gap is "the moment between a newer request's acceptance and that refusal
    (usually under a millisecond)". But that moment includes the newer request's wait for
    the contact lock. C (assign 19) is in flight, 0.6 s slow, and spends the one limiter
    slot; A (assign 17, respond-async) is queued behind it; B (assign 18) waits for C's
    lock, then is refused by the gateway's limit (C spent the slot): B never happened, yet
    A, whose busy retry came due while B waited, ended superseded and is lost."""
    raw = retry_config(sandboxes_up, redis_url=redis_url, timeout_s=1.5, deadline_s=2)
    raw["providers"]["aelyst-sb"]["rate_limit"] = {"rate": 1, "burst": 1, "scope": "account",
                                                   "max_wait_s": 0.05}
    gw = await gateway(aiohttp_client, raw)
    aelyst = sandboxes_up["aelyst"]
    await aelyst.fault("delay", delay_s=0.6, count=1)  # C's write
    c_task = asyncio.create_task(post(gw, "assign", assign_body("aelyst",
                                                                assignee={"id": "19"})))
    await asyncio.sleep(0.05)
    status_a, a, _ = await post(gw, "assign", assign_body("aelyst", assignee={"id": "17"}),
                                {"Prefer": "respond-async"})
    assert status_a == 202, a
    await asyncio.sleep(0.05)
    status_b, b, _ = await post(gw, "assign", assign_body("aelyst", assignee={"id": "18"}))
    assert (status_b, b["code"]) == (429, "rate_limited"), b
    status_c, c, _ = await c_task
    assert status_c == 200, c
    final_a = await wait_final(gw, a["operation_id"])
    applied = [x["assignee"] for x in (await aelyst.state())["assignments"]
               if x["contactId"] == 3]
    assert (final_a["status"], applied) == ("succeeded", [19, 17]), (final_a, applied)
