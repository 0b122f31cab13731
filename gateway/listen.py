"""The listening socket: every waiting connection accepted when it becomes readable.

libuv accepts one connection per turn of its event loop since 1.45
(libuv/libuv#3696), and uvloop serves ``create_server`` through libuv. A
gateway under load takes tens of milliseconds per turn (it answers hundreds of
requests in one), so new connections waited in the kernel's queue while the
connected clients kept being served: measured at 256 connections on a 20 ms
upstream, about 30 accepts per second and a p99 of 3.9 s where the requests
themselves took 0.2 s. :class:`AcceptingSite` accepts the whole queue (up to
the backlog) on each readiness, as asyncio's own loop does (bpo-27906), and
hands each socket to the running loop, uvloop or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket

from aiohttp import web
from yarl import URL

log = logging.getLogger("gateway")

#: Out of file descriptors (or buffers): stop accepting this long, then look again.
ACCEPT_PAUSE_S = 1.0
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def listening_sockets(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address ``host`` names
    (all interfaces for None), as ``loop.create_server`` would make them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    seen: set[tuple[int, object]] = set()
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # One socket per family, as asyncio does: the IPv6 one takes IPv6 only.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class _Listening(asyncio.AbstractServer):
    """What aiohttp's runner reads of a site's server: its sockets
    (``runner.addresses``). The site itself opens and closes them."""

    def __init__(self, site: AcceptingSite) -> None:
        self._site = site

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._site.sockets)

    def close(self) -> None:
        return None  # AcceptingSite.stop closes the sockets

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def is_serving(self) -> bool:
        return bool(self._site.sockets)

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        raise NotImplementedError("the site serves from the running loop")

    async def wait_closed(self) -> None:
        return None


class AcceptingSite(web.BaseSite):
    """A TCP site for an aiohttp runner that accepts in batches (see the module doc)."""

    __slots__ = ("_host", "_pending", "_port", "_socks")

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, *,
                 backlog: int) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port
        self._socks: list[socket.socket] = []
        self._pending: set[asyncio.Task[object]] = set()

    @property
    def name(self) -> str:
        port = self._socks[0].getsockname()[1] if self._socks else self._port
        return str(URL.build(scheme="http", host=self._host or "0.0.0.0", port=port))

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._socks)

    async def start(self) -> None:
        await super().start()
        self._socks = listening_sockets(self._host, self._port, self._backlog)
        loop = asyncio.get_running_loop()
        for sock in self._socks:
            loop.add_reader(sock.fileno(), self._accept, sock)
        self._server = _Listening(self)

    def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self._backlog):  # bounded: at most a full queue per readiness
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while it waited in the queue
            except OSError as e:
                if e.errno not in _OUT_OF_RESOURCES:
                    raise
                # Out of descriptors: waiting connections stay queued in the kernel;
                # looking again at once would spin on the same error.
                log.warning("cannot accept connections (%s); trying again in %g s",
                            errno.errorcode.get(e.errno or 0, "error"), ACCEPT_PAUSE_S)
                loop.remove_reader(sock.fileno())
                loop.call_later(ACCEPT_PAUSE_S, self._resume, sock)
                return
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._serve(loop, conn)

    def _resume(self, sock: socket.socket) -> None:
        if sock in self._socks:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)

    def _serve(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        server = self._runner.server
        assert server is not None

        async def connect() -> object:
            try:
                return await loop.connect_accepted_socket(server, conn)
            except BaseException:
                conn.close()
                raise

        task: asyncio.Task[object] = loop.create_task(connect())
        self._pending.add(task)
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[object]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("a connection failed before its first request: %s",
                      type(task.exception()).__name__)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        socks, self._socks = self._socks, []
        for sock in socks:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())
            sock.close()
        for task in list(self._pending):
            task.cancel()
        await super().stop()
