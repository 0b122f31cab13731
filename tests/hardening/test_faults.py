"""Faults on every provider: the sandboxes' own (slow answers, hangs, dropped
connections, 5xx, 429, 449, HTML, broken JSON) and the network's, through a
loopback fault proxy (latency, a bandwidth limit, a reset or a silent peer in
the middle of an answer).

Each provider's requests run one after another, the three providers at once.
Every answer comes within the provider's ``deadline_s`` plus 250 ms, none is a
500, and every operation the gateway accepted (200 or 202) ends in a final
state that is visible at ``GET /v1/operations/{id}``: zero lost operations.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import build_config
from tests.conftest import Sandbox
from tests.hardening.fault_proxy import FaultProxy, NetFault
from tests.hardening.support import (
    PROVIDERS,
    TENANT,
    auth,
    config_dict,
    conforms,
    count,
    sandbox_base_url,
)

TIMEOUT_S = 0.4
DEADLINE_S = 1.2
SLACK_S = 0.25
ROUNDS = 2
FINAL = {"succeeded", "failed", "superseded"}
DIRECT: dict[str, dict[str, Any]] = {
    "teli": {"contact": {"phone": "+15551234567"}, "assignee": {"id": "user_xyz789"}},
    "vambe": {"contact": {"id": "22222222-2222-4222-8222-000000000001"},
              "assignee": {"id": "11111111-1111-4111-8111-000000000001"}},
    "aelyst": {"contact": {"id": "3"}, "assignee": {"id": "17"}},
}


@dataclass(frozen=True)
class Fault:
    name: str
    sandbox: dict[str, Any] | None = None  # a /_sandbox/faults body
    net: NetFault | None = None
    count: int = 1  # how many requests (attempts) it hits


FAULTS: list[Fault] = [
    Fault("none"),
    Fault("delay under timeout", {"kind": "delay", "delay_s": TIMEOUT_S / 4}),
    Fault("delay over timeout", {"kind": "delay", "delay_s": TIMEOUT_S * 2}),
    Fault("hang", {"kind": "hang", "delay_s": 30}),
    Fault("hang x5", {"kind": "hang", "delay_s": 30}, count=5),
    Fault("drop", {"kind": "drop"}),
    Fault("drop x5", {"kind": "drop"}, count=5),
    Fault("500", {"kind": "status", "status": 500}),
    Fault("503 x5", {"kind": "status", "status": 503}, count=5),
    Fault("429", {"kind": "status", "status": 429, "retry_after": 0.2}),
    Fault("449", {"kind": "status", "status": 449}),
    Fault("html 502", {"kind": "html", "status": 502}),
    Fault("malformed 200", {"kind": "malformed", "status": 200}),
    Fault("latency", net=NetFault("latency", seconds=TIMEOUT_S / 4)),
    Fault("latency over timeout", net=NetFault("latency", seconds=TIMEOUT_S * 2)),
    Fault("bandwidth 4 KB/s", net=NetFault("throttle", rate=4000)),
    Fault("bandwidth 200 B/s", net=NetFault("throttle", rate=200)),
    Fault("reset mid-answer", net=NetFault("reset", after=40)),
    Fault("reset mid-answer x5", net=NetFault("reset", after=40), count=5),
    Fault("silent mid-answer", net=NetFault("blackhole", after=40)),
    Fault("silent mid-answer x5", net=NetFault("blackhole", after=40), count=5),
]


@dataclass
class Outcome:
    provider: str
    fault: str
    status: int
    code: str
    elapsed: float
    operation_id: str | None


@pytest.fixture
async def proxies(hsandboxes: dict[str, Sandbox]) -> AsyncIterator[dict[str, FaultProxy]]:
    out = {}
    for p, sbx in hsandboxes.items():
        assert sbx.server.port is not None
        out[p] = FaultProxy("127.0.0.1", sbx.server.port)
        await out[p].start()
    yield out
    for proxy in out.values():
        await proxy.close()


@pytest.fixture
async def faulty_gw(aiohttp_client: Callable[..., Any],
                    proxies: dict[str, FaultProxy]) -> TestClient[Any, Any]:
    roots = {p: sandbox_base_url(p, f"http://127.0.0.1:{px.port}") for p, px in proxies.items()}
    cfg = config_dict(roots)
    for p in cfg["providers"].values():
        p.update(timeout_s=TIMEOUT_S, retry={
            "deadline_s": DEADLINE_S, "max_attempts": 4, "backoff_base_s": 0.02,
            "backoff_max_s": 0.1, "queued_backoff_s": 0.2, "give_up_after_s": 8})
    client: TestClient[Any, Any] = await aiohttp_client(create_app(build_config(cfg, env={})))
    return client


async def _inject(fault: Fault, sbx: Sandbox, proxy: FaultProxy) -> None:
    if fault.sandbox is not None:
        await sbx.fault(**{**fault.sandbox, "count": fault.count})
    if fault.net is not None:
        proxy.queue(fault.net, fault.count)


async def _clear(sbx: Sandbox, proxy: FaultProxy) -> None:
    proxy.clear()
    async with sbx.session.delete(sbx._url("/_sandbox/faults")) as r:
        assert r.status == 200


async def _run_provider(gw: TestClient[Any, Any], ptype: str, sbx: Sandbox,
                        proxy: FaultProxy) -> list[Outcome]:
    loop = asyncio.get_running_loop()
    out = []
    for i in range(ROUNDS * len(FAULTS)):
        fault = FAULTS[i % len(FAULTS)]
        await _inject(fault, sbx, proxy)
        op = "unassign" if i % 3 == 2 and ptype != "vambe" else "assign"
        body = {"tenant": TENANT[ptype], **DIRECT[ptype]}
        if op == "unassign":
            body.pop("assignee")
        start = loop.time()
        resp = await gw.post(f"/v1/{op}", json=body, headers=auth())
        answer = await resp.json(content_type=None)
        elapsed = loop.time() - start
        conforms(resp.status, answer)
        await _clear(sbx, proxy)
        out.append(Outcome(ptype, fault.name, resp.status, answer.get("code", "ok"), elapsed,
                           answer.get("operation_id") if resp.status in (200, 202) else None))
        count("faults injected", ptype, fault.count if fault.name != "none" else 0)
    return out


async def _final_states(gw: TestClient[Any, Any], outcomes: list[Outcome],
                        within_s: float) -> dict[str, str]:
    """Poll every accepted operation until it is final or ``within_s`` has passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    states: dict[str, str] = {}
    pending = {o.operation_id for o in outcomes if o.operation_id is not None}
    while pending and loop.time() < deadline:
        for op_id in sorted(pending):
            resp = await gw.get(f"/v1/operations/{op_id}", headers=auth())
            states[op_id] = (await resp.json())["status"] if resp.status == 200 else "missing"
        pending = {i for i in pending if states[i] not in FINAL}
        if pending:
            await asyncio.sleep(0.2)
    return states


