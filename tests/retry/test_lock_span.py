"""A synchronous attempt never outlives its contact lock, however long the limiter makes
each of its exchanges wait: a newer operation on the contact reaches the provider only
after the older one's write."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Sandbox
from tests.contract.cases import CASES
from tests.retry.helpers import GW, gateway, post, retry_config, sample

TELI = CASES["teli"]
UNASSIGN = "/v1/threads/unassign"
USERS = "/v1/organizations/"
OTHER_PHONE = "+15557654321"


async def _until_waits(gw: GW, n: int) -> None:
    """Until ``n`` exchanges have been given their limiter slot (bounded: 5 s)."""
    for _ in range(500):
        if sample(gw, "gateway_ratelimit_wait_seconds_count", provider="teli-sb") >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no exchange reached the limiter")


async def test_a_newer_operation_waits_for_an_attempt_the_limiter_stretches(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    # Per-path buckets, each exchange allowed to wait 2.5 s for its slot: an assign by
    # email (users look-up, then the write) may wait twice, longer than one timeout
    # and one wait, which is all the lock used to cover.
    raw = retry_config(sandboxes_up, timeout_s=0.3, deadline_s=7, max_attempts=1)
    raw["providers"]["teli-sb"]["rate_limit"] = {"rate": 50, "burst": 5, "scope": "path",
                                                 "max_wait_s": 2.5}
    gw = await gateway(aiohttp_client, raw)
    teli = sandboxes_up["teli"]
    # The provider asks the gateway to hold off: the users path for 2.4 s, the write
    # path for 4.8 s (each answer a 429 with Retry-After, to an unrelated request).
    await teli.fault(status=429, retry_after=2.4, path_prefix=USERS, count=1)
    await teli.fault(status=429, retry_after=4.8, path_prefix=TELI.assign_path, count=1)
    by_email = {"tenant": TELI.tenant, "contact": {"phone": OTHER_PHONE},
                "assignee": {"email": TELI.assignee_email}}
    assert (await post(gw, "assign", by_email))[0] == 503
    by_id = {"tenant": TELI.tenant, "contact": {"phone": OTHER_PHONE},
             "assignee": {"id": TELI.assignee_id}}
    assert (await post(gw, "assign", by_id))[0] == 503
    older = asyncio.create_task(post(gw, "assign", {
        "tenant": TELI.tenant, "contact": TELI.direct_contact,
        "assignee": {"email": TELI.assignee_email}}))
    await _until_waits(gw, 3)  # the older assign holds the lock, its look-up waits
    status_new, new, _ = await post(gw, "unassign", {"tenant": TELI.tenant,
                                                     "contact": TELI.direct_contact})
    status_old, old, _ = await older
    assert (status_old, old["status"]) == (200, "assigned"), old
    assert (status_new, new["status"]) == (200, "unassigned"), new
    sent = [e["path"] for e in await teli.journal()
            if e["path"] in (TELI.assign_path, UNASSIGN) and e["status"] == 200]
    # The older write first, then the newer: the contact ends as the newest asked.
    assert sent == [TELI.assign_path, UNASSIGN]
    assert TELI.assigned(await teli.state()) == set()
