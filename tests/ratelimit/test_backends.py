"""One behavioural suite, run against the in-process and the Redis backend.

The clock is real here (Redis keeps its own), so the assertions leave room for
the time that passes between two calls; none asserts how fast anything runs.
"""

from __future__ import annotations

import asyncio
import itertools

from gateway.ratelimit.gcra import Bucket
from gateway.ratelimit.shared import Backend


async def test_a_burst_goes_at_once_and_the_next_request_waits_one_interval(
        backend: Backend) -> None:
    bucket = Bucket.of(1, 3)  # slow enough that call-to-call time is a rounding error
    first = [await backend.reserve("k", bucket, 5.0) for _ in range(3)]
    assert [d.wait_s for d in first] == [0.0, 0.0, 0.0]
    assert [d.remaining for d in first] == [2, 1, 0]
    nxt = await backend.reserve("k", bucket, 5.0)
    assert nxt.allowed and 0.5 < nxt.wait_s <= 1.0
    assert nxt.remaining == 0 and 3.5 < nxt.reset_s <= 4.0


async def test_a_request_past_its_wait_budget_is_refused_and_costs_nothing(
        backend: Backend) -> None:
    bucket = Bucket.of(1, 1)
    assert (await backend.reserve("k", bucket, 0.0)).allowed
    refused = await backend.reserve("k", bucket, 0.2)
    assert not refused.allowed
    assert 0.5 < refused.wait_s <= 1.0
    assert 0.3 < refused.retry_after_s <= 0.8  # when it would fit within 0.2 s
    # Nothing was committed: the same wait is offered again, not one interval more.
    later = await backend.reserve("k", bucket, 2.0)
    assert later.allowed and later.wait_s <= 1.0


async def test_waiting_callers_get_distinct_slots_one_interval_apart(backend: Backend) -> None:
    bucket = Bucket.of(10, 1)
    decisions = await asyncio.gather(*(backend.reserve("k", bucket, 0.45) for _ in range(20)))
    waits = sorted(d.wait_s for d in decisions if d.allowed)
    assert len(waits) == 5  # now, +0.1, +0.2, +0.3, +0.4
    assert all(b - a > 0.09 for a, b in itertools.pairwise(waits))
    assert all(d.retry_after_s > 0 for d in decisions if not d.allowed)


async def test_buckets_are_independent(backend: Backend) -> None:
    bucket = Bucket.of(1, 1)
    assert (await backend.reserve("a", bucket, 0.0)).allowed
    assert not (await backend.reserve("a", bucket, 0.0)).allowed
    assert (await backend.reserve("b", bucket, 0.0)).allowed


async def test_a_pause_holds_every_request_until_its_time_is_up(backend: Backend) -> None:
    bucket = Bucket.of(100, 5)
    await backend.pause("k", bucket, 1.5)
    refused = await backend.reserve("k", bucket, 1.0)
    assert not refused.allowed and 1.0 < refused.wait_s <= 1.5
    allowed = await backend.reserve("k", bucket, 2.0)
    assert allowed.allowed and 1.0 < allowed.wait_s <= 1.5


async def test_a_pause_never_shortens_a_longer_queue(backend: Backend) -> None:
    bucket = Bucket.of(1, 1)
    for _ in range(4):
        await backend.reserve("k", bucket, 10.0)  # slots up to ~3 s away
    await backend.pause("k", bucket, 0.5)
    d = await backend.reserve("k", bucket, 10.0)
    assert 3.0 < d.wait_s <= 4.0


async def test_a_floor_delays_the_slot_and_what_follows(backend: Backend) -> None:
    bucket = Bucket.of(10, 2)
    d = await backend.reserve("k", bucket, 2.0, floor_s=1.0)
    assert d.allowed and 0.9 < d.wait_s <= 1.0
    # The bucket counts the request as gone at its slot: nothing overtakes it.
    after = await backend.reserve("k", bucket, 2.0)
    assert 0.9 < after.wait_s <= 1.0
