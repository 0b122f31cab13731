"""When to repeat an upstream call, how long to wait first, and how many repeats to allow.

Classification comes from the error tree (``retryable`` and ``reason`` on each
error, see :mod:`gateway.errors`):

- never repeated: request errors, and what the provider refused on purpose
  (400, 401, 403, 404, 409 answers) or answered unreadably (the provider may
  have acted on it);
- ``connect`` (refused, reset), ``5xx`` and ``timeout``: full-jitter
  exponential backoff, ``uniform(0, min(backoff_max_s, backoff_base_s * 2**n))``;
- ``429``: after the provider's ``Retry-After``, but never sooner than the
  backoff (all of it when it sends none);
- ``449`` (Aelyst's "in queue, try again in a few minutes"): ``queued_backoff_s``,
  doubling, capped at ten times the first wait (DESIGN's 30 s up to 300 s); a
  ``Retry-After`` (undocumented for 449) may lengthen a wait, never shorten it.

A wait the provider asked for (449, 429 with ``Retry-After``) is *paced*: when
it and one more attempt do not fit in what is left of a synchronous deadline,
the work is queued (202) instead of slept on. A backoff that does not fit ends
the request with the last error.

:class:`RetryBudget` keeps retries caused by failures (``5xx``, ``timeout``,
``connect``, ``429``) to about a tenth of first attempts per provider over a
sliding window, so an outage does not multiply the load on a provider. ``449``
retries are not budgeted: they are paced minutes apart by the provider's own
schedule and carry work the gateway has promised to finish.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from redis.asyncio import Redis

from gateway import redis_keys
from gateway.config import RetrySpec
from gateway.errors import GatewayError
from gateway.redis_conn import REDIS_ERRORS, Script

log = logging.getLogger("gateway")

#: The 449 schedule doubles up to this multiple of its first wait.
QUEUED_CAP_FACTOR = 10
#: Jitter on the 449 schedule: a wait is shortened by up to this fraction, so a
#: crowd of operations queued together does not come back in one burst.
QUEUED_JITTER = 0.2
#: Retry reasons the budget does not count (see the module docstring).
UNBUDGETED = frozenset({"449"})

Action = Literal["retry", "queue", "fail"]


class History(Protocol):
    """What an operation's past says about its next wait (an OpRecord is one)."""

    attempts: int
    failures: int  # backoff-driven failures so far: the backoff exponent
    queued_wait_s: float | None  # the last 449 schedule step, doubled next time


@dataclass
class RetryState:
    attempts: int = 0
    failures: int = 0
    queued_wait_s: float | None = None


@dataclass(init=False, unsafe_hash=True)
class Retry:
    reason: Final[str]
    wait_s: Final[float]
    paced: Final[bool]  # the provider asked for this wait (449, 429 with Retry-After)

    def __init__(self, reason: str, wait_s: float, paced: bool) -> None:
        self.reason = reason
        self.wait_s = wait_s
        self.paced = paced

    @property
    def budgeted(self) -> bool:
        return self.reason not in UNBUDGETED


def full_jitter(spec: RetrySpec, failures: int, rand: float) -> float:
    """The AWS "full jitter" backoff for the ``failures``-th consecutive failure (1-based)."""
    exp = min(max(failures - 1, 0), 32)  # 2**32 * base is past any cap
    return rand * min(spec.backoff_max_s, spec.backoff_base_s * 2.0**exp)


def queued_wait(spec: RetrySpec, previous: float | None, rand: float) -> tuple[float, float]:
    """(this 449 wait with jitter, the schedule value to double next time)."""
    cap = spec.queued_backoff_s * QUEUED_CAP_FACTOR
    step = spec.queued_backoff_s if previous is None else min(previous * 2, cap)
    return step * (1 - QUEUED_JITTER * rand), step


def next_retry(err: GatewayError, spec: RetrySpec, state: History, rand: float) -> Retry | None:
    """The wait before repeating after ``err``, or None when repeating cannot help.

    Updates ``state`` (the backoff exponent and the 449 schedule) as a side effect.
    """
    if not err.retryable or err.reason is None:
        return None
    if err.reason == "449":
        wait, state.queued_wait_s = queued_wait(spec, state.queued_wait_s, rand)
        # No Retry-After is documented for 449: a longer one is honoured, a shorter
        # one (0, a past date) would turn "a few minutes" into an unbudgeted loop.
        return Retry("449", max(wait, err.retry_after or 0.0), paced=True)
    state.failures += 1
    backoff = full_jitter(spec, state.failures, rand)
    if err.reason == "429" and err.retry_after is not None:
        # At least the backoff a 429 without Retry-After gets: "Retry-After: 0"
        # must not let one operation spend the provider's retry budget at once.
        return Retry("429", max(backoff, err.retry_after), paced=True)
    return Retry(err.reason, backoff, paced=False)


def sync_action(retry: Retry, spec: RetrySpec, state: History, remaining_s: float,
                attempt_s: float) -> Action:
    """Within a request's deadline: sleep and retry, hand over to the background, or fail.

    A backoff retry takes whatever time is left; a paced one (the provider asked
    for the wait) is taken only with a whole attempt (``attempt_s``) after it, since
    the background can do it as well without the deadline's squeeze.
    """
    if retry.paced:
        fits = retry.wait_s + attempt_s <= remaining_s
        if retry.reason == "449":  # the provider has the work queued: late, never failed
            return "retry" if fits and state.attempts < spec.max_attempts else "queue"
        if state.attempts >= spec.max_attempts:
            return "fail"
        return "retry" if fits else "queue"
    if state.attempts >= spec.max_attempts:
        return "fail"
    return "retry" if retry.wait_s < remaining_s else "fail"


