"""Redis goes away and comes back: the fallback policy, against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import AsyncIterator

import pytest

from gateway.config import LimiterSpec
from gateway.ratelimit import shared
from gateway.ratelimit.gcra import Bucket
from gateway.ratelimit.memory import MemoryBackend
from gateway.ratelimit.redis_backend import RedisBackend
from gateway.ratelimit.shared import SharedBackend
from gateway.redis_conn import connect
from tests.redis_server import RedisServer

PROBE_S = 0.2


class Rig:
    """One replica's shared backend on the test's Redis, recording its state changes."""

    def __init__(self, server: RedisServer, policy: LimiterSpec) -> None:
        loop = asyncio.get_running_loop()
        self.policy = policy
        self.states: list[bool] = []
        self.client = connect(server.url)
        self.shared = SharedBackend(RedisBackend(self.client), MemoryBackend(loop.time),
                                    lambda: self.policy, self.states.append, loop.time,
                                    probe_interval_s=PROBE_S)

    async def until_state(self, degraded: bool, within_s: float = 5.0) -> float:
        """Seconds until ``shared.degraded`` equals ``degraded`` (bounded poll)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(int(within_s / 0.02)):
            if self.shared.degraded == degraded:
                return loop.time() - start
            await asyncio.sleep(0.02)
        raise AssertionError(f"degraded is still {self.shared.degraded}")

    async def close(self) -> None:
        await self.shared.close()
        await self.client.aclose()


@contextlib.asynccontextmanager
async def rigs(server: RedisServer, n: int = 1, on_redis_error: str = "local",
               ) -> AsyncIterator[list[Rig]]:
    policy = LimiterSpec.model_validate({"on_redis_error": on_redis_error, "replicas": 2})
    made = [Rig(server, policy) for _ in range(n)]
    try:
        yield made
    finally:
        for r in made:
            await r.close()


@pytest.fixture
async def rig(redis_server: RedisServer) -> AsyncIterator[Rig]:
    async with rigs(redis_server) as (r,):
        yield r


async def test_redis_killed_degrades_at_once_and_recovers_by_itself(
        rig: Rig, redis_server: RedisServer) -> None:
    bucket = Bucket.of(10, 2)
    assert (await rig.shared.reserve("k", bucket, 0.0)).allowed
    redis_server.kill()
    d = await rig.shared.reserve("other", bucket, 1.0)
    assert rig.shared.degraded and rig.states == [True]
    # Locally, at the rate divided by the 2 replicas: one every 0.2 s, burst 1.
    assert d.allowed and d.wait_s == 0.0
    d2 = await rig.shared.reserve("other", bucket, 1.0)
    assert 0.15 < d2.wait_s <= 0.2
    redis_server.start()
    back_after = await rig.until_state(False)
    assert rig.states == [True, False]
    print(f"recovered {back_after:.2f} s after redis-server was up again")


async def test_an_outage_is_noticed_while_no_request_asks(
        rig: Rig, redis_server: RedisServer) -> None:
    # Every request of a busy replica may be asleep in a reservation: the watch,
    # not the next decision, has to notice.
    assert (await rig.shared.reserve("k", Bucket.of(10, 2), 0.0)).allowed
    redis_server.kill()
    noticed = await rig.until_state(True, within_s=2.0)
    redis_server.start()
    back = await rig.until_state(False, within_s=2.0)
    assert rig.states == [True, False]
    print(f"outage noticed after {noticed:.2f} s, return after {back:.2f} s")


async def test_an_outage_longer_than_the_watch_still_clears_without_requests(
        rig: Rig, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The watch stops after a number of answered pings; failed pings must not count,
    # or an idle replica stays "degraded" (and its alert firing) after Redis is back.
    monkeypatch.setattr(shared, "_WATCH_ROUNDS", 3)
    assert (await rig.shared.reserve("k", Bucket.of(10, 2), 0.0)).allowed
    redis_server.kill()
    await rig.until_state(True, within_s=2.0)
    await asyncio.sleep(PROBE_S * 6)  # more failed pings than the watch's rounds
    redis_server.start()
    await rig.until_state(False, within_s=5.0)
    assert rig.states == [True, False]


async def test_fail_closed_refuses_while_redis_is_away(redis_server: RedisServer) -> None:
    async with rigs(redis_server, on_redis_error="fail_closed") as (rig,):
        redis_server.kill()
        refused = await rig.shared.reserve("k", Bucket.of(10, 2), 1.0)
        assert not refused.allowed and refused.retry_after_s == PROBE_S
        redis_server.start()
        await rig.until_state(False)
        assert (await rig.shared.reserve("k", Bucket.of(10, 2), 1.0)).allowed


async def test_the_fallback_keeps_the_slots_redis_already_gave_out(
        rig: Rig, redis_server: RedisServer) -> None:
    bucket = Bucket.of(5, 1)
    waits = [(await rig.shared.reserve("k", bucket, 2.0)).wait_s for _ in range(6)]
    assert 0.9 < waits[-1] <= 1.0  # slots handed out up to ~1 s ahead
    redis_server.kill()
    local = await rig.shared.reserve("k", bucket, 2.0)
    # Not before the last shared slot plus one interval (no overlap with the queue);
    # this replica took that slot, so not before it plus its local interval either.
    assert local.allowed and 1.3 < local.wait_s <= 1.4


async def test_replicas_that_took_turns_keep_taking_turns_without_redis(
        redis_server: RedisServer) -> None:
    loop = asyncio.get_running_loop()
    bucket = Bucket.of(5, 1)
    slots = []
    async with rigs(redis_server, 2) as (a, b):
        for i in range(12):  # alternating, as two busy replicas do; the queue fills up
            d = await (a if i % 2 else b).shared.reserve("k", bucket, 2.0)
            if d.allowed:
                slots.append(loop.time() + d.wait_s)
        redis_server.kill()
        for i in range(6):
            d = await (a if i % 2 else b).shared.reserve("k", bucket, 5.0)
            assert d.allowed
            slots.append(loop.time() + d.wait_s)
    slots.sort()
    # One interval (0.2 s) between any two slots, less what passes between calls.
    assert min(y - x for x, y in itertools.pairwise(slots)) > 0.15


async def test_after_the_return_requests_take_the_later_of_both_slots(
        rig: Rig, redis_server: RedisServer) -> None:
    bucket = Bucket.of(10, 1)
    redis_server.kill()
    await rig.shared.reserve("k", bucket, 1.0)
    redis_server.start()
    await rig.until_state(False)
    # Handover: Redis alone would allow 10/s; the local share (5/s) still applies,
    # since another replica may still be spending its local share.
    waits = [(await rig.shared.reserve("k", bucket, 2.0)).wait_s for _ in range(3)]
    assert waits[1] - waits[0] > 0.15 and waits[2] - waits[1] > 0.15


async def test_a_hanging_redis_degrades_within_its_timeout(
        rig: Rig, redis_server: RedisServer) -> None:
    bucket = Bucket.of(10, 2)
    assert (await rig.shared.reserve("k", bucket, 0.0)).allowed
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        async with asyncio.timeout(5):
            d = await rig.shared.reserve("k", bucket, 1.0)
        assert rig.shared.degraded and d.allowed
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await rig.until_state(False)


async def test_a_pause_while_redis_is_away_still_holds_locally(
        rig: Rig, redis_server: RedisServer) -> None:
    bucket = Bucket.of(10, 2)
    redis_server.kill()
    await rig.shared.pause("k", bucket, 1.0)
    assert rig.shared.degraded
    d = await rig.shared.reserve("k", bucket, 2.0)
    assert 0.9 < d.wait_s <= 1.0
