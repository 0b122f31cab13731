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
