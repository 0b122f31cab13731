"""The token-bucket arithmetic, shared by every backend: GCRA with reservations.

A bucket of ``burst`` tokens refilled at one token per ``interval_us`` is kept as a
single number, the *theoretical arrival time* ``tat`` (microseconds): the moment the
bucket is full again. A request at ``now`` may go at
``max(now, floor, tat - (burst - 1) * interval)``; granting it moves ``tat`` one
interval past ``max(tat, that moment)``. The grant is a *reservation*: the caller is
told how long to wait instead of polling, and nothing is committed when the wait is
longer than the caller accepts. For any window of length ``W`` the slots granted
number at most ``burst + W / interval``, whatever the order of the calls.

Time is in whole microseconds so that this module and the Redis script
(:mod:`gateway.ratelimit.redis_backend`) compute exactly the same answers.
The Lua script there computes :func:`reserve` and :func:`pause` step for step
(``reserve`` spells its maxima as comparisons, which cost no call); change both
together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

US = 1_000_000


@dataclass(frozen=True, slots=True)
class Bucket:
    """How fast a bucket refills (one token per ``interval_us``) and how much it holds."""

    interval_us: int
    burst: int

    @classmethod
    def of(cls, rate: float, burst: int) -> Bucket:
        # Rounded up: a bucket may be a fraction of a microsecond slower than asked,
        # never faster.
        return cls(max(1, math.ceil(US / rate)), max(1, burst))

    @property
    def tau_us(self) -> int:
        """How far ahead of ``now`` ``tat`` may run while a request still goes at once."""
        return (self.burst - 1) * self.interval_us

    @property
    def rate(self) -> float:
        return US / self.interval_us

    def share(self, replicas: int) -> Bucket:
        """This bucket's share on one of ``replicas`` replicas deciding on their own."""
        if replicas <= 1:
            return self
        return Bucket(self.interval_us * replicas, max(1, self.burst // replicas))


@dataclass(init=False, unsafe_hash=True)
class Decision:
    """One answer of a bucket.

    ``wait_s``: when allowed, how long to wait before going; when refused, how long
    one would have had to wait. ``retry_after_s``: when refused, how long until a
    request would be allowed within the same ``max_wait``. ``remaining``: requests
    that could still go at once. ``reset_s``: until the bucket is full again.
    """

    allowed: Final[bool]
    wait_s: Final[float]
    remaining: Final[int]
    reset_s: Final[float]
    retry_after_s: Final[float]

    def __init__(self, allowed: bool, wait_s: float, remaining: int, reset_s: float,
                 retry_after_s: float = 0.0) -> None:
        self.allowed = allowed
        self.wait_s = wait_s
        self.remaining = remaining
        self.reset_s = reset_s
        self.retry_after_s = retry_after_s

    @classmethod
    def of_us(cls, allowed: bool, wait_us: int, remaining: int, reset_us: int,
              max_wait_us: int) -> Decision:
        # Conditionals, not max(): a builtin call each, on every request's two buckets.
        retry = 0 if allowed else (wait_us - max_wait_us if wait_us - max_wait_us > 1 else 1)
        return Decision(allowed, wait_us / US, remaining if remaining > 0 else 0,
                        (reset_us if reset_us > 0 else 0) / US, retry / US)


def reserve(tat: int | None, now: int, bucket: Bucket, max_wait_us: int,
            floor_us: int = 0) -> tuple[int | None, Decision]:
    """Decide one request; returns the new ``tat`` (None: unchanged) and the decision.

    ``floor_us``: the request may not go before ``now + floor_us`` whatever the
    bucket holds (used when a second bucket already asked this request to wait).
    """
    interval = bucket.interval_us
    tau = (bucket.burst - 1) * interval  # bucket.tau_us
    t = now if tat is None or tat < now else tat
    # at = max(t - tau, now + max(0, floor_us), now), as the Lua script writes it
    at = t - tau
    floor = now + floor_us if floor_us > 0 else now
    if at < floor:
        at = floor
    wait = at - now
    if wait > max_wait_us:
        return None, Decision.of_us(False, wait, 0, t - now, max_wait_us)
    t = (t if t > at else at) + interval
    remaining = (now + tau + interval - t) // interval
    return t, Decision.of_us(True, wait, remaining, t - now, max_wait_us)


def pause(tat: int | None, now: int, bucket: Bucket, pause_us: int) -> int:
    """The new ``tat`` after the provider asked for no request before ``now + pause_us``."""
    t = now if tat is None or tat < now else tat
    return max(t, now + max(0, pause_us) + bucket.tau_us)
