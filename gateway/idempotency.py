"""``Idempotency-Key``: a repeated request gets the first answer, not a second provider call.

A key (at most 255 characters) is scoped to the client and kept 24 hours with
a fingerprint of the request (route and parsed body) and, once there is one,
the answer. The first request claims the key atomically; a repeat with the
same body replays the answer (200, 202 or the provider's final refusal), one
with another body is ``idempotency_conflict``, and one that arrives while the
first is running is ``request_in_progress``.

Only answers that the same request would get again are kept. Refusals before
anything was sent (validation, authorization, the gateway's own limits) and
failures worth retrying (503, 504) release the key, so the client can repeat
the request under it. A claim whose request never finishes (a replica killed)
expires after the longest provider deadline and some margin. With Redis
unreachable, keys first seen then are kept in this replica's memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web
from cachetools import TTLCache
from pydantic import BaseModel
from redis.asyncio import Redis

from gateway import ids, redis_keys
from gateway.errors import (
    ALL_ERRORS,
    GatewayError,
    IdempotencyConflict,
    InvalidRequest,
    ProviderError,
    RequestInProgress,
    UpstreamAuthFailed,
)
from gateway.expiring import Expiring
from gateway.redis_conn import REDIS_ERRORS, Script
from gateway.runtime import RUNTIME

HEADER = "Idempotency-Key"
MAX_KEY = 255
KEEP_S = 24 * 3600.0
#: A claim outlives the longest synchronous deadline by this much.
CLAIM_MARGIN_S = 30.0
_REPLAYED_HEADERS = ("Content-Type", "Location", "Retry-After", "Preference-Applied")
_ERRORS = {e.code: e for e in ALL_ERRORS}


@dataclass(init=False)
class Entry:
    fingerprint: str
    nonce: str  # which claim wrote it: only that claim may finish or release it
    done: bool = False
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    problem: dict[str, Any] | None = None  # a stored error, raised again on replay

    # Written out (init=False): compiled, a dataclass's generated __init__ is
    # interpreted code (gateway/values.py).
    def __init__(self, fingerprint: str, nonce: str, done: bool = False, status: int = 0,
                 headers: dict[str, str] | None = None, body: str = "",
                 problem: dict[str, Any] | None = None) -> None:
        self.fingerprint = fingerprint
        self.nonce = nonce
        self.done = done
        self.status = status
        self.headers = {} if headers is None else headers
        self.body = body
        self.problem = problem

    def dumps(self) -> bytes:
        # The fields in order, as dataclasses.asdict gives them, without its deep copy
        # (tests/unit/test_idempotency_memory.py holds the two to the same bytes).
        return orjson.dumps({"fingerprint": self.fingerprint, "nonce": self.nonce,
                             "done": self.done, "status": self.status,
                             "headers": self.headers, "body": self.body,
                             "problem": self.problem})

    @classmethod
    def loads(cls, raw: bytes | str) -> Entry:
        return cls(**orjson.loads(raw))


class IdempotencyStore(Protocol):
    async def claim(self, scope: str, entry: Entry, ttl_s: float) -> Entry | None:
        """Store ``entry`` if the scope is free (returning None), else return what is there."""
        ...

    async def finish(self, scope: str, entry: Entry, ttl_s: float) -> None:
        """Replace this claim with its answer."""
        ...

    async def release(self, scope: str, nonce: str) -> None:
        """Forget this claim (only if it is still ours)."""
        ...


#: The most keys this replica keeps in memory (the oldest written go first).
MEMORY_KEYS = 200_000


class MemoryIdempotency:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        # Each entry also carries its own expiry (a claim's is short). Not cachetools'
        # TTLCache: pure Python with a linked list per entry, its claim and finish cost
        # 15 us a request, 28 us once it held 50,000 keys; this map is O(1) (8 us less
        # even when small).
        self.entries: Expiring[str, tuple[Entry, float]] = Expiring(MEMORY_KEYS, KEEP_S, clock)

    def _get(self, scope: str) -> Entry | None:
        found = self.entries.get(scope)
        if found is None or found[1] <= self.clock():
            return None
        return found[0]

    async def claim(self, scope: str, entry: Entry, ttl_s: float) -> Entry | None:
        existing = self._get(scope)
        if existing is None:
            self.entries[scope] = (entry, self.clock() + ttl_s)
        return existing

    async def finish(self, scope: str, entry: Entry, ttl_s: float) -> None:
        current = self._get(scope)
        if current is None or current.nonce == entry.nonce:
            self.entries[scope] = (entry, self.clock() + ttl_s)

    async def release(self, scope: str, nonce: str) -> None:
        current = self._get(scope)
        if current is not None and current.nonce == nonce:
            self.entries.pop(scope)


_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# Finish and release act only on this claim: after a claim expired and another
# request took the key, the late one must not overwrite or delete it.
_FINISH = """
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['nonce'] ~= ARGV[3] then return 0 end
if ARGV[1] == '' then redis.call('DEL', KEYS[1]) return 1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisIdempotency:
    def __init__(self, redis: Redis) -> None:
        self._claim = Script(redis, _CLAIM)
        self._finish = Script(redis, _FINISH)

    async def claim(self, scope: str, entry: Entry, ttl_s: float) -> Entry | None:
        raw = await self._claim(keys=[scope], args=[entry.dumps(), _ms(ttl_s)])
        return None if raw is None else Entry.loads(raw)

    async def finish(self, scope: str, entry: Entry, ttl_s: float) -> None:
        await self._finish(keys=[scope], args=[entry.dumps(), _ms(ttl_s), entry.nonce])

    async def release(self, scope: str, nonce: str) -> None:
        await self._finish(keys=[scope], args=["", 1, nonce])


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class DegradingIdempotency:
    """Redis, or this replica's memory for keys first seen while Redis is unreachable.

    As with the limiter and operations, an unreachable Redis degrades: a
    duplicate sent to the same replica is still caught, one sent to another
    replica during the outage may reach the provider a second time.
    """

    def __init__(self, shared: RedisIdempotency, local: MemoryIdempotency) -> None:
        self.shared, self.local = shared, local
        self._local: TTLCache[str, bool] = TTLCache(100_000, KEEP_S)

    async def claim(self, scope: str, entry: Entry, ttl_s: float) -> Entry | None:
        if scope not in self._local:
            try:
                return await self.shared.claim(scope, entry, ttl_s)
            except REDIS_ERRORS:
                self._local[scope] = True
        return await self.local.claim(scope, entry, ttl_s)

    async def finish(self, scope: str, entry: Entry, ttl_s: float) -> None:
        target = self.local if scope in self._local else self.shared
        await target.finish(scope, entry, ttl_s)

    async def release(self, scope: str, nonce: str) -> None:
        target = self.local if scope in self._local else self.shared
        await target.release(scope, nonce)


