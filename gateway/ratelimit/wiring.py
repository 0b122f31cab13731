"""The limiter on the aiohttp application: built with the app's resources, and the
rate-limit headers on every answer of the write routes (:func:`add_headers`).

Headers follow the IETF draft (``RateLimit-Limit``, ``RateLimit-Remaining``,
``RateLimit-Reset`` in seconds) and describe the tightest bucket the request went
through: the client's own when it is the tighter, else the provider's.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable

from aiohttp import web

from gateway.config import ClientSpec, LimiterSpec
from gateway.ratelimit.limiter import BUDGET, Budget, Limiter
from gateway.ratelimit.memory import MemoryBackend
from gateway.ratelimit.redis_backend import RedisBackend
from gateway.ratelimit.shared import Backend, SharedBackend
from gateway.runtime import METRICS, REDIS, RUNTIME, SERVICES

LIMITER = web.AppKey("ratelimiter", Limiter)


def gate_for(app: web.Application) -> Limiter:
    """The gate to pass as ``Call(..., gate=...)`` for every provider call."""
    return app[LIMITER]


def build_limiter(app: web.Application, probe_interval_s: float) -> Limiter:
    metrics = app[METRICS]
    clock = app[SERVICES].clock or asyncio.get_running_loop().time
    local = MemoryBackend(clock)

    def policy() -> LimiterSpec:
        return app[RUNTIME].config.ratelimit

    backend: Backend = local
    if REDIS in app:
        backend = SharedBackend(RedisBackend(app[REDIS]), local, policy,
                                lambda on: metrics.ratelimit_degraded.set(1 if on else 0),
                                clock, probe_interval_s=probe_interval_s)
    metrics.ratelimit_degraded.set(0)
    return Limiter(backend, metrics, policy, clock=clock)


def check_client(app: web.Application, client: ClientSpec) -> Awaitable[None] | None:
    """Start the request's budget and spend the client's bucket (``RateLimited`` if
    spent). None when the answer is already in (in-process buckets), else an awaitable
    that gives it: see :meth:`Limiter.check_client`."""
    BUDGET.set(Budget())
    return app[LIMITER].check_client(client)


def add_headers(response: web.StreamResponse) -> None:
    """The rate-limit headers of the buckets the current request spent, if any (the
    HTTP middleware calls this on every answer: a signal would cost an await each).

    The request's :data:`BUDGET` is read from the context: aiohttp runs each request
    in a task of its own, with a copy of its connection's context, so a budget set by
    :func:`check_client` is seen by its own request's middleware and by no other."""
    budget = BUDGET.get()
    tightest = budget.tightest() if budget is not None else None
    if tightest is None:
        return
    bucket, decision = tightest
    headers = response.headers  # a property: read once
    headers["RateLimit-Limit"] = str(bucket.burst)
    headers["RateLimit-Remaining"] = str(decision.remaining)
    headers["RateLimit-Reset"] = str(math.ceil(decision.reset_s))
