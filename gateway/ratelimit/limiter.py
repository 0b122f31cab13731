"""The limiter: which bucket a request spends, how long it waits, what a refusal says.

It is the :class:`gateway.upstream.UpstreamGate` of every provider call:
:meth:`Limiter.before` reserves a slot in the provider's bucket and sleeps until
it, or raises :class:`~gateway.errors.RateLimited` when the slot is further away
than the bucket's ``max_wait_s`` or the request's deadline; :meth:`Limiter.after`
turns the provider's own signals (429 ``Retry-After``, ``X-RateLimit-Remaining: 0``,
as read by the adapter) into a pause of that bucket for every replica.
:meth:`Limiter.check_client` spends a client's own bucket, if it has one, and
never waits: a client over its budget is told when to come back.

Buckets are keyed by the configured provider and, for ``scope: path``, by a hash
of the method and the adapter's encoded upstream path, so two spellings of one
contact (translated to one identifier) share a bucket and no identifier appears
in a Redis key name.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import NoReturn

from gateway import redis_keys
from gateway.config import ClientSpec, LimiterSpec
from gateway.errors import RateLimited
from gateway.metrics import Metrics
from gateway.ratelimit.gcra import Bucket, Decision
from gateway.ratelimit.memory import MemoryBackend
from gateway.ratelimit.shared import Backend
from gateway.spi import UpstreamRequest, UpstreamResponse
from gateway.upstream import ProviderClient

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Time left for the exchange itself: a slot that leaves less before the deadline
#: would spend the provider's budget on a request that then times out.
EXCHANGE_RESERVE_S = 0.1
#: A provider's "come back in" beyond this is taken as this: a bad header must not
#: stop a provider for hours.
MAX_PAUSE_S = 600.0
#: Slots one exchange may take: a pause that comes while it sleeps costs it its slot.
MAX_RESERVES = 3


@dataclass(frozen=True, slots=True)
class Scope:
    """One bucket as the limiter uses it; ``label`` is its metric label."""

    key: str
    bucket: Bucket
    max_wait_s: float
    label: str  # client | account | path


@dataclass(init=False, slots=True)
class Budget:
    """What the buckets a request went through said, for its rate-limit headers."""

    seen: list[tuple[Bucket, Decision]] = field(default_factory=list)

    # Written out (init=False): compiled, a dataclass's generated __init__ is
    # interpreted code, a call per request; this one is native (gateway/_native.py).
    def __init__(self) -> None:
        self.seen = []

    def tightest(self) -> tuple[Bucket, Decision] | None:
        """The fewest remaining, then the longest to reset; the first seen on a tie
        (as ``min`` would pick it, without a key call per bucket)."""
        best: tuple[Bucket, Decision] | None = None
        for seen in self.seen:
            if best is None or (seen[1].remaining, -seen[1].reset_s) < (
                    best[1].remaining, -best[1].reset_s):
                best = seen
        return best


#: The current request's budget; set by the HTTP layer, copied into child tasks.
BUDGET: ContextVar[Budget | None] = ContextVar("ratelimit_budget", default=None)


def path_key(method: str, path: str) -> str:
    """A path bucket's name: a hash, so identifiers never sit in Redis in clear."""
    digest = hashlib.blake2b(f"{method.upper()} {path}".encode(), digest_size=16)
    return "path:" + digest.hexdigest()


#: The most scopes the limiter keeps built (path-scoped buckets add one per path).
SCOPE_CACHE = 4096


