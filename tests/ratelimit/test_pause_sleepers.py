"""A provider's pause holds for requests already asleep on a slot granted before it."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Sandbox
from tests.retry.helpers import gateway, post, retry_config


async def test_requests_asleep_on_their_slots_wait_out_a_later_pause(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    aelyst = sandboxes_up["aelyst"]
    async with aelyst.session.post(str(aelyst.server.make_url("/_sandbox/ratelimit")),
                                   json={"enabled": False}) as r:
        assert r.status == 200  # the gateway's own limiter is the subject here
    raw = retry_config(sandboxes_up, timeout_s=1, deadline_s=6)
    raw["providers"]["aelyst-sb"]["rate_limit"] = {"rate": 4, "burst": 1, "scope": "account",
                                                   "max_wait_s": 3}
    gw = await gateway(aiohttp_client, raw)
    # The first request to arrive is answered 429 "come back in 1 s"; the other two are
    # asleep on slots the limiter granted before that answer (about 0.28 s apart).
    await aelyst.fault(status=429, retry_after=1.0, count=1)
    answers = await asyncio.gather(*(post(gw, "assign", {
        "tenant": "t-aelyst", "contact": {"id": cid}, "assignee": {"id": "17"}})
        for cid in ("1", "2", "3")))
    assert [status for status, _, _ in answers] == [200, 200, 200], answers
    writes = [e for e in await aelyst.journal() if e["path"].endswith("/conversation/assignee")]
    assert writes[0]["status"] == 429 and len(writes) == 4
    paused_at = writes[0]["at"]
    # By the provider's own clock: nothing reached it during the pause it asked for.
    assert all(e["at"] >= paused_at + 1.0 for e in writes[1:]), writes