def background_action(retry: Retry, now: float, give_up_at: float) -> Action:
    """A queued operation retries until ``give_up_after_s``, then fails with its last error."""
    return "retry" if now + retry.wait_s < give_up_at else "fail"


class RetryBudget(Protocol):
    """Retries at most ``ratio`` of first attempts (or ``floor``) per provider per window."""

    async def first(self, provider: str) -> None:
        """Count a first attempt."""
        ...

    async def allow(self, provider: str) -> bool:
        """Count and allow one retry, or refuse it (counting nothing)."""
        ...


class MemoryBudget:
    """One process's budget: per-second counters over a sliding window."""

    def __init__(self, clock: Callable[[], float], *, ratio: float = 0.1, floor: int = 10,
                 window_s: int = 10) -> None:
        self.clock, self.ratio, self.floor, self.window_s = clock, ratio, floor, window_s
        self._slots: dict[str, dict[tuple[str, int], int]] = {}

    def _counts(self, provider: str) -> tuple[dict[tuple[str, int], int], int, int, int]:
        now = math.floor(self.clock())
        slots = self._slots.setdefault(provider, {})
        for key in [k for k in slots if k[1] <= now - self.window_s]:
            del slots[key]
        firsts = sum(v for (kind, _), v in slots.items() if kind == "f")
        retries = sum(v for (kind, _), v in slots.items() if kind == "r")
        return slots, now, firsts, retries

    async def first(self, provider: str) -> None:
        self.first_now(provider)

    def first_now(self, provider: str) -> None:
        """:meth:`first`, at once (the executor calls it directly: no coroutine each).

        Every request counts one: within a second already seen, only the increment (old
        seconds are pruned when a new second starts, and by every allow())."""
        slots = self._slots.get(provider)
        key = ("f", math.floor(self.clock()))
        if slots is None or key not in slots:
            slots, now, _, _ = self._counts(provider)
            key = ("f", now)
        slots[key] = slots.get(key, 0) + 1

    async def allow(self, provider: str) -> bool:
        slots, now, firsts, retries = self._counts(provider)
        if retries >= max(self.floor, firsts * self.ratio):
            return False
        slots[("r", now)] = slots.get(("r", now), 0) + 1
        return True


# One hash per provider, fields "f:<second>" and "r:<second>"; old seconds are
# pruned by every call, and the key expires after two idle windows.
_BUDGET_LUA = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local firsts, retries = 0, 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local kind, sec = string.match(all[i], '^(%a):(%d+)$')
  if sec == nil or tonumber(sec) <= now - window then
    redis.call('HDEL', KEYS[1], all[i])
  elseif kind == 'f' then firsts = firsts + tonumber(all[i + 1])
  else retries = retries + tonumber(all[i + 1]) end
end
if ARGV[3] == 'first' then
  redis.call('HINCRBY', KEYS[1], 'f:' .. now, tonumber(ARGV[6]))
elseif retries >= math.max(tonumber(ARGV[5]), firsts * tonumber(ARGV[4])) then
  return 0
else
  redis.call('HINCRBY', KEYS[1], 'r:' .. now, 1)
end
redis.call('PEXPIRE', KEYS[1], window * 2000)
return 1
"""


class RedisBudget:
    """The budget shared by every replica; falls back to this replica's own when Redis fails.

    First attempts are counted locally and added to Redis at most once a second,
    so a request pays no Redis round trip for them; retries are decided in Redis.
    """

    FLUSH_S = 1.0

    def __init__(self, redis: Redis, clock: Callable[[], float], *, ratio: float = 0.1,
                 floor: int = 10, window_s: int = 10) -> None:
        self.clock, self.ratio, self.floor, self.window_s = clock, ratio, floor, window_s
        self._script = Script(redis, _BUDGET_LUA)
        self.local = MemoryBudget(clock, ratio=ratio, floor=floor, window_s=window_s)
        self._pending: dict[str, int] = {}
        self._flushed: dict[str, float] = {}

    async def _call(self, provider: str, kind: str, count: int = 1) -> bool:
        args: list[str | float] = [math.floor(self.clock()), self.window_s, kind, self.ratio,
                                   self.floor, count]
        return bool(await self._script(keys=[redis_keys.retry_budget(provider)], args=args))

    async def first(self, provider: str) -> None:
        self.local.first_now(provider)
        self._pending[provider] = self._pending.get(provider, 0) + 1
        now = self.clock()
        if now - self._flushed.get(provider, float("-inf")) < self.FLUSH_S:
            return
        count, self._flushed[provider] = self._pending.pop(provider), now
        try:
            await self._call(provider, "first", count)
        except REDIS_ERRORS:
            log.warning("retry budget: Redis unreachable, counting locally")

    async def allow(self, provider: str) -> bool:
        try:
            allowed = await self._call(provider, "retry")
        except REDIS_ERRORS:
            log.warning("retry budget: Redis unreachable, deciding locally")
            return await self.local.allow(provider)
        if allowed:
            await self.local.allow(provider)  # keeps the fallback's view warm
        return allowed
