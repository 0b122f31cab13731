"""A queued operation fails at its give-up time even when no attempt can be made: the
retry budget refuses its retry, or the gateway's own limiter has no slot for it."""

from __future__ import annotations

from typing import Any

from tests.conftest import Sandbox
from tests.contract.cases import CASES
from tests.retry.helpers import (
    assign_body,
    gateway,
    post,
    retry_config,
    wait_final,
    writes,
)

TELI = CASES["teli"]
ASYNC = {"Prefer": "respond-async"}


async def test_a_retry_the_budget_refuses_fails_at_the_give_up_time(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    # A refused retry comes back backoff_max_s later (30 s here), past the give-up time.
    raw = retry_config(sandboxes_up, redis_url=redis_url, max_attempts=2, backoff_max_s=30,
                       give_up_after_s=1.0)
    gw = await gateway(aiohttp_client, raw)
    teli = sandboxes_up["teli"]
    await teli.fault(status=500, count=100_000)
    for _ in range(10):  # ten retries: the budget's floor for its window is spent
        status, body, _ = await post(gw, "assign", assign_body("teli"))
        assert (status, body["code"]) == (503, "upstream_unavailable")
    status, queued, _ = await post(gw, "assign", assign_body("teli"), ASYNC)
    assert status == 202
    # Its first attempt is not budgeted (a 500); the retry after it is refused.
    final = await wait_final(gw, queued["operation_id"], timeout_s=5)
    assert (final["status"], final["attempts"]) == ("failed", 1), final
    assert final["error"]["code"] == "upstream_unavailable"
    assert final["error"]["provider"] == "teli"
    assert len(writes(await teli.journal(), TELI.assign_path)) == 2 * 10 + 1


async def test_work_the_limiter_keeps_sending_back_fails_at_the_give_up_time(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    raw = retry_config(sandboxes_up, redis_url=redis_url, max_attempts=1, give_up_after_s=1.0)
    raw["providers"]["teli-sb"]["rate_limit"] = {"rate": 50, "burst": 5, "max_wait_s": 0.1}
    gw = await gateway(aiohttp_client, raw)
    teli = sandboxes_up["teli"]
    # The provider asks for 30 s without requests; the limiter sends the work back
    # for that long each time, past the give-up time.
    await teli.fault(status=429, retry_after=30, count=1)
    assert (await post(gw, "assign", assign_body("teli")))[0] == 503
    status, queued, _ = await post(gw, "assign", assign_body("teli"), ASYNC)
    assert status == 202
    final = await wait_final(gw, queued["operation_id"], timeout_s=5)
    assert (final["status"], final["attempts"]) == ("failed", 0), final
    assert final["error"]["code"] == "upstream_unavailable"
    assert final["error"]["provider"] == "teli"
    assert len(writes(await teli.journal(), TELI.assign_path)) == 1  # the 429 alone
