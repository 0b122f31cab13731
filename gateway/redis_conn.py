"""The one place a Redis client is made, always with timeouts.

redis-py has no timeout by default: a stalled Redis would hang every request.
Every command here is bounded by ``socket_timeout`` and connecting by
``socket_connect_timeout``; redis-py's own retries are off so the caller
decides (the limiter degrades, operations wait for the next tick).
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

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
