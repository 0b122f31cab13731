"""Running plans: attempts within a deadline, and the background work past it.

Every accepted request becomes an operation (:mod:`gateway.operations`). The
request's own task tries it synchronously, each attempt under the per-contact
lock, sleeping between attempts as :mod:`gateway.retry` says, until its
provider's ``deadline_s``. When the provider asks for more time than is left
(449, a long ``Retry-After``), the client prefers ``respond-async``, the contact
stays busy, or a newer operation arrives, the operation is queued and the
client gets 202; the :class:`gateway.worker.Worker` of any replica finishes it.

Ordering on one contact: an operation attempts only while no newer one asks
something else of its contact, and while it holds the contact's lock, which it
keeps for the whole attempt (and, after a timeout, until the lock expires, so a
request the provider may still be processing lands before any newer one is
sent). A newer operation therefore waits for an older in-flight attempt and is
applied after it; an older operation that finds a newer one ends
``superseded`` without a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from gateway import logs
from gateway.errors import (
    GatewayError,
    NotFound,
    ProviderError,
    RateLimited,
    StoreUnavailable,
    UpstreamConnectError,
    UpstreamQueued,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.models import OperationView, Queued
from gateway.operations import (
    Begin,
    MemoryStore,
    OperationStore,
    OpRecord,
    problem_of,
    view,
)
from gateway.opstore_redis import DegradingStore
from gateway.redis_conn import REDIS_ERRORS
from gateway.retry import (
    UNBUDGETED,
    MemoryBudget,
    RetryBudget,
    background_action,
    next_retry,
    sync_action,
)
from gateway.runtime import METRICS, RUNTIME, SERVICES, Runtime
from gateway.service import Done, Plan, result, run_command
from gateway.spi import Outcome
from gateway.upstream import Call, ProviderClient, UpstreamGate
from gateway.worker import Worker

log = logging.getLogger("gateway")
T = TypeVar("T")
GateFactory = Callable[[web.Application], UpstreamGate | None]

#: The most exchanges one attempt makes (contact look-up, assignee look-up, the write).
MAX_EXCHANGES = 3
#: A contact lock outlives its attempt by this much; a lease outlives the lock.
LOCK_MARGIN_S = 1.0
LEASE_MARGIN_S = 2.0
#: An attempt with less time than this before the deadline is not started.
MIN_ATTEMPT_S = 0.05
BUSY_POLL_S = 0.02  # a request waiting for its contact's lock looks again this often
#: A synchronous request is pending for its deadline and this much more (its last save).
PENDING_MARGIN_S = 5.0
BUSY_RETRY_S = 0.25  # a queued operation whose contact is busy comes back this soon
_OP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def attempt_span(pc: ProviderClient) -> float:
    """The longest one attempt may take, and the most it is given: its lock and lease
    are longer. Each exchange may wait its limiter slot out and then its timeout."""
    return (pc.timeout_s + pc.max_wait_s) * MAX_EXCHANGES


def _attempt_end(pc: ProviderClient, deadline: float, loop: asyncio.AbstractEventLoop) -> float:
    """When a synchronous attempt that takes its lock now must end: at the request's
    deadline, and never past the lock (a newer operation may go once it expires)."""
    return min(deadline, loop.time() + attempt_span(pc))


def _hold(end: float, loop: asyncio.AbstractEventLoop) -> float:
    """How long an attempt that ends by ``end`` holds its contact lock. ``end`` is fixed
    before the store step that takes the lock, so the round trip comes out of the
    attempt's time, not out of the margin."""
    return max(end - loop.time(), 0.0) + LOCK_MARGIN_S


