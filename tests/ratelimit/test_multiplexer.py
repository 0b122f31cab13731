"""The one pipelined connection the request path's scripts share (gateway.redis_conn).

Against a real redis-server: killed, restarted, stopped (SIGSTOP), with a
password, a database, a unix socket and TLS in its URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError

from gateway import redis_conn
from gateway.redis_conn import REDIS_ERRORS, Script, connect, multiplexer
from tests.redis_server import RedisServer, _free_port

pytestmark = pytest.mark.redis

_ECHO = "return {ARGV[1], KEYS[1]}"
_SET = "return redis.call('SET', KEYS[1], ARGV[1])"


@contextlib.asynccontextmanager
async def client(url: str, **kwargs: Any) -> AsyncIterator[aioredis.Redis]:
    """A gateway Redis client (``redis_conn.connect``), closed with its multiplexer."""
    redis = connect(url, **kwargs)
    try:
        yield redis
    finally:
        await redis_conn.close(redis)


@contextlib.contextmanager
def running(server: RedisServer) -> Iterator[RedisServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_every_reply_reaches_its_own_caller(redis_server: RedisServer) -> None:
    # 2,000 scripts in one write: on a slow host Redis takes more than the gateway's
    # 0.25 s to answer them all, and this test is about order, not about timeouts.
    async with client(redis_server.url, timeout_s=5.0) as redis:
        script = Script(redis, _ECHO)
        await script(keys=["k"], args=["warm"])
        before = (await redis.info("stats"))["total_reads_processed"]
        # Many callers in one loop turn: their commands share writes, their replies
        # come back in one stream and must be handed out in order.
        got = await asyncio.gather(*(script(keys=[f"k{i}"], args=[str(i)])
                                     for i in range(2_000)))
        assert got == [[str(i).encode(), f"k{i}".encode()] for i in range(2_000)]
        # One write for all 2,000 (some 180 KB): Redis reads it in 16 KB pieces (10),
        # where a connection per command would be read once per command.
        reads = (await redis.info("stats"))["total_reads_processed"] - before
        assert reads < 100, reads


async def test_a_cancelled_caller_does_not_shift_the_replies(
        redis_server: RedisServer) -> None:
    async with client(redis_server.url) as redis:
        script = Script(redis, _ECHO)
        await script(keys=["k"], args=["warm"])
        gone = asyncio.ensure_future(script(keys=["k"], args=["gone"]))
        await asyncio.sleep(0)  # its command is queued; the write is this turn's
        gone.cancel()
        assert await script(keys=["k"], args=["mine"]) == [b"mine", b"k"]
        with pytest.raises(asyncio.CancelledError):
            await gone


async def test_an_error_reply_fails_only_its_call(redis_server: RedisServer) -> None:
    async with client(redis_server.url) as redis:
        bad = Script(redis, "return redis.call('INCR', KEYS[1])")
        echo = Script(redis, _ECHO)
        await redis.set("text", "not a number")
        results = await asyncio.gather(echo(keys=["k"], args=["1"]), bad(keys=["text"]),
                                       echo(keys=["k"], args=["2"]), return_exceptions=True)
        assert results[0] == [b"1", b"k"] and results[2] == [b"2", b"k"]
        assert isinstance(results[1], ResponseError)
        link = multiplexer(redis)._link
        assert link is not None and not link.closed  # a reply error leaves it healthy


async def test_a_restarted_redis_costs_no_failed_call(redis_server: RedisServer) -> None:
    async with client(redis_server.url) as redis:
        script = Script(redis, _ECHO)
        assert await script(keys=["k"], args=["a"]) == [b"a", b"k"]
        redis_server.kill()
        redis_server.start()  # the same port, an empty script cache; no call in between
        # A new connection, then EVALSHA, NOSCRIPT, EVAL.
        assert await script(keys=["k"], args=["b"]) == [b"b", b"k"]


async def test_a_dead_redis_fails_calls_at_once_and_is_found_again(
        redis_server: RedisServer) -> None:
    async with client(redis_server.url) as redis:
        script = Script(redis, _ECHO)
        loop = asyncio.get_running_loop()
        await script(keys=["k"], args=["a"])
        redis_server.kill()
        start = loop.time()
        results = await asyncio.gather(*(script(keys=["k"], args=[str(i)]) for i in range(50)),
                                       return_exceptions=True)
        assert all(isinstance(r, REDIS_ERRORS) for r in results)
        assert loop.time() - start < multiplexer(redis).timeout_s + 0.1
        redis_server.start()
        assert await script(keys=["k"], args=["back"]) == [b"back", b"k"]


async def test_a_hanging_redis_fails_every_waiting_call_within_the_timeout(
        redis_server: RedisServer) -> None:
    async with client(redis_server.url, timeout_s=0.2) as redis:
        script = Script(redis, _ECHO)
        loop = asyncio.get_running_loop()
        assert redis_server.proc is not None
        await script(keys=["k"], args=["a"])
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            start = loop.time()
            calls = [asyncio.ensure_future(script(keys=["k"], args=[str(i)])) for i in range(20)]
            await asyncio.sleep(0.1)
            late = [asyncio.ensure_future(script(keys=["k"], args=["late"]))]
            results = await asyncio.gather(*calls, *late, return_exceptions=True)
            took = loop.time() - start
            assert all(isinstance(r, TimeoutError) for r in results), results
            # The oldest call's deadline fails all behind it: one timeout, not two.
            assert 0.2 <= took < 0.2 + 0.1
            # While it still hangs, a new call waits no longer than its own timeout.
            start = loop.time()
            with pytest.raises(REDIS_ERRORS):
                await script(keys=["k"], args=["again"])
            assert loop.time() - start < 0.2 + 0.1
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        assert await script(keys=["k"], args=["back"]) == [b"back", b"k"]


async def test_waiting_commands_are_bounded(redis_server: RedisServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_conn, "MAX_PENDING", 10)
    async with client(redis_server.url, timeout_s=0.5) as redis:
        script = Script(redis, _ECHO)
        assert redis_server.proc is not None
        await script(keys=["k"], args=["a"])
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            waiting = [asyncio.ensure_future(script(keys=["k"], args=[str(i)]))
                       for i in range(10)]
            await asyncio.sleep(0)
            with pytest.raises(REDIS_ERRORS, match="too many"):
                await script(keys=["k"], args=["one too many"])
            await asyncio.gather(*waiting, return_exceptions=True)
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)


@contextlib.asynccontextmanager
async def checker(url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client, to look at what the gateway's client wrote."""
    check = aioredis.Redis.from_url(url, socket_timeout=1)
    try:
        yield check
    finally:
        await check.aclose()


