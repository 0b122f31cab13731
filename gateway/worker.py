"""The background worker: claims due operations and runs one step of each.

Each replica runs one. It claims at most as many operations as it has free
slots (``CONCURRENCY``), every ``POLL_S`` or at once when woken (a request
queued work due now), and runs each claimed operation's next step
(:meth:`gateway.executor.Executor.resume`) as a task. On app cleanup it stops
claiming and gives steps in flight a grace period; any it cancels keep their
lease until it expires, and then any replica runs them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING

from gateway.opstore_redis import DegradingStore
from gateway.redis_conn import REDIS_ERRORS
from gateway.runtime import METRICS

if TYPE_CHECKING:
    from gateway.executor import Executor

log = logging.getLogger("gateway")

POLL_S = 0.1  # how often a worker looks for due operations it was not woken for
CONCURRENCY = 64  # background steps in flight per replica
STOP_GRACE_S = 2.0


class Worker:
    """Claims due operations and runs one background step of each, bounded in number."""

    def __init__(self, executor: Executor, *, poll_s: float = POLL_S,
                 concurrency: int = CONCURRENCY) -> None:
        self.executor, self.poll_s, self.concurrency = executor, poll_s, concurrency
        self.token = secrets.token_hex(6)
        self._claims = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._gauge_at = 0.0
        self._store_ok = True

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run())

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                await self._tick()
            except Exception as err:
                # A bug, or a record that does not load, must not end this replica's
                # background work for good: the next poll tries again.
                log.exception("operations: a worker poll failed (%s); the worker goes on",
                              type(err).__name__)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()

    async def _tick(self) -> None:
        ex = self.executor
        free = self.concurrency - len(self._tasks)
        self._claims += 1
        token = f"{self.token}:{self._claims}"
        try:
            await self._gauge()
            claimed = await ex.queue.claim(ex.wall(), free, ex.lease_s(), token) if free > 0 else []
        except REDIS_ERRORS:
            if self._store_ok:  # once per outage, not once per poll
                log.warning("operations: Redis unreachable; the worker keeps looking")
            self._store_ok = False
            return
        if not self._store_ok:
            log.info("operations: Redis is back")
        self._store_ok = True
        await self._flush()
        for rec in claimed:
            task = asyncio.create_task(ex.resume(rec, token))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        """Write the records that waited for Redis (see DegradingStore.keep)."""
        store = self.executor.store
        if isinstance(store, DegradingStore) and store.unsaved:
            try:
                n = await store.flush()
            except REDIS_ERRORS:
                return
            log.info("operations: %d records written to Redis after an outage; %d wait",
                     n, store.unsaved)

    async def _gauge(self) -> None:
        ex = self.executor
        now = ex.wall()
        if now - self._gauge_at < 1.0:
            return
        self._gauge_at = now
        ops = ex.app[METRICS].operations
        ops.set("queued", await ex.queue.queued())
        ops.set("running", len(self._tasks))

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop claiming; give steps in flight ``grace_s``, then cancel them (their
        leases expire and another replica, or this one after a restart, runs them)."""
        self._stop.set()
        self._wake.set()
        if self._loop is not None:
            await self._loop
        await self._flush()  # a last chance for records that waited for Redis
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
