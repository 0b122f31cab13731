"""A fake provider for the benchmark: a raw asyncio HTTP/1.1 server, cheap enough
never to be the bottleneck.

It answers every POST with Aelyst's documented success body for
``POST {base}/contact/{identifier}/conversation/assignee``: ``{"contactId": <int>}``
(the id taken from an ``id:<n>`` identifier in the path, else 3), keep-alive and
Content-Length. ``--delay-ms`` holds each answer that long (the slow-upstream run).

    python -m bench.upstream --port 9000 [--delay-ms 20]

It parses only what HTTP/1.1 clients send it here (wrk and aiohttp): a request
line, headers, a Content-Length body; no chunked bodies.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from typing import cast

_ID = re.compile(rb"/contact/id(?::|%3[Aa])([0-9]{1,18})/")
_CL = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.IGNORECASE)
_HEAD = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
         b"Content-Length: %d\r\nX-RateLimit-Limit: 1000000\r\n\r\n")
_CACHE: dict[bytes, bytes] = {}


def _response(contact: bytes) -> bytes:
    out = _CACHE.get(contact)
    if out is None:
        body = b'{"contactId":' + contact + b"}"
        out = _HEAD % (200, b"OK", len(body)) + body
        if len(_CACHE) < 100_000:
            _CACHE[contact] = out
    return out


_BAD = _HEAD % (400, b"Bad Request", 2) + b"{}"


class Upstream(asyncio.Protocol):
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: cast, not isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[: end + 2]
            m = _CL.search(head)
            length = int(m.group(1)) if m else 0
            total = end + 4 + length
            if len(buf) < total:
                break
            line_end = head.find(b"\r\n")
            if b"chunked" in head.lower():
                self._send(_BAD)
                if self.transport is not None:
                    self.transport.close()
                return
            found = _ID.search(head, 0, line_end)
            self._answer(_response(found.group(1) if found else b"3"))
            buf = buf[total:]
        self.buf = buf

    def _answer(self, payload: bytes) -> None:
        if self.delay_s > 0:
            self.loop.call_later(self.delay_s, self._send, payload)
        else:
            self._send(payload)

    def _send(self, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.write(payload)


async def serve(host: str, port: int, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(delay_s), host, port,
                                      reuse_address=True, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"upstream ready on {host}:{port} delay {delay_s * 1000:g} ms", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.host, args.port, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
