"""``asyncio.timeout`` for the hot path, at a third of its cost.

Python 3.11's ``asyncio.timeout`` makes two coroutines (``__aenter__``,
``__aexit__``), walks an enum state machine and calls a method to schedule
its timer: on the path of every upstream exchange and every Redis bucket call
it was about 3% of the gateway's CPU. :class:`deadline` is a plain (synchronous)
context manager with the same rule: at the deadline the task running the block
is cancelled, and the ``CancelledError`` leaves the block as ``TimeoutError``
unless the task was also cancelled by someone else, which then wins, as with
``asyncio.timeout``. The timer is cancelled when the block ends, whichever way.

    with deadline(5.0):
        await exchange()
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class deadline:
    """``loop``: the running loop, when the caller has it. Python 3.11 finds the running
    loop with a ``getpid()`` system call each time, to notice a fork."""

    __slots__ = ("_cancelling", "_delay", "_expired", "_handle", "_loop", "_task")

    def __init__(self, delay_s: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._delay = delay_s
        self._loop = loop

    def __enter__(self) -> None:
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("deadline() is for code running in a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._expired = False
        loop = task.get_loop()
        self._handle = loop.call_at(loop.time() + self._delay, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._handle.cancel()
        # As asyncio.timeout: the cancel this timer asked for is taken back whatever
        # the block did, and only an error it caused becomes TimeoutError.
        if (self._expired and self._task.uncancel() <= self._cancelling
                and exc_type is asyncio.CancelledError):
            raise TimeoutError from exc
