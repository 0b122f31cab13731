"""Operations in Redis, shared by every replica: one atomic script per state change.

Every key is in the ``{ops}`` hash tag (see :mod:`gateway.redis_keys`), so the
scripts, which also touch the keys of the operations they find in the due set,
stay on one slot. See :mod:`gateway.operations` for what each step guarantees.
Redis errors are not caught by :class:`RedisStore`: :class:`DegradingStore`
runs a request on this replica's memory instead, and the worker waits for the
next tick.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cachetools import TTLCache
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway import redis_keys
from gateway.errors import StoreUnavailable
from gateway.operations import (
    FINAL_TTL_S,
    LATEST_TTL_S,
    PENDING_S,
    WITHDRAWN_TTL_S,
    Begin,
    MemoryStore,
    OpRecord,
)
from gateway.redis_conn import REDIS_ERRORS, Script

log = logging.getLogger("gateway")
T = TypeVar("T")


async def once_more(call: Callable[[], Awaitable[T]]) -> T:
    """A redis-py call, repeated once if its pooled connection had died (Redis
    restarted): the repeat goes out on a fresh one. Timeouts are not repeated: they
    would only double the wait. (Scripts need no such wrapper: ``Script`` does the
    same on its multiplexer.)"""
    try:
        return await call()
    except RedisConnectionError:
        return await call()

# The newest pointer is "<order token>|<op id>", the token "<intent>|<first op id of
# its run>" (one written by an older version: "<intent>|<op id>", its token the
# intent); the contact lock is a sorted set of "<order token>|<op id>" holders scored
# by expiry (Redis's own clock, the same for every replica): holders must share one
# token. Op ids hold no '|': a pointer's id is what follows its last '|'.

# Make this operation its contact's newest, in the run of the newest if that has the
# same intent. Leaves ``token`` (this operation's order token), ``mine`` (the token
# and a bar) and ``replaced``, the pointer it replaced ('' for none): the first save
# makes that one due now or, withdrawing, puts it back (see _SAVE).
# It is pending (KEYS[2], a sorted set of ids by expiry, Redis's clock) until its first
# save. KEYS: latest, pending. ARGV: id, latest ttl ms, intent, pending ms.
_SET_LATEST = """
local clock = redis.call('TIME')
local until_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  + tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], until_ms, ARGV[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
local prev = redis.call('GET', KEYS[1])
local token = ARGV[3] .. '|' .. ARGV[1]
if prev and string.match(prev, '^[^|]*') == ARGV[3] then
  token = string.match(prev, '^(.*)|[^|]*$') or token
end
local mine = token .. '|'
local replaced = prev or ''
local ttl = math.max(tonumber(ARGV[2]), redis.call('PTTL', KEYS[1]))
redis.call('SET', KEYS[1], mine .. ARGV[1], 'PX', ttl)
"""


def _take_lock(lock: str, op_id: str, hold_ms: str) -> str:
    """Lua that ends its script: hold the contact lock (key ``lock``) for ``mine`` (the
    order token and a bar, set before) and the operation ``op_id`` for ``hold_ms``, or
    answer 'busy' while a holder in another run (another token) has it.

    The holders are always one run's: a holder joins only when every unexpired one is
    in its run. So the first holder names the run, and taking the lock costs the same
    with one holder as with the hundreds a burst of identical requests can make."""
    return f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', {lock}, '-inf', now)
local first = redis.call('ZRANGE', {lock}, 0, 0)[1]
if first and string.sub(first, 1, #mine) ~= mine then return 'busy' end
local hold = tonumber({hold_ms})
redis.call('ZADD', {lock}, now + hold, mine .. {op_id})
if redis.call('PTTL', {lock}) < hold then redis.call('PEXPIRE', {lock}, hold) end
return 'ok'
"""


_ACCEPT = _SET_LATEST + "return {token, replaced}\n"

# Superseded when the newest is another operation in another run; busy instead
# while that one is pending (it may still withdraw), and then this operation lets go
# of a hold left from its last attempt (ARGV[4] '1': not after a timeout), or the two
# would wait for each other: the newer one for the lock, this one for the newer.
# KEYS: latest, lock, pending. ARGV: order token, id, hold ms, release.
_BEGIN = """
local mine = ARGV[1] .. '|'
local latest = redis.call('GET', KEYS[1])
if latest and string.match(latest, '[^|]*$') ~= ARGV[2]
    and string.match(latest, '^(.*)|[^|]*$') ~= ARGV[1] then
  local clock = redis.call('TIME')
  local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
  if redis.call('ZSCORE', KEYS[3], string.match(latest, '[^|]*$')) then
    if ARGV[4] == '1' then redis.call('ZREM', KEYS[2], mine .. ARGV[2]) end
    return 'busy'
  end
  return 'superseded'
end
""" + _take_lock("KEYS[2]", "ARGV[2]", "ARGV[3]")

# accept, then begin, in one round trip (a request's synchronous first attempt):
# right after the accept this operation is its contact's newest, so begin's
# superseded check cannot fire; only the lock is left to take.
# KEYS: latest, pending, lock. ARGV: id, latest ttl ms, intent, pending ms, hold ms.
_ACCEPT_BEGIN = (_SET_LATEST + "local function take()\n"
                 + _take_lock("KEYS[3]", "ARGV[1]", "ARGV[5]")
                 + "end\nreturn {take(), token, replaced}\n")

# KEYS: record, due, lease, lock, latest, withdrawn, pending. ARGV: id, record, ttl ms,
# due ('' none), lease ('' none), lock holder ('' keep the lock); then, on the first
# save after accept (else ''): withdrawing, this operation's pointer and the one it
# replaced ('' none), or the id of the replaced operation to make due at once, if
# queued (it resolves as superseded); now; how long a withdrawal is remembered (ms);
# '1' on the first save after accept (no longer pending).
# Withdrawing as the newest gives the contact back to the one replaced, past any
# that withdrew meanwhile (KEYS[6] is this operation's withdrawal key, ARGV[13] the
# same without the id: each holds what that operation replaced, and expires on its
# own); withdrawing when a newer one came leaves that one standing and notes the
# withdrawal in KEYS[6].
_SAVE = """
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[5] then return 0 end
if ARGV[7] ~= '' then
  if redis.call('GET', KEYS[5]) == ARGV[7] then
    local back = ARGV[8]
    for _ = 1, 8 do
      if back == '' then break end
      local further = redis.call('GET', ARGV[13] .. string.match(back, '[^|]*$'))
      if not further then break end
      back = further
    end
    if back == '' then redis.call('DEL', KEYS[5])
    else redis.call('SET', KEYS[5], back, 'PX', math.max(redis.call('PTTL', KEYS[5]), 1))
    end
  else
    redis.call('SET', KEYS[6], ARGV[8], 'PX', ARGV[11])
  end
end
if ARGV[9] ~= '' then redis.call('ZADD', KEYS[2], 'XX', ARGV[10], ARGV[9]) end
if ARGV[12] ~= '' then redis.call('ZREM', KEYS[7], ARGV[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if ARGV[4] == '' then redis.call('ZREM', KEYS[2], ARGV[1])
else redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1]) end
if ARGV[5] ~= '' then redis.call('DEL', KEYS[3]) end
if ARGV[6] ~= '' then redis.call('ZREM', KEYS[4], ARGV[6]) end
return 1
"""

# A leased operation is skipped and moved to its lease's expiry; one whose
# record has expired leaves the queue.
_CLAIM = """
local now, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local rec = redis.call('GET', ARGV[6] .. id)
  if not rec then
    redis.call('ZREM', KEYS[1], id)
  elseif redis.call('SET', ARGV[5] .. id, ARGV[4], 'NX', 'PX', lease_ms) then
    redis.call('ZADD', KEYS[1], now + lease_ms / 1000, id)
    table.insert(out, rec)
  else
    local ttl = redis.call('PTTL', ARGV[5] .. id)
    redis.call('ZADD', KEYS[1], now + math.max(ttl, 1) / 1000, id)
  end
end
return out
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisStore:
    durable = True

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._accept = Script(redis, _ACCEPT)
        self._begin = Script(redis, _BEGIN)
        self._accept_begin = Script(redis, _ACCEPT_BEGIN)
        self._save = Script(redis, _SAVE)
        self._claim = Script(redis, _CLAIM)

    @staticmethod
    def _latest(rec: OpRecord) -> str:
        return redis_keys.contact_latest(rec.plan.tenant, rec.contact)

    def _pending(self, rec: OpRecord) -> str:
        return redis_keys.contact_pending(rec.plan.tenant, rec.contact)

    async def accept(self, rec: OpRecord, now: float, pending_s: float = PENDING_S) -> None:
        args: list[str | int] = [rec.id, _ms(_latest_ttl(rec, now)), rec.intent,
                                 _ms(pending_s)]
        token, replaced = await self._accept(keys=[self._latest(rec), self._pending(rec)],
                                             args=args)
        rec.order, rec.replaced, rec.pending = _text(token), _replaced(replaced), True

    async def begin(self, rec: OpRecord, hold_s: float) -> Begin:
        keys = [self._latest(rec), redis_keys.contact_lock(rec.plan.tenant, rec.contact),
                self._pending(rec)]
        args: list[str | int] = [rec.token, rec.id, _ms(hold_s),
                                 "" if rec.timed_out else "1"]
        answer = await self._begin(keys=keys, args=args)
        return _begin_answer(answer)

    async def accept_begin(self, rec: OpRecord, now: float, hold_s: float,
                           pending_s: float = PENDING_S) -> Begin:
        keys = [self._latest(rec), self._pending(rec),
                redis_keys.contact_lock(rec.plan.tenant, rec.contact)]
        args: list[str | int] = [rec.id, _ms(_latest_ttl(rec, now)), rec.intent,
                                 _ms(pending_s), _ms(hold_s)]
        answer, token, replaced = await self._accept_begin(keys=keys, args=args)
        rec.order, rec.replaced, rec.pending = _text(token), _replaced(replaced), True
        return _begin_answer(answer)

    async def save(self, rec: OpRecord, *, due: float | None, lease: str | None = None,
                   unlock: bool = True, withdraw: bool = False) -> bool:
        keys = [redis_keys.operation(rec.id), redis_keys.operations_due(),
                redis_keys.operation_lease(rec.id),
                redis_keys.contact_lock(rec.plan.tenant, rec.contact), self._latest(rec),
                redis_keys.contact_withdrawn(rec.plan.tenant, rec.contact, rec.id),
                self._pending(rec)]
        # A queued record must outlive its give-up time; a final one is kept a day.
        ttl = FINAL_TTL_S if rec.final else max(rec.give_up_at - rec.updated_at, 0) + FINAL_TTL_S
        mine = f"{rec.token}|{rec.id}"
        # Only the first save after accept settles what it replaced (as MemoryStore).
        first, prev, rec.replaced, rec.pending = rec.pending, rec.replaced, None, False
        withdrawing = first and withdraw
        restore = "" if prev is None else f"{prev[1]}|{prev[0]}"
        due_now = prev[0] if prev is not None and prev[1] != rec.token else ""
        args: list[str | bytes | int] = [
            rec.id, rec.dumps(), _ms(ttl), "" if due is None else repr(due),
            lease or "", mine if unlock else "", mine if withdrawing else "",
            restore if withdrawing else "", "" if withdraw else due_now,
            repr(rec.updated_at), _ms(WITHDRAWN_TTL_S), "1" if first else "",
            redis_keys.contact_withdrawn(rec.plan.tenant, rec.contact, "")]
        try:
            return bool(await self._save(keys=keys, args=args))
        except BaseException:
            rec.replaced, rec.pending = prev, first  # not saved: the next save does it
            raise

    async def get(self, op_id: str) -> tuple[OpRecord, bool] | None:
        raw, leased = await once_more(lambda: self._get(op_id))
        if raw is None:
            return None
        return OpRecord.loads(raw), bool(leased)

    async def claim(self, now: float, limit: int, lease_s: float, token: str) -> list[OpRecord]:
        args: list[str | int] = [repr(now), limit, _ms(lease_s), token,
                                 redis_keys.operation_lease(""), redis_keys.operation("")]
        raws = await self._claim(keys=[redis_keys.operations_due()], args=args)
        out = []
        for raw in raws:
            try:
                out.append(OpRecord.loads(raw))
            except (ValueError, TypeError, KeyError) as e:
                # A record this version cannot read (another version's, in a rolling
                # deploy): the others of the batch still run. It stays leased, and comes
                # back when its lease runs out, for a replica that can read it.
                log.warning("operations: a queued record could not be read (%s); "
                            "it is left for its lease to run out", type(e).__name__)
        return out

    async def _get(self, op_id: str) -> list[Any]:
        # Not ``async with``: execute resets the pipeline itself, and the context's exit
        # awaits (see gateway/_native.py: compiled, that can swap the exception).
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(redis_keys.operation(op_id))
        pipe.exists(redis_keys.operation_lease(op_id))
        return list(await pipe.execute())

    async def queued(self) -> int:
        return int(await once_more(lambda: self.redis.zcard(redis_keys.operations_due())))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _replaced(answer: Any) -> tuple[str, str] | None:
    """(op id, order token) from a pointer "<order token>|<op id>", or None for ''."""
    token, _, op_id = _text(answer).rpartition("|")
    return (op_id, token) if token else None


def _begin_answer(answer: Any) -> Begin:
    text = answer.decode() if isinstance(answer, bytes) else str(answer)
    assert text in ("ok", "busy", "superseded")
    return text  # type: ignore[return-value]


def _latest_ttl(rec: OpRecord, now: float) -> float:
    # The pointer must outlive every older operation of the contact that may
    # still be queued; each acceptance only ever lengthens it (see _ACCEPT).
    return max(rec.give_up_at - now + FINAL_TTL_S, LATEST_TTL_S)


#: Final records kept for Redis at most (the oldest are dropped, loudly), and written
#: per flush (one worker tick).
UNSAVED_MAX = 100_000
FLUSH_BATCH = 512


class DegradingStore:
    """Redis, or this replica's memory for requests that start while Redis is unreachable.

    Like the rate limiter, an unreachable Redis degrades rather than fails: a
    request runs with this replica's own ordering and locks. What it cannot do
    is queue work (a 202 promises durability), so such a request that would be
    queued is refused with 503 and ``Retry-After`` instead. The background
    (claims, queued records) stays on Redis and waits for it.
    """

    durable = True

    def __init__(self, shared: RedisStore, local: MemoryStore) -> None:
        self.shared, self.local = shared, local
        self._local_ops: TTLCache[str, bool] = TTLCache(100_000, 3600.0)
        # Final records Redis did not take (it went away mid-request): the client has
        # its answer, so the record waits here, served by get, until flush writes it.
        self._unsaved: OrderedDict[str, tuple[OpRecord, bool, bool]] = OrderedDict()

    @property
    def unsaved(self) -> int:
        return len(self._unsaved)

    def keep(self, rec: OpRecord, *, unlock: bool, withdraw: bool = False) -> None:
        """Hold a final record whose save failed on Redis until :meth:`flush` writes it."""
        if len(self._unsaved) >= UNSAVED_MAX:
            old, _ = self._unsaved.popitem(last=False)
            log.error("operations: %d records wait for Redis; dropped the oldest, %s",
                      UNSAVED_MAX, old)
        self._unsaved[rec.id] = (rec.copy(), unlock, withdraw)

    async def flush(self, limit: int = FLUSH_BATCH) -> int:
        """Write up to ``limit`` kept records to Redis, oldest first; Redis errors pass."""
        done = 0
        while self._unsaved and done < limit:
            op_id, (rec, unlock, withdraw) = next(iter(self._unsaved.items()))
            await self.shared.save(rec, due=None, unlock=unlock, withdraw=withdraw)
            self._unsaved.pop(op_id, None)
            done += 1
        return done

    def _degrade(self, rec: OpRecord) -> None:
        if not self._local_ops:
            log.warning("operations: Redis unreachable; ordering is per replica for now")
        self._local_ops[rec.id] = True

    async def accept(self, rec: OpRecord, now: float, pending_s: float = PENDING_S) -> None:
        try:
            await self.shared.accept(rec, now, pending_s)
        except REDIS_ERRORS:
            self._degrade(rec)
            await self.local.accept(rec, now, pending_s)

    async def accept_begin(self, rec: OpRecord, now: float, hold_s: float,
                           pending_s: float = PENDING_S) -> Begin:
        try:
            return await self.shared.accept_begin(rec, now, hold_s, pending_s)
        except REDIS_ERRORS:
            self._degrade(rec)
            return await self.local.accept_begin(rec, now, hold_s, pending_s)

    async def begin(self, rec: OpRecord, hold_s: float) -> Begin:
        if rec.id not in self._local_ops:
            try:
                return await self.shared.begin(rec, hold_s)
            except REDIS_ERRORS:
                self._degrade(rec)
        return await self.local.begin(rec, hold_s)

    def save(self, rec: OpRecord, *, due: float | None, lease: str | None = None,
             unlock: bool = True, withdraw: bool = False) -> Awaitable[bool]:
        if rec.id not in self._local_ops:  # Redis's, with no coroutine of this store's own
            return self.shared.save(rec, due=due, lease=lease, unlock=unlock,
                                    withdraw=withdraw)
        return self._save_local(rec, due=due, lease=lease, unlock=unlock, withdraw=withdraw)

    async def _save_local(self, rec: OpRecord, *, due: float | None, lease: str | None,
                          unlock: bool, withdraw: bool) -> bool:
        """The save of an operation accepted in this replica's memory (Redis was away)."""
        self._local_ops.pop(rec.id, None)
        if due is not None:
            self.local.unlock(rec)
            raise StoreUnavailable("Redis is unreachable: the request cannot be queued; "
                                   "retry shortly", retry_after=1)
        return await self.local.save(rec, due=None, lease=lease, unlock=unlock,
                                     withdraw=withdraw)

    async def get(self, op_id: str) -> tuple[OpRecord, bool] | None:
        kept = self._unsaved.get(op_id)
        if kept is not None:
            return kept[0].copy(), False
        found = await self.local.get(op_id)
        return found if found is not None else await self.shared.get(op_id)

    async def claim(self, now: float, limit: int, lease_s: float, token: str) -> list[OpRecord]:
        return await self.shared.claim(now, limit, lease_s, token)

    async def queued(self) -> int:
        return await self.shared.queued()
