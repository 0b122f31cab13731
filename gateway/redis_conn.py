"""The one place a Redis client is made, always with timeouts.

redis-py has no timeout by default: a stalled Redis would hang every request.
Every command here is bounded by ``socket_timeout`` and connecting by
``socket_connect_timeout``; redis-py's own retries are off so the caller
decides (the limiter degrades, operations wait for the next tick).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
import weakref
from collections.abc import Awaitable, Sequence
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

#: Everything a Redis call may raise that means "Redis is not answering right now".
#: RuntimeError is here because redis-py's asyncio client can raise it ("read()
#: called while another coroutine is already waiting") from a pooled connection
#: whose earlier read was cancelled by a timeout while Redis was going away
#: (redis/redis-py#2540, #2722): the connection is unusable, not the process.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError,
                                                 RuntimeError)


def connect(url: str, *, timeout_s: float = 0.25, connect_timeout_s: float = 0.5,
            max_connections: int = 256) -> aioredis.Redis:
    """A client from ``redis_url``; nothing connects until the first command."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        retry_on_timeout=False,
        retry=None,
        health_check_interval=10,
        max_connections=max_connections,
        decode_responses=False,
    )


#: The most commands waiting for their replies on the one connection; a call beyond
#: them fails at once (Redis is far behind; waiting would only add to it).
MAX_PENDING = 10_000


class _ErrorReply(Exception):
    """What hiredis makes of an error reply; mapped to redis-py's classes in ``_error``."""


def _error(reply: _ErrorReply) -> RedisError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith(("NOAUTH", "WRONGPASS")):
        return AuthenticationError(message)
    return ResponseError(message)


