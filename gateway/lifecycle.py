"""Reload, drain and shutdown: what makes configuration changes and rollouts boring.

Reload (``SIGHUP`` or ``POST /admin/reload``): the new file is validated
completely before anything changes; a file that fails is refused and the old
configuration keeps serving. A request pins the runtime it started with, so
requests in flight finish on their configuration; provider clients whose
configuration did not change are carried over with their sessions and caches,
and the others are closed once no request of the old runtime is in flight.

Shutdown (``SIGTERM``): ``/readyz`` fails at once, new requests are refused
with 503 ``shutting_down`` and ``Retry-After``, and requests in flight get up
to ``shutdown_grace_s`` to finish before connections close.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path

from aiohttp import web

from gateway.auth import ClientAuth
from gateway.config import Config, ConfigError, load_config
from gateway.errors import Forbidden, InvalidRequest, ShuttingDown
from gateway.http import GUARD, add_route
from gateway.runtime import METRICS, RUNTIME, SERVICES, Runtime, build_providers, close_providers

log = logging.getLogger("gateway")

#: Routes that keep answering while draining: probes and scrapes must see the drain.
_ALWAYS = frozenset({"/healthz", "/readyz", "/metrics"})
#: Keys that a reload cannot change: they are bound at start.
_RESTART_ONLY = ("listen", "redis_url")


class Lifecycle:
    def __init__(self, app: web.Application, config_path: str | None) -> None:
        self.app = app
        self.config_path = config_path
        self.draining = False
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        # Replaced runtimes whose requests may still be in flight. A client carried
        # over by one reload and replaced by the next is held by each of them.
        self._replaced: list[Runtime] = []

    @property
    def runtime(self) -> Runtime:
        return self.app[RUNTIME]

    async def reload(self, source: str) -> list[str]:
        """Validate and swap in the file; returns the problems (empty when it took effect)."""
        async with self._lock:
            problems = await self._reload()
        result = "success" if not problems else "failure"
        self.app[METRICS].reloads.labels(result).inc()
        if problems:
            log.error("config reload (%s) refused: %s", source, "; ".join(problems))
        else:
            log.info("config reload (%s) applied", source)
        return problems

    async def _reload(self) -> list[str]:
        if self.config_path is None:
            return ["this gateway was not started from a file; nothing to reload"]
        path = self.config_path
        try:
            new = await asyncio.to_thread(load_config, path)
        except ConfigError as e:
            return e.problems
        old = self.runtime
        changed = [k for k in _RESTART_ONLY if getattr(new, k) != getattr(old.config, k)]
        if changed:
            return [f"{k}: changing it needs a restart" for k in changed]
        self._swap(old, new)
        return []

    def _swap(self, old: Runtime, new: Config) -> None:
        providers = build_providers(new, self.app[SERVICES].registry, self.app[METRICS],
                                    previous=old.providers)
        runtime = Runtime(new, ClientAuth(new.clients), providers)
        runtime.ready = not self.draining  # a reload during a drain does not undo it
        # The Application is frozen once started; the runtime is the one piece
        # meant to change while serving, so the deprecation is deliberate here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.app[RUNTIME] = runtime
        self._replaced.append(old)
        task = asyncio.create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: Runtime, max_wait_s: float = 120.0) -> None:
        """Close the old runtime's clients once its requests are done, except those
        the current runtime or another replaced one still in flight holds (that one
        closes them when its own requests are done)."""
        try:
            await old.wait_idle(max_wait_s)
        finally:
            self._replaced.remove(old)
        live = [self.runtime, *self._replaced]
        keep = {str(id(c)): c for rt in live for c in rt.providers.values()}
        await close_providers(old.providers, keep=keep)

    def begin_drain(self) -> None:
        self.draining = True
        self.runtime.ready = False

    async def wait_idle(self, grace_s: float) -> bool:
        """Wait until no request is in flight, at most ``grace_s``; True when idle."""
        return await self.runtime.wait_idle(grace_s)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
PINNED = web.RequestKey("runtime", Runtime)


class LifecycleGuard:
    """The :class:`~gateway.http.RequestGuard` of the app: refuse new work while
    draining; pin the request to the runtime it started with (and count it there)."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def enter(self, request: web.Request, route: str) -> Runtime:
        if self.lifecycle.draining and route not in _ALWAYS:
            raise ShuttingDown("this replica is shutting down; retry on another",
                               retry_after=1)
        runtime = self.lifecycle.runtime  # not request.app's: a look-up per request
        request[PINNED] = runtime
        runtime.enter()
        return runtime

    def leave(self, entered: object) -> None:
        assert isinstance(entered, Runtime)
        entered.leave()


def runtime_of(request: web.Request) -> Runtime:
    """The runtime this request started with (the current one outside the middleware)."""
    return request.get(PINNED) or request.app[RUNTIME]


async def admin_reload(request: web.Request) -> web.Response:
    """``POST /admin/reload``: only for a client marked ``admin: true``."""
    client = runtime_of(request).auth.authenticate(request.headers.get("Authorization"))
    if not client.admin:
        raise Forbidden("only an admin client may reload the configuration")
    problems = await request.app[LIFECYCLE].reload("api")
    if problems:
        raise InvalidRequest("the new configuration was refused; the old one keeps serving",
                             errors=[{"field": "config", "message": p} for p in problems])
    return web.json_response({"status": "reloaded"})


def setup_lifecycle(app: web.Application, config_path: str | Path | None) -> None:
    app[LIFECYCLE] = Lifecycle(app, None if config_path is None else str(config_path))
    app[GUARD] = LifecycleGuard(app[LIFECYCLE])

    async def closing(app: web.Application) -> None:
        await app[LIFECYCLE].close()

    app.on_cleanup.append(closing)
    add_route(app, "POST", "/admin/reload", admin_reload)
