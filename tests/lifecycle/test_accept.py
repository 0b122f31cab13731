"""New connections to a busy gateway are accepted at once (gateway.listen).

libuv, under uvloop, accepts one connection per loop turn; a busy turn is long,
so new clients waited in the kernel's queue while connected ones were served
again and again. The site must take the whole queue on each readiness. Counted,
not timed: how many answers the connected clients get before every newcomer has
its first.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator

import aiohttp
import pytest
import uvloop
from aiohttp import web

from gateway.listen import AcceptingSite, listening_sockets

BUSY_S = 0.01  # each request holds the loop this long, as CPU-bound work would
OLD, NEW = 8, 16
REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"

SiteFactory = Callable[[web.BaseRunner, str, int], web.BaseSite]


def _accepting(runner: web.BaseRunner, host: str, port: int) -> web.BaseSite:
    return AcceptingSite(runner, host, port, backlog=1024)


def _libuv(runner: web.BaseRunner, host: str, port: int) -> web.BaseSite:
    return web.TCPSite(runner, host, port, backlog=1024)


@contextlib.contextmanager
def busy_server(make_site: SiteFactory) -> Iterator[int]:
    """An aiohttp app on uvloop in its own thread; yields its port."""
    async def handler(request: web.Request) -> web.Response:
        time.sleep(BUSY_S)  # noqa: ASYNC251 - blocks the loop on purpose
        return web.Response(text="ok")

    loop = uvloop.new_event_loop()
    ready: list[int] = []
    stop = asyncio.Event()

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        await make_site(runner, "127.0.0.1", port).start()
        ready.append(port)
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready, "the server did not start"
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def old_answers_before_newcomers(port: int) -> int:
    """Closed-loop clients keep the server busy; then newcomers connect. Returns how
    many answers the first clients got until every newcomer had its first."""
    sel = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytes] = {}

    def open_one(kind: str) -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        s.sendall(REQUEST)
        buffers[s] = b""
        sel.register(s, selectors.EVENT_READ, kind)

    for _ in range(OLD):
        open_one("old")
    old_answers, new_answered, opened_new = 0, 0, False
    deadline = time.monotonic() + 30  # bounded, whatever the server does
    try:
        while new_answered < NEW and time.monotonic() < deadline:
            for key, _ in sel.select(0.5):
                s: socket.socket = key.fileobj  # type: ignore[assignment]
                chunk = s.recv(65536)
                assert chunk, "the server closed a connection"
                buffers[s] += chunk
                if not buffers[s].endswith(b"ok"):
                    continue  # the whole answer is not in yet
                buffers[s] = b""
                if key.data == "old":
                    old_answers += 1
                    s.sendall(REQUEST)  # closed loop: the next one at once
                    if old_answers == 3 * OLD and not opened_new:
                        opened_new = True
                        old_answers = 0  # counted from here
                        for _ in range(NEW):
                            open_one("new")
                else:
                    new_answered += 1
                    sel.unregister(s)
        assert new_answered == NEW, "newcomers still waiting after 30 s"
        return old_answers
    finally:
        for s in buffers:
            s.close()
        sel.close()


def test_a_busy_server_accepts_every_waiting_connection_at_once() -> None:
    with busy_server(_accepting) as port:
        old = old_answers_before_newcomers(port)
    # All newcomers are taken in the next turn and answered within the next few;
    # one accept per turn would serve the first clients about NEW times over first.
    assert old <= 4 * OLD, old


def test_libuv_alone_makes_newcomers_wait_behind_connected_clients() -> None:
    """Why the site exists: the same run on aiohttp's own site over uvloop.
    If libuv ever accepts in batches again, this fails and the site can go."""
    with busy_server(_libuv) as port:
        old = old_answers_before_newcomers(port)
    assert old > 4 * OLD, old


def test_listening_sockets_cover_every_address_and_close_on_failure() -> None:
    socks = listening_sockets("127.0.0.1", 0, 16)
    try:
        assert len(socks) == 1
        assert socks[0].getblocking() is False
        port = socks[0].getsockname()[1]
        with pytest.raises(OSError):  # taken: nothing half-made is left open
            listening_sockets("127.0.0.1", port, 16)
    finally:
        for s in socks:
            s.close()


async def test_the_site_serves_on_the_test_loop_and_reports_its_address() -> None:
    """On asyncio's own loop too (the tests' loop); port 0 picks a free port that
    ``runner.addresses`` reports, and stop() closes the sockets."""
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = AcceptingSite(runner, "127.0.0.1", 0, backlog=64)
    await site.start()
    try:
        port = runner.addresses[0][1]
        assert port != 0 and site.name == f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            answers = await asyncio.gather(*(s.get(f"http://127.0.0.1:{port}/")
                                             for _ in range(20)))
            assert [a.status for a in answers] == [200] * 20
    finally:
        await runner.cleanup()
    assert site.sockets == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
