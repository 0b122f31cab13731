"""Operations in Redis, shared by every replica: one atomic script per state change.

Every key is in the ``{ops}`` hash tag (see :mod:`gateway.redis_keys`), so the
scripts, which also touch the keys of the operations they find in the due set,
stay on one slot. See :mod:`gateway.operations` for what each step guarantees.
Redis errors are not caught here: the executor decides (refuse a request,
or wait for the next tick).
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

from gateway import redis_keys
from gateway.operations import FINAL_TTL_S, LATEST_TTL_S, Begin, OpRecord

_ACCEPT = """
local prev = redis.call('GET', KEYS[1])
local ttl = math.max(tonumber(ARGV[3]), redis.call('PTTL', KEYS[1]))
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
if prev and prev ~= ARGV[1] then redis.call('ZADD', KEYS[2], 'XX', ARGV[2], prev) end
return 1
"""

_BEGIN = """
local latest = redis.call('GET', KEYS[1])
if latest and latest ~= ARGV[1] then return 'superseded' end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 'busy' end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 'ok'
"""

_SAVE = """
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[5] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if ARGV[4] == '' then redis.call('ZREM', KEYS[2], ARGV[1])
else redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1]) end
if ARGV[5] ~= '' then redis.call('DEL', KEYS[3]) end
if ARGV[6] == '1' and redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
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
        self._accept = redis.register_script(_ACCEPT)
        self._begin = redis.register_script(_BEGIN)
        self._save = redis.register_script(_SAVE)
        self._claim = redis.register_script(_CLAIM)

    @staticmethod
    def _latest(rec: OpRecord) -> str:
        return redis_keys.contact_latest(rec.plan.tenant, rec.contact)

    async def accept(self, rec: OpRecord, now: float) -> None:
        keys = [self._latest(rec), redis_keys.operations_due()]
        await self._accept(keys=keys, args=[rec.id, repr(now), _ms(_latest_ttl(rec, now))])

    async def begin(self, rec: OpRecord, hold_s: float) -> Begin:
        keys = [self._latest(rec), redis_keys.contact_lock(rec.plan.tenant, rec.contact)]
        answer = await self._begin(keys=keys, args=[rec.id, _ms(hold_s)])
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        assert text in ("ok", "busy", "superseded")
        return text  # type: ignore[return-value]

    async def save(self, rec: OpRecord, *, due: float | None, lease: str | None = None,
                   unlock: bool = True) -> bool:
        keys = [redis_keys.operation(rec.id), redis_keys.operations_due(),
                redis_keys.operation_lease(rec.id),
                redis_keys.contact_lock(rec.plan.tenant, rec.contact)]
        # A queued record must outlive its give-up time; a final one is kept a day.
        ttl = FINAL_TTL_S if rec.final else max(rec.give_up_at - rec.updated_at, 0) + FINAL_TTL_S
        args: list[str | bytes | int] = [
            rec.id, rec.dumps(), _ms(ttl), "" if due is None else repr(due),
            lease or "", "1" if unlock else "0"]
        return bool(await self._save(keys=keys, args=args))

    async def get(self, op_id: str) -> tuple[OpRecord, bool] | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(redis_keys.operation(op_id))
            pipe.exists(redis_keys.operation_lease(op_id))
            raw, leased = await pipe.execute()
        if raw is None:
            return None
        return OpRecord.loads(raw), bool(leased)

    async def claim(self, now: float, limit: int, lease_s: float, token: str) -> list[OpRecord]:
        args: list[str | int] = [repr(now), limit, _ms(lease_s), token,
                                 redis_keys.operation_lease(""), redis_keys.operation("")]
        raws = await self._claim(keys=[redis_keys.operations_due()], args=args)
        return [OpRecord.loads(raw) for raw in raws]

    async def queued(self) -> int:
        return int(await self.redis.zcard(redis_keys.operations_due()))


def _latest_ttl(rec: OpRecord, now: float) -> float:
    # The pointer must outlive every older operation of the contact that may
    # still be queued; each acceptance only ever lengthens it (see _ACCEPT).
    return max(rec.give_up_at - now + FINAL_TTL_S, LATEST_TTL_S)
