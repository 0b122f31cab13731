"""A claim that ran twice (its reply lost, the script sent again) is still the caller's."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway import idempotency
from gateway.auth import ClientAuth
from gateway.config import build_config
from gateway.idempotency import IDEMPOTENCY, Entry, IdempotencyStore, MemoryIdempotency
from gateway.models import AssignRequest
from gateway.runtime import RUNTIME, Runtime


class ResentClaims:
    """Runs every claim twice, as a resent script would, and answers the second run.
    A wrapper, not a subclass: the store may be compiled (gateway/_native.py)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.store = MemoryIdempotency(clock)

    async def claim(self, scope: str, entry: Entry, ttl_s: float) -> Entry | None:
        await self.store.claim(scope, entry, ttl_s)
        return await self.store.claim(scope, entry, ttl_s)

    async def finish(self, scope: str, entry: Entry, ttl_s: float) -> None:
        await self.store.finish(scope, entry, ttl_s)

    async def release(self, scope: str, nonce: str) -> None:
        await self.store.release(scope, nonce)


def _request(store: IdempotencyStore) -> web.Request:
    app = web.Application()
    app[IDEMPOTENCY] = store
    config = build_config({"clients": [], "tenants": {}, "providers": {}}, env={})
    app[RUNTIME] = Runtime(config, ClientAuth(()), {})
    return make_mocked_request("POST", "/v1/assign", headers={"Idempotency-Key": "k1"},
                               app=app)


BODY = AssignRequest.model_validate({"contact": {"id": "1"}, "assignee": {"id": "2"}})


async def test_a_resent_claim_runs_the_request_and_a_retry_replays_it() -> None:
    store = ResentClaims(time.time)
    runs = 0

    async def run() -> web.Response:
        nonlocal runs
        runs += 1
        return web.json_response({"status": "assigned"})

    first = await idempotency.guarded(_request(store), "app", "assign", BODY, run)
    assert first.status == 200 and runs == 1
    again = await idempotency.guarded(_request(store), "app", "assign", BODY, run)
    assert again.status == 200 and runs == 1
    assert again.headers["Idempotent-Replayed"] == "true"
