"""The one HTTP path to every provider, and the translation cache.

:class:`ProviderClient` owns one configured provider: its adapter, its
aiohttp session (one per provider, so a slow provider cannot take another's
connections) and its lookup cache. aiohttp's exceptions are mapped to the
gateway's here and nowhere else.

:class:`Call` is the :class:`gateway.spi.Upstream` an adapter sees during one
operation: it carries the operation's deadline, so no attempt outlives it.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar, cast

import aiohttp
import orjson
from yarl import URL

from gateway.config import ProviderConfig
from gateway.deadline import deadline
from gateway.errors import (
    AssigneeNotFound,
    ContactNotFound,
    ProviderError,
    UpstreamConnectError,
    UpstreamMalformed,
    UpstreamRejected,
    UpstreamTimeout,
)
from gateway.expiring import Expiring
from gateway.spi import Adapter, UpstreamRequest, UpstreamResponse

T = TypeVar("T")
Clock = Callable[[], float]

#: An upstream answer larger than this is not what any provider documents.
MAX_UPSTREAM_BODY = 1 << 20
_NOT_FOUND = (ContactNotFound, AssigneeNotFound)
#: The most upstream URLs a provider client keeps built.
URL_CACHE = 1024
_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None,
                                    sock_connect=None)


class UpstreamObserver(Protocol):
    """Told of every exchange and cache look-up (metrics implement it)."""

    def exchange(self, provider: str, operation: str, status: str, seconds: float) -> None: ...

    def cache(self, kind: str, result: str) -> None: ...


class NullObserver:
    def exchange(self, provider: str, operation: str, status: str, seconds: float) -> None:
        return None

    def cache(self, kind: str, result: str) -> None:
        return None


_ABSENT: Any = object()  # a cached value may be anything, None included


class LookupCache:
    """A bounded TTL cache of translations with coalescing and negative entries."""

    def __init__(self, *, maxsize: int = 10_000, ttl_s: float = 300.0,
                 negative_ttl_s: float = 30.0, clock: Clock | None = None) -> None:
        timer = clock or asyncio.get_running_loop().time
        # Not cachetools' TTLCache: pure Python with a linked list per entry, a hit cost
        # 2.1 us (a membership test and a read, each walking its expiry); this map's
        # get is 0.5 us. Past ``maxsize`` the oldest written goes first.
        self._hits: Expiring[tuple[str, str], Any] = Expiring(maxsize, ttl_s, timer)
        self._misses: Expiring[tuple[str, str], ProviderError] = Expiring(
            maxsize, negative_ttl_s, timer)
        self._inflight: dict[tuple[str, str], asyncio.Future[Any]] = {}

    async def get(self, kind: str, key: str, load: Callable[[], Awaitable[T]],
                  observer: UpstreamObserver, wait_s: float | None = None) -> T:
        """The cached value, or ``load()``'s; ``wait_s`` bounds waiting for a load that
        another caller started (UpstreamTimeout after it)."""
        k = (kind, key)
        hit = self._hits.get(k, _ABSENT)
        if hit is not _ABSENT:
            observer.cache(kind, "hit")
            return cast(T, hit)
        miss = self._misses.get(k)
        if miss is not None:
            observer.cache(kind, "hit")
            # A copy per raise: raising the one cached object again and again would
            # grow its traceback with every caller's frames (and keep them alive).
            raise copy.copy(miss)
        pending = self._inflight.get(k)
        if pending is not None:
            observer.cache(kind, "hit")
            try:
                async with asyncio.timeout(wait_s):
                    return cast(T, await asyncio.shield(pending))
            except TimeoutError:
                raise UpstreamTimeout("the request's deadline passed") from None
        observer.cache(kind, "miss")
        return await self._load(k, load)

    async def _load(self, k: tuple[str, str], load: Callable[[], Awaitable[T]]) -> T:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[k] = fut
        try:
            value = await load()
        except _NOT_FOUND as e:
            self._misses[k] = copy.copy(e)  # without the traceback (and the frames it holds)
            fut.set_exception(e)
            raise
        except BaseException as e:
            # Waiters see the failure too; nothing is cached, the next call retries.
            fut.set_exception(e if isinstance(e, Exception) else asyncio.CancelledError())
            raise
        else:
            self._hits[k] = value
            fut.set_result(value)
            return value
        finally:
            del self._inflight[k]
            if fut.done() and not fut.cancelled():
                fut.exception()  # mark retrieved: waiters may be none
            # The future holds the error, whose traceback holds this frame: break the
            # cycle, or a failed look-up lives until a full collection.
            del fut

    def clear(self) -> None:
        self._hits.clear()
        self._misses.clear()


class ProviderClient:
    """One configured provider: adapter, session, cache. Lives as long as its config."""

    def __init__(self, config: ProviderConfig, adapter: Adapter,
                 session: aiohttp.ClientSession, cache: LookupCache,
                 observer: UpstreamObserver | None = None) -> None:
        self.config = config
        self.name = config.name  # read on every exchange: an attribute, not a property
        # What a request reads of the configuration, as native attributes (compiled,
        # gateway/_native.py): each read of a pydantic model's field goes through its
        # __getattr__ hook. The configuration is frozen; a reload builds a new client.
        # The gateway reads these, never the same fields through ``config``.
        self.type = config.type
        self.timeout_s = config.timeout_s
        self.max_wait_s = config.rate_limit.max_wait_s
        self.deadline_s = config.retry.deadline_s
        self.give_up_after_s = config.retry.give_up_after_s
        self.adapter = adapter
        self.session = session
        self.cache = cache
        self.observer: UpstreamObserver = observer or NullObserver()
        self._base = config.base_url
        self._headers = {**adapter.auth_headers(), "User-Agent": "assignment-gateway/1"}
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self._urls: dict[str, URL] = {}  # path -> URL, built once per path (bounded)

    def url(self, request: UpstreamRequest) -> URL:
        # encoded=True: the adapter already encoded each segment; yarl must not
        # re-encode or normalize it into another path.
        url = self._urls.get(request.path)
        if url is None:
            url = URL(self._base + request.path, encoded=True)
            if len(self._urls) >= URL_CACHE:
                self._urls.clear()  # paths that carry identifiers: kept bounded
            self._urls[request.path] = url
        return url

    async def exchange(self, request: UpstreamRequest, timeout_s: float,
                       extra_headers: Mapping[str, str] | None = None,
                       loop: asyncio.AbstractEventLoop | None = None) -> UpstreamResponse:
        """One HTTP exchange, bounded by ``timeout_s``; never follows redirects.
        ``loop``: the running loop, when the caller has it (see :class:`Call`)."""
        if loop is None:
            loop = asyncio.get_running_loop()
        start = loop.time()
        status = "error"
        data: bytes | None = None
        base = self._headers
        if request.json is not None:
            data = orjson.dumps(request.json)
            base = self._json_headers
        headers = {**base, **extra_headers} if extra_headers else base
        try:
            # One timer bounds the whole exchange; aiohttp's own timers would be a
            # second, redundant set per request (_NO_TIMEOUT turns them off).
            with deadline(timeout_s, loop):
                resp = await self.session.request(
                    request.method, self.url(request), params=request.query or None,
                    data=data, headers=headers, allow_redirects=False, timeout=_NO_TIMEOUT)
                # Released here rather than by ``async with``: its exit awaits the
                # request's writer, and compiled (gateway/_native.py), an exception from
                # the block could then leave as another one the task handled before.
                try:
                    body = await _read_body(resp)
                finally:
                    resp.release()
            response = self._response(resp, body)
            status = str(response.status)  # the metrics keep listed statuses exact
            return response
        except TimeoutError:
            status = "timeout"
            raise UpstreamTimeout(f"no answer within {timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise UpstreamConnectError(_connect_detail(e)) from None
        finally:
            self.observer.exchange(self.name, request.operation, status, loop.time() - start)

    def _response(self, resp: aiohttp.ClientResponse, body: bytes) -> UpstreamResponse:
        if 300 <= resp.status < 400:
            # Following a redirect would carry the credential to wherever it points.
            raise UpstreamRejected(f"the provider answered a redirect ({resp.status}); "
                                   "the gateway does not follow redirects")
        return UpstreamResponse(resp.status, resp.headers, body)


_TOO_LARGE = "the provider's answer is larger than any it documents"


async def _read_body(resp: aiohttp.ClientResponse) -> bytes:
    """The whole body, to its end, refused past ``MAX_UPSTREAM_BODY``.

    ``StreamReader.read(n)`` would return only what has arrived so far: an answer
    that comes in pieces (chunked, TLS records, a slow link) would be cut short.
    The loop ends: every chunk holds at least one byte and the total is capped
    (and the exchange's timeout bounds the wait).
    """
    # The raw header, not the content_length property (interpreted code that parses it):
    # aiohttp's parser has refused a Content-Length that is not digits.
    length = resp.headers.get("Content-Length")
    if length is not None and int(length) > MAX_UPSTREAM_BODY:
        raise UpstreamMalformed(_TOO_LARGE)
    content = resp.content
    chunks: list[bytes] = []
    size = 0
    # Awaited only while the answer is still coming. Once its end has arrived (for an
    # answer of a packet or a few, before the exchange returns), what is left is taken
    # as it is, with no coroutine: readany() is one, and read() runs two per answer.
    while not content.is_eof():
        chunk = await content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_UPSTREAM_BODY:
            raise UpstreamMalformed(_TOO_LARGE)
        chunks.append(chunk)
    rest = content.read_nowait()  # all that is buffered: no more can come after the end
    body = rest if not chunks else b"".join([*chunks, rest])
    if len(body) > MAX_UPSTREAM_BODY:
        raise UpstreamMalformed(_TOO_LARGE)
    return body


def _connect_detail(e: BaseException) -> str:
    # Never str(e): aiohttp's texts can carry the URL, which can carry identifiers.
    if isinstance(e, aiohttp.ClientConnectorError):
        return "cannot connect to the provider"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "the provider closed the connection without an answer"
    return "the connection to the provider failed"


class UpstreamGate(Protocol):
    """Cross-cutting work around each exchange (the rate limiter implements it)."""

    def before(self, client: ProviderClient, request: UpstreamRequest,
               deadline: float) -> Awaitable[None] | None:
        """None when the exchange may start now; else an awaitable that returns when it
        may, or raises ``RateLimited`` (or an upstream error) when it may not start
        before ``deadline``. Either may raise at once."""
        ...

    def after(self, client: ProviderClient, request: UpstreamRequest,
              response: UpstreamResponse) -> Awaitable[None] | None:
        """Learn from the answer (a provider's 429 pauses its bucket): None, or an
        awaitable to await when there is work that waits."""
        ...


class Call:
    """The :class:`gateway.spi.Upstream` for one operation attempt."""

    def __init__(self, client: ProviderClient, deadline: float,
                 extra_headers: Mapping[str, str] | None = None,
                 gate: UpstreamGate | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.client = client
        self.deadline = deadline
        self.extra_headers = extra_headers
        self.gate = gate
        self.exchanges = 0
        # The running loop, found once (or given): Python 3.11 finds it with a getpid()
        # system call each time, and an attempt reads the time and sets a timer by it.
        self.loop = asyncio.get_running_loop() if loop is None else loop

    def remaining(self) -> float:
        return self.deadline - self.loop.time()

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        gate = self.gate
        if gate is not None:
            pending = gate.before(self.client, request, self.deadline)
            if pending is not None:
                await pending
        budget = min(self.client.timeout_s, self.remaining())
        if budget <= 0:
            raise UpstreamTimeout("the request's deadline passed")
        self.exchanges += 1
        response = await self.client.exchange(request, budget, self.extra_headers, self.loop)
        if gate is not None:
            pending = gate.after(self.client, request, response)
            if pending is not None:
                await pending
        return response

    async def lookup(self, kind: str, key: str, load: Callable[[], Awaitable[T]]) -> T:
        return await self.client.cache.get(kind, key, load, self.client.observer,
                                           max(0.0, self.remaining()))


def new_session(limit: int = 0) -> aiohttp.ClientSession:
    """A client session whose pool is never the cap (limit 0: unbounded) and no cookies."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                 raise_for_status=False, auto_decompress=True,
                                 json_serialize=lambda o: orjson.dumps(o).decode())

