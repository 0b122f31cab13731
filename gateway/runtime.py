"""What the app holds: the runtime built from one configuration, and injected services.

:class:`Runtime` is everything built from one configuration; a reload builds
a new one and swaps it in, keeping the provider clients whose configuration
did not change (their sessions and caches survive). Resources live on the
``Application`` under the typed keys below.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from redis.asyncio import Redis

from gateway import ids
from gateway.auth import ClientAuth
from gateway.config import Config
from gateway.metrics import Metrics
from gateway.registry import AdapterClass, adapters
from gateway.service import Route, routes
from gateway.upstream import LookupCache, ProviderClient, new_session


@dataclass
class Runtime:
    """Everything built from one configuration."""

    config: Config
    auth: ClientAuth
    providers: dict[str, ProviderClient]
    ready: bool = True
    inflight: int = 0  # requests that started on this runtime and are not answered yet
    # Who waits for inflight to reach 0 (a drain, a reload). A list of futures rather
    # than an asyncio.Event: the event's set and clear would be two calls into
    # asyncio's Python code on every request, for a wait that happens once per reload.
    _idle_waiters: list[asyncio.Future[None]] = field(default_factory=list, repr=False)
    # Each tenant as the plan reads it (gateway.service.Route), built with the runtime.
    routes: dict[str, Route] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Set here, not by a field default: a compiled dataclass leaves a field with
        # init=False unset (gateway/_native.py).
        self.routes = routes(self.config, self.providers)

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once no request of this runtime is in flight; False after ``timeout_s``."""
        if self.inflight == 0:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            if waiter in self._idle_waiters:
                self._idle_waiters.remove(waiter)
            return False
        return True


@dataclass
class Services:
    """Injected dependencies: the adapter registry, ids, and the clock."""

    registry: Mapping[str, AdapterClass] = field(default_factory=adapters)
    new_id: Callable[[], str] = field(default=ids.operation_id)
    clock: Callable[[], float] | None = None  # None: the event loop's clock
    # Operations and idempotency records are shared between hosts, so their
    # times (due, created, leases) are wall-clock seconds.
    wall_clock: Callable[[], float] = field(default=time.time)
    random: Callable[[], float] = field(default=random.random)  # jitter, in [0, 1)


RUNTIME = web.AppKey("runtime", Runtime)
#: The shared Redis client when ``redis_url`` is set (absent otherwise).
REDIS = web.AppKey("redis", Redis)
METRICS = web.AppKey("metrics", Metrics)
SERVICES = web.AppKey("services", Services)
OPENAPI = web.AppKey("openapi", bytes)
REQUEST_ID = web.RequestKey("request_id", str)


def build_providers(
    config: Config, registry: Mapping[str, AdapterClass], metrics: Metrics,
    previous: Mapping[str, ProviderClient] | None = None,
) -> dict[str, ProviderClient]:
    """One client per configured provider; an unchanged one is kept with its session and cache."""
    out: dict[str, ProviderClient] = {}
    for name, pcfg in config.providers.items():
        old = (previous or {}).get(name)
        if old is not None and old.config == pcfg:
            out[name] = old
            continue
        adapter = registry[pcfg.type](name, pcfg.api_key.get_secret_value())
        out[name] = ProviderClient(pcfg, adapter, new_session(), LookupCache(), metrics)
    return out


async def close_providers(clients: Mapping[str, ProviderClient],
                          keep: Mapping[str, ProviderClient] | None = None) -> None:
    kept = {id(c) for c in (keep or {}).values()}
    for c in clients.values():
        if id(c) not in kept:
            await c.session.close()
