"""The limiter inside a gateway, over real loopback HTTP to the Aelyst sandbox."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import build_config
from gateway.runtime import METRICS
from tests.conftest import OTHER_CLIENT_KEY, Sandbox, auth, gateway_config_dict
from tests.redis_server import RedisServer

Make = Callable[..., Any]
SPELLINGS = ({"phone": "555.765.4321"}, {"phone": "+1 (555) 765-4321"})


def _config(sbx: dict[str, Sandbox], rate_limit: dict[str, Any] | None = None,
            retry: dict[str, Any] | None = None, **top: Any) -> Any:
    # No headroom: the waits below are exact multiples of 1 / rate.
    raw = gateway_config_dict(sbx, **{"ratelimit": {"headroom": 0}, **top})
    aelyst = raw["providers"]["aelyst-sb"]
    aelyst["rate_limit"] = {**aelyst.get("rate_limit", {}), **(rate_limit or {})}
    aelyst["retry"] = {**aelyst.get("retry", {}), **(retry or {})}
    return build_config(raw, env={})


@pytest.fixture
def make_gw(aiohttp_client: Make, sandboxes_up: dict[str, Sandbox]) -> Make:
    async def make(**kw: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(
            create_app(_config(sandboxes_up, **kw)))
        return client
    return make


async def _assign(gw: TestClient[Any, Any], contact: dict[str, str] | None = None,
                  key: str | None = None, tenant: str = "t-aelyst") -> Any:
    assignee = {"email": "jane@acme.com"} if tenant == "t-aelyst" else {"id": "user_xyz789"}
    body = {"tenant": tenant, "contact": contact or SPELLINGS[0], "assignee": assignee}
    return await gw.post("/v1/assign", json=body, headers=auth(*([key] if key else [])))


def _sample(gw: TestClient[Any, Any], name: str, **labels: str) -> float:
    assert gw.app is not None
    value = gw.app[METRICS].registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def _upstream_times(sbx: Sandbox) -> list[float]:
    return [e["at"] for e in await sbx.journal() if "/conversation/assignee" in e["path"]]


async def test_two_spellings_of_one_contact_share_one_bucket(
        make_gw: Make, sandboxes_up: dict[str, Sandbox]) -> None:
    gw = await make_gw(rate_limit={"rate": 2, "burst": 1, "max_wait_s": 2})
    for contact in SPELLINGS:
        resp = await _assign(gw, contact)
        assert resp.status == 200
        # No client bucket here: the headers describe the provider's bucket.
        assert (resp.headers["RateLimit-Limit"], resp.headers["RateLimit-Remaining"]) == ("1", "0")
    at = await _upstream_times(sandboxes_up["aelyst"])
    assert at[1] - at[0] >= 0.45  # the second spelling waited for the first one's slot
    waited = _sample(gw, "gateway_ratelimit_wait_seconds_sum", provider="aelyst-sb")
    assert 0.4 < waited <= 0.53


async def test_other_paths_have_their_own_buckets(
        make_gw: Make, sandboxes_up: dict[str, Sandbox]) -> None:
    gw = await make_gw(rate_limit={"rate": 0.5, "burst": 1, "max_wait_s": 0})
    assert (await _assign(gw, {"phone": "+15557654321"})).status == 200
    other = await _assign(gw, {"email": "abdc@gmail.com"})
    assert other.status in (200, 404), await other.text()  # never our 429
    assert (await _assign(gw, {"phone": "+15557654321"})).status == 429


async def test_a_wait_longer_than_max_wait_is_a_429_with_retry_after(
        make_gw: Make, sandboxes_up: dict[str, Sandbox]) -> None:
    gw = await make_gw(rate_limit={"rate": 0.5, "burst": 1, "max_wait_s": 0.5})
    assert (await _assign(gw)).status == 200
    resp = await _assign(gw)
    body = await resp.json()
    assert resp.status == 429 and body["code"] == "rate_limited"
    assert resp.headers["Retry-After"] == "2" and 1.3 < body["retry_after"] <= 1.5
    assert resp.headers["RateLimit-Remaining"] == "0"
    assert len(await _upstream_times(sandboxes_up["aelyst"])) == 1
    assert _sample(gw, "gateway_ratelimit_rejected_total", scope="path") == 1


async def test_a_wait_past_the_deadline_is_refused_rather_than_slept(
        make_gw: Make, sandboxes_up: dict[str, Sandbox]) -> None:
    gw = await make_gw(rate_limit={"rate": 1, "burst": 1, "max_wait_s": 5},
                       retry={"deadline_s": 0.6})
    assert (await _assign(gw)).status == 200
    resp = await _assign(gw)  # its slot is ~1 s away, its deadline 0.6 s
    assert resp.status == 429 and (await resp.json())["code"] == "rate_limited"


async def test_client_buckets_keep_one_app_from_starving_the_others(
        make_gw: Make, sandboxes_up: dict[str, Sandbox]) -> None:
    raw_clients = gateway_config_dict(sandboxes_up)["clients"]
    raw_clients[0]["rate_limit"] = {"rate": 0.5, "burst": 2}
    gw = await make_gw(clients=raw_clients)
    first = await _assign(gw, tenant="t-teli")
    assert first.status == 200
    assert (first.headers["RateLimit-Limit"], first.headers["RateLimit-Remaining"]) == ("2", "1")
    assert (await _assign(gw, tenant="t-teli")).status == 200
    refused = await _assign(gw, tenant="t-teli")
    assert refused.status == 429 and refused.headers["Retry-After"] == "2"
    assert refused.headers["RateLimit-Remaining"] == "0"
    # The other app has no bucket of its own and is not held back by this one's.
    assert (await _assign(gw, tenant="t-teli", key=OTHER_CLIENT_KEY)).status == 200
    assert _sample(gw, "gateway_ratelimit_rejected_total", scope="client") == 1


async def test_a_provider_429_pauses_the_bucket_until_its_retry_after(
        make_gw: Make, sandboxes_up: dict[str, Sandbox]) -> None:
    sbx = sandboxes_up["aelyst"]
    gw = await make_gw(rate_limit={"rate": 50, "burst": 5, "max_wait_s": 0.5},
                       retry={"max_attempts": 1})
    await sbx.fault("status", status=429, retry_after=2, count=1)
    first = await _assign(gw)
    assert first.status != 500
    resp = await _assign(gw)  # the provider said 2 s; more than this bucket's 0.5 s wait
    assert resp.status == 429 and (await resp.json())["code"] == "rate_limited"
    assert resp.headers["Retry-After"] == "2"
    assert len(await _upstream_times(sbx)) == 1


async def test_remaining_zero_pauses_every_replica(
        aiohttp_client: Make, sandboxes_up: dict[str, Sandbox], redis_server: RedisServer) -> None:
    config = _config(sandboxes_up, rate_limit={"rate": 50, "burst": 5, "max_wait_s": 2},
                     redis_url=redis_server.url)
    a = await aiohttp_client(create_app(config))
    b = await aiohttp_client(create_app(config))
    # The sandbox's window is 5 per second: the fifth answer says remaining 0.
    for _ in range(5):
        assert (await _assign(a)).status == 200
    assert (await _assign(b, SPELLINGS[1])).status == 200
    at = await _upstream_times(sandboxes_up["aelyst"])
    assert at[5] - at[4] >= 0.95  # replica b waited out a's "remaining 0" (1 s)
    assert sandboxes_up["aelyst"] and (await sandboxes_up["aelyst"].state())[
        "rate_limit"]["rejected"] == 0


async def test_redis_away_is_degraded_not_an_error(
        aiohttp_client: Make, sandboxes_up: dict[str, Sandbox], redis_server: RedisServer) -> None:
    gw = await aiohttp_client(create_app(_config(sandboxes_up, redis_url=redis_server.url)))
    assert (await _assign(gw)).status == 200
    assert _sample(gw, "gateway_ratelimit_degraded") == 0
    redis_server.kill()
    resp = await _assign(gw, {"id": "3"})
    assert resp.status == 200, await resp.text()
    assert _sample(gw, "gateway_ratelimit_degraded") == 1
    metrics = await (await gw.get("/metrics")).text()
    assert "gateway_ratelimit_degraded 1.0" in metrics
