"""The background worker outlives a failed poll: an unexpected error in one tick is
logged, and the next tick runs the queued work."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.executor import EXECUTOR
from gateway.operations import OperationStore, OpRecord
from tests.conftest import Sandbox
from tests.retry.helpers import assign_body, gateway, post, retry_config, wait_final


class ClaimFailsOnce:
    """The gateway's own store, whose next claim raises what no store should (a bug, a
    record that does not load); everything else goes to the store."""

    def __init__(self, store: OperationStore) -> None:
        self.store = store
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def claim(self, now: float, limit: int, lease_s: float,
                    token: str) -> list[OpRecord]:
        if not self.failed:
            self.failed = True
            raise ValueError("a record that does not load")
        return await self.store.claim(now, limit, lease_s, token)


async def test_a_tick_that_raises_does_not_stop_the_worker(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None,
        caplog: pytest.LogCaptureFixture) -> None:
    gw = await gateway(aiohttp_client, retry_config(sandboxes_up, redis_url=redis_url))
    executor = gw.server.app[EXECUTOR]
    failing = ClaimFailsOnce(executor.queue)
    executor.queue = failing  # type: ignore[assignment]
    status, queued, _ = await post(gw, "assign", assign_body("teli"),
                                   {"Prefer": "respond-async"})
    assert status == 202
    final = await wait_final(gw, queued["operation_id"])
    assert (final["status"], final["attempts"]) == ("succeeded", 1), final
    assert failing.failed
    logged = [r for r in caplog.records if r.name == "gateway" and r.exc_info is not None]
    assert [r.exc_info[0] for r in logged if r.exc_info] == [ValueError]
    assert "ValueError" in logged[0].getMessage()
