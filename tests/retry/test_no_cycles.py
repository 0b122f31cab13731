"""A failed request leaves no reference cycle behind.

A served gateway collects its young objects rarely (gateway.cli tunes the
collector for throughput), so a cycle made per failed request (an error whose
traceback holds a frame that holds the error) would keep the whole request
(frames, aiohttp objects, records) alive for a long time. Here the collector is
off while requests fail (a provider refusal, a look-up that finds nothing, a
timeout after retries, a retry the limiter cannot fit), and a collection
afterwards must find none of the gateway's frames in cycles.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Sandbox
from tests.retry.helpers import assign_body, gateway, post, retry_config


@pytest.fixture
def saved_garbage() -> Iterator[list[Any]]:
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_failed_requests_leave_no_cycle(aiohttp_client: Any,
                                              sandboxes_up: dict[str, Sandbox],
                                              saved_garbage: list[Any]) -> None:
    gw = await gateway(aiohttp_client, retry_config(sandboxes_up, timeout_s=0.2,
                                                    deadline_s=0.5, max_attempts=2))
    await sandboxes_up["aelyst"].fault(status=400, count=3)
    await sandboxes_up["teli"].fault(status=503, count=10)
    for _ in range(3):
        assert (await post(gw, "assign", assign_body("aelyst")))[0] == 502  # refused
        assert (await post(gw, "assign", assign_body("teli")))[0] == 503  # retried, failed
    body = {**assign_body("vambe"), "contact": {"phone": "+15550009999"}}  # nobody has it
    for _ in range(3):  # a miss, then the negative cache
        status, answer, _ = await post(gw, "assign", body)
        assert (status, answer["code"]) == (404, "contact_not_found")
    # A retry the gateway's own limiter has no slot for: the upstream error it followed.
    raw = retry_config(sandboxes_up, timeout_s=0.2, deadline_s=0.5)
    raw["providers"]["vambe-sb"]["rate_limit"] = {"rate": 1, "burst": 1, "max_wait_s": 0.05}
    await sandboxes_up["vambe"].fault(status=503, count=3)
    for _ in range(3):  # a gateway each: a fresh bucket with its one token
        fresh = await gateway(aiohttp_client, raw)
        status, answer, _ = await post(fresh, "assign", assign_body("vambe"))
        assert (status, answer["code"]) == (503, "upstream_unavailable")
    gc.collect()
    frames = [o for o in saved_garbage if type(o).__name__ == "frame"]
    ours = sorted({f.f_code.co_qualname for f in frames
                   if "/gateway/" in f.f_code.co_filename
                   or "/providers/" in f.f_code.co_filename})
    assert ours == [], ours
