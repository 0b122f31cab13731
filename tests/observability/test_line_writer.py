"""Access lines written straight to a descriptor, one write per event-loop turn."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from gateway.logs import LineWriter


async def test_the_lines_of_one_turn_go_out_together_after_it() -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        writer = LineWriter(w)
        for i in range(3):
            writer.write(b'{"n":%d}' % i)
        with pytest.raises(BlockingIOError):
            os.read(r, 1024)  # nothing yet: the turn is not over
        await asyncio.sleep(0)
        assert os.read(r, 1024) == b'{"n":0}\n{"n":1}\n{"n":2}\n'
        writer.write(b"last")
        writer.flush()  # what shutdown does
        assert os.read(r, 1024) == b"last\n"
    finally:
        os.close(r)
        os.close(w)


def test_outside_a_loop_a_line_is_written_at_once() -> None:
    r, w = os.pipe()
    try:
        LineWriter(w).write(b"now")
        assert os.read(r, 1024) == b"now\n"
    finally:
        os.close(r)
        os.close(w)


async def test_a_closed_descriptor_loses_the_lines_not_the_request() -> None:
    r, w = os.pipe()
    os.close(r)
    writer = LineWriter(w)
    try:
        writer.write(b"x" * 100_000)
        writer.flush()  # EPIPE: dropped quietly (SIGPIPE is ignored by Python)
    finally:
        os.close(w)


def test_a_full_non_blocking_pipe_is_waited_for_not_dropped() -> None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    received = bytearray()
    try:
        writer = LineWriter(w)
        line = b"y" * 1000

        def drain() -> None:  # a slow reader: the pipe fills and empties as it reads
            while len(received) < 300 * 1001:
                time.sleep(0.001)
                chunk = os.read(r, 65536)
                if not chunk:
                    return
                received.extend(chunk)

        reader = threading.Thread(target=drain)
        reader.start()
        for _ in range(300):  # 300 KB: several times what a pipe holds
            writer.write(line)
        reader.join(10)
        assert len(received) == 300 * 1001
    finally:
        os.close(w)
        os.close(r)
