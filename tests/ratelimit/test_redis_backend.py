"""What only the Redis backend must show: one round trip per decision, the script
called by its SHA, Redis's clock, keys that expire, hash-tagged names."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway import redis_keys
from gateway.ratelimit.gcra import Bucket
from gateway.ratelimit.limiter import path_key
from gateway.ratelimit.redis_backend import BackendUnavailable, RedisBackend
from gateway.redis_conn import connect
from tests.redis_server import RedisServer


async def _commands(redis: Redis) -> dict[str, int]:
    stats: dict[str, Any] = await redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def test_one_round_trip_per_decision_by_sha(redis_client: Redis) -> None:
    backend = RedisBackend(redis_client)
    bucket = Bucket.of(1000, 1000)
    await backend.reserve("warm-up", bucket, 0.0)  # loads the script (NOSCRIPT, then EVAL)
    await redis_client.config_resetstat()
    for i in range(50):
        await backend.reserve(f"k{i % 5}", bucket, 1.0)
    await backend.pause("k0", bucket, 0.1)
    calls = await _commands(redis_client)
    calls.pop("config|resetstat", None)
    calls.pop("info", None)
    # 51 decisions, 51 commands from the client; Redis also counts the commands the
    # script runs inside itself (one TIME each, GET and SET).
    assert calls.pop("evalsha") == 51 and calls.pop("time") == 51
    assert set(calls) <= {"get", "set"}


async def test_the_script_is_loaded_once_and_again_after_a_flush(redis_client: Redis) -> None:
    a, b = RedisBackend(redis_client), RedisBackend(redis_client)
    bucket = Bucket.of(10, 1)
    await redis_client.config_resetstat()
    for _ in range(5):
        await a.reserve("k", bucket, 5.0)
        await b.reserve("k", bucket, 5.0)
    # The first EVALSHA finds no script; one EVAL loads it for every later call.
    calls = await _commands(redis_client)
    assert calls.get("eval") == 1 and calls.get("evalsha") == 10
    await redis_client.script_flush()  # what a Redis restart does to the script cache
    assert (await a.reserve("k2", bucket, 0.0)).allowed


async def test_replica_clocks_do_not_matter(redis_client: Redis) -> None:
    # The script reads TIME from Redis; no local clock is involved at all, so two
    # replicas whose clocks disagree by an hour still queue behind each other.
    # (SharedBackend's clock only times its own handover; see test_fallback.)
    a, b = RedisBackend(redis_client), RedisBackend(redis_client)
    bucket = Bucket.of(5, 1)
    d1 = await a.reserve("k", bucket, 2.0)
    d2 = await b.reserve("k", bucket, 2.0)
    d3 = await a.reserve("k", bucket, 2.0)
    assert d1.wait_s == 0.0 and 0.1 < d2.wait_s <= 0.2 and 0.3 < d3.wait_s <= 0.4


async def test_keys_expire_once_the_bucket_is_full_again(redis_client: Redis) -> None:
    backend = RedisBackend(redis_client)
    key = redis_keys.bucket("aelyst-main", path_key("POST", "/contact/phone:%2B1555/x"))
    await backend.reserve(key, Bucket.of(5, 1), 2.0)
    ttl_ms = await redis_client.pttl(key)
    assert 0 < ttl_ms <= 1200  # the bucket refills in 0.2 s, plus 1 s of grace
    await backend.pause(key, Bucket.of(5, 1), 3.0)
    assert 3000 < await redis_client.pttl(key) <= 4000
    await redis_client.pexpire(key, 1)
    await asyncio.sleep(0.05)
    assert await redis_client.exists(key) == 0


def test_key_names_are_hash_tagged_and_carry_no_identifier() -> None:
    key = redis_keys.bucket("aelyst-main", path_key("POST", "/contact/phone:%2B15557654321/c"))
    tag = key[key.index("{") + 1:key.index("}")]
    assert tag.startswith("aelyst-main:path:") and "5557654321" not in key
    assert redis_keys.client_bucket("crm") == "agw:rlc:{crm}"


async def test_every_call_is_bounded_when_redis_stops_answering(
        redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    backend = RedisBackend(client)
    bucket = Bucket.of(5, 1)
    await backend.reserve("k", bucket, 0.0)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # a Redis that hangs, not one that is gone
    try:
        async with asyncio.timeout(5):  # a bound for the test, far above the 0.3 s one
            with pytest.raises(BackendUnavailable):
                await backend.reserve("k", bucket, 0.0)
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
        await client.aclose()
