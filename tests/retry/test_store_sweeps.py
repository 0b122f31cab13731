"""The in-process store's sweeps of what can go stale (pending marks of requests that
never saved, locks left to expire) are amortized: with thousands of requests in flight,
a request does not walk them all (it did: every accept past 1,000 pending rebuilt the
map, 6x the store's cost per request at 1,500 in flight)."""

from __future__ import annotations

import asyncio
import time

from gateway.operations import PENDING_S, SWEEP_AT, MemoryStore, OpRecord
from gateway.service import ContactEcho, Plan
from gateway.spi import AssignCommand, AssigneeRef, ContactRef, TenantContext


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def _rec(i: int) -> OpRecord:
    tenant = TenantContext("t-aelyst", "US")
    contact = ContactRef("id", str(i))
    plan = Plan("assign", "app", "t-aelyst", "aelyst-sb",
                AssignCommand(tenant, contact, AssigneeRef("id", "17")), ContactEcho(id=str(i)))
    now = time.time()
    return OpRecord(f"op_{i}", plan, "rid", now, now + 60)


def _accept(store: MemoryStore, ids: range) -> int:
    """Accept a request per id (one contact each); how many times the marks were swept."""
    sweeps, marks = 0, store.pending
    for i in ids:
        assert store.accept_begin_now(_rec(i), 5.0) == "ok"
        if store.pending is not marks:  # a sweep builds the map anew
            sweeps, marks = sweeps + 1, store.pending
    return sweeps


def test_thousands_in_flight_are_swept_a_few_times_not_once_per_request() -> None:
    store = MemoryStore(Clock())
    assert _accept(store, range(5_000)) == 3  # past 1,000, 2,002 and 4,006: all live
    assert len(store.pending) == 5_000


def test_marks_of_requests_that_never_saved_still_go() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    _accept(store, range(1_500))  # one sweep, at 1,001: the next past 2,002
    clock.now += PENDING_S + 1  # those 1,500 were cancelled: never saved
    assert _accept(store, range(1_500, 2_100)) == 1
    assert len(store.pending) == 600  # the 1,500 stale ones went at the sweep, no live one
    assert SWEEP_AT <= store._sweep_pending_at < 2_002  # back down with the live ones


def test_held_locks_are_walked_once_per_doubling_by_the_worker() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    _accept(store, range(3_000))  # each holds its contact's lock
    # A claim reads the clock only to walk a held lock (once per lock): the reads
    # count the walks (the store may be compiled, so its methods cannot be wrapped).

    async def claims() -> int:
        clock.reads = 0
        for _ in range(50):  # the worker's polls and wake-ups
            assert await store.claim(clock.now, 10, 5.0, "w") == []
        return clock.reads

    assert asyncio.run(claims()) == 3_000  # once, at the first claim; the next at 6,000
    clock.now += 60  # every hold expired (hold 5 s, +1 margin at most)
    _accept(store, range(3_000, 6_500))
    walked = asyncio.run(claims())
    assert walked >= 6_000 and len(store.locks) == 3_500  # the expired 3,000 went


def _burst(i: int, assignee: str = "17") -> OpRecord:
    """Operation ``i`` of a burst on one contact: with the same assignee, one intent."""
    tenant = TenantContext("t-aelyst", "US")
    contact = ContactRef("id", "7")
    plan = Plan("assign", "app", "t-aelyst", "aelyst-sb",
                AssignCommand(tenant, contact, AssigneeRef("id", assignee)), ContactEcho(id="7"))
    now = time.time()
    return OpRecord(f"op_{i}", plan, "rid", now, now + 60)


def test_a_burst_on_one_contact_takes_and_frees_its_lock_without_walking_the_holders() -> None:
    # A burst of identical requests shares its contact's lock (one run), so the lock has
    # as many holders as requests in flight. Every take used to rebuild the holder map
    # to drop the expired, and so did every release while others held: O(in flight) per
    # request, 5% of the gateway's instructions per request at 64 connections.
    store = MemoryStore(Clock())
    recs = [_burst(i) for i in range(1_000)]
    rebuilds, holders = 0, None
    for rec in recs:
        assert store.accept_begin_now(rec, 5.0) == "ok"  # one run: all hold at once
        lock = store.locks[rec.contact]
        if lock.holders is not holders:  # a sweep builds the map anew
            rebuilds, holders = rebuilds + 1, lock.holders
    assert len(store.locks[recs[0].contact].holders) == 1_000
    assert rebuilds <= 8  # created, then swept once per doubling: 17, 35, 71 ... 561
    for rec in recs[:-1]:
        store.unlock(rec)
        assert store.locks[rec.contact].holders is holders  # let go of, not rebuilt
    store.unlock(recs[-1])
    assert recs[-1].contact not in store.locks  # the last holder gone: the lock is free


def test_expired_holders_still_go_and_no_longer_hold_the_contact() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    timed_out = [_burst(i) for i in range(100)]  # attempts that never let go
    for rec in timed_out:
        assert store.accept_begin_now(rec, 5.0) == "ok"
    contact = timed_out[0].contact
    other = _burst(100, assignee="18")  # another intent on the contact: another run
    assert store.accept_begin_now(other, 5.0) == "busy"  # while the run's holds stand
    clock.now += 6  # every hold expired
    assert asyncio.run(store.begin(other, 5.0)) == "ok"
    assert list(store.locks[contact].holders) == [other.id]  # the expired went
    # In one run, the expired go once the holders double: a burst whose attempts time
    # out does not grow the map without bound.
    clock.now += 6
    run = [_burst(i, assignee="18") for i in range(200, 1_200)]
    for rec in run:
        assert store.accept_begin_now(rec, 5.0) == "ok"
        clock.now += 0.01  # 10 s over the burst: the first holds expire as it goes
    assert len(store.locks[contact].holders) <= 2 * 5 / 0.01  # about 500 unexpired at most
