"""Properties of the in-process bucket under a fake clock (hypothesis).

- In any window of length W, the slots granted number at most burst + rate * W,
  whatever the arrivals, wait budgets and floors.
- A steady stream under the rate is never delayed.
- A refusal changes nothing, and its retry_after is exact.
- The cache of buckets is bounded and forgets idle buckets.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ratelimit.gcra import US, Bucket
from gateway.ratelimit.memory import MemoryBackend


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


rates = st.floats(min_value=0.2, max_value=200.0, allow_nan=False)
bursts = st.integers(min_value=1, max_value=20)
arrival = st.tuples(
    st.floats(min_value=0.0, max_value=0.5),          # gap since the previous arrival (s)
    st.floats(min_value=0.0, max_value=3.0),          # max_wait_s
    st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=1.0)),  # floor_s
)


def _max_in_window(slots: list[int], rate: float, burst: int) -> float:
    """The worst excess over burst + rate * W across all windows bounded by two slots."""
    slots = sorted(slots)
    worst = float("-inf")
    for i, start in enumerate(slots):
        for j in range(i, len(slots)):
            width_s = (slots[j] - start) / US
            worst = max(worst, (j - i + 1) - (burst + rate * width_s))
    return worst


@settings(max_examples=200, deadline=None)
@given(rate=rates, burst=bursts, arrivals=st.lists(arrival, min_size=1, max_size=80))
def test_no_window_admits_more_than_burst_plus_rate_times_length(
        rate: float, burst: int, arrivals: list[tuple[float, float, float]]) -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock)
    bucket = Bucket.of(rate, burst)
    slots: list[int] = []
    for gap, max_wait, floor in arrivals:
        clock.now += gap
        d = backend.reserve_now("k", bucket, max_wait, floor)
        if d.allowed:
            assert d.wait_s <= max_wait + 1e-9 and d.wait_s >= floor - 1e-6
            slots.append(int(clock.now * US) + round(d.wait_s * US))
    assert _max_in_window(slots, rate, burst) <= 1e-9


@settings(max_examples=200, deadline=None)
@given(rate=rates, burst=bursts,
       extra=st.lists(st.floats(min_value=0.0, max_value=0.3), min_size=1, max_size=100))
def test_a_steady_stream_under_the_rate_is_never_delayed(
        rate: float, burst: int, extra: list[float]) -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock)
    bucket = Bucket.of(rate, burst)
    for more in extra:
        d = backend.reserve_now("k", bucket, max_wait_s=0.0)
        assert d.allowed and d.wait_s == 0.0
        # "Under the rate": at least 1/rate apart, plus the bucket's resolution
        # (intervals are whole microseconds, rounded up).
        clock.now += 1.0 / rate + 2e-6 + more


@settings(max_examples=200, deadline=None)
@given(rate=rates, burst=bursts, n=st.integers(min_value=1, max_value=40),
       max_wait=st.floats(min_value=0.0, max_value=1.0))
def test_a_refusal_changes_nothing_and_retry_after_is_exact(
        rate: float, burst: int, n: int, max_wait: float) -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock)
    bucket = Bucket.of(rate, burst)
    for _ in range(n):
        backend.reserve_now("k", bucket, max_wait)
    refused = backend.reserve_now("k", bucket, max_wait)
    if refused.allowed:
        return
    again = backend.reserve_now("k", bucket, max_wait)
    assert not again.allowed and again.wait_s == refused.wait_s
    clock.now += refused.retry_after_s
    assert backend.reserve_now("k", bucket, max_wait).allowed


def test_first_burst_goes_at_once_then_one_per_interval() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock)
    bucket = Bucket.of(5, 3)
    waits = [backend.reserve_now("k", bucket, 10.0).wait_s for _ in range(6)]
    assert waits == [0.0, 0.0, 0.0, 0.2, 0.4, 0.6]
    remaining = backend.reserve_now("other", bucket, 0.0).remaining
    assert remaining == 2


def test_a_pause_holds_the_bucket_until_its_time_is_up() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock)
    bucket = Bucket.of(5, 1)
    backend.pause_now("k", bucket, 1.5)
    assert backend.reserve_now("k", bucket, 2.0).wait_s == 1.5
    assert not backend.reserve_now("k", bucket, 1.0).allowed


def test_the_cache_is_bounded_and_forgets_idle_buckets() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock, maxsize=500)
    bucket = Bucket.of(5, 1)
    for i in range(10_000):
        backend.reserve_now(f"path-{i}", bucket, 0.0)
        assert backend.stored <= 500
    assert 450 <= len(backend) <= 500
    # The most recently written buckets are the ones kept: the last one still has no slot.
    assert not backend.reserve_now("path-9999", bucket, 0.0).allowed
    clock.now += 5.0  # every bucket is full again: none is live, and a sweep drops them
    assert len(backend) == 0
    for i in range(501):
        backend.reserve_now(f"other-{i}", bucket, 0.0)
    assert backend.stored <= 500 and len(backend) >= 450
