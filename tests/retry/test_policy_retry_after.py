"""A provider's Retry-After never shortens the policy's own wait below its backoff.

``Retry-After: 0`` (or an HTTP date in the past, read as 0) on an Aelyst 449
must not turn the minutes-scale queued schedule into a tight loop (449 retries
are not budgeted), and on a 429 it must not turn the failure backoff into one.
"""

from __future__ import annotations

from email.utils import formatdate

import pytest

from gateway.config import RetrySpec
from gateway.errors import UpstreamQueued, UpstreamRateLimited
from gateway.retry import RetryState, background_action, next_retry, sync_action
from gateway.spi import AssigneeRef, UpstreamResponse
from providers.aelyst import wire

SPEC = RetrySpec(max_attempts=4, deadline_s=10, backoff_base_s=0.2, backoff_max_s=1.0,
                 queued_backoff_s=30, give_up_after_s=1800)
QUEUED_BODY = (b'{"code": 449, "message": "Your request cannot be processed at the moment as it'
               b' is currently in queue. Please try again in a few minutes."}')
PAST = formatdate(1_000_000_000, usegmt=True)  # 2001: long past


def _waits(err: UpstreamQueued | UpstreamRateLimited, rand: float, n: int = 6) -> list[float]:
    state = RetryState()
    out = []
    for _ in range(n):
        retry = next_retry(err, SPEC, state, rand)
        assert retry is not None
        out.append(retry.wait_s)
    return out


@pytest.mark.parametrize("retry_after", [0.0, 5.0])
def test_449_retry_after_shorter_than_the_schedule_is_not_taken(retry_after: float) -> None:
    assert _waits(UpstreamQueued(retry_after=retry_after), 0.0) == [30, 60, 120, 240, 300, 300]


def test_449_past_http_date_keeps_the_schedule() -> None:
    # The whole path: Aelyst's answer, the adapter's reading, the policy's wait.
    response = UpstreamResponse(449, {"Retry-After": PAST}, QUEUED_BODY)
    with pytest.raises(UpstreamQueued) as caught:
        wire.read_assignee(response, AssigneeRef("id", "17"))
    assert caught.value.retry_after == 0.0
    assert _waits(caught.value, 0.0, 3) == [30, 60, 120]


def test_449_retry_after_longer_than_the_schedule_is_honoured() -> None:
    state = RetryState()
    first = next_retry(UpstreamQueued(retry_after=100), SPEC, state, 0.0)
    assert first is not None and (first.wait_s, first.paced) == (100, True)
    second = next_retry(UpstreamQueued(), SPEC, state, 0.0)
    assert second is not None and second.wait_s == 60  # the schedule still advanced


def test_449_retry_after_0_inside_a_request_is_queued_not_spun() -> None:
    retry = next_retry(UpstreamQueued(retry_after=0), SPEC, RetryState(attempts=1), 0.0)
    assert retry is not None
    assert sync_action(retry, SPEC, RetryState(attempts=1), 9.0, 0.6) == "queue"


def test_449_retry_after_0_in_the_background_gives_up_after_a_few_attempts() -> None:
    # A simulated clock: each retry is due after its wait; the operation gives up
    # at give_up_after_s. Minutes apart, that is a handful of attempts, not a loop.
    state, now, attempts = RetryState(), 0.0, 1
    while attempts < 1000:
        retry = next_retry(UpstreamQueued(retry_after=0), SPEC, state, 0.0)
        assert retry is not None and retry.reason == "449"
        if background_action(retry, now, SPEC.give_up_after_s) == "fail":
            break
        now += retry.wait_s
        attempts += 1
    assert attempts <= 10
    assert now >= SPEC.give_up_after_s - 300


@pytest.mark.parametrize("rand", [1.0, 0.5])
def test_429_retry_after_0_backs_off_like_a_429_without_one(rand: float) -> None:
    assert _waits(UpstreamRateLimited(retry_after=0), rand, 5) == \
        _waits(UpstreamRateLimited(), rand, 5)
    assert _waits(UpstreamRateLimited(retry_after=0), 1.0, 5) == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_429_retry_after_stays_paced_and_a_long_one_is_honoured() -> None:
    state = RetryState()
    short = next_retry(UpstreamRateLimited(retry_after=0), SPEC, state, 1.0)
    assert short is not None and (short.reason, short.wait_s, short.paced) == ("429", 0.2, True)
    long = next_retry(UpstreamRateLimited(retry_after=7), SPEC, state, 1.0)
    assert long is not None and (long.wait_s, long.paced) == (7, True)
