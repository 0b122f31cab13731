"""``Runtime.wait_idle``: what a reload and a drain wait on (futures made only on a wait)."""

from __future__ import annotations

import asyncio

from gateway.auth import ClientAuth
from gateway.config import build_config
from gateway.runtime import Runtime


def _runtime() -> Runtime:
    config = build_config({"clients": [], "tenants": {}, "providers": {}}, env={})
    return Runtime(config, ClientAuth(()), {})


async def test_idle_at_once_when_nothing_is_in_flight() -> None:
    assert await _runtime().wait_idle(0.0)


async def test_every_waiter_wakes_when_the_last_request_leaves() -> None:
    rt = _runtime()
    rt.enter()
    rt.enter()
    waits = [asyncio.create_task(rt.wait_idle(5.0)) for _ in range(3)]
    await asyncio.sleep(0)
    rt.leave()
    await asyncio.sleep(0)
    assert not any(w.done() for w in waits)  # one request is still in flight
    rt.leave()
    assert await asyncio.gather(*waits) == [True, True, True]
    rt.enter()  # a later request wakes no one, and the waiters are gone
    rt.leave()
    assert rt.inflight == 0


async def test_a_wait_that_times_out_says_so_and_leaves_nothing_behind() -> None:
    rt = _runtime()
    rt.enter()
    assert not await rt.wait_idle(0.01)
    cancelled = asyncio.create_task(rt.wait_idle(5.0))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    rt.leave()  # the cancelled waiter's future is done: skipped, not set
    assert await rt.wait_idle(0.0)
