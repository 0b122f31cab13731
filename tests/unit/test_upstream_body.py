"""An upstream answer is read to its end, however it arrives, and refused past the cap."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from gateway import upstream
from gateway.config import build_config
from gateway.errors import UpstreamMalformed
from gateway.metrics import Metrics
from gateway.registry import adapters
from gateway.runtime import build_providers, close_providers
from gateway.spi import UpstreamRequest

BODY = b'{"items": [' + b",".join(b'{"id": %d, "name": "user %d"}' % (i, i)
                                   for i in range(400)) + b"]}"


async def _pieces(writer: asyncio.StreamWriter, head: bytes, parts: list[bytes]) -> None:
    writer.write(head)
    for part in parts:
        await writer.drain()
        await asyncio.sleep(0.01)  # each piece its own segment, its own read
        writer.write(part)
    await writer.drain()


def _chunked(data: bytes, size: int) -> list[bytes]:
    out = [b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size])
           for i in range(0, len(data), size)]
    return [*out, b"0\r\n\r\n"]


@asynccontextmanager
async def provider(send: Callable[[asyncio.StreamWriter], object]) -> AsyncIterator[
        upstream.ProviderClient]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await send(writer)  # type: ignore[misc]
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = build_config({
        "clients": [], "tenants": {},
        "providers": {"p": {"type": "aelyst", "base_url": f"http://127.0.0.1:{port}/v1",
                            "api_key": "k", "timeout_s": 5}}}, env={})
    clients = build_providers(cfg, adapters(), Metrics())
    try:
        yield clients["p"]
    finally:
        await close_providers(clients)
        server.close()
        await server.wait_closed()


REQUEST = UpstreamRequest("lookup_assignee", "GET", "/space/user")


async def test_a_body_sent_in_pieces_with_content_length_is_read_whole() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    parts = [BODY[i:i + 1000] for i in range(0, len(BODY), 1000)]
    assert len(parts) > 5
    async with provider(lambda w: _pieces(w, head % len(BODY), parts)) as pc:
        resp = await pc.exchange(REQUEST, 5.0)
    assert resp.status == 200 and resp.body == BODY


async def test_a_chunked_body_is_read_whole() -> None:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    async with provider(lambda w: _pieces(w, head, _chunked(BODY, 700))) as pc:
        resp = await pc.exchange(REQUEST, 5.0)
    assert resp.body == BODY


async def test_a_gzipped_chunked_body_is_read_whole() -> None:
    packed = gzip.compress(BODY)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")
    async with provider(lambda w: _pieces(w, head, _chunked(packed, 100))) as pc:
        resp = await pc.exchange(REQUEST, 5.0)
    assert resp.body == BODY


async def test_an_announced_oversized_body_is_refused_before_reading_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "MAX_UPSTREAM_BODY", 1000)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    async with provider(lambda w: _pieces(w, head % len(BODY), [BODY])) as pc:
        with pytest.raises(UpstreamMalformed, match="larger than any it documents"):
            await pc.exchange(REQUEST, 5.0)


async def test_an_oversized_chunked_body_is_refused_once_past_the_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "MAX_UPSTREAM_BODY", 1000)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    async with provider(lambda w: _pieces(w, head, _chunked(BODY, 300))) as pc:
        with pytest.raises(UpstreamMalformed, match="larger than any it documents"):
            await pc.exchange(REQUEST, 5.0)


async def test_an_oversized_chunked_body_that_arrives_whole_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Head and body in one write: the end has arrived before the body is read, so it is
    # taken as buffered (no read loop to count it): the cap must still hold.
    monkeypatch.setattr(upstream, "MAX_UPSTREAM_BODY", 1000)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    async with provider(lambda w: _pieces(w, head + b"".join(_chunked(BODY, 300)), [])) as pc:
        with pytest.raises(UpstreamMalformed, match="larger than any it documents"):
            await pc.exchange(REQUEST, 5.0)


async def test_a_chunked_body_that_arrives_whole_is_read_whole() -> None:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    async with provider(lambda w: _pieces(w, head + b"".join(_chunked(BODY, 700)), [])) as pc:
        resp = await pc.exchange(REQUEST, 5.0)
    assert resp.body == BODY
