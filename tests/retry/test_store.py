"""The operation store's guarantees, on both backends: claims are exclusive, an unfinished
lease comes back, a lost lease cannot write, and the contact lock orders intents."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway import redis_keys
from gateway.operations import MemoryStore, OperationStore, OpRecord
from gateway.opstore_redis import DegradingStore, RedisStore
from gateway.redis_conn import REDIS_ERRORS, connect
from gateway.service import ContactEcho, Plan
from gateway.spi import AssignCommand, AssigneeRef, ContactRef, TenantContext, UnassignCommand
from tests.redis_server import RedisServer

LEASE_S = 0.3


def _rec(op_id: str, assignee: str | None = "17", contact: str = "3") -> OpRecord:
    tenant = TenantContext("t-aelyst", "US")
    ref = ContactRef("id", contact)
    command = (AssignCommand(tenant, ref, AssigneeRef("id", assignee)) if assignee
               else UnassignCommand(tenant, ref))
    plan = Plan("assign" if assignee else "unassign", "app", "t-aelyst", "aelyst-sb", command,
                ContactEcho(id=contact))
    now = time.time()
    return OpRecord(op_id, plan, "rid", now, now + 60)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[OperationStore]:
    if request.param == "memory":
        yield MemoryStore(time.time)
        return
    redis = connect(request.getfixturevalue("redis_server").url)
    yield RedisStore(redis)
    await redis.aclose()


async def test_the_record_round_trips(store: OperationStore) -> None:
    rec = _rec("op_a")
    rec.attempts, rec.queued_wait_s, rec.reason = 2, 30.0, "449"
    await store.save(rec, due=time.time() + 60)
    found = await store.get("op_a")
    assert found is not None and not found[1]
    again = found[0]
    assert (again.plan, again.attempts, again.queued_wait_s, again.reason, again.intent) == (
        rec.plan, 2, 30.0, "449", rec.intent)
    assert await store.get("op_missing") is None


async def test_a_claim_is_exclusive_and_an_unfinished_lease_comes_back(
        store: OperationStore) -> None:
    await store.save(_rec("op_a"), due=time.time())
    first = await store.claim(time.time(), 10, LEASE_S, "w1")
    assert [r.id for r in first] == ["op_a"]
    assert await store.claim(time.time(), 10, LEASE_S, "w2") == []  # leased to w1
    found = await store.get("op_a")
    assert found is not None and found[1]  # a worker holds it: seen as running
    await asyncio.sleep(LEASE_S + 0.1)  # w1 "dies": its lease expires
    second = await store.claim(time.time(), 10, LEASE_S, "w2")
    assert [r.id for r in second] == ["op_a"]
    # w1's late result is refused: w2 holds the operation now.
    assert not await store.save(first[0], due=None, lease="w1")
    assert await store.save(second[0], due=None, lease="w2")
    assert await store.claim(time.time() + 10, 10, LEASE_S, "w3") == []


async def test_a_newer_intent_supersedes_and_the_same_intent_shares(
        store: OperationStore) -> None:
    now = time.time()
    old, same, new = _rec("op_old"), _rec("op_same"), _rec("op_new", assignee=None)
    await store.accept(old, now)
    assert await store.begin(old, 5) == "ok"
    await store.accept(same, now)
    assert await store.begin(same, 5) == "ok"  # the same intent shares the lock
    assert await store.begin(old, 5) == "ok"  # and does not supersede the older one
    await store.accept(new, now)
    assert await store.begin(old, 5) == "busy"  # new may still withdraw: old waits
    await store.save(new, due=now + 3600)  # queued: settled, no longer pending
    assert await store.begin(new, 5) == "busy"  # another intent waits for both attempts
    assert await store.begin(old, 5) == "superseded"
    await store.save(old, due=None)
    assert await store.begin(new, 5) == "busy"
    await store.save(same, due=None)
    assert await store.begin(new, 5) == "ok"
    other_contact = _rec("op_x", contact="4")
    await store.accept(other_contact, now)
    assert await store.begin(other_contact, 5) == "ok"


async def _queue(store: OperationStore, rec: OpRecord, now: float) -> None:
    """Accepted, then saved as queued for an hour: an operation waiting its turn."""
    await store.accept(rec, now)
    await store.save(rec, due=now + 3600)


def _add(op_id: str, assignee: str, assigned_by: str | None = None) -> OpRecord:
    rec = _rec(op_id, assignee)
    cmd = rec.plan.command
    assert isinstance(cmd, AssignCommand)
    add = AssignCommand(cmd.tenant, cmd.contact, cmd.assignee, "add", None, assigned_by)
    rec.plan = Plan(rec.plan.operation, rec.plan.client, rec.plan.tenant, rec.plan.provider,
                    add, rec.plan.contact)
    return rec


async def test_adds_commute_so_they_share_the_contact_and_never_supersede(
        store: OperationStore) -> None:
    now = time.time()
    a, b = _add("op_a", "17"), _add("op_b", "18", assigned_by="someone")
    assert a.intent == b.intent
    await _queue(store, a, now)
    await store.accept(b, now)  # a newer add: the older one stays queued, not made due
    assert await store.claim(now, 10, LEASE_S, "w") == []
    assert await store.begin(b, 5) == "ok"
    assert await store.begin(a, 5) == "ok"  # not superseded, and runs beside b
    replace = _rec("op_r", "19")
    await _queue(store, replace, now)
    assert await store.begin(replace, 5) == "busy"  # a replace still waits for the adds
    assert await store.begin(a, 5) == "superseded"  # and supersedes them
    assert await store.begin(b, 5) == "superseded"


async def test_a_newer_intent_makes_the_older_due_now_once_saved(store: OperationStore) -> None:
    now = time.time()
    old = _rec("op_old")
    await _queue(store, old, now)
    assert await store.claim(now, 10, LEASE_S, "w") == []
    new = _rec("op_new", assignee="18")
    await store.accept(new, now)
    # Not yet: the newer one might still withdraw (refused before it sends anything).
    assert await store.claim(now, 10, LEASE_S, "w") == []
    new.status = "succeeded"
    await store.save(new, due=None)  # its first save: the older one is due at once
    claimed = await store.claim(time.time(), 10, LEASE_S, "w")
    assert [r.id for r in claimed] == ["op_old"]
    assert await store.begin(claimed[0], 5) == "superseded"


async def test_a_withdrawn_operation_gives_the_contact_back_to_the_one_it_replaced(
        store: OperationStore) -> None:
    """B replaced a queued A, then asked nothing of the provider (refused before its
    first exchange): A is the newest again, due when it was, and runs."""
    now = time.time()
    a, b = _rec("op_a"), _rec("op_b", assignee="18")
    await _queue(store, a, now)
    assert await store.accept_begin(b, now, 5) == "ok"
    assert b.replaced == ("op_a", a.token)
    b.status = "failed"
    assert await store.save(b, due=None, withdraw=True)
    assert await store.claim(time.time(), 10, LEASE_S, "w") == []  # due when it was
    claimed = await store.claim(now + 3600, 10, LEASE_S, "w")
    assert [r.id for r in claimed] == ["op_a"]
    assert await store.begin(claimed[0], 5) == "ok"  # not superseded


async def test_a_withdrawal_leaves_a_newer_operation_standing(store: OperationStore) -> None:
    now = time.time()
    a, b, c = _rec("op_a"), _rec("op_b", assignee="18"), _rec("op_c", assignee="19")
    await _queue(store, a, now)
    await store.accept(b, now)
    await _queue(store, c, now)  # newer than b: b's withdrawal must not undo it
    b.status = "failed"
    await store.save(b, due=None, withdraw=True)
    assert await store.begin(a, 5) == "superseded"
    assert await store.begin(c, 5) == "ok"
    lone = _rec("op_lone", contact="5")  # nothing before it: withdrawn, nothing is newest
    assert await store.accept_begin(lone, now, 5) == "ok" and lone.replaced is None
    lone.status = "failed"
    await store.save(lone, due=None, withdraw=True)
    old = _rec("op_old", assignee="18", contact="5")
    assert await store.begin(old, 5) == "ok"


async def test_a_pending_operation_never_saved_settles_when_its_pending_time_ends(
        store: OperationStore) -> None:
    """A replica accepted B and died before saving it: an older A waits (busy) only until
    B's pending time ends, then ends superseded as before."""
    now = time.time()
    a, b = _rec("op_a"), _rec("op_b", assignee="18")
    await _queue(store, a, now)
    await store.accept(b, now, pending_s=LEASE_S)
    assert await store.begin(a, 5) == "busy"
    await asyncio.sleep(LEASE_S + 0.1)
    assert await store.begin(a, 5) == "superseded"


