"""A loopback TCP proxy that misbehaves on request: the network faults a
sandbox cannot make by itself.

It forwards bytes between the gateway and one sandbox. Faults are queued and
each is taken by the next HTTP request that starts on any connection (a chunk
from the gateway that begins with a method name); it then shapes that
request's answer:

- ``latency``: the answer starts ``seconds`` late;
- ``throttle``: the answer trickles at ``rate`` bytes per second;
- ``reset``: ``after`` bytes of the answer, then a TCP reset (RST);
- ``blackhole``: ``after`` bytes of the answer, then silence on an open
  connection (a peer that vanished without a FIN).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import deque
from dataclasses import dataclass

_METHODS = (b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ", b"OPTIONS ")


@dataclass(frozen=True)
class NetFault:
    kind: str  # latency | throttle | reset | blackhole
    seconds: float = 0.0
    rate: float = 0.0
    after: int = 0


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.faults: deque[NetFault] = deque()
        self.applied = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def queue(self, fault: NetFault, count: int = 1) -> None:
        self.faults.extend([fault] * count)

    def clear(self) -> None:
        self.faults.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        current: list[NetFault | None] = [None]
        # Either side closing ends the pair: a client that gave up on a silent
        # answer closes its side, and the swallowed answer ends with it.
        pair = {asyncio.create_task(self._requests(reader, up_writer, current)),
                asyncio.create_task(self._answers(up_reader, writer, current))}
        try:
            await asyncio.wait(pair, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in pair:
                t.cancel()
            await asyncio.gather(*pair, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _requests(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter,
                        current: list[NetFault | None]) -> None:
        while data := await reader.read(65536):
            if data.startswith(_METHODS):
                current[0] = self.faults.popleft() if self.faults else None
                self.applied += current[0] is not None
            up.write(data)
            await up.drain()

    async def _answers(self, up: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       current: list[NetFault | None]) -> None:
        sent = 0
        delayed = False
        while data := await up.read(65536):
            fault = current[0]
            if fault is None:
                writer.write(data)
                await writer.drain()
                continue
            if fault.kind == "latency" and not delayed:
                delayed = True
                await asyncio.sleep(fault.seconds)
            if fault.kind in ("reset", "blackhole") and sent + len(data) > fault.after:
                writer.write(data[:max(0, fault.after - sent)])
                await writer.drain()
                if fault.kind == "reset":
                    _reset(writer)
                    return
                await _hold(up)
                return
            if fault.kind == "throttle":
                await _trickle(writer, data, fault.rate)
            else:
                writer.write(data)
                await writer.drain()
            sent += len(data)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _hold(up: asyncio.StreamReader) -> None:
    """Swallow the rest of the answer, sending nothing, until the client gives up."""
    while await up.read(65536):
        pass
    await asyncio.Event().wait()  # upstream done: stay silent until cancelled


async def _trickle(writer: asyncio.StreamWriter, data: bytes, rate: float) -> None:
    step = max(1, int(rate / 20))  # twenty writes a second
    for i in range(0, len(data), step):
        writer.write(data[i:i + step])
        await writer.drain()
        await asyncio.sleep(step / rate)
