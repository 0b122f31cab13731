"""``Idempotency-Key``: replay, conflict, in progress; per client; in memory and Redis."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from tests.conftest import OTHER_CLIENT_KEY, Sandbox, auth
from tests.contract.cases import CASES
from tests.retry.helpers import (
    GW,
    assign_body,
    gateway,
    post,
    retry_config,
    writes,
)


def _key(k: str) -> dict[str, str]:
    return {"Idempotency-Key": k}


async def _sent(sbx: Sandbox, ptype: str) -> int:
    return len(writes(await sbx.journal(), CASES[ptype].assign_path))


async def test_fifty_concurrent_requests_with_one_key_call_upstream_once(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    gw = await gateway(aiohttp_client, retry_config(sandboxes_up, redis_url=redis_url,
                                                    timeout_s=2))
    aelyst = sandboxes_up["aelyst"]
    await aelyst.fault("delay", delay_s=0.3, count=1)  # the first is still running
    body = assign_body("aelyst")
    answers = await asyncio.gather(*(post(gw, "assign", body, _key("k-50")) for _ in range(50)))
    outcomes = Counter(f"{s} {b.get('code', b.get('status'))}" for s, b, _ in answers)
    print(f"50 concurrent, one key: {dict(outcomes)}; upstream calls: "
          f"{await _sent(aelyst, 'aelyst')}")
    assert await _sent(aelyst, "aelyst") == 1
    assert set(outcomes) <= {"200 assigned", "409 request_in_progress"}
    assert outcomes["200 assigned"] >= 1
    firsts = {b["operation_id"] for s, b, _ in answers if s == 200}
    assert len(firsts) == 1  # every 200 is the same answer
    status, again, headers = await post(gw, "assign", body, _key("k-50"))
    assert (status, again["operation_id"]) == (200, firsts.pop())
    assert headers["Idempotent-Replayed"] == "true"
    assert await _sent(aelyst, "aelyst") == 1


async def test_same_key_other_body_is_a_conflict(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    gw = await gateway(aiohttp_client, retry_config(sandboxes_up, redis_url=redis_url))
    assert (await post(gw, "assign", assign_body("teli"), _key("k1")))[0] == 200
    other = assign_body("teli", assignee={"id": CASES["teli"].other_assignee_id})
    status, body, _ = await post(gw, "assign", other, _key("k1"))
    assert (status, body["code"]) == (409, "idempotency_conflict")
    status, body, _ = await post(gw, "unassign", {"tenant": "t-teli",
                                                  "contact": {"phone": "+15551234567"}},
                                 _key("k1"))
    assert (status, body["code"]) == (409, "idempotency_conflict")  # another route
    assert await _sent(sandboxes_up["teli"], "teli") == 1


async def test_keys_are_per_client_and_at_most_255_characters(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    gw = await gateway(aiohttp_client, retry_config(sandboxes_up))
    body = assign_body("teli")
    assert (await post(gw, "assign", body, _key("shared")))[0] == 200
    resp = await gw.post("/v1/assign", json=body,
                         headers={**auth(OTHER_CLIENT_KEY), **_key("shared")})
    assert resp.status == 200 and "Idempotent-Replayed" not in resp.headers
    assert await _sent(sandboxes_up["teli"], "teli") == 2
    status, err, _ = await post(gw, "assign", body, _key("x" * 256))
    assert (status, err["code"]) == (400, "invalid_request")
    assert (await post(gw, "assign", body, _key("x" * 255)))[0] == 200


async def test_a_202_and_a_provider_refusal_are_replayed(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    gw = await gateway(aiohttp_client, retry_config(sandboxes_up, redis_url=redis_url))
    aelyst = sandboxes_up["aelyst"]
    await aelyst.fault(status=449, count=100_000)
    s1, q1, h1 = await post(gw, "assign", assign_body("aelyst"), _key("q"))
    s2, q2, h2 = await post(gw, "assign", assign_body("aelyst"), _key("q"))
    assert (s1, s2) == (202, 202) and q1 == q2 and h1["Location"] == h2["Location"]
    await _replayed_refusal(gw, sandboxes_up["vambe"])


async def _replayed_refusal(gw: GW, vambe: Sandbox) -> None:
    await vambe.fault(status=404, count=1)
    first = await post(gw, "assign", assign_body("vambe"), _key("r"))
    second = await post(gw, "assign", assign_body("vambe"), _key("r"))
    assert first[0] == second[0] == 404
    assert first[1] == second[1] and first[1]["code"] == "contact_not_found"
    assert await _sent(vambe, "vambe") == 1


async def test_a_retryable_failure_releases_the_key(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    gw = await gateway(aiohttp_client, retry_config(sandboxes_up, redis_url=redis_url,
                                                    max_attempts=1))
    await sandboxes_up["teli"].fault(status=500, count=1)
    assert (await post(gw, "assign", assign_body("teli"), _key("again")))[0] == 503
    status, body, headers = await post(gw, "assign", assign_body("teli"), _key("again"))
    assert (status, body["status"]) == (200, "assigned")
    assert "Idempotent-Replayed" not in headers
