"""One deadline over all attempts; 449 within it, and 202 plus background past it."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import OTHER_CLIENT_KEY, Sandbox, auth
from tests.contract.cases import CASES
from tests.retry.helpers import (
    GW,
    assign_body,
    gateway,
    operation,
    post,
    retry_config,
    sample,
    wait_final,
    writes,
)

AELYST_WRITE = CASES["aelyst"].assign_path


def _hang_contacts() -> list[tuple[str, dict[str, Any]]]:
    """Eight distinct contacts per provider, each needing no look-up."""
    out = []
    for i in range(8):
        out.append(("teli", {"tenant": "t-teli", "contact": {"phone": f"+1555123450{i}"},
                             "assignee": {"id": "user_xyz789"}}))
        out.append(("vambe", {"tenant": "t-vambe",
                              "contact": {"id": f"22222222-2222-4222-8222-00000000010{i}"},
                              "assignee": {"id": CASES["vambe"].assignee_id}}))
        out.append(("aelyst", {"tenant": "t-aelyst", "contact": {"id": str(100 + i)},
                               "assignee": {"id": "17"}}))
    return out


async def _timed(gw: GW, rid: str, body: dict[str, Any]) -> tuple[float, float, int, str]:
    loop = asyncio.get_running_loop()
    sent = loop.time()
    resp = await gw.post("/v1/assign", json=body, headers={**auth(), "X-Request-ID": rid})
    answer = await resp.json(content_type=None)
    return sent, loop.time(), resp.status, answer.get("code", "")


async def test_hanging_upstream_answers_every_client_within_the_deadline(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    deadline = 1.0
    raw = retry_config(sandboxes_up, timeout_s=0.4, deadline_s=deadline, max_attempts=10)
    gw = await gateway(aiohttp_client, raw)
    for sbx in sandboxes_up.values():
        await sbx.fault("hang", count=1000)
    requests = _hang_contacts()
    # Open the client's connections first: the measure is the gateway's, not TCP's.
    await asyncio.gather(*(gw.get("/healthz") for _ in requests))
    results = await asyncio.gather(*(_timed(gw, f"hang-{i}", body)
                                     for i, (_, body) in enumerate(requests)))
    sent = {f"hang-{i}": r[0] for i, r in enumerate(results)}
    answered = {f"hang-{i}": r[1] for i, r in enumerate(results)}
    latencies = [r[1] - r[0] for r in results]
    print(f"hang: {len(results)} clients, deadline {deadline} s, latency "
          f"min {min(latencies):.3f} max {max(latencies):.3f} s")
    assert {(r[2], r[3]) for r in results} == {(504, "upstream_timeout")}
    assert max(latencies) <= deadline + 0.25
    attempts, latest = 0, 0.0
    for sbx in sandboxes_up.values():
        for entry in await sbx.journal():
            rid = entry["headers"]["X-Request-ID"]
            attempts += 1
            latest = max(latest, entry["at"] - sent[rid])
            # Arrived within its request's deadline, counted from the client's send: the
            # gateway starts none in the deadline's last 50 ms, which covers the request's
            # way in and the attempt's way out on loopback.
            assert entry["at"] <= min(answered[rid], sent[rid] + deadline), entry
    assert attempts >= 2 * len(requests)  # each request retried within its deadline
    print(f"hang: {attempts} upstream attempts, the latest arriving {latest:.3f} s "
          f"after its request was sent (deadline {deadline} s)")


async def test_449_twice_then_success_within_the_deadline(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    raw = retry_config(sandboxes_up, queued_backoff_s=0.1, deadline_s=3)
    gw = await gateway(aiohttp_client, raw)
    await sandboxes_up["aelyst"].fault(status=449, count=2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    status, body, _ = await post(gw, "assign", assign_body("aelyst"))
    took = loop.time() - start
    print(f"449 twice: {status} attempts={body.get('attempts')} in {took:.3f} s (deadline 3 s)")
    assert (status, body["status"], body["attempts"]) == (200, "assigned", 3)
    statuses = [e["status"] for e in writes(await sandboxes_up["aelyst"].journal(),
                                            AELYST_WRITE)]
    assert statuses == [449, 449, 200]
    assert sample(gw, "gateway_retries_total", provider="aelyst-sb", reason="449") == 2


async def test_449_persisting_is_202_then_succeeds_in_the_background(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    raw = retry_config(sandboxes_up, redis_url=redis_url, queued_backoff_s=1.0, deadline_s=0.5)
    gw = await gateway(aiohttp_client, raw)
    aelyst = sandboxes_up["aelyst"]
    await aelyst.fault(status=449, count=100_000)
    loop = asyncio.get_running_loop()
    start = loop.time()
    status, body, headers = await post(gw, "assign", assign_body("aelyst"))
    took = loop.time() - start
    assert (status, body["status"]) == (202, "queued"), body
    assert took < 1.0
    op_id = body["operation_id"]
    assert headers["Location"] == f"/v1/operations/{op_id}"
    code, view = await operation(gw, op_id)
    assert code == 200 and view["status"] in ("queued", "running") and view["attempts"] >= 1
    assert (await operation(gw, op_id, OTHER_CLIENT_KEY))[0] == 404  # not theirs
    await asyncio.sleep(0.3)
    async with aelyst.session.delete(aelyst.server.make_url("/_sandbox/faults")) as r:
        assert r.status == 200
    final = await wait_final(gw, op_id, timeout_s=10)
    backend = "redis" if redis_url else "memory"
    print(f"449 persisting ({backend}): 202 in {took:.3f} s; "
          f"then {final['status']} after {final['attempts']} attempts")
    assert final["status"] == "succeeded" and final["attempts"] >= 2
    assert final["result"]["status"] == "assigned" and final["result"]["operation_id"] == op_id
    assert final["result"]["attempts"] == final["attempts"]
    assert CASES["aelyst"].assigned(await aelyst.state()) == {"17"}
    successes = [e for e in writes(await aelyst.journal(), AELYST_WRITE) if e["status"] == 200]
    assert len(successes) == 1


async def test_a_queued_operation_that_never_clears_fails_with_the_last_error(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    raw = retry_config(sandboxes_up, redis_url=redis_url, queued_backoff_s=0.2, deadline_s=0.1,
                       give_up_after_s=1.0)
    gw = await gateway(aiohttp_client, raw)
    await sandboxes_up["aelyst"].fault(status=449, count=100_000)
    status, body, _ = await post(gw, "assign", assign_body("aelyst"))
    assert status == 202
    final = await wait_final(gw, body["operation_id"], timeout_s=10)
    assert final["status"] == "failed" and final["attempts"] >= 2
    assert final["error"]["code"] == "upstream_unavailable"
    assert final["error"]["provider"] == "aelyst"
    assert sample(gw, "gateway_operations_total", status="failed") == 1


async def test_prefer_respond_async_answers_202_at_once(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    gw = await gateway(aiohttp_client, retry_config(sandboxes_up, redis_url=redis_url))
    status, body, headers = await post(gw, "assign", assign_body("teli"),
                                       {"Prefer": "respond-async, wait=5"})
    assert (status, body["status"]) == (202, "queued")
    assert headers["Preference-Applied"] == "respond-async"
    final = await wait_final(gw, body["operation_id"])
    assert final["status"] == "succeeded" and final["attempts"] == 1
    assert final["result"]["assignee"]["provider_id"] == CASES["teli"].assignee_id


async def test_5xx_retried_within_the_deadline(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    gw = await gateway(aiohttp_client, retry_config(sandboxes_up))
    await sandboxes_up["vambe"].fault(status=503, count=2)
    status, body, _ = await post(gw, "assign", assign_body("vambe"))
    assert (status, body["attempts"]) == (200, 3)
    assert sample(gw, "gateway_retries_total", provider="vambe-sb", reason="5xx") == 2


async def test_a_retry_the_limiter_cannot_fit_ends_with_the_upstream_error(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    # One token a second: after the 503 the retry finds no slot within its wait budget.
    raw = retry_config(sandboxes_up)
    raw["providers"]["vambe-sb"]["rate_limit"] = {"rate": 1, "burst": 1, "max_wait_s": 0.05}
    gw = await gateway(aiohttp_client, raw)
    await sandboxes_up["vambe"].fault(status=503, count=1)
    status, body, _ = await post(gw, "assign", assign_body("vambe"))
    # The client learns what went wrong upstream, not that the gateway declined a retry.
    assert (status, body["code"]) == (503, "upstream_unavailable"), body
    sent = writes(await sandboxes_up["vambe"].journal(), CASES["vambe"].assign_path)
    assert [e["status"] for e in sent] == [503]
    assert sample(gw, "gateway_ratelimit_rejected_total", scope="account") == 1
    assert sample(gw, "gateway_operations_total", status="failed") == 1
    # A first attempt without a slot is the client's answer: 429 with Retry-After.
    status, body, headers = await post(gw, "assign", assign_body("vambe"))
    assert (status, body["code"]) == (429, "rate_limited") and int(headers["Retry-After"]) >= 1


async def test_a_paced_retry_the_limiter_cannot_fit_goes_to_the_background(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    raw = retry_config(sandboxes_up, redis_url=redis_url, queued_backoff_s=0.1)
    raw["providers"]["aelyst-sb"]["rate_limit"] = {"rate": 1, "max_wait_s": 0.05}
    gw = await gateway(aiohttp_client, raw)
    aelyst = sandboxes_up["aelyst"]
    await aelyst.fault(status=449, count=1)
    status, body, _ = await post(gw, "assign", assign_body("aelyst"))
    assert (status, body["status"]) == (202, "queued"), body
    final = await wait_final(gw, body["operation_id"], timeout_s=10)
    # Two attempts reached the provider; the one the limiter refused is not counted.
    assert (final["status"], final["attempts"]) == ("succeeded", 2), final
    assert [e["status"] for e in writes(await aelyst.journal(), AELYST_WRITE)] == [449, 200]


async def test_the_retry_budget_keeps_an_outage_from_multiplying_load(
        aiohttp_client: Any, sandboxes_up: dict[str, Sandbox], redis_url: str | None) -> None:
    # Two replicas (sharing the budget through Redis when configured); the floor is
    # 10 retries per 10 s window, as 10% of 30 first attempts is less.
    raw = retry_config(sandboxes_up, redis_url=redis_url, max_attempts=3)
    replicas = [await gateway(aiohttp_client, raw) for _ in range(2 if redis_url else 1)]
    await sandboxes_up["teli"].fault(status=500, count=100_000)
    for i in range(30):
        status, body, _ = await post(replicas[i % len(replicas)], "assign", assign_body("teli"))
        assert (status, body["code"]) == (503, "upstream_unavailable")
    sent = len(writes(await sandboxes_up["teli"].journal(), CASES["teli"].assign_path))
    retries = sum(sample(gw, "gateway_retries_total", provider="teli-sb", reason="5xx")
                  for gw in replicas)
    print(f"retry budget: 30 requests, {sent} upstream attempts ({retries:g} retries), "
          f"not the {30 * 3} that max_attempts alone allows")
    assert sent == 30 + 10 and retries == 10
