"""Redis buckets, and the one place that decides what happens when Redis fails.

Three states:

- **normal**: every decision is made by the Redis script. Each answer also
  moves this replica's local bucket (its *shadow*, see :meth:`SharedBackend._shadow`),
  so that if Redis goes away the slots already handed out keep their place and
  replicas that took turns in Redis keep taking turns without it.
- **degraded** (a Redis call or the watch's ping failed or timed out):
  ``ratelimit.on_redis_error`` decides. ``fail_closed`` refuses every request
  (429, Retry-After); ``local`` decides in this process at the bucket's rate
  divided by ``ratelimit.replicas``, so the replicas together stay within the one
  real limit, except that each keeps a burst of at least one: where ``burst`` is
  smaller than ``replicas`` they can exceed it by ``replicas - burst`` in a short
  window. ``gateway_ratelimit_degraded`` is 1 meanwhile.
- **handover** (Redis is back): for ``probe_interval_s + max_wait`` every request
  needs both a local slot and a Redis slot, and waits for the later one. Another
  replica may not have noticed the return yet and still spends its local share,
  and local slots handed out before the return are still to be used; both are
  over once that span has passed.

A watch pings Redis every ``probe_interval_s`` in every state, so a replica
notices an outage (and the return) even while all its requests are asleep in
reservations. It runs in rounds, bounded in number; a decision starts a new
round when the last one ended (an idle replica stops pinging).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from gateway.config import LimiterSpec
from gateway.ratelimit.gcra import US, Bucket, Decision
from gateway.ratelimit.memory import Clock, MemoryBackend
from gateway.ratelimit.redis_backend import BackendUnavailable, RedisBackend

log = logging.getLogger("gateway")

#: Pings per watch task while Redis answers; the next decision starts a new task once
#: these are done. While Redis does not answer, the watch goes on until it does (or the
#: gateway closes): the degraded gauge must clear even on a replica no request reaches.
_WATCH_ROUNDS = 240


class Backend(Protocol):
    """What the limiter needs of a store of buckets."""

    async def reserve(self, key: str, bucket: Bucket, max_wait_s: float,
                      floor_s: float = 0.0) -> Decision:
        """Reserve a slot no later than ``max_wait_s`` from now (and not before
        ``floor_s``), or refuse without changing anything. Never raises."""
        ...

    async def pause(self, key: str, bucket: Bucket, seconds: float) -> None:
        """Let nothing through this bucket for ``seconds``, for every replica. Never raises."""
        ...

    async def close(self) -> None: ...


class SharedBackend:
    """:class:`RedisBackend` with its fallback; see the module docstring."""

    def __init__(self, redis: RedisBackend, local: MemoryBackend,
                 policy: Callable[[], LimiterSpec], on_degraded: Callable[[bool], None],
                 clock: Clock, *, probe_interval_s: float = 0.25) -> None:
        self._redis, self._local, self._policy = redis, local, policy
        self._on_degraded, self._clock = on_degraded, clock
        self.probe_interval_s = probe_interval_s
        self.degraded = False
        self._back_at = -float("inf")  # when Redis last came back
        self._watch: asyncio.Task[None] | None = None

    async def reserve(self, key: str, bucket: Bucket, max_wait_s: float,
                      floor_s: float = 0.0) -> Decision:
        self._ensure_watch()
        if self.degraded:
            return self._fallback(key, bucket, max_wait_s, floor_s)
        handover = (self._clock() - self._back_at < self.probe_interval_s + max_wait_s
                    and self._policy().on_redis_error == "local")
        local: Decision | None = None
        if handover:
            local = self._local.reserve_now(key, self._share(bucket), max_wait_s, floor_s)
            if not local.allowed:
                return local
            # Redis may still refuse; the local slot then stays spent (the safe side).
            floor_s = local.wait_s
        try:
            decision = await self._redis.reserve(key, bucket, max_wait_s, floor_s)
        except BackendUnavailable as e:
            self._degrade(e)
            return local or self._fallback(key, bucket, max_wait_s, floor_s)
        if not handover:
            self._shadow(key, bucket, decision)
        return decision

    async def pause(self, key: str, bucket: Bucket, seconds: float) -> None:
        # Locally too: should Redis go away, the fallback bucket still holds the pause.
        self._local.pause_now(key, self._share(bucket), seconds)
        self._ensure_watch()
        if self.degraded:
            return
        try:
            await self._redis.pause(key, bucket, seconds)
        except BackendUnavailable as e:
            self._degrade(e)

    def _fallback(self, key: str, bucket: Bucket, max_wait_s: float,
                  floor_s: float) -> Decision:
        """The one place Redis failures turn into answers."""
        if self._policy().on_redis_error == "fail_closed":
            retry = int(self.probe_interval_s * US)
            return Decision.of_us(False, retry, 0, 0, 0)
        return self._local.reserve_now(key, self._share(bucket), max_wait_s, floor_s)

    def _share(self, bucket: Bucket) -> Bucket:
        return bucket.share(self._policy().replicas)

    def _shadow(self, key: str, bucket: Bucket, decision: Decision) -> None:
        """Keep the local bucket where a fall-back should start from.

        Not before the shared bucket next lets a request through, or a fall-back
        would overlap the slots already given out; and not before this replica's
        own slot plus one local interval, so that replicas which took turns in the
        shared bucket keep taking turns, instead of all starting at the same moment.
        """
        share = self._share(bucket)
        # A refusal tells as much about the shared bucket as a grant does.
        start_s = decision.reset_s - bucket.tau_us / US
        if decision.allowed:
            start_s = max(start_s, decision.wait_s + (share.interval_us - share.tau_us) / US)
        if start_s > 0:
            self._local.pause_now(key, share, start_s)

    def _degrade(self, error: BaseException) -> None:
        if not self.degraded:
            self.degraded = True
            self._on_degraded(True)
            log.warning("rate limiter: Redis unavailable (%s); policy %s", error,
                        self._policy().on_redis_error)

    def _recover(self) -> None:
        self.degraded = False
        self._back_at = self._clock()
        self._on_degraded(False)
        log.warning("rate limiter: Redis is back; shared buckets again")

    def _ensure_watch(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.get_running_loop().create_task(self._watch_rounds())

    async def _watch_rounds(self) -> None:
        healthy = 0
        while healthy < _WATCH_ROUNDS:  # each ping has the client's timeout
            await asyncio.sleep(self.probe_interval_s)
            try:
                await self._redis.ping()
            except BackendUnavailable as e:
                self._degrade(e)
                continue
            healthy += 1
            if self.degraded:
                await self._redis.drop_idle_connections()
                self._recover()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
