"""gateway.deadline keeps asyncio.timeout's rule (it replaces it on the exchange path)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.deadline import deadline


async def test_a_block_past_its_deadline_ends_in_timeout_error() -> None:
    with pytest.raises(TimeoutError), deadline(0.01):
        await asyncio.sleep(5)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # its cancel was taken back
    await asyncio.sleep(0)  # and nothing is left to cancel this task later


async def test_a_block_within_its_deadline_is_left_alone_and_its_timer_goes() -> None:
    loop = asyncio.get_running_loop()
    with deadline(0.02):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)  # past the deadline: a timer left behind would cancel us
    assert loop.is_running()


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    started = asyncio.Event()

    async def body() -> None:
        with deadline(5):
            started.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_error_inside_the_block_passes_through_untouched() -> None:
    with pytest.raises(KeyError), deadline(5):
        raise KeyError("x")


async def test_given_the_loop_it_times_out_the_same() -> None:
    # The caller's loop spares asyncio's look-up (a getpid() system call in 3.11).
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError), deadline(0.01, loop):
        await asyncio.sleep(5)
    with deadline(0.02, loop):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)  # a timer left behind would cancel this task
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