@pytest.mark.timeout(240)
async def test_faults_on_every_provider(faulty_gw: TestClient[Any, Any],
                                        hsandboxes: dict[str, Sandbox],
                                        proxies: dict[str, FaultProxy]) -> None:
    results = await asyncio.gather(*(
        _run_provider(faulty_gw, p, hsandboxes[p], proxies[p]) for p in PROVIDERS))
    outcomes = [o for r in results for o in r]
    late = [o for o in outcomes if o.elapsed > DEADLINE_S + SLACK_S]
    errors = [o for o in outcomes if o.status == 500]
    for o in outcomes:
        count("fault requests", o.provider)
        count("fault answers", f"{o.status} {o.code}")
    assert errors == []
    assert late == [], "\n".join(f"{o.provider} {o.fault}: {o.elapsed:.3f} s" for o in late)
    # Every 200 is an operation already succeeded; every 202 ends final.
    states = await _final_states(faulty_gw, outcomes, within_s=20)
    lost = [o for o in outcomes if o.operation_id is not None and (
        states.get(o.operation_id) not in FINAL
        or (o.status == 200 and states[o.operation_id] != "succeeded"))]
    count("fault operations", "accepted", sum(o.operation_id is not None for o in outcomes))
    count("fault operations", "lost", len(lost))
    assert lost == [], [(o, states.get(o.operation_id or "")) for o in lost]
    assert sum(p.applied for p in proxies.values()) > 0
