"""Buckets in Redis, shared by every replica: one atomic script, one round trip.

The script is :func:`gateway.ratelimit.gcra.reserve` and ``pause`` transcribed to
Lua. It reads the time from Redis itself (``TIME``), so replicas whose clocks
disagree still share one timeline; it touches one key, named with a hash tag
(:mod:`gateway.redis_keys`), so it runs on Redis Cluster; and it sets the key to
expire once the bucket is full again, so idle buckets vanish. redis-py's
:class:`~redis.commands.core.AsyncScript` sends ``EVALSHA`` and loads the script
only when the server does not know it (first use, or after a Redis restart).

Every call is bounded by the client's socket timeouts and by ``timeout_s`` here;
any failure becomes :class:`BackendUnavailable`, the one error the limiter's
fallback policy handles.
"""

from __future__ import annotations

import asyncio
import contextlib

from redis.asyncio import Redis

from gateway.ratelimit.gcra import US, Bucket, Decision
from gateway.redis_conn import REDIS_ERRORS, Script, multiplexer

# KEYS[1]: the bucket. ARGV: op ("r" reserve | "p" pause), interval_us, burst,
# max_wait_us, floor_us (reserve) or pause_us (pause).
# Returns {allowed, wait_us, remaining, reset_us}. Integers only: Lua numbers are
# doubles, exact for microsecond timestamps (< 2^53).
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[2])
local tau = (tonumber(ARGV[3]) - 1) * interval
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if ARGV[1] == 'p' then
  tat = math.max(tat, now + math.max(0, tonumber(ARGV[5])) + tau)
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  return {1, 0, 0, tat - now}
end
local at = math.max(tat - tau, now + math.max(0, tonumber(ARGV[5])), now)
local wait = at - now
if wait > tonumber(ARGV[4]) then
  return {0, wait, 0, tat - now}
end
tat = math.max(tat, at) + interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
return {1, wait, math.floor((now + tau + interval - tat) / interval), tat - now}
"""


class BackendUnavailable(Exception):
    """Redis did not answer in time, or at all. Never reaches a client as such."""


class RedisBackend:
    """Buckets in Redis. ``redis`` must come from :func:`gateway.redis_conn.connect`."""

    def __init__(self, redis: Redis, *, timeout_s: float = 0.3) -> None:
        self._redis = redis
        self._script = Script(redis, SCRIPT)
        self._timeout_s = timeout_s

    async def reserve(self, key: str, bucket: Bucket, max_wait_s: float,
                      floor_s: float = 0.0) -> Decision:
        max_wait_us = int(max_wait_s * US)
        args = ("r", bucket.interval_us, bucket.burst, max_wait_us, int(floor_s * US))
        try:  # as _call, without a coroutine of its own on every request
            allowed, wait, remaining, reset = await self._script(keys=[key], args=args)
        except REDIS_ERRORS as e:
            raise BackendUnavailable(type(e).__name__) from None
        return Decision.of_us(bool(allowed), int(wait), int(remaining), int(reset),
                              max_wait_us)

    async def pause(self, key: str, bucket: Bucket, seconds: float) -> None:
        await self._call(key, "p", bucket, 0, int(seconds * US))

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._redis.ping()
        except REDIS_ERRORS as e:
            raise BackendUnavailable(type(e).__name__) from None

    async def drop_idle_connections(self) -> None:
        """Close pooled connections left idle through an outage.

        They still look open but lead to the old server: the first command on each
        would fail and send the limiter back into degraded mode. Closed, they
        reconnect on their next use.
        """
        multiplexer(self._redis).disconnect_idle()
        with contextlib.suppress(*REDIS_ERRORS):
            async with asyncio.timeout(self._timeout_s):
                await self._redis.connection_pool.disconnect(inuse_connections=False)

    async def _call(self, key: str, op: str, bucket: Bucket, max_wait_us: int,
                    arg_us: int) -> list[int]:
        args = (op, bucket.interval_us, bucket.burst, max_wait_us, arg_us)
        try:
            # The multiplexer bounds each command (connecting included)
            # by the client's socket timeout.
            out = await self._script(keys=[key], args=args)
        except REDIS_ERRORS as e:
            # The exception's text is not kept: it can carry the server address.
            raise BackendUnavailable(type(e).__name__) from None
        return [int(v) for v in out]

    async def close(self) -> None:
        return None  # the client is the app's; it closes it