IDEMPOTENCY = web.AppKey("idempotency", IdempotencyStore)


def fingerprint(operation: str, body: BaseModel) -> str:
    """The request as parsed: the same body written differently is the same request."""
    data = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(operation.encode() + b"\n" + data).hexdigest()


def _key(request: web.Request) -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY or not key.isprintable():
        why = ("must not be empty" if not key else f"at most {MAX_KEY} characters"
               if len(key) > MAX_KEY else "printable characters only")
        raise InvalidRequest(f"{HEADER}: 1 to {MAX_KEY} printable characters",
                             errors=[{"field": HEADER, "message": why}])
    return key


def _claim_ttl(app: web.Application) -> float:
    specs = [pc.deadline_s for pc in app[RUNTIME].providers.values()]
    return max(specs, default=0.0) + CLAIM_MARGIN_S


def _replay(entry: Entry) -> web.Response:
    if entry.problem is not None:
        raise _error(entry.problem)
    headers = {**entry.headers, "Idempotent-Replayed": "true"}
    return web.Response(status=entry.status, body=entry.body.encode(), headers=headers)


def _error(problem: dict[str, Any]) -> GatewayError:
    """The stored error, raised again so the problem middleware answers (and counts) it."""
    known = {"type", "title", "status", "code", "detail", "provider", "errors", "retry_after"}
    cls = _ERRORS.get(problem.get("code", ""), GatewayError)
    return cls(problem.get("detail", ""), provider=problem.get("provider"),
               retry_after=problem.get("retry_after"), errors=problem.get("errors"),
               extra={k: v for k, v in problem.items() if k not in known})


def _kept(err: GatewayError) -> bool:
    """The provider's final word on this request is kept; anything a retry may change is not."""
    return isinstance(err, ProviderError) and not err.retryable and not isinstance(
        err, UpstreamAuthFailed)


async def guarded(request: web.Request, client: str, operation: str, body: BaseModel,
                  run: Callable[[], Awaitable[web.Response]]) -> web.Response:
    """Run ``run`` at most once per (client, Idempotency-Key); replay its answer after."""
    key = _key(request)
    if key is None:
        return await run()
    store = request.app[IDEMPOTENCY]
    scope = redis_keys.idempotency(client, hashlib.sha256(key.encode()).hexdigest())
    mine = Entry(fingerprint(operation, body), ids.token_hex(8))
    existing = await store.claim(scope, mine, _claim_ttl(request.app))
    # The entry may be this very claim's: a claim whose reply was lost with its
    # connection is sent again (gateway.redis_conn), and the second run finds the first.
    if existing is not None and existing.nonce != mine.nonce:
        if existing.fingerprint != mine.fingerprint:
            raise IdempotencyConflict(f"this {HEADER} was used with another request")
        if not existing.done:
            raise RequestInProgress(f"a request with this {HEADER} is running", retry_after=1)
        return _replay(existing)
    return await _run_once(store, scope, mine, run)


async def _run_once(store: IdempotencyStore, scope: str, mine: Entry,
                    run: Callable[[], Awaitable[web.Response]]) -> web.Response:
    try:
        response = await run()
    except GatewayError as err:
        if _kept(err):
            mine.done, mine.status, mine.problem = True, err.status, err.problem()
            await _quietly(store.finish(scope, mine, KEEP_S))
        else:
            await _quietly(store.release(scope, mine.nonce))
        raise err  # named, not bare: after an await (gateway/_native.py)
    except BaseException as e:
        await _quietly(store.release(scope, mine.nonce))
        raise e
    mine.done, mine.status = True, response.status
    mine.headers = {h: response.headers[h] for h in _REPLAYED_HEADERS if h in response.headers}
    mine.body = bytes(response.body).decode() if isinstance(response.body, bytes) else ""
    await _quietly(store.finish(scope, mine, KEEP_S))
    return response


async def _quietly(aw: Awaitable[None]) -> None:
    """After the work is done its answer stands: a Redis error loses only the replay."""
    try:
        await aw
    except REDIS_ERRORS:
        return
