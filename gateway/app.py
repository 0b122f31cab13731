"""The HTTP application: its routes and the lifecycle of its resources.

Each subsystem installs itself on the ``Application``; resources are opened
and closed together in ``cleanup_ctx``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import handlers, redis_conn
from gateway.auth import ClientAuth
from gateway.config import Config
from gateway.executor import EXECUTOR, Executor, GateFactory
from gateway.http import MAX_BODY, UNMATCHED, add_route, add_unmatched_route, dumps
from gateway.idempotency import (
    IDEMPOTENCY,
    DegradingIdempotency,
    MemoryIdempotency,
    RedisIdempotency,
)
from gateway.lifecycle import setup_lifecycle
from gateway.metrics import Metrics, metrics_from_env
from gateway.openapi import build_openapi
from gateway.operations import MemoryStore, OperationStore
from gateway.opstore_redis import DegradingStore, RedisStore
from gateway.ratelimit import LIMITER, build_limiter, gate_for
from gateway.redis_conn import connect
from gateway.retry import MemoryBudget, RedisBudget, RetryBudget
from gateway.runtime import (
    METRICS,
    OPENAPI,
    REDIS,
    RUNTIME,
    SERVICES,
    Runtime,
    Services,
    build_providers,
    close_providers,
)

__all__ = ["Services", "create_app"]

log = logging.getLogger("gateway")


def create_app(config: Config, *, metrics: Metrics | None = None,
               services: Services | None = None,
               config_path: str | None = None) -> web.Application:
    # No aiohttp middleware: every route, and the last one that takes what no other
    # does, answers through gateway.http.problem_middleware (see add_route).
    app = web.Application(client_max_size=MAX_BODY)
    app[METRICS] = metrics or metrics_from_env()  # GATEWAY_METRICS=off: no recording
    app[SERVICES] = services or Services()
    app[OPENAPI] = dumps(build_openapi())

    async def resources(app: web.Application) -> AsyncIterator[None]:
        if config.redis_url is not None:
            app[REDIS] = connect(config.redis_url)
        # The router is frozen by now: its templates are the closed set of route labels.
        app[METRICS].add_routes(r.canonical for r in app.router.resources()
                                if r.name != UNMATCHED)
        providers = build_providers(config, app[SERVICES].registry, app[METRICS])
        app[RUNTIME] = Runtime(config, ClientAuth(config.clients), providers)
        yield
        await close_providers(app[RUNTIME].providers)
        if REDIS in app:
            await redis_conn.close(app[REDIS])

    app.cleanup_ctx.append(resources)
    setup_ratelimit(app)  # after resources: it uses app[REDIS]
    setup_operations(app, gate=gate_for)  # after the limiter: background attempts use its gate
    setup_idempotency(app)
    setup_lifecycle(app, config_path)
    for method, path, handler in (
            ("POST", "/v1/assign", handlers.assign),
            ("POST", "/v1/unassign", handlers.unassign),
            ("GET", "/v1/operations/{id}", handlers.operation),
            ("GET", "/v1/tenants", handlers.tenants),
            ("GET", "/healthz", handlers.healthz),
            ("GET", "/readyz", handlers.readyz),
            ("GET", "/metrics", handlers.metrics_handler),
            ("GET", "/openapi.json", handlers.openapi)):
        add_route(app, method, path, handler)
    add_unmatched_route(app)  # last
    return app


def setup_operations(app: web.Application, gate: GateFactory | None = None) -> None:
    """Install the executor and its worker; add after the ctx that opens Redis and the runtime.

    Here rather than in :mod:`gateway.executor`: an async generator cannot be compiled
    (gateway/_native.py)."""

    async def operations(app: web.Application) -> AsyncIterator[None]:
        wall = app[SERVICES].wall_clock
        redis = app.get(REDIS)
        queue: OperationStore = MemoryStore(wall) if redis is None else RedisStore(redis)
        store: OperationStore = queue
        if isinstance(queue, RedisStore):
            store = DegradingStore(queue, MemoryStore(wall))
        budget: RetryBudget = MemoryBudget(wall) if redis is None else RedisBudget(redis, wall)
        app[EXECUTOR] = executor = Executor(app, store, queue, budget, gate)
        executor.worker.start()
        log.info("operations: worker %s started, %s", executor.worker.token,
                 "in Redis" if redis is not None else "in this process only (not durable)")
        yield
        await executor.worker.stop()

    app.cleanup_ctx.append(operations)


def setup_ratelimit(app: web.Application, *, probe_interval_s: float = 0.25) -> None:
    """Install the limiter; call after the context that opens ``app[REDIS]``. Here, as
    the other setups in this module, rather than in its own: an async generator cannot
    be compiled (gateway/_native.py)."""

    async def limiter_ctx(app: web.Application) -> AsyncIterator[None]:
        app[LIMITER] = build_limiter(app, probe_interval_s)
        yield
        await app[LIMITER].close()

    app.cleanup_ctx.append(limiter_ctx)


def setup_idempotency(app: web.Application) -> None:
    """Install the idempotency store; add after the ctx that opens Redis."""

    async def idempotency(app: web.Application) -> AsyncIterator[None]:
        redis = app.get(REDIS)
        local = MemoryIdempotency(app[SERVICES].wall_clock)
        app[IDEMPOTENCY] = (local if redis is None
                            else DegradingIdempotency(RedisIdempotency(redis), local))
        yield

    app.cleanup_ctx.append(idempotency)
