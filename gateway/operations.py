"""Operations: every accepted request's record, and the store that queues them.

An :class:`OpRecord` holds the serialized :class:`gateway.service.Plan` (with
the configured provider name it was accepted for, so a later configuration
swap does not reroute queued work), its status, attempts and outcome. Any
replica can run it from the record alone.

The store (:class:`OperationStore`: :class:`MemoryStore` here, ``RedisStore``
in :mod:`gateway.opstore_redis`) does four things, each atomically:

- **accept**: the operation becomes the newest for its (tenant, contact); at
  its first save the one it replaces, if queued, is made due at once so it
  resolves as superseded, unless the save *withdraws* it (refused before it
  sent anything: the replaced one is the newest again);
- **begin**: before every attempt, the per-contact lock is taken, and only if
  no newer operation asks for something else (else: superseded). The lock is
  held through the attempt, so attempts with different intents on one contact
  never overlap and an older operation can never be applied after a newer one.
  Operations with the same *intent* (the same command; every ``mode: add`` on a
  contact is one intent, since adds commute) accepted one after another, with
  no other intent between them, form a *run*: they share the lock and do not
  supersede each other, since in any order they leave the contact as the
  newest asks, so a burst of identical requests is not serialized. An
  operation's *order token* (``<intent>|<first id of its run>``, given at
  accept) names its run; an older run of the same intent is superseded like
  any other older operation (an add queued before a replace must not be
  applied after it because a newer add came);
- **claim**: a worker leases due operations (the due time moves past the
  lease); a lease that is never finished (a replica killed mid-attempt)
  expires and the operation is due again for any replica;
- **save**: the record is written and the due entry, lease and contact lock
  updated together, fenced by the lease token so a worker whose lease was
  taken over cannot overwrite the new holder's work.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, cast

import orjson

from gateway.errors import GatewayError
from gateway.expiring import Expiring
from gateway.models import ContactOut, OperationView, Problem, Result
from gateway.service import ContactEcho, Plan, contact_dict
from gateway.spi import (
    AssignCommand,
    AssigneeRef,
    ContactRef,
    TenantContext,
    UnassignCommand,
)

Status = Literal["queued", "running", "succeeded", "failed", "superseded"]
Begin = Literal["ok", "busy", "superseded"]
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "superseded"})
#: Final records are kept this long for ``GET /v1/operations/{id}``.
FINAL_TTL_S = 24 * 3600.0
#: The most final records the in-process store keeps for ``GET /v1/operations/{id}``
#: (the oldest go first): without Redis nothing is durable anyway, and a store of
#: hundreds of thousands of records costs memory and makes every full GC pass slow.
MEMORY_FINALS = 10_000
#: The newest-operation pointer outlives any queued operation (give_up_after_s).
LATEST_TTL_S = 7 * 24 * 3600.0
#: A withdrawal gives the contact back past at most this many operations that withdrew.
WITHDRAW_HOPS = 8
#: How long a withdrawal made while a newer operation stood is remembered: that one
#: withdraws, if it does, within its synchronous deadline.
WITHDRAWN_TTL_S = 3600.0
#: An accepted operation is *pending* until its first save (at most this long, unless
#: accept is told otherwise): an older one of its contact is then busy, not superseded,
#: since the newer one may still withdraw.
PENDING_S = 30.0
#: The in-process store sweeps what can go stale (the pending marks of requests that
#: never saved, locks left to expire) once there are more than this many, and then only
#: once their number has doubled: however many requests are in flight (each holds one
#: of each), a request pays amortized O(1) for the sweeps, not a walk of them all.
SWEEP_AT = 1000
#: A contact lock drops its expired holders once it has more than this many, and then
#: only once their number has doubled (see :class:`ContactLock`).
LOCK_SWEEP_AT = 16


def contact_key(tenant: str, contact: ContactRef) -> str:
    """The per-contact ordering key: hashed, so no contact data lands in Redis key names."""
    raw = f"{tenant}\x00{contact.kind}:{contact.value}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def intent_of(p: Plan) -> str:
    """What an operation asks of its contact (not who asked or which provider does it):
    a digest of every field of its command, the same on every replica.

    Adds (``mode: add``) commute: adding A then B leaves the contact as adding B then
    A does. So every add on one contact has one intent, whoever it adds (and whoever
    asks): adds share the contact and never supersede each other, while a replace or
    an unassign still orders against them and supersedes queued ones."""
    c = p.command
    t, contact = c.tenant, c.contact
    parts = [p.operation, t.name, t.default_region, t.campaign_id, t.organization_id,
             contact.kind, contact.value, c.campaign_id]
    if isinstance(c, AssignCommand) and c.mode == "add":
        parts.append(c.mode)  # no other assign's list has this length: no collision
    else:  # the digest an older version wrote: records in Redis keep their intent
        parts.append(c.assigned_by)
        if isinstance(c, AssignCommand):
            parts += [c.assignee.kind, c.assignee.value, c.mode]
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:16]  # a JSON list: unambiguous


def plan_to_dict(p: Plan) -> dict[str, Any]:
    """The plan as :meth:`OpRecord.dumps` writes it."""
    return {"operation": p.operation, "client": p.client, "tenant": p.tenant,
            "provider": p.provider, "command": command_to_dict(p.command),
            # provider_id "": the field ContactOut requires, as records always held it.
            "contact": contact_dict(p.contact, "")}


def command_to_dict(c: AssignCommand | UnassignCommand) -> dict[str, Any]:
    """The command as ``dataclasses.asdict`` gives it (fields in order), built directly:
    orjson reads a compiled dataclass (gateway/_native.py) field by field through
    ``getattr``, at twice the cost of a dict built here
    (``tests/unit/test_result_body.py`` holds the two to the same bytes)."""
    t, contact = c.tenant, c.contact
    out: dict[str, Any] = {
        "tenant": {"name": t.name, "default_region": t.default_region,
                   "campaign_id": t.campaign_id, "organization_id": t.organization_id},
        "contact": {"kind": contact.kind, "value": contact.value}}
    if isinstance(c, AssignCommand):
        out["assignee"] = {"kind": c.assignee.kind, "value": c.assignee.value}
        out["mode"] = c.mode
    out["campaign_id"] = c.campaign_id
    out["assigned_by"] = c.assigned_by
    return out


def plan_from_dict(d: dict[str, Any]) -> Plan:
    c = d["command"]
    tenant = TenantContext(**c["tenant"])
    contact = ContactRef(**c["contact"])
    command: AssignCommand | UnassignCommand
    if d["operation"] == "assign":
        command = AssignCommand(tenant, contact, AssigneeRef(**c["assignee"]), c["mode"],
                                c["campaign_id"], c["assigned_by"])
    else:
        command = UnassignCommand(tenant, contact, c["campaign_id"], c["assigned_by"])
    echo = ContactOut.model_validate(d["contact"])  # a stored record is checked as read
    return Plan(d["operation"], d["client"], d["tenant"], d["provider"], command,
                ContactEcho(echo.phone, echo.email, echo.id))


@dataclass(init=False)
class OpRecord:
    id: str
    plan: Plan
    request_id: str
    created_at: float  # wall-clock seconds: records are shared between hosts
    give_up_at: float
    status: Status = "queued"
    updated_at: float = 0.0
    attempts: int = 0
    failures: int = 0
    queued_wait_s: float | None = None
    reason: str | None = None  # why the last attempt is being retried
    # An attempt timed out: the provider may still apply it, so every later save leaves
    # the contact lock to expire instead of releasing it (see Executor._fail).
    timed_out: bool = False
    # The order token accept gave it (see the module docstring); None in a record an
    # older version wrote, whose token is its intent.
    order: str | None = None
    # Set by accept (this process only, never stored): the contact's newest operation
    # before this one, as (id, order token). This operation's first save makes it due
    # now (when queued in another run, so it resolves as superseded), or, with
    # ``withdraw``, makes it the newest again; then it is cleared.
    replaced: tuple[str, str] | None = field(default=None, repr=False, compare=False)
    # Accepted here and not saved since (this process only, never stored).
    pending: bool = field(default=False, repr=False, compare=False)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # The ordering keys, derived from the plan: computed once, on first use, and
    # shared by copies (the plan is immutable), so a request pays for them once.
    _contact: str | None = field(default=None, init=False, repr=False, compare=False)
    _intent: str | None = field(default=None, init=False, repr=False, compare=False)

    # Written out, not generated (init=False): compiled, a dataclass's generated
    # __init__ is interpreted code, a call per record; this one is native (gateway/_native.py).
    def __init__(self, id: str, plan: Plan, request_id: str, created_at: float,
                 give_up_at: float, status: Status = "queued", updated_at: float = 0.0,
                 attempts: int = 0, failures: int = 0, queued_wait_s: float | None = None,
                 reason: str | None = None, timed_out: bool = False, order: str | None = None,
                 replaced: tuple[str, str] | None = None, pending: bool = False,
                 result: dict[str, Any] | None = None,
                 error: dict[str, Any] | None = None) -> None:
        self.id = id
        self.plan = plan
        self.request_id = request_id
        self.created_at = created_at
        self.give_up_at = give_up_at
        self.status = status
        self.updated_at = updated_at or created_at
        self.attempts = attempts
        self.failures = failures
        self.queued_wait_s = queued_wait_s
        self.reason = reason
        self.timed_out = timed_out
        self.order = order
        self.replaced = replaced
        self.pending = pending
        self.result = result
        self.error = error
        self._contact = None
        self._intent = None

    @property
    def contact(self) -> str:
        c = self._contact
        if c is None:
            c = self._contact = contact_key(self.plan.tenant, self.plan.command.contact)
        return c

    @property
    def intent(self) -> str:
        i = self._intent
        if i is None:
            i = self._intent = intent_of(self.plan)
        return i

    @property
    def token(self) -> str:
        """The order token: operations share the contact only within one token."""
        return self.order or self.intent

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def dumps(self) -> bytes:
        # Built field by field: dataclasses.asdict would deep-copy the plan only to drop it.
        return orjson.dumps({
            "id": self.id, "request_id": self.request_id, "created_at": self.created_at,
            "give_up_at": self.give_up_at, "status": self.status,
            "updated_at": self.updated_at, "attempts": self.attempts,
            "failures": self.failures, "queued_wait_s": self.queued_wait_s,
            "reason": self.reason, "timed_out": self.timed_out, "order": self.order,
            "result": self.result,
            "error": self.error,
            "plan": plan_to_dict(self.plan)})

    @classmethod
    def loads(cls, raw: bytes | str) -> OpRecord:
        data = orjson.loads(raw)
        data["plan"] = plan_from_dict(data["plan"])
        return cls(**data)

    def copy(self) -> OpRecord:
        # A shallow copy, field by field (a compiled class has no __dict__ to copy;
        # gateway/_native.py); the derived keys come along.
        new = OpRecord(self.id, self.plan, self.request_id, self.created_at, self.give_up_at,
                       self.status, self.updated_at, self.attempts, self.failures,
                       self.queued_wait_s, self.reason, self.timed_out, self.order,
                       self.replaced, self.pending, self.result, self.error)
        new._contact, new._intent = self._contact, self._intent
        return new


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def view(rec: OpRecord, running: bool) -> OperationView:
    status: Status = "running" if running and rec.status == "queued" else rec.status
    return OperationView(
        operation_id=rec.id, status=status, attempts=rec.attempts,
        created_at=_iso(rec.created_at), updated_at=_iso(rec.updated_at),
        result=None if rec.result is None else Result.model_validate(rec.result),
        error=None if rec.error is None else Problem.model_validate(rec.error))


class OperationStore(Protocol):
    """Where operations live. Redis errors (``REDIS_ERRORS``) pass through to the caller."""

    durable: bool

    async def accept(self, rec: OpRecord, now: float, pending_s: float = PENDING_S) -> None:
        """Make ``rec`` its contact's newest operation, pending until its first save (at
        most ``pending_s``); note the one it replaces."""
        ...

    async def begin(self, rec: OpRecord, hold_s: float) -> Begin:
        """Hold the contact lock for one attempt (``hold_s``) unless a newer operation in
        another run exists (superseded; busy while that one is pending) or one in another
        run holds it (busy)."""
        ...

    async def accept_begin(self, rec: OpRecord, now: float, hold_s: float,
                           pending_s: float = PENDING_S) -> Begin:
        """``accept`` then ``begin``, atomically and in one step where the store can."""
        ...

    def save(self, rec: OpRecord, *, due: float | None, lease: str | None = None,
             unlock: bool = True, withdraw: bool = False) -> Awaitable[bool]:
        """Write ``rec``; due: queue it for then (None: off the queue). ``lease``: only if
        still held, then released. ``unlock``: release the contact lock if ``rec`` holds it.
        The first save after ``accept`` makes the operation ``rec`` replaced due now if it
        is queued with another intent (it resolves as superseded); with ``withdraw``
        (``rec`` asked nothing of the provider after all: refused before its first
        exchange) it makes that one the newest again instead, if ``rec`` still is.
        Returns False (writing nothing) when the lease was lost."""
        ...

    async def get(self, op_id: str) -> tuple[OpRecord, bool] | None:
        """The record and whether a worker holds it right now."""
        ...

    async def claim(self, now: float, limit: int, lease_s: float, token: str) -> list[OpRecord]:
        """Lease up to ``limit`` due operations to ``token`` for ``lease_s``."""
        ...

    async def queued(self) -> int:
        """How many operations are waiting (for the gauge)."""
        ...


class ContactLock:
    """One contact's lock in the in-process store: the run (order token) that holds it,
    and its holders (op id -> until when, the store's clock).

    Holders are one run's operations (a burst of identical requests shares the lock),
    so a lock can have as many as there are requests in flight for its contact. Taking
    or letting go of it is O(1) whatever their number: a holder joining its own run
    need not know which others have expired (the run holds the lock either way), and
    a holder leaving frees the lock when it was the last. The expired are dropped
    only when it matters, when another run asks (:meth:`MemoryStore._live`), and
    otherwise once the holders have doubled since the last sweep (:meth:`hold`), so a
    holder that never lets go (an attempt that timed out) costs amortized O(1).
    """

    def __init__(self, token: str) -> None:
        self.token = token
        self.holders: dict[str, float] = {}
        self.sweep_at = LOCK_SWEEP_AT

    def hold(self, op_id: str, until: float, now: float) -> None:
        self.holders[op_id] = until
        if len(self.holders) > self.sweep_at:
            self.sweep(now)

    def sweep(self, now: float) -> bool:
        """Drop the holders expired at ``now``; whether any is left."""
        self.holders = {k: v for k, v in self.holders.items() if v > now}
        self.sweep_at = max(LOCK_SWEEP_AT, 2 * len(self.holders))
        return bool(self.holders)


class MemoryStore:
    """In-process operations (``redis_url: null``): one replica, lost on restart."""

    durable = False

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.live: dict[str, OpRecord] = {}
        # Bounded by count too: this replica's memory is all there is, and every kept
        # record is heap the collector walks (see MEMORY_FINALS).
        self.finals: Expiring[str, OpRecord] = Expiring(MEMORY_FINALS, FINAL_TTL_S, clock)
        # contact -> (newest op id, its order token)
        self.latest: Expiring[str, tuple[str, str]] = Expiring(1_000_000, LATEST_TTL_S, clock)
        # op id -> what it replaced, for an operation that withdrew while not the newest
        self.withdrawn: Expiring[str, tuple[tuple[str, str] | None]] = Expiring(
            100_000, WITHDRAWN_TTL_S, clock)
        self.locks: dict[str, ContactLock] = {}  # contact -> its lock, while held
        self.leases: dict[str, tuple[str, float]] = {}  # op id -> (token, expires)
        self.due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self.pending: dict[str, float] = {}  # op id -> until when (see PENDING_S)
        self._sweep_pending_at = self._sweep_locks_at = SWEEP_AT

    def _lease(self, op_id: str) -> str | None:
        entry = self.leases.get(op_id)
        if entry is None or entry[1] <= self.clock():
            self.leases.pop(op_id, None)
            return None
        return entry[0]

    def _live(self, contact: str, lock: ContactLock) -> bool:
        """Whether ``lock`` (``contact``'s) has a holder that has not expired; the expired
        are dropped, and a lock left with none is freed."""
        if lock.sweep(self.clock()):
            return True
        del self.locks[contact]
        return False

    def _schedule(self, op_id: str, when: float) -> None:
        self.due[op_id] = when
        heapq.heappush(self._heap, (when, op_id))

    async def accept(self, rec: OpRecord, now: float, pending_s: float = PENDING_S) -> None:
        self._accept(rec, pending_s)

    def _accept(self, rec: OpRecord, pending_s: float) -> None:
        if len(self.pending) > self._sweep_pending_at:  # requests that never saved (cancelled)
            t = self.clock()
            self.pending = {k: v for k, v in self.pending.items() if v > t}
            self._sweep_pending_at = max(SWEEP_AT, 2 * len(self.pending))
        self.pending[rec.id] = self.clock() + pending_s
        rec.pending = True
        contact = rec.contact
        prev = self.latest.get(contact)
        intent = rec.intent
        # The same intent right after: the same run, so the same token.
        if prev is not None and prev[1].partition("|")[0] == intent:
            rec.order = prev[1]
        else:
            rec.order = f"{intent}|{rec.id}"
        self.latest[contact] = (rec.id, rec.order)
        rec.replaced = prev

    def _replaced(self, rec: OpRecord, withdraw: bool) -> None:
        prev, rec.replaced = rec.replaced, None
        if withdraw:
            mine = (rec.id, rec.token)
            if self.latest.get(rec.contact) != mine:
                # A newer one came since: it stands, and should it withdraw too, it
                # gives the contact back past this one (see _restore).
                self.withdrawn[rec.id] = (prev,)
            else:
                self._restore(rec.contact, prev)
        elif prev is not None and prev[1] != rec.token and prev[0] in self.due:
            self._schedule(prev[0], rec.updated_at)

    def _restore(self, contact: str, prev: tuple[str, str] | None) -> None:
        for _ in range(WITHDRAW_HOPS):  # past operations that withdrew meanwhile
            entry = None if prev is None else self.withdrawn.get(prev[0])
            if entry is None:
                break
            prev = entry[0]
        if prev is None:
            self.latest.pop(contact)
        else:
            self.latest[contact] = prev

    async def begin(self, rec: OpRecord, hold_s: float) -> Begin:
        return self._begin(rec, hold_s)

    def _begin(self, rec: OpRecord, hold_s: float) -> Begin:
        contact = rec.contact
        latest = self.latest.get(contact)
        token = rec.token
        if latest is not None and latest[0] != rec.id and latest[1] != token:
            if self.pending.get(latest[0], 0.0) <= self.clock():
                return "superseded"
            # A newer operation that may still withdraw: wait for it to settle, and let
            # go of a hold left from this one's last attempt (not after a timeout), or
            # the two would wait for each other: the newer one for the lock, this one
            # for the newer.
            if not rec.timed_out:
                self.unlock(rec)
            return "busy"
        lock = self.locks.get(contact)
        if lock is not None and lock.token != token:
            if self._live(contact, lock):
                return "busy"
            lock = None
        now = self.clock()
        if lock is None:
            lock = self.locks[contact] = ContactLock(token)
        lock.hold(rec.id, now + hold_s, now)
        return "ok"

    async def accept_begin(self, rec: OpRecord, now: float, hold_s: float,
                           pending_s: float = PENDING_S) -> Begin:
        return self.accept_begin_now(rec, hold_s, pending_s)

    def accept_begin_now(self, rec: OpRecord, hold_s: float,
                         pending_s: float = PENDING_S) -> Begin:
        """:meth:`accept_begin`, answered at once: the executor calls it directly, with
        no coroutine per request. In one step, as Redis does it: no other request runs
        between the two."""
        self._accept(rec, pending_s)
        return self._begin(rec, hold_s)

    def unlock(self, rec: OpRecord) -> None:
        contact = rec.contact
        lock = self.locks.get(contact)
        if lock is None or lock.holders.pop(rec.id, None) is None:
            return
        if not lock.holders:  # the last holder gone (expired ones go when they matter)
            del self.locks[contact]

    async def save(self, rec: OpRecord, *, due: float | None, lease: str | None = None,
                   unlock: bool = True, withdraw: bool = False) -> bool:
        return self.save_now(rec, due=due, lease=lease, unlock=unlock, withdraw=withdraw)

    def save_now(self, rec: OpRecord, *, due: float | None, lease: str | None = None,
                 unlock: bool = True, withdraw: bool = False) -> bool:
        """:meth:`save`, answered at once (the executor calls it directly)."""
        if lease is not None and self._lease(rec.id) != lease:
            return False
        if rec.pending:
            rec.pending = False
            self.pending.pop(rec.id, None)
            self._replaced(rec, withdraw)
        stored = rec.copy()
        if rec.final:
            self.live.pop(rec.id, None)
            self.finals[rec.id] = stored
        else:
            self.live[rec.id] = stored
        if due is None:
            self.due.pop(rec.id, None)
        else:
            self._schedule(rec.id, due)
        if lease is not None:
            self.leases.pop(rec.id, None)
        if unlock:
            self.unlock(rec)
        return True

    async def get(self, op_id: str) -> tuple[OpRecord, bool] | None:
        rec = self.live.get(op_id) or self.finals.get(op_id)
        if rec is None:
            return None
        return rec.copy(), self._lease(op_id) is not None

    async def claim(self, now: float, limit: int, lease_s: float, token: str) -> list[OpRecord]:
        if len(self.locks) > self._sweep_locks_at:  # locks left to expire (timeouts) go here
            for contact, lock in list(self.locks.items()):
                self._live(contact, lock)
            self._sweep_locks_at = max(SWEEP_AT, 2 * len(self.locks))
        out: list[OpRecord] = []
        while self._heap and self._heap[0][0] <= now and len(out) < limit:
            when, op_id = heapq.heappop(self._heap)
            if self.due.get(op_id) != when:
                continue  # a stale heap entry: the operation was rescheduled or finished
            if self._lease(op_id) is not None:
                self._schedule(op_id, self.leases[op_id][1])
                continue
            self.leases[op_id] = (token, now + lease_s)
            self._schedule(op_id, now + lease_s)
            out.append(self.live[op_id].copy())
        return out

    async def queued(self) -> int:
        return len(self.due)


def problem_of(err: GatewayError) -> dict[str, Any]:
    return cast(dict[str, Any], orjson.loads(orjson.dumps(err.problem())))
