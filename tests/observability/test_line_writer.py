"""Access lines written straight to a descriptor, one write per event-loop turn."""

from __future__ import annotations

import asyncio
import os

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
