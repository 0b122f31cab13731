"""Fixtures for the limiter tests: each backend, a Redis client, a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.ratelimit.memory import MemoryBackend
from gateway.ratelimit.redis_backend import RedisBackend
from gateway.ratelimit.shared import Backend
from gateway.redis_conn import connect
from tests.redis_server import RedisServer


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = connect(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The same behavioural suite runs against both backends."""
    if request.param == "memory":
        yield MemoryBackend(asyncio.get_running_loop().time)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = connect(server.url)
    try:
        yield RedisBackend(client)
    finally:
        await client.aclose()
