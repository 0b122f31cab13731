"""Size and shape limits: 413 past 16 KiB, 415 for anything but JSON, deep or
huge JSON refused with 400 (never 500), slow-loris bodies cut off, and a
gateway process whose memory and open files stay flat under a stream of bad
requests.

Not covered here: a client that drips its *headers* holds its connection until
aiohttp's keep-alive timeout, which ``gateway serve`` leaves at aiohttp's
default of 3630 s (see the hardening notes in the README)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.http import BODY_TIMEOUT_S, MAX_BODY
from tests.hardening.support import (
    CLIENT_KEYS,
    PROVIDERS,
    auth,
    config_dict,
    count,
    open_files,
    rss_kib,
)
from tests.procs import GatewayProcess, free_port

JSON = {"Content-Type": "application/json"}
VALID = {"tenant": "t-aelyst", "contact": {"id": "3"}, "assignee": {"id": "17"}}


def _padded(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (an unknown field pads it)."""
    head = b'{"tenant": "t-aelyst", "pad": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


#: (name, body, content type, expected status, expected code)
SHAPES: list[tuple[str, bytes, str, int, str]] = [
    ("16 KiB + 1", _padded(MAX_BODY + 1), "application/json", 413, "payload_too_large"),
    ("1 MiB", b"[" + b"1," * 500_000 + b"1]", "application/json", 413, "payload_too_large"),
    ("16 KiB exactly", _padded(MAX_BODY), "application/json", 400, "invalid_request"),
    ("text/plain", b"{}", "text/plain", 415, "unsupported_media_type"),
    ("form", b"a=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ("multipart", b"--x--", "multipart/form-data; boundary=x", 415, "unsupported_media_type"),
    ("xml", b"<a/>", "application/xml", 415, "unsupported_media_type"),
    ("none", b"{}", "", 415, "unsupported_media_type"),
    ("octet", b"{}", "application/octet-stream", 415, "unsupported_media_type"),
    # Past the exact "application/json" the header is parsed: parameters, case, +json.
    ("JSON with a charset", b"{}", "application/json; charset=utf-8", 400, "invalid_request"),
    ("JSON in capitals", b"{}", "Application/JSON", 400, "invalid_request"),
    ("a +json type", b"{}", "application/vnd.acme+json", 400, "invalid_request"),
    ("json as a parameter", b"{}", "text/plain; x=application/json", 415,
     "unsupported_media_type"),
    ("8000 deep arrays", b"[" * 8000 + b"]" * 8000, "application/json", 400, "invalid_request"),
    ("10000 deep arrays", b"[" * 10000 + b"]" * 10000, "application/json", 413,
     "payload_too_large"),
    ("2700 deep objects", b'{"a":' * 2700 + b"1" + b"}" * 2700, "application/json", 400,
     "invalid_request"),
    ("deep under contact", b'{"contact":' + b"[" * 7000 + b"]" * 7000 + b"}",
     "application/json", 400, "invalid_request"),
    ("15 KiB of numbers", b"[" + b"1," * 7500 + b"1]", "application/json", 400,
     "invalid_request"),
    ("1500 unknown keys", b"{" + b",".join(b'"k%d":0' % i for i in range(1500)) + b"}",
     "application/json", 400, "invalid_request"),
    ("15 KiB string", b'{"contact": {"phone": "' + b"1" * 15000 + b'"}}', "application/json",
     400, "invalid_request"),
    ("huge number", b'{"tenant": 1e999}', "application/json", 400, "invalid_request"),
    ("huge integer", b'{"tenant": ' + b"9" * 400 + b"}", "application/json", 400,
     "invalid_request"),
    ("NaN", b'{"tenant": NaN}', "application/json", 400, "invalid_request"),
    ("invalid UTF-8", b'{"tenant": "\xff\xfe"}', "application/json", 400, "invalid_request"),
    ("UTF-16", '{"tenant": "a"}'.encode("utf-16"), "application/json; charset=utf-16", 400,
     "invalid_request"),
    ("BOM", b'\xef\xbb\xbf{"tenant": "a"}', "application/json", 400, "invalid_request"),
    ("empty", b"", "application/json", 400, "invalid_request"),
    ("null", b"null", "application/json", 400, "invalid_request"),
    ("string", b'"x"', "application/json", 400, "invalid_request"),
    ("NUL bytes", b'{"tenant": "a\x00"}', "application/json", 400, "invalid_request"),
    ("trailing data", b"{} {}", "application/json", 400, "invalid_request"),
]


@pytest.mark.parametrize(("name", "body", "ctype", "status", "code"), SHAPES,
                         ids=[s[0] for s in SHAPES])
async def test_size_and_shape(hgw: TestClient[Any, Any], name: str, body: bytes, ctype: str,
                              status: int, code: str) -> None:
    headers = {**auth(), **({"Content-Type": ctype} if ctype else {})}
    resp = await hgw.post("/v1/assign", data=body, headers=headers,
                          skip_auto_headers=() if ctype else ("Content-Type",))
    problem = await resp.json(content_type=None)
    assert (resp.status, problem["code"]) == (status, code), problem
    assert len(await resp.read()) < 4096, "an answer much larger than any problem"
    count("size and shape", f"{resp.status} {problem['code']}")


async def test_chunked_body_over_the_limit(hgw: TestClient[Any, Any]) -> None:
    async def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 1024

    resp = await hgw.post("/v1/assign", data=chunks(), headers={**auth(), **JSON})
    assert resp.status == 413, await resp.text()


async def test_chunked_body_over_the_limit_that_arrives_with_the_headers(
        hgw: TestClient[Any, Any]) -> None:
    # One write: the whole body is buffered before the handler runs, so it is taken
    # without reading (http.read_body), and aiohttp's own limit (client_max_size,
    # checked by request.read()) does not apply: the gateway's must.
    body = b'{"tenant": "' + b"x" * (MAX_BODY + 100) + b'"}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                      for i in range(0, len(body), 1000))
    head = (f"POST /v1/assign HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Bearer {CLIENT_KEYS['app']}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert hgw.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", hgw.server.port)
    try:
        writer.write(head.encode() + chunks + b"0\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"payload_too_large"' in answer


async def _slow_body(host: str, port: int) -> tuple[float, bytes]:
    """Send headers, then one byte of a 200-byte body every 0.25 s."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(host, port)
    head = (f"POST /v1/assign HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {CLIENT_KEYS['app']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{")
    writer.write(head.encode())
    start = loop.time()
    try:
        while loop.time() - start < BODY_TIMEOUT_S + 5:
            try:
                data = await asyncio.wait_for(reader.read(4096), 0.25)
            except TimeoutError:
                writer.write(b" ")
                await writer.drain()
                continue
            return loop.time() - start, data
        return loop.time() - start, b""
    except ConnectionError:
        return loop.time() - start, b"(closed)"
    finally:
        writer.close()


# -- memory and open files of a real process ------------------------------------------------

BAD: list[tuple[bytes, str]] = [(s[1], s[2]) for s in SHAPES if s[3] != 413 or len(s[1]) < 50_000]


async def _burst(session: aiohttp.ClientSession, url: str, n: int) -> dict[int, int]:
    statuses: dict[int, int] = {}
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        body, ctype = BAD[i % len(BAD)]
        headers = {**auth(), "Content-Type": ctype or "application/octet-stream"}
        async with sem, session.post(url, data=body, headers=headers) as r:
            await r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return statuses


async def _settled(pid: int) -> tuple[int, int]:
    """(RSS KiB, open files) once the gateway has closed what its clients closed."""
    await asyncio.sleep(1)
    return rss_kib(pid), open_files(pid)


async def test_memory_and_files_stay_flat_under_bad_and_slow_clients(tmp_path: Path) -> None:
    """A real gateway process: 5,000 malformed or oversized requests while twenty
    slow-loris clients drip their bodies. Every slow body is cut off with a 400
    within BODY_TIMEOUT_S; memory and open files end within 10% of where they began."""
    closed = {p: f"http://127.0.0.1:{free_port()}" for p in PROVIDERS}
    proc = GatewayProcess(config_dict(closed), tmp_path)
    await proc.start()
    try:
        assert proc.proc is not None
        pid = proc.proc.pid
        url = proc.url + "/v1/assign"
        # Each phase has its own client session, closed before sampling: its
        # keep-alive connections are the load's, not the gateway's.
        async with aiohttp.ClientSession() as s:
            await _burst(s, url, 500)  # warm-up: caches, pools, allocator arenas
        rss0, fds0 = await _settled(pid)
        async with aiohttp.ClientSession() as s:
            slow = [asyncio.create_task(_slow_body("127.0.0.1", proc.port)) for _ in range(20)]
            statuses = await _burst(s, url, 5000)
            cut = await asyncio.gather(*slow)
        rss1, fds1 = await _settled(pid)
        assert 500 not in statuses, statuses
        for elapsed, data in cut:
            assert data.startswith(b"HTTP/1.1 400"), data
            assert elapsed <= BODY_TIMEOUT_S + 2
        count("slow loris", "connections cut", len(cut))
        count("memory", "bad requests", 5000)
        count("memory", "rss growth kib", rss1 - rss0)
        count("memory", "open files growth", fds1 - fds0)
        assert rss1 <= rss0 * 1.10, f"RSS grew from {rss0} to {rss1} KiB"
        assert fds1 <= fds0 * 1.10 + 1, f"open files grew from {fds0} to {fds1}"
    finally:
        await proc.stop()
