"""A background attempt pins the runtime it started on, as a request does: a reload
closes a replaced provider's session only after the attempt; and a failure inside an
attempt is never taken for a Redis failure."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.app import create_app
from gateway.config import build_config
from gateway.lifecycle import LIFECYCLE
from gateway.runtime import RUNTIME
from tests.conftest import Sandbox
from tests.contract.cases import CASES
from tests.retry.helpers import (
    GW,
    assign_body,
    gateway,
    post,
    retry_config,
    sample,
    services,
    wait_final,
    writes,
)

TELI = CASES["teli"]
OTHER = {"tenant": TELI.tenant, "contact": {"phone": "+15557654321"},
         "assignee": {"id": TELI.assignee_id}}


def _config(sbx: dict[str, Sandbox], redis_url: str | None,
            timeout_s: float = 0.5) -> dict[str, Any]:
    raw = retry_config(sbx, redis_url=redis_url, timeout_s=timeout_s, max_attempts=1)
    raw["providers"]["teli-sb"]["rate_limit"] = {"rate": 50, "burst": 5, "max_wait_s": 2}
    return raw


async def _queued_behind_the_limiter(gw: GW, teli: Sandbox) -> str:
    """A queued assign whose background attempt waits about a second for its limiter
    slot (the provider asked for a pause); returns its operation id."""
    await teli.fault(status=429, retry_after=1.0, count=1)
    assert (await post(gw, "assign", OTHER))[0] == 503  # the answer that pauses the bucket
    status, queued, _ = await post(gw, "assign", assign_body("teli"),
                                   {"Prefer": "respond-async"})
    assert status == 202
    for _ in range(500):  # bounded: 5 s
        if sample(gw, "gateway_ratelimit_wait_seconds_count", provider="teli-sb") >= 2:
            return str(queued["operation_id"])
        await asyncio.sleep(0.01)
    raise AssertionError("the background attempt never reached the limiter")


def _redis_blamed(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Redis failed" in r.getMessage()]


async def test_a_reload_waits_for_a_background_attempt_in_flight(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "gw.yaml"
    raw = _config(sandboxes_up, redis_url)
    path.write_text(yaml.safe_dump(raw))
    gw: GW = await aiohttp_client(create_app(build_config(raw, env={}), services=services(),
                                             config_path=str(path)))
    teli = sandboxes_up["teli"]
    op_id = await _queued_behind_the_limiter(gw, teli)
    # A new timeout: the reload replaces the Teli client and retires the old one.
    path.write_text(yaml.safe_dump(_config(sandboxes_up, redis_url, timeout_s=0.6)))
    assert await gw.server.app[LIFECYCLE].reload("test") == []
    final = await wait_final(gw, op_id)
    # The attempt went out on the session it started with, once, and succeeded.
    assert (final["status"], final["attempts"]) == ("succeeded", 1), final
    assert [e["status"] for e in writes(await teli.journal(), TELI.assign_path)] == [429, 200]
    assert _redis_blamed(caplog) == []


async def test_an_attempt_on_a_closed_session_is_not_a_redis_failure(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None,
        caplog: pytest.LogCaptureFixture) -> None:
    gw = await gateway(aiohttp_client, _config(sandboxes_up, redis_url))
    op_id = await _queued_behind_the_limiter(gw, sandboxes_up["teli"])
    # The session closes under the waiting attempt (aiohttp then raises RuntimeError,
    # which is also one of the errors a Redis client raises).
    await gw.server.app[RUNTIME].providers["teli-sb"].session.close()
    final = await wait_final(gw, op_id)
    assert (final["status"], final["error"]["code"]) == ("failed", "internal_error"), final
    assert _redis_blamed(caplog) == []
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR and op_id in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