class Executor:
    """``store`` serves requests (it may degrade to this replica's memory while Redis
    is away); ``queue`` is where queued work lives and the background runs it."""

    def __init__(self, app: web.Application, store: OperationStore, queue: OperationStore,
                 budget: RetryBudget, gate: GateFactory | None = None) -> None:
        self.app, self.store, self.queue, self.budget = app, store, queue, budget
        services = app[SERVICES]
        self.wall, self.rand, self.new_id = services.wall_clock, services.random, services.new_id
        self._gate = gate
        self.worker = Worker(self)
        # Stage boundaries (see _turn): Redis's round trips make them in Redis mode.
        self._turns = not store.durable
        # In-process stores and budgets answer without yielding: called directly, with
        # no coroutine per request (as the limiter calls its in-process buckets).
        self._memory = store if isinstance(store, MemoryStore) else None
        self._first_now = budget.first_now if isinstance(budget, MemoryBudget) else None
        self._sync = 0  # requests on the synchronous path now
        # Made in the app's startup, on the loop that serves it. Found once: Python 3.11
        # finds the running loop with a getpid() system call each time (about 0.15 us).
        self.loop = asyncio.get_running_loop()

    def gate(self) -> UpstreamGate | None:
        return None if self._gate is None else self._gate(self.app)

    def lease_s(self) -> float:
        spans = [attempt_span(pc) for pc in self.app[RUNTIME].providers.values()]
        return max(spans, default=0.0) + LOCK_MARGIN_S + LEASE_MARGIN_S

    def _count(self, status: str) -> None:
        self.app[METRICS].operation_reached(status)

    async def _turn(self) -> None:
        """One turn of the event loop on the synchronous path, in process mode, while
        another request is on it too.

        In Redis mode a request waits for a round trip after its ordering step and
        after its final save. Process mode's store answers at once, so a request would
        run from its body to its exchange, and from the provider's answer to its own,
        without a pause. Yielding there lets the loop take each stage for every request
        ready at it before the next stage, and the code of one stage stays in the
        CPU's caches: measured with wrk at 64 connections, about 17% less CPU per
        request for the two turns (README, "Stage turns"). Alone on the path a request
        has nothing to let run, and a turn would only cost (about 11,000 instructions).
        """
        if self._turns and self._sync > 1:
            await asyncio.sleep(0)

    async def _guard(self, aw: Awaitable[T]) -> T:
        try:
            return await aw
        except REDIS_ERRORS:
            raise _store_unavailable() from None

    # -- the synchronous path --------------------------------------------------------

    async def submit(self, rt: Runtime, plan: Plan, request_id: str,
                     prefer_async: bool) -> Done | Queued:
        """Run an accepted plan within its deadline, or queue it and return Queued."""
        pc = rt.providers[plan.provider]
        now = self.wall()
        rec = OpRecord(self.new_id(), plan, request_id, now,
                       now + pc.give_up_after_s)
        if prefer_async:
            await self._guard(self.store.accept(rec, now))
            return await self._queue(rec, now)
        loop = self.loop
        deadline = loop.time() + pc.deadline_s
        end = _attempt_end(pc, deadline, loop)
        # Accepting and the first try for the lock are one store step (one Redis round trip).
        # Pending (an older operation waits rather than end superseded) until the first
        # save, which comes within the deadline.
        self._sync += 1
        try:
            hold, pending = _hold(end, loop), pc.deadline_s + PENDING_MARGIN_S
            if self._memory is not None:
                begun = self._memory.accept_begin_now(rec, hold, pending)
            else:
                try:  # as _guard does, without a coroutine of its own on every request
                    begun = await self.store.accept_begin(rec, now, hold, pending)
                except REDIS_ERRORS:
                    raise _store_unavailable() from None
            await self._turn()
            # The attempts, in this frame: a coroutine of their own would be one more
            # frame that every suspension of every request resumes.
            first: tuple[Begin, float] | None = (begun, end)
            last: tuple[GatewayError, bool] | None = None  # the error a retry follows; paced?
            try:
                while True:
                    if first is not None and (
                            first[0] != "busy"
                            or deadline - loop.time() < BUSY_POLL_S + MIN_ATTEMPT_S):
                        got, end = first  # what _acquire would answer at once
                    else:
                        got, end = await self._acquire(pc, rec, deadline, first)
                    first = None
                    if got != "ok" or deadline - loop.time() < MIN_ATTEMPT_S:
                        # Superseded, or the contact stayed busy: the background resolves it.
                        return await self._queue(rec, self.wall())
                    try:
                        # Bounded by the lock it holds, not only by the request's deadline:
                        # an attempt that outlived its lock could land after a newer one's.
                        outcome = await self._attempt(pc, rec, end)
                    except RateLimited as err:
                        if last is None:  # the first attempt: the client is told to slow
                            # down. Refused before its first exchange (attempts went back to
                            # 0), it asked nothing of the provider: it withdraws, so a queued
                            # older operation it replaced is not superseded by a request
                            # that never happened.
                            await self._fail(rec, err, lease=None, withdraw=rec.attempts == 0)
                            raise err  # named: see below
                        # The gateway's own limiter has no slot for this retry within the
                        # deadline. A retry the provider paced (449, Retry-After) goes to
                        # the background, which can wait for the slot; a backoff retry ends
                        # as the upstream answer it followed left it, as a retry past the
                        # deadline would: the client learns what went wrong upstream.
                        if last[1]:
                            return await self._queue(
                                rec, self.wall() + (err.retry_after or 1.0))
                        await self._fail(rec, last[0], lease=None)
                        try:
                            raise last[0] from None
                        finally:
                            last = None  # the error's traceback holds this frame: no cycle
                    except GatewayError as err:
                        step = await self._sync_retry(pc, rec, err, deadline - loop.time())
                        if step is None:
                            # Here, not in _sync_retry: raised from a frame that keeps
                            # ``err`` (as _sync_retry's parameter), the error's traceback
                            # would hold that frame and the frame the error, a cycle that
                            # keeps the whole request alive until a full collection (this
                            # frame lets go of ``err`` as the error leaves the clause).
                            # Named, not a bare raise: after an await in the clause, a
                            # compiled coroutine's bare raise re-raises the exception the
                            # task last handled, which may be another (gateway/_native.py).
                            raise err
                        queue, wait, paced = step
                        if queue:
                            return await self._queue(rec, self.wall() + wait)
                        # A copy without the traceback, which holds this frame (a cycle).
                        last = (copy.copy(err), paced)
                        await asyncio.sleep(wait)
                    else:
                        return await self._succeed(pc, rec, outcome)
            except GatewayError:
                # The access line of a failed request names its operation and attempts.
                logs.annotate(operation_id=rec.id, attempts=rec.attempts)
                raise
        finally:
            self._sync -= 1

    async def _acquire(self, pc: ProviderClient, rec: OpRecord, deadline: float,
                       first: tuple[Begin, float] | None = None) -> tuple[Begin, float]:
        """Take the contact lock, waiting while another attempt holds it (up to the deadline);
        returns the answer and when the attempt must end (see _hold). ``first``: those of
        a ``begin`` already made (by ``accept_begin``)."""
        loop = self.loop
        while True:
            remaining = deadline - loop.time()
            if first is not None:
                (got, end), first = first, None
            else:
                end = _attempt_end(pc, deadline, loop)
                got = await self._guard(self.store.begin(rec, _hold(end, loop)))
            if got != "busy" or remaining < BUSY_POLL_S + MIN_ATTEMPT_S:
                return got, end
            await asyncio.sleep(BUSY_POLL_S)

    async def _sync_retry(self, pc: ProviderClient, rec: OpRecord, err: GatewayError,
                          remaining: float) -> tuple[bool, float, bool] | None:
        """(queue it instead of sleeping, the wait, whether the provider asked for
        the wait), or None when the request fails with ``err`` (recorded here; the
        caller raises it)."""
        spec = pc.config.retry
        retry = next_retry(err, spec, rec, self.rand())
        action = "fail" if retry is None else sync_action(
            retry, spec, rec, remaining - MIN_ATTEMPT_S, pc.timeout_s)
        if (action == "retry" and retry is not None and retry.budgeted
                and not await self.budget.allow(pc.name)):
            action = "fail"  # the budget is spent: failing fast adds no load to an outage
        if action == "fail" or retry is None:
            await self._fail(rec, err, lease=None)
            return None
        self.app[METRICS].retry(pc.name, retry.reason)
        rec.reason = retry.reason
        return action == "queue", retry.wait_s, retry.paced

    async def _attempt(self, pc: ProviderClient, rec: OpRecord, deadline: float) -> Outcome:
        rec.attempts += 1
        if rec.attempts == 1:
            if self._first_now is not None:
                self._first_now(pc.name)
            else:
                await self.budget.first(pc.name)
        call = Call(pc, deadline, {"X-Request-ID": rec.request_id}, self.gate(), self.loop)
        # No timer of its own: an adapter awaits nothing but its Call, and the Call
        # bounds every wait (the limiter's slot, each exchange, a look-up another
        # request is making) by this deadline. As service.attempt, without its frame.
        try:
            return await run_command(pc, call, rec.plan.command)
        except RateLimited:
            if call.exchanges == 0:  # refused by the gateway's limiter before any exchange
                rec.attempts -= 1
            raise
        except ProviderError as e:
            e.provider = pc.type
            if isinstance(e, UpstreamTimeout):
                rec.timed_out = True  # for good: a later outcome must not release the lock
            raise

    async def _queue(self, rec: OpRecord, due: float) -> Queued:
        rec.status, rec.updated_at = "queued", self.wall()
        # After a timeout the lock is left to expire (see _fail).
        await self._guard(self.store.save(rec, due=due, unlock=_unlocks(rec)))
        self._count("queued")
        if due <= rec.updated_at:
            self.worker.wake()  # due now: no need to wait for the next poll
        return Queued(operation_id=rec.id)

    async def _succeed(self, pc: ProviderClient, rec: OpRecord, outcome: Outcome,
                       lease: str | None = None) -> Done:
        done = result(rec.plan, pc.type, outcome, rec.id, rec.attempts)
        rec.status, rec.result = "succeeded", done.body
        await self._final(rec, lease, unlock=_unlocks(rec))
        return done

    async def _fail(self, rec: OpRecord, err: GatewayError, lease: str | None,
                    withdraw: bool = False) -> None:
        rec.status, rec.error = "failed", problem_of(err)
        # After a timeout the provider may still apply the request: the lock is
        # left to expire so that it lands before any newer operation's.
        await self._final(rec, lease, unlock=_unlocks(rec, err), withdraw=withdraw)

    async def _final(self, rec: OpRecord, lease: str | None, *, unlock: bool,
                     withdraw: bool = False) -> None:
        rec.updated_at = self.wall()
        try:
            store = self.store if lease is None else self.queue
            memory = self._memory
            saved = (memory.save_now(rec, due=None, lease=lease, unlock=unlock, withdraw=withdraw)
                     if memory is not None and store is memory else
                     await store.save(rec, due=None, lease=lease, unlock=unlock,
                                      withdraw=withdraw))
        except REDIS_ERRORS:
            # The outcome stands (the provider has acted) and the client is about to
            # learn it; the record must not be lost with Redis. A request's record waits
            # in this replica until Redis answers (the worker flushes it). A background
            # step's lease expires instead and the operation runs again (at least once).
            if lease is None and isinstance(self.store, DegradingStore):
                self.store.keep(rec, unlock=unlock, withdraw=withdraw)
                log.warning("operation %s: Redis unreachable; its %s record waits here",
                            rec.id, rec.status)
                self._count(rec.status)
            else:
                log.warning("operation %s: could not record %s", rec.id, rec.status)
            return
        if saved:
            self._count(rec.status)
        if lease is None:
            await self._turn()

    async def view(self, op_id: str, client: str) -> OperationView:
        """An operation as its client sees it; anyone else's is not found."""
        found = await self._guard(self.store.get(op_id)) if _OP_ID.fullmatch(op_id) else None
        if found is None or found[0].plan.client != client:
            raise NotFound("no such operation")
        return view(*found)

    # -- the background path ------------------------------------------------------------

    async def resume(self, rec: OpRecord, lease: str) -> None:
        """One background step of a claimed operation; never raises."""
        try:
            await self._resume(rec, lease)
        except REDIS_ERRORS:
            log.warning("operation %s: Redis failed; the lease expires and it runs again", rec.id)
        except Exception:
            log.exception("operation %s: unexpected error", rec.id)
            with contextlib.suppress(*REDIS_ERRORS):
                await self._fail(rec, GatewayError("the operation failed unexpectedly"), lease)

    async def _resume(self, rec: OpRecord, lease: str) -> None:
        if rec.final:
            await self.queue.save(rec, due=None, lease=lease)
            return
        # Pinned as a request is (see LifecycleGuard): a reload closes a replaced
        # provider's session only once nothing of its runtime is in flight.
        rt = self.app[RUNTIME]
        rt.enter()
        try:
            await self._step(rt.providers.get(rec.plan.provider), rec, lease)
        finally:
            rt.leave()

    async def _step(self, pc: ProviderClient | None, rec: OpRecord, lease: str) -> None:
        # Checked before every step, not only after a failed attempt: work the budget
        # or the limiter keeps sending back would otherwise stay queued indefinitely.
        if self.wall() >= rec.give_up_at:
            await self._fail(rec, _gave_up(rec, pc), lease)
            return
        if pc is None:
            err = UpstreamUnavailable("the provider is not configured on this replica")
            await self._retry_later(rec, err, lease, None)
            return
        # Fixed before the store steps below, so that their round trips come out of the
        # attempt's time, not out of the lock's margin.
        span = attempt_span(pc)
        end = self.loop.time() + span
        got = await self.queue.begin(rec, span + LOCK_MARGIN_S)
        if got == "superseded":
            rec.status = "superseded"
            await self._final(rec, lease, unlock=False)
        elif got == "busy":
            await self.queue.save(rec, due=self.wall() + BUSY_RETRY_S, lease=lease,
                                  unlock=_unlocks(rec))
        elif await self._budget_allows(pc, rec):
            await self._background_attempt(pc, rec, lease, end)
        else:
            await self.queue.save(rec, due=self._due(rec, pc.config.retry.backoff_max_s),
                                  lease=lease, unlock=_unlocks(rec))

    def _due(self, rec: OpRecord, wait_s: float) -> float:
        """When work sent back without an attempt comes again: no later than its give-up
        time, when the next step fails it."""
        return min(self.wall() + wait_s, rec.give_up_at)

    async def _budget_allows(self, pc: ProviderClient, rec: OpRecord) -> bool:
        """A retry after a failure (not a 449, not a first attempt) needs the budget."""
        if rec.attempts == 0 or rec.reason is None or rec.reason in UNBUDGETED:
            return True
        return await self.budget.allow(pc.name)

    async def _background_attempt(self, pc: ProviderClient, rec: OpRecord, lease: str,
                                  end: float) -> None:
        try:
            outcome = await self._attempt(pc, rec, end)
        except RateLimited as err:  # the gateway's own limiter: not the provider's answer
            await self.queue.save(rec, due=self._due(rec, err.retry_after or 1.0), lease=lease,
                                  unlock=_unlocks(rec))
        except GatewayError as err:
            await self._retry_later(rec, err, lease, pc)
        except Exception:
            # Not a store failure, though REDIS_ERRORS would match it (an adapter or a
            # closed session raises RuntimeError and OSError too): resume would let the
            # lease expire and run it again, and again.
            log.exception("operation %s: the attempt failed unexpectedly", rec.id)
            await self._fail(rec, GatewayError("the operation failed unexpectedly"), lease)
        else:
            await self._succeed(pc, rec, outcome, lease)

    async def _retry_later(self, rec: OpRecord, err: GatewayError, lease: str,
                           pc: ProviderClient | None) -> None:
        spec = (pc or _any_provider(self.app)).config.retry
        retry = next_retry(err, spec, rec, self.rand())
        now = self.wall()
        if retry is None or background_action(retry, now, rec.give_up_at) == "fail":
            await self._fail(rec, err, lease)
            return
        if pc is not None:
            self.app[METRICS].retry(pc.name, retry.reason)
        rec.reason, rec.status, rec.updated_at = retry.reason, "queued", now
        await self.queue.save(rec, due=now + retry.wait_s, lease=lease,
                              unlock=_unlocks(rec, err))


