"""Shared pieces of the retry and operations suites: configurations, polling, journals."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.app import Services, create_app
from gateway.config import build_config
from gateway.runtime import METRICS
from tests.conftest import Sandbox, auth, gateway_config_dict
from tests.contract.cases import CASES

GW = TestClient[Any, Any]
FINAL = {"succeeded", "failed", "superseded"}
BACKENDS = ("memory", "redis")


def retry_config(sbx: dict[str, Sandbox], *, redis_url: str | None = None,
                 timeout_s: float = 0.3, **retry: Any) -> dict[str, Any]:
    """The conftest configuration with one retry policy on every provider."""
    raw = gateway_config_dict(sbx, redis_url=redis_url)
    for p in raw["providers"].values():
        p["timeout_s"] = timeout_s
        p["retry"] = {"max_attempts": 3, "deadline_s": 3, "backoff_base_s": 0.02,
                      "backoff_max_s": 0.1, "queued_backoff_s": 10, "give_up_after_s": 60,
                      **retry}
    return raw


def services(rand: float = 1.0) -> Services:
    """Deterministic jitter (the one thing mocked besides the clock); unique op ids."""
    counter = iter(range(1, 10_000_000))
    return Services(new_id=lambda: f"op_t{next(counter):07d}", random=lambda: rand)


async def gateway(aiohttp_client: Callable[..., Any], raw: dict[str, Any],
                  rand: float = 1.0) -> GW:
    client: GW = await aiohttp_client(create_app(build_config(raw, env={}),
                                                 services=services(rand)))
    return client


def assign_body(ptype: str, **extra: Any) -> dict[str, Any]:
    case = CASES[ptype]
    return {"tenant": case.tenant, "contact": case.direct_contact,
            "assignee": {"id": case.assignee_id}, **extra}


def unassign_body(ptype: str) -> dict[str, Any]:
    case = CASES[ptype]
    return {"tenant": case.tenant, "contact": case.direct_contact}


async def post(gw: GW, operation: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    resp = await gw.post(f"/v1/{operation}", json=body, headers={**auth(), **(headers or {})})
    return resp.status, await resp.json(content_type=None), resp.headers


async def operation(gw: GW, op_id: str, key: str | None = None) -> tuple[int, dict[str, Any]]:
    resp = await gw.get(f"/v1/operations/{op_id}", headers=auth(*([key] if key else [])))
    return resp.status, await resp.json(content_type=None)


async def wait_final(gw: GW, op_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Poll an operation until it is final; bounded by ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            status, body = await operation(gw, op_id)
            assert status == 200, body
            if body["status"] in FINAL:
                return body
            await asyncio.sleep(0.05)


def writes(entries: Iterable[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """Journal entries of one upstream write path."""
    return [e for e in entries if e["path"] == path]


def upstream_exchanges(gw: GW, provider: str) -> int:
    """Exchanges the gateway made with a provider, by its own metric (any outcome)."""
    total = 0.0
    for family in gw.server.app[METRICS].registry.collect():
        if family.name != "gateway_upstream_requests":
            continue
        for s in family.samples:
            if s.name.endswith("_total") and s.labels.get("provider") == provider:
                total += s.value
    return int(total)


def sample(gw: GW, name: str, **labels: str) -> float:
    value = gw.server.app[METRICS].registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