class Limiter:
    def __init__(self, backend: Backend, metrics: Metrics, policy: Callable[[], LimiterSpec],
                 *, clock: Clock, sleep: Sleep = asyncio.sleep) -> None:
        self.backend, self.metrics, self.policy = backend, metrics, policy
        self._clock, self._sleep = clock, sleep
        # In-process buckets answer without yielding: called directly, no coroutine each.
        self._reserve_now = backend.reserve_now if isinstance(backend, MemoryBackend) else None
        # Scopes are pure functions of configuration objects (and, for path scope, of
        # the method and path): built once and kept. An entry remembers the objects it
        # was built from and is used only while they are the very same ones, so a
        # reload (new objects) rebuilds it and a reused id() cannot return a stale one.
        self._provider_scopes: dict[tuple[object, ...], tuple[object, object, Scope]] = {}
        self._client_scopes: dict[int, tuple[ClientSpec, object, Scope | None]] = {}
        # Bucket key -> until when (this clock) its provider asked for no request, as
        # learned here: a request asleep on a slot granted before checks it on waking.
        self._paused: dict[str, float] = {}

    def provider_scope(self, client: ProviderClient, request: UpstreamRequest) -> Scope:
        spec = client.config.rate_limit
        policy = self.policy()
        key: tuple[object, ...] = (client.name, id(spec), id(policy))
        if spec.scope == "path":
            key = (*key, request.method, request.path)
        hit = self._provider_scopes.get(key)
        if hit is not None and hit[0] is spec and hit[1] is policy:
            return hit[2]
        rate = spec.rate * (1.0 - policy.headroom)
        sub = path_key(request.method, request.path) if spec.scope == "path" else "account"
        scope = Scope(redis_keys.bucket(client.name, sub), Bucket.of(rate, spec.burst),
                      spec.max_wait_s, spec.scope)
        if len(self._provider_scopes) >= SCOPE_CACHE:
            self._provider_scopes.clear()  # path scopes: one per contact path; kept bounded
        self._provider_scopes[key] = (spec, policy, scope)
        return scope

    @staticmethod
    def client_scope(client: ClientSpec) -> Scope | None:
        if client.rate_limit is None:
            return None
        bucket = Bucket.of(client.rate_limit.rate, client.rate_limit.burst)
        return Scope(redis_keys.client_bucket(client.name), bucket, 0.0, "client")

    def _client_scope(self, client: ClientSpec) -> Scope | None:
        hit = self._client_scopes.get(id(client))
        if hit is not None and hit[0] is client and hit[1] is client.rate_limit:
            return hit[2]
        scope = self.client_scope(client)
        if len(self._client_scopes) >= SCOPE_CACHE:
            self._client_scopes.clear()
        self._client_scopes[id(client)] = (client, client.rate_limit, scope)
        return scope

    def check_client(self, client: ClientSpec) -> Awaitable[None] | None:
        """Spend one token of the client's own bucket, or raise ``RateLimited``.

        In-process buckets answer here and None is returned: no coroutine per request
        for work that never waits. A shared backend's answer is the awaitable returned,
        which raises when awaited."""
        scope = self._client_scope(client)
        if scope is None:
            return None
        if self._reserve_now is not None:
            self._client_decided(scope, self._reserve_now(scope.key, scope.bucket, 0.0))
            return None
        return self._check_client_shared(scope)

    async def _check_client_shared(self, scope: Scope) -> None:
        self._client_decided(scope, await self.backend.reserve(scope.key, scope.bucket, 0.0))

    def _client_decided(self, scope: Scope, decision: Decision) -> None:
        self._note(scope, decision)
        if not decision.allowed:
            self._refuse(scope, decision, "this client's request budget is spent")

    def before(self, client: ProviderClient, request: UpstreamRequest,
               deadline: float) -> Awaitable[None] | None:
        """Reserve the exchange's slot in its provider's bucket.

        An in-process bucket that grants a slot now answers here and None is returned:
        no coroutine per exchange for work that never waits. A slot later, or a shared
        backend: the awaitable returned sleeps until the slot (raising when there is none
        within the wait budget)."""
        scope = self.provider_scope(client, request)
        reserve_now = self._reserve_now
        if reserve_now is None:
            return self._reserving(client, scope, deadline, 0, 0.0)
        wait_s = self._granted(client, scope, reserve_now(
            scope.key, scope.bucket, self._wait_budget(scope, deadline)))
        if wait_s <= 0:
            return None
        return self._reserving(client, scope, deadline, 1, wait_s)

    async def _reserving(self, client: ProviderClient, scope: Scope, deadline: float,
                         tries: int, wait_s: float) -> None:
        """The rest of :meth:`before`: ``tries`` slots taken so far, the last ``wait_s``
        away. Sleep until it; the provider may have asked for a pause meanwhile (the slot
        was granted before the pause moved the bucket), and then a new slot is taken."""
        reserve_now = self._reserve_now
        while True:
            if tries:
                await self._sleep(wait_s)
                if self._paused.get(scope.key, 0.0) <= self._clock():
                    return
                if tries >= MAX_RESERVES:
                    raise RateLimited("the provider kept pausing this request's rate limit",
                                      provider=client.type, retry_after=1.0)
            wait = self._wait_budget(scope, deadline)
            decision = (reserve_now(scope.key, scope.bucket, wait) if reserve_now is not None
                        else await self.backend.reserve(scope.key, scope.bucket, wait))
            tries += 1
            wait_s = self._granted(client, scope, decision)
            if wait_s <= 0:
                return

    def _wait_budget(self, scope: Scope, deadline: float) -> float:
        """How long a slot may be away: the bucket's ``max_wait_s``, and never so long
        that less than ``EXCHANGE_RESERVE_S`` is left before the deadline."""
        left = deadline - self._clock() - EXCHANGE_RESERVE_S
        wait = scope.max_wait_s if scope.max_wait_s < left else left
        return wait if wait > 0.0 else 0.0

    def _granted(self, client: ProviderClient, scope: Scope, decision: Decision) -> float:
        """Note a provider bucket's decision; its wait, or ``RateLimited`` when refused."""
        self._note(scope, decision)
        if not decision.allowed:
            self._refuse(scope, decision, "the provider's rate limit has no slot for "
                         "this request within its wait budget", client.type)
        self.metrics.ratelimit_waited(client.name, decision.wait_s)
        return decision.wait_s

    def after(self, client: ProviderClient, request: UpstreamRequest,
              response: UpstreamResponse) -> Awaitable[None] | None:
        """Learn from the answer: a provider's rate signal pauses its bucket for every
        replica (the awaitable returned); None when there is none (most answers)."""
        seconds = client.adapter.rate_feedback(response)
        if seconds is None or seconds <= 0:
            return None
        scope = self.provider_scope(client, request)
        seconds = min(seconds, MAX_PAUSE_S)
        if len(self._paused) >= SCOPE_CACHE:
            now = self._clock()  # kept bounded: past pauses go first
            self._paused = {k: v for k, v in self._paused.items() if v > now}
            if len(self._paused) >= SCOPE_CACHE:
                self._paused.clear()
        self._paused[scope.key] = max(self._paused.get(scope.key, 0.0),
                                      self._clock() + seconds)
        return self.backend.pause(scope.key, scope.bucket, seconds)

    def _refuse(self, scope: Scope, decision: Decision, detail: str,
                provider: str | None = None) -> NoReturn:
        self.metrics.child(self.metrics.ratelimit_rejected, scope.label).inc()
        raise RateLimited(detail, provider=provider, retry_after=decision.retry_after_s)

    @staticmethod
    def _note(scope: Scope, decision: Decision) -> None:
        budget = BUDGET.get()
        if budget is not None:
            budget.seen.append((scope.bucket, decision))

    async def close(self) -> None:
        await self.backend.close()