#: What a queued operation's last attempt failed with, by the retry reason the record
#: keeps (it keeps no error until it is final): each class declares its own reason.
_LAST_ERROR: dict[str, type[UpstreamUnavailable]] = {
    cls.reason: cls for cls in (UpstreamServerError, UpstreamRateLimited, UpstreamQueued,
                                UpstreamConnectError, UpstreamTimeout) if cls.reason
}


def _gave_up(rec: OpRecord, pc: ProviderClient | None) -> UpstreamUnavailable:
    """The error a queued operation fails with at its give-up time."""
    after = f"gave up after {rec.give_up_at - rec.created_at:g} s"
    kind = _LAST_ERROR.get(rec.reason or "")
    err = (UpstreamUnavailable(f"{after}: no attempt could be made") if kind is None
           else kind(f"{after}; the last attempt failed ({rec.reason})"))
    err.provider = None if pc is None else pc.type
    return err


def _store_unavailable() -> StoreUnavailable:
    return StoreUnavailable("the operations store is not answering; retry shortly",
                            retry_after=1)


def _unlocks(rec: OpRecord, err: GatewayError | None = None) -> bool:
    """Whether a save releases the operation's hold on its contact lock: not once any
    attempt of it timed out (the provider may still apply that one; the hold expires
    on its own), so no newer operation's write can land before it."""
    return not (rec.timed_out or isinstance(err, UpstreamTimeout))


def _any_provider(app: web.Application) -> ProviderClient:
    # An operation whose provider left the configuration still needs a schedule
    # and a give-up time (its own give_up_at); any provider's backoff will do.
    return next(iter(app[RUNTIME].providers.values()))


EXECUTOR = web.AppKey("executor", Executor)
