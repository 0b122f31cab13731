"""The lean pool the request path's scripts use (gateway.redis_conn)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.redis_conn import REDIS_ERRORS, Script, connect, lean_pool
from tests.redis_server import RedisServer

_ECHO = "return {ARGV[1], KEYS[1]}"


async def test_a_restarted_redis_costs_no_failed_call(redis_server: RedisServer) -> None:
    redis = connect(redis_server.url)
    script = Script(redis, _ECHO)
    try:
        assert await script(keys=["k"], args=["a"]) == [b"a", b"k"]
        # Several idle connections, all leading to the Redis about to die.
        await asyncio.gather(*(script(keys=["k"], args=[str(i)]) for i in range(8)))
        assert len(lean_pool(redis)._idle) >= 2
        redis_server.kill()
        redis_server.start()  # the same port, an empty script cache; no call in between
        # The first call takes a dead idle connection, then a new one: EVALSHA, NOSCRIPT, EVAL.
        assert await script(keys=["k"], args=["b"]) == [b"b", b"k"]
    finally:
        await redis.aclose()


async def test_idle_connections_are_retried_once_not_forever(
        redis_server: RedisServer) -> None:
    redis = connect(redis_server.url)
    script = Script(redis, _ECHO)
    try:
        await asyncio.gather(*(script(keys=["k"], args=[str(i)]) for i in range(8)))
        redis_server.kill()
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(REDIS_ERRORS):
            await script(keys=["k"], args=["x"])
        assert loop.time() - start < lean_pool(redis).timeout_s + 0.1  # one timer bounds all
        assert lean_pool(redis)._idle == []  # the dead ones were dropped together
    finally:
        await redis.aclose()