class _PasswordRedis(RedisServer):
    options = ("--appendonly", "no", "--requirepass", "s3cret")


async def test_the_url_s_password_and_database_are_used(tmp_path: Path) -> None:
    with running(_PasswordRedis(tmp_path)) as server:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        async with client(url) as redis, checker(url) as check, \
                client(f"redis://:wrong@127.0.0.1:{server.port}/3") as wrong:
            await Script(redis, _SET)(keys=["where"], args=["db3"])
            assert await check.get("where") == b"db3"  # database 3, as the URL says
            with pytest.raises(AuthenticationError):
                await Script(wrong, _ECHO)(keys=["k"], args=["x"])


async def test_a_unix_socket_url_is_used(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"

    class _UnixRedis(RedisServer):
        options = ("--appendonly", "no", "--unixsocket", str(sock), "--unixsocketperm", "700")

    with running(_UnixRedis(tmp_path)):
        url = f"unix://{sock}?db=2"
        async with client(url) as redis, checker(url) as check:
            await Script(redis, _SET)(keys=["where"], args=["db2"])
            # Not on a TCP default (this machine runs another Redis on 6379): this one, db 2.
            assert await check.get("where") == b"db2"


def _self_signed(workdir: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    workdir.mkdir(exist_ok=True)
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """redis-server with a TLS port (its plain port only tells the fixture it is up):
    (the TLS port, its certificate, a certificate it does not have)."""
    cert, key = _self_signed(tmp_path)
    other, _ = _self_signed(tmp_path / "other")
    tls_port = _free_port()

    class _TlsRedis(RedisServer):
        options = ("--appendonly", "no", "--tls-port", str(tls_port),
                   "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                   "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")

    with running(_TlsRedis(tmp_path)):
        yield tls_port, cert, other


async def test_a_rediss_url_speaks_tls_and_checks_the_certificate(
        tls_redis: tuple[int, Path, Path]) -> None:
    port, cert, other = tls_redis
    url = f"rediss://127.0.0.1:{port}/1?ssl_ca_certs={cert}"
    async with client(url) as redis, checker(url) as check, \
            client(f"rediss://127.0.0.1:{port}/1?ssl_ca_certs={other}") as untrusted:
        await Script(redis, _SET)(keys=["where"], args=["tls"])
        assert await check.get("where") == b"tls"
        with pytest.raises(REDIS_ERRORS, match="certificate verify failed"):
            await Script(untrusted, _ECHO)(keys=["k"], args=["x"])
