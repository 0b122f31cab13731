"""The synchronous path's stage boundaries (Executor._turn): one turn of the event
loop after the ordering step and after the final save, in process mode only, and
only while another request is on the path."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.executor import EXECUTOR, Executor
from gateway.operations import OperationStore, OpRecord
from tests.conftest import Sandbox
from tests.retry.helpers import assign_body, gateway, post, retry_config


async def _yields(executor: Executor, on_path: int) -> bool:
    """Whether a turn lets a callback scheduled before it run first."""
    ran: list[int] = []
    asyncio.get_running_loop().call_soon(ran.append, 1)
    executor._sync = on_path
    try:
        await executor._turn()
    finally:
        executor._sync = 0
    return bool(ran)


async def test_a_turn_yields_in_process_mode_only_with_another_request_on_the_path(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    gw = await gateway(aiohttp_client, retry_config(sandboxes_up, redis_url=redis_url))
    executor = gw.server.app[EXECUTOR]
    assert not await _yields(executor, 1)  # alone: nothing else to let run
    # Redis mode has its round trips there already.
    assert await _yields(executor, 2) is (redis_url is None)


class AcceptFails:
    """The gateway's store, whose accept_begin does not answer (a Redis error)."""

    def __init__(self, store: OperationStore) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def accept_begin(self, rec: OpRecord, now: float, hold_s: float,
                           pending_s: float) -> str:
        raise ConnectionError("the store is away")


async def test_requests_on_the_path_are_counted_out_however_they_end(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    gw = await gateway(aiohttp_client, retry_config(sandboxes_up, redis_url=redis_url))
    executor = gw.server.app[EXECUTOR]
    bodies = [assign_body(p) for p in ("teli", "vambe", "aelyst")]
    answers = await asyncio.gather(*(post(gw, "assign", b) for _ in range(4) for b in bodies))
    assert [a[0] for a in answers] == [200] * 12, answers
    assert executor._sync == 0
    executor.store = AcceptFails(executor.store)  # type: ignore[assignment]
    executor._memory = None  # in process mode the store is called directly: fail it too
    status, body, _ = await post(gw, "assign", bodies[0])
    assert (status, body["code"]) == (503, "store_unavailable"), body
    assert executor._sync == 0