class _Link(asyncio.Protocol):
    """One pipelined connection: commands go out in order, replies come back in order.

    Commands made during one turn of the event loop go out in one write. The
    replies' order gives each its waiter. The oldest unanswered command bounds
    the whole link: once its deadline passes, every command behind it would wait
    as long, so all fail with ``TimeoutError`` and the link is closed. One timer
    per link, not one per command.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reader = hiredis.Reader(replyError=_ErrorReply)
        self._pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._out: list[bytes] = []
        self._flushing = False
        self._timer: asyncio.TimerHandle | None = None

    # -- the protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError:
                self.close(RedisConnectionError, "Redis sent a reply the gateway cannot read")
                return
            if reply is False:
                return
            if not pending:
                self.close(RedisConnectionError, "Redis sent a reply nobody asked for")
                return
            fut = pending.popleft()[0]
            if fut.done():  # its caller gave up (cancelled)
                continue
            if isinstance(reply, _ErrorReply):
                fut.set_exception(_error(reply))
            else:
                fut.set_result(reply)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost fails what is pending

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(RedisConnectionError, "Redis closed the connection")

    # -- commands --------------------------------------------------------------------

    def call(self, payload: bytes, deadline: float) -> asyncio.Future[Any]:
        if self.closed:
            raise RedisConnectionError("the Redis connection is closed")
        if len(self._pending) >= MAX_PENDING:
            raise RedisConnectionError("too many Redis commands are waiting")
        fut = self.loop.create_future()
        self._pending.append((fut, deadline))
        self._out.append(payload)
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self._flush)
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._check)
        return fut

    def _flush(self) -> None:
        self._flushing = False
        if self.closed or self.transport is None or not self._out:
            self._out.clear()
            return
        if self.transport.is_closing():  # going away; connection_lost is on its way
            self.close(RedisConnectionError, "the Redis connection is closing")
            return
        out = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self.transport.write(out)

    def _check(self) -> None:
        self._timer = None
        if not self._pending:
            return
        deadline = self._pending[0][1]
        if deadline <= self.loop.time():
            self.close(TimeoutError, "Redis did not answer in time")
        else:
            self._timer = self.loop.call_at(deadline, self._check)

    @property
    def idle(self) -> bool:
        return not self._pending

    def close(self, error: type[Exception], message: str) -> None:
        """Close the link; every command still waiting fails with ``error``."""
        already, self.closed = self.closed, True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._out.clear()
        pending, self._pending = self._pending, collections.deque()
        for fut, _ in pending:
            if not fut.done():
                fut.set_exception(error(message))  # one per waiter: no shared traceback
        if not already and self.transport is not None:
            self.transport.abort()


class Multiplexer:
    """The connection the request path's scripts share, without redis-py's per-command layers.

    redis-py 8 wraps every command in a retry object, an event dispatcher,
    observability hooks, a locked pool, stream reader and writer and a timer:
    measured, that was two thirds of the CPU of each script call, and a request
    in Redis mode makes four. Redis runs one command at a time, so one
    pipelined connection serves all of them: the commands of one loop turn go
    out in one write, replies are parsed by hiredis and handed back in order.
    Connection settings (host or socket, user, password, database) come from the
    redis-py client, whose own pool serves everything else.

    Every call is bounded by the client's ``socket_timeout``, connecting
    included. A connection that closes is replaced on the next call; a call
    whose connection closed under it, and was not new, is sent once more on a
    new one (Redis restarted: the command most likely never ran, and every
    script sent here may run twice).
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        pool = redis.connection_pool
        self._kwargs: dict[str, Any] = dict(pool.connection_kwargs)
        self.timeout_s: float = self._kwargs.get("socket_timeout") or 0.25
        self._ssl = issubclass(pool.connection_class, SSLConnection)
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None

    async def execute(self, *args: Any, script: Script | None = None) -> Any:
        """One command; raises what redis-py raises (REDIS_ERRORS). ``script``: the
        script an ``EVALSHA`` runs, sent once with ``EVAL`` should Redis not have it
        (restarted or flushed), as a command of its own: with a deadline of its own."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        payload = hiredis.pack_command(args)
        resent = False  # once on a new connection, after one closed under the command
        for _ in range(4):  # at most: the command and once more after a close, twice
            link, fresh = self._link, False
            if link is None or link.closed:
                link, fresh = await self._connected(deadline), True
            try:
                return await link.call(payload, deadline)
            except RedisConnectionError:
                if fresh or resent or not link.closed or loop.time() >= deadline:
                    raise
                resent = True
            except NoScriptError:
                if script is None:
                    raise
                payload = hiredis.pack_command(("EVAL", script.source, *args[2:]))
                script, resent = None, False
                deadline = loop.time() + self.timeout_s
        raise RedisConnectionError("Redis closed two connections in a row")

    async def _connected(self, deadline: float) -> _Link:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connect_done)
        async with asyncio.timeout_at(deadline):
            return await asyncio.shield(self._connecting)

    def _connect_done(self, fut: asyncio.Future[_Link]) -> None:
        self._connecting = None
        if not fut.cancelled() and fut.exception() is None:
            self._link = fut.result()

    async def _connect(self) -> _Link:
        kw, loop = self._kwargs, asyncio.get_running_loop()
        connect_s = kw.get("socket_connect_timeout") or self.timeout_s
        link = _Link(loop)
        try:
            async with asyncio.timeout(connect_s + self.timeout_s):
                if "path" in kw:
                    await loop.create_unix_connection(lambda: link, kw["path"])
                else:
                    await loop.create_connection(lambda: link, kw.get("host", "localhost"),
                                                 kw.get("port", 6379), ssl=self._tls())
                handshake: list[tuple[Any, ...]] = []
                if kw.get("password"):
                    handshake.append(("AUTH", kw["username"], kw["password"])
                                     if kw.get("username") else ("AUTH", kw["password"]))
                if kw.get("db"):
                    handshake.append(("SELECT", kw["db"]))
                end = loop.time() + self.timeout_s
                for command in handshake:
                    await link.call(hiredis.pack_command(command), end)
        except BaseException:
            link.close(RedisConnectionError, "could not connect to Redis")
            raise
        return link

    def _tls(self) -> ssl.SSLContext | None:
        if not self._ssl:
            return None
        kw = self._kwargs
        context = ssl.create_default_context(cafile=kw.get("ssl_ca_certs"))
        if kw.get("ssl_certfile"):
            context.load_cert_chain(kw["ssl_certfile"], kw.get("ssl_keyfile"))
        reqs = kw.get("ssl_cert_reqs", "required")
        if reqs in ("none", ssl.CERT_NONE):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context.check_hostname = bool(kw.get("ssl_check_hostname", True))
        return context

    def disconnect_idle(self) -> None:
        """Close the connection if nothing waits on it (after an outage it may lead to
        the old server; the next call makes a new one)."""
        if self._link is not None and self._link.idle:
            self._link.close(RedisConnectionError, "closed")
            self._link = None

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._link is not None:
            self._link.close(RedisConnectionError, "the client is closing")
            self._link = None


_MUX: weakref.WeakKeyDictionary[aioredis.Redis, Multiplexer] = weakref.WeakKeyDictionary()


def multiplexer(redis: aioredis.Redis) -> Multiplexer:
    """The client's multiplexer (one per client, made on first use)."""
    mux = _MUX.get(redis)
    if mux is None:
        mux = _MUX[redis] = Multiplexer(redis)
    return mux


class Script:
    """A Lua script run with EVALSHA over the multiplexer (EVAL once after NOSCRIPT).

    The call matches redis-py's registered scripts: ``await script(keys=..., args=...)``.
    """

    def __init__(self, redis: aioredis.Redis, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self.pool = multiplexer(redis)

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Awaitable[Any]:
        # No coroutine of its own: the multiplexer sends EVAL should Redis answer NOSCRIPT.
        return self.pool.execute("EVALSHA", self.sha, len(keys), *keys, *args, script=self)


async def close(redis: aioredis.Redis) -> None:
    """Close the client and its multiplexer."""
    pool = _MUX.pop(redis, None)
    if pool is not None:
        await pool.aclose()
    await redis.aclose()
