"""The one place a Redis client is made, always with timeouts.

redis-py has no timeout by default: a stalled Redis would hang every request.
Every command here is bounded by ``socket_timeout`` and connecting by
``socket_connect_timeout``; redis-py's own retries are off so the caller
decides (the limiter degrades, operations wait for the next tick).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

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


def pack(args: Sequence[Any]) -> bytes:
    """A command in RESP: an array of bulk strings (str, bytes, int or float arguments).
    redis-py's ``pack_command`` handles every shape of argument, and costs it."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            b = arg
        elif isinstance(arg, str):
            b = arg.encode()
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            b = repr(arg).encode()
        else:
            raise TypeError(f"cannot send a {type(arg).__name__} to Redis")
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


#: A call waits at most this long for a free lean connection when all are busy.
ACQUIRE_TIMEOUT_S = 0.5


class LeanPool:
    """Connections for the request path's scripts, without redis-py's per-command layers.

    redis-py 8 wraps every command in a retry object, an event dispatcher,
    observability hooks, a locked pool and, for a timed write, an
    ``asyncio.wait_for`` that creates a task: measured, that was two thirds of
    the CPU of each script call, and a request in Redis mode makes four. This
    pool keeps redis-py's own :class:`~redis.asyncio.Connection` objects (its
    connecting, authentication, RESP parsing with hiredis and error mapping)
    and only replaces the path around them: a free list, one write, one read,
    all under one ``asyncio.timeout`` (the client's ``socket_timeout``).

    A connection that fails in any way but a Redis error reply is closed and
    dropped, and so are the idle ones (they lead to the same, likely restarted,
    server); a reply error (``NOSCRIPT``, a script error) leaves it healthy.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        pool = redis.connection_pool
        kwargs = dict(pool.connection_kwargs)
        self.timeout_s: float = kwargs.get("socket_timeout") or 0.25
        kwargs["socket_timeout"] = None  # bounded here, by one timer per call
        kwargs["health_check_interval"] = 0  # a dead connection fails its call; see execute
        connection_class: Any = pool.connection_class
        self._make: Callable[[], AbstractConnection] = lambda: connection_class(**kwargs)
        self.max_connections: int = pool.max_connections
        self._idle: list[AbstractConnection] = []
        self._count = 0  # connections open or being opened, idle or not
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def execute(self, *args: Any) -> Any:
        """One command; raises what redis-py raises (REDIS_ERRORS).

        A connection error on a connection that sat idle in the pool (Redis
        restarted, or closed it) is tried once more on a new connection: the
        command most likely never reached Redis, and every script sent here may
        run twice. Within the same timer, so the call is bounded all the same.
        """
        async with asyncio.timeout(self.timeout_s):
            for _ in range(2):
                pooled = bool(self._idle)
                conn = await self._acquire()
                try:
                    return await self._call(conn, args)
                except RedisConnectionError:
                    if not pooled:
                        raise
            raise RedisConnectionError("Redis closed two connections in a row")

    async def _call(self, conn: AbstractConnection, args: Sequence[Any]) -> Any:
        healthy = False
        try:
            await conn.send_packed_command(pack(args), check_health=False)
            reply = await conn.read_response()
            healthy = True
            return reply
        except ResponseError:
            healthy = True
            raise
        finally:
            if healthy:
                self._release(conn)
            else:
                self._drop(conn)
                self.disconnect_idle()

    async def _acquire(self) -> AbstractConnection:
        for _ in range(self.max_connections + 1):  # bounded; the call's timer bounds it too
            if self._idle:
                return self._idle.pop()
            if self._count < self.max_connections:
                self._count += 1
                return self._make()
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                async with asyncio.timeout(ACQUIRE_TIMEOUT_S):
                    await fut
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
        raise RedisConnectionError("no Redis connection became free")

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _release(self, conn: AbstractConnection) -> None:
        self._idle.append(conn)
        self._wake_one()

    def _drop(self, conn: AbstractConnection) -> None:
        self._count -= 1
        _close_soon(conn)
        self._wake_one()

    def disconnect_idle(self) -> None:
        """Close the idle connections (after an outage they lead to the old server)."""
        idle, self._idle = self._idle, []
        self._count -= len(idle)
        for conn in idle:
            _close_soon(conn)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        self._count -= len(idle)
        for conn in idle:
            with contextlib.suppress(*REDIS_ERRORS):
                await conn.disconnect(nowait=True)


_CLOSING: set[asyncio.Task[None]] = set()


def _close_soon(conn: AbstractConnection) -> None:
    # Closing a connection is a coroutine; an error path must not wait on it.
    async def close() -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await conn.disconnect(nowait=True)

    task = asyncio.get_running_loop().create_task(close())
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


_LEAN: weakref.WeakKeyDictionary[aioredis.Redis, LeanPool] = weakref.WeakKeyDictionary()


def lean_pool(redis: aioredis.Redis) -> LeanPool:
    """The client's lean pool (one per client, made on first use)."""
    pool = _LEAN.get(redis)
    if pool is None:
        pool = _LEAN[redis] = LeanPool(redis)
    return pool


class Script:
    """A Lua script run with EVALSHA over the lean pool (EVAL once after NOSCRIPT).

    The call matches redis-py's registered scripts: ``await script(keys=..., args=...)``.
    """

    def __init__(self, redis: aioredis.Redis, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self.pool = lean_pool(redis)

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await self.pool.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or flushed Redis: EVAL loads it again
            return await self.pool.execute("EVAL", self.source, len(keys), *keys, *args)


async def close(redis: aioredis.Redis) -> None:
    """Close the client and its lean pool."""
    pool = _LEAN.pop(redis, None)
    if pool is not None:
        await pool.aclose()
    await redis.aclose()
