"""Redis unreachable: requests still run (this replica's ordering and keys), but nothing
is promised with a 202 that Redis cannot keep; once Redis is back, queuing resumes."""

from __future__ import annotations

from typing import Any

from tests.conftest import Sandbox
from tests.redis_server import RedisServer
from tests.retry.helpers import assign_body, gateway, post, retry_config, wait_final


async def test_redis_away_degrades_and_refuses_only_what_it_cannot_queue(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_server: RedisServer) -> None:
    raw = retry_config(sandboxes_up, redis_url=redis_server.url, queued_backoff_s=0.5,
                       deadline_s=0.3)
    gw = await gateway(aiohttp_client, raw)
    assert (await post(gw, "assign", assign_body("teli")))[0] == 200
    redis_server.kill()
    status, body, _ = await post(gw, "assign", assign_body("teli"), {"Idempotency-Key": "k"})
    assert (status, body["status"]) == (200, "assigned")  # ran with local ordering and keys
    replay = await post(gw, "assign", assign_body("teli"), {"Idempotency-Key": "k"})
    assert replay[1] == body and replay[2]["Idempotent-Replayed"] == "true"
    await sandboxes_up["aelyst"].fault(status=449, count=1)
    status, err, headers = await post(gw, "assign", assign_body("aelyst"))
    assert (status, err["code"], headers["Retry-After"]) == (503, "store_unavailable", "1")
    redis_server.start()  # the same port: the client reconnects by itself
    await sandboxes_up["aelyst"].fault(status=449, count=1)
    # Another contact, so another path bucket (Aelyst's are per path, burst 1): until the
    # limiter sees Redis back it decides in its local fallback bucket, where the request
    # above may still hold the slot, and a request that cannot start within its deadline
    # gets 429. Whether it still does depended on how fast redis-server restarted.
    status, queued, _ = await post(gw, "assign", assign_body("aelyst", contact={"id": "2"}))
    assert status == 202, queued
    assert (await wait_final(gw, queued["operation_id"]))["status"] == "succeeded"
