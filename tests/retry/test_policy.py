"""The retry policy as pure functions, and the retry budget on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.config import RetrySpec
from gateway.errors import (
    ContactNotFound,
    GatewayError,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamConnectError,
    UpstreamMalformed,
    UpstreamQueued,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamTimeout,
)
from gateway.redis_conn import connect
from gateway.retry import (
    MemoryBudget,
    RedisBudget,
    Retry,
    RetryBudget,
    RetryState,
    background_action,
    full_jitter,
    next_retry,
    sync_action,
)
from tests.redis_server import RedisServer

SPEC = RetrySpec(max_attempts=4, deadline_s=10, backoff_base_s=0.2, backoff_max_s=1.0,
                 queued_backoff_s=30, give_up_after_s=1800)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("err", [
    UpstreamRejected(), UpstreamAuthFailed(), ContactNotFound(), UpstreamMalformed(),
    RateLimited(retry_after=1), GatewayError(),
])
def test_what_is_never_repeated(err: GatewayError) -> None:
    assert next_retry(err, SPEC, RetryState(), 0.5) is None


@pytest.mark.parametrize(("err", "reason"), [
    (UpstreamServerError(), "5xx"), (UpstreamTimeout(), "timeout"),
    (UpstreamConnectError(), "connect"), (UpstreamRateLimited(), "429"),
])
def test_failures_back_off_with_full_jitter(err: GatewayError, reason: str) -> None:
    state = RetryState()
    waits = [next_retry(err, SPEC, state, 1.0) for _ in range(5)]
    assert [w.wait_s for w in waits if w] == [0.2, 0.4, 0.8, 1.0, 1.0]  # doubling, capped
    assert {(w.reason, w.paced) for w in waits if w} == {(reason, False)}
    assert next_retry(err, SPEC, RetryState(), 0.25) == Retry(reason, 0.05, paced=False)


def test_429_waits_for_retry_after() -> None:
    retry = next_retry(UpstreamRateLimited(retry_after=7), SPEC, RetryState(), 0.0)
    assert retry == Retry("429", 7, paced=True)


def test_449_doubles_from_queued_backoff_to_ten_times() -> None:
    state = RetryState()
    waits = [next_retry(UpstreamQueued(), SPEC, state, 0.0) for _ in range(6)]
    assert [w.wait_s for w in waits if w] == [30, 60, 120, 240, 300, 300]
    assert state.failures == 0  # a 449 is not a failure: it does not grow the backoff
    jittered = next_retry(UpstreamQueued(), SPEC, RetryState(), 1.0)
    assert jittered is not None and jittered.wait_s == 24  # up to 20% earlier


def test_full_jitter_is_bounded() -> None:
    assert full_jitter(SPEC, 1000, 1.0) == SPEC.backoff_max_s


@pytest.mark.parametrize(("retry", "attempts", "remaining", "action"), [
    (Retry("5xx", 0.1, False), 1, 5.0, "retry"),
    (Retry("5xx", 0.1, False), 4, 5.0, "fail"),      # max_attempts reached
    (Retry("5xx", 2.0, False), 1, 1.0, "fail"),      # the backoff does not fit
    (Retry("449", 0.1, True), 1, 5.0, "retry"),
    (Retry("449", 0.1, True), 4, 5.0, "queue"),      # a 449 is never a failure
    (Retry("449", 30, True), 1, 10.0, "queue"),      # the wait does not fit: 202
    (Retry("449", 0.5, True), 1, 1.0, "queue"),      # the wait fits, an attempt after it not
    (Retry("429", 7, True), 1, 3.0, "queue"),        # a long Retry-After is not slept on
    (Retry("429", 0.1, True), 1, 3.0, "retry"),
    (Retry("429", 0.1, True), 4, 3.0, "fail"),       # 429 until the attempts run out: 503
])
def test_sync_actions(retry: Retry, attempts: int, remaining: float, action: str) -> None:
    assert sync_action(retry, SPEC, RetryState(attempts=attempts), remaining, 0.6) == action


def test_background_gives_up_after_give_up_after_s() -> None:
    assert background_action(Retry("449", 30, True), 1000, 1100) == "retry"
    assert background_action(Retry("449", 300, True), 1000, 1100) == "fail"


@pytest.fixture(params=["memory", "redis"])
async def budget(request: pytest.FixtureRequest) -> AsyncIterator[tuple[RetryBudget, Clock]]:
    clock = Clock()
    if request.param == "memory":
        yield MemoryBudget(clock, ratio=0.1, floor=2, window_s=10), clock
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis: Redis = connect(server.url)
    shared = RedisBudget(redis, clock, ratio=0.1, floor=2, window_s=10)
    shared.FLUSH_S = 0.0  # count every first attempt in Redis at once, for the test
    yield shared, clock
    await redis.aclose()


async def test_budget_floor_ratio_and_window(budget: tuple[RetryBudget, Clock]) -> None:
    b, clock = budget
    assert [await b.allow("p") for _ in range(3)] == [True, True, False]  # the floor: 2
    for _ in range(50):
        await b.first("p")
    assert [await b.allow("p") for _ in range(4)] == [True, True, True, False]  # 10% of 50
    assert await b.allow("other")  # per provider
    clock.now += 10.5  # the window slides past every count
    assert [await b.allow("p") for _ in range(3)] == [True, True, False]


async def test_redis_budget_is_shared_between_replicas(redis_server: RedisServer) -> None:
    clock = Clock()
    redis = connect(redis_server.url)
    a, b = (RedisBudget(redis, clock, floor=2) for _ in range(2))
    assert await a.allow("p") and await b.allow("p")
    assert not await a.allow("p") and not await b.allow("p")
    await redis.aclose()