async def test_a_lock_left_after_a_timeout_expires(store: OperationStore) -> None:
    now = time.time()
    a, b = _rec("op_a"), _rec("op_b", assignee="18")
    await store.accept(a, now)
    assert await store.begin(a, LEASE_S) == "ok"
    await store.save(a, due=None, unlock=False)  # a timed out: the lock is left to expire
    await store.accept(b, now)
    assert await store.begin(b, 5) == "busy"
    await asyncio.sleep(LEASE_S + 0.1)
    assert await store.begin(b, 5) == "ok"


async def test_a_final_record_redis_refused_waits_and_is_written_when_redis_returns(
        redis_server: RedisServer) -> None:
    redis = connect(redis_server.url)
    shared = RedisStore(redis)
    store = DegradingStore(shared, MemoryStore(time.time))
    try:
        rec = _rec("op_kept")
        assert await store.accept_begin(rec, time.time(), 5.0) == "ok"
        redis_server.kill()
        rec.status, rec.result = "succeeded", {"status": "assigned"}
        with pytest.raises(REDIS_ERRORS):
            await store.save(rec, due=None)
        store.keep(rec, unlock=True)
        found = await store.get("op_kept")  # served from this replica meanwhile
        assert found is not None and found[0].status == "succeeded"
        with pytest.raises(REDIS_ERRORS):
            await store.flush()
        assert store.unsaved == 1  # nothing dropped by a failed flush
        redis_server.start()
        assert await store.flush() == 1 and store.unsaved == 0
        in_redis = await shared.get("op_kept")
        assert in_redis is not None and in_redis[0].status == "succeeded"
        # The contact lock went with it: another intent on the contact may begin.
        other = _rec("op_next", assignee=None)
        await store.accept(other, time.time())
        assert await store.begin(other, 5.0) == "ok"
    finally:
        await redis.aclose()


async def test_a_record_this_version_cannot_read_does_not_hold_up_the_others(
        redis_server: RedisServer) -> None:
    redis = connect(redis_server.url)
    try:
        store = RedisStore(redis)
        now = time.time()
        await store.save(_rec("op_good"), due=now - 1)
        await store.save(_rec("op_odd"), due=now - 1)
        # As another version might write it: a field this one does not know.
        await redis.set(redis_keys.operation("op_odd"), b'{"id": "op_odd", "colour": "blue"}')
        claimed = await store.claim(time.time(), 10, LEASE_S, "token")
        assert [r.id for r in claimed] == ["op_good"]
    finally:
        await redis.aclose()
