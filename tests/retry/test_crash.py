"""A replica killed mid-work loses nothing: two gateway processes share Redis, one is
SIGKILLed while 1,000 operations are queued behind Aelyst's 449; once the sandbox
clears, every operation ends final and each one not superseded was applied exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import redis_keys
from gateway.auth import hash_key
from gateway.redis_conn import connect
from providers.aelyst.sandbox import AELYST_SANDBOX, SANDBOX_KIT, create_app
from tests.conftest import CLIENT_KEY, KEYS, auth
from tests.procs import GatewayProcess
from tests.redis_server import RedisServer

CONTACTS = range(1000, 1500)  # two operations each: 1,000 in all
OLD, NEW = 17, 18  # the first operation assigns 17, the newer one 18
FINAL = {"succeeded", "failed", "superseded"}
REFUSED: list[str] = []
pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(240)]


def _seed(path: Path) -> Path:
    users = [{"id": uid, "firstName": f"U{uid}", "lastName": "Test", "email": f"u{uid}@acme.com"}
             for uid in (OLD, NEW)]
    path.write_text(yaml.safe_dump({"users": users, "contacts": [{"id": c} for c in CONTACTS]}))
    return path


def _config(base_url: str, redis_url: str) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "clients": [{"name": "app", "key_sha256": hash_key(CLIENT_KEY), "tenants": ["t"]}],
        "tenants": {"t": {"provider": "aelyst-sb"}},
        "providers": {"aelyst-sb": {
            "type": "aelyst", "base_url": base_url, "api_key": KEYS["aelyst"], "timeout_s": 3,
            # The gateway's own limiter must not be what this test measures.
            "rate_limit": {"rate": 5000, "burst": 5000, "scope": "account", "max_wait_s": 0.5},
            "retry": {"deadline_s": 2.0, "queued_backoff_s": 0.5, "give_up_after_s": 120,
                      "max_attempts": 3}}},
    }


async def _submit(session: aiohttp.ClientSession, url: str, contact: int, assignee: int) -> str:
    body = {"contact": {"id": str(contact)}, "assignee": {"id": str(assignee)}}
    # Old ones try within their deadline first; new ones go straight to the background.
    prefer = {"Prefer": "respond-async"} if assignee == NEW else {}
    for _ in range(10):  # a 503 (Redis too slow to promise a queue) says: retry shortly
        async with session.post(url + "/v1/assign", json=body,
                                headers={**auth(), **prefer}) as r:
            answer = await r.json(content_type=None)
        if r.status != 503:
            break
        REFUSED.append(answer["code"])
        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
    assert r.status == 202, answer  # queued behind the 449
    return str(answer["operation_id"])


async def _submit_all(session: aiohttp.ClientSession,
                      urls: list[str]) -> dict[str, tuple[int, int]]:
    """Each contact: the old operation through one replica, then the new through the other."""
    ops: dict[str, tuple[int, int]] = {}
    limit = asyncio.Semaphore(40)

    async def pair(i: int, contact: int) -> None:
        async with limit:
            ops[await _submit(session, urls[i % 2], contact, OLD)] = (contact, OLD)
            ops[await _submit(session, urls[(i + 1) % 2], contact, NEW)] = (contact, NEW)

    await asyncio.gather(*(pair(i, c) for i, c in enumerate(CONTACTS)))
    return ops


async def _poll_final(session: aiohttp.ClientSession, url: str, ops: list[str],
                      timeout_s: float) -> dict[str, dict[str, Any]]:
    """Every operation's final view, through the surviving replica; bounded in time."""
    final: dict[str, dict[str, Any]] = {}
    limit = asyncio.Semaphore(40)

    async def one(op_id: str) -> None:
        async with limit, session.get(f"{url}/v1/operations/{op_id}", headers=auth()) as r:
            view = await r.json()
            if r.status == 200 and view["status"] in FINAL:
                final[op_id] = view

    async with asyncio.timeout(timeout_s):
        # One scrape a second until nothing is queued, so polling does not load the
        # sandbox (it shares this test's event loop); then every view, until final.
        for _ in range(int(timeout_s)):
            if await _queued(session, url) == 0:
                break
            await asyncio.sleep(1.0)
        while len(final) < len(ops):
            await asyncio.gather(*(one(o) for o in ops if o not in final))
            await asyncio.sleep(0.5)
    return final


async def _queued(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith('gateway_operations{status="queued"}'):
                return float(line.split()[-1])
    raise AssertionError("no gateway_operations gauge")


async def test_sigkill_mid_work_loses_nothing(
        aiohttp_server: Callable[..., Any], redis_server: RedisServer, tmp_path: Path) -> None:
    app = create_app(api_key=KEYS["aelyst"], data_file=_seed(tmp_path / "aelyst.yaml"),
                     rate_limit=False)  # 1,000 paths at once: the sandbox's 5/s is not the point
    app.middlewares.insert(0, _slow)
    server: TestServer = await aiohttp_server(app)
    kit, sandbox = app[SANDBOX_KIT], app[AELYST_SANDBOX]
    kit.faults.clear()
    await _fault_449(server)
    config = _config(str(server.make_url("/v1")).rstrip("/"), redis_server.url)
    victim, survivor = (GatewayProcess(config, tmp_path, f"gw{i}") for i in (1, 2))
    await asyncio.gather(victim.start(), survivor.start())
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            ops = await _submit_all(session, [victim.url, survivor.url])
            accepted_at = loop.time()
            token = _worker_token(victim)
            # Killed mid-attempt: frozen (SIGSTOP) where its leases are counted, so none
            # is released between the count and the kill; between two waves of attempts
            # (449s put each operation back for a while) it runs on and is caught later.
            orphaned = 0
            for _ in range(20):  # bounded: each round waits at most 5 s for leases
                await _until_leased(redis_server.url, token, 3)  # attempts in flight there
                victim.signal(signal.SIGSTOP)
                orphaned = await _leases(redis_server.url, token)
                if orphaned:
                    break
                victim.signal(signal.SIGCONT)
            victim.signal(signal.SIGKILL)
            await victim.wait(10)
            killed_at = loop.time()
            kit.faults.clear()  # the sandbox clears
            final = await _poll_final(session, survivor.url, list(ops), timeout_s=150)
        done_at = loop.time()
    finally:
        await survivor.stop()
        await victim.stop()
    print(f"crash test: {len(ops)} operations accepted in {accepted_at - started:.1f} s; "
          f"{sum(1 for e in kit.journal if e.status == 449)} answers 449 before the clear; "
          f"replica killed at +{killed_at - started:.1f} s; all final "
          f"{done_at - killed_at:.1f} s after the clear; total {done_at - started:.1f} s; "
          f"states {dict(Counter(v['status'] for v in final.values()))}; "
          f"{len(REFUSED)} submissions refused with 503 and repeated; "
          f"{orphaned} leases of the killed replica taken over")
    _check(ops, final, kit.journal, sandbox)
    assert orphaned >= 1  # it was killed mid-attempt, and its work was finished anyway


def _worker_token(gw: GatewayProcess) -> str:
    line = next(x for x in gw.output if "operations: worker" in x)
    return line.split("operations: worker ", 1)[1].split()[0]


async def _leases(url: str, token: str) -> int:
    """How many operations the replica with this worker token holds a lease on."""
    redis = connect(url)
    try:
        keys = [k async for k in redis.scan_iter(match=redis_keys.operation_lease("*"))]
        values = await redis.mget(keys) if keys else []
        return sum(1 for v in values if v is not None and v.decode().startswith(token + ":"))
    finally:
        await redis.aclose()


async def _until_leased(url: str, token: str, n: int) -> None:
    for _ in range(500):  # bounded: 5 s
        if await _leases(url, token) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the replica never held leases")


@web.middleware
async def _slow(request: web.Request, handler: Any) -> web.StreamResponse:
    # 50 ms per provider request (449s included), so attempts are in flight at the kill.
    if not request.path.startswith("/_sandbox/"):
        await asyncio.sleep(0.05)
    return cast(web.StreamResponse, await handler(request))


async def _fault_449(server: TestServer) -> None:
    async with aiohttp.ClientSession() as s, s.post(
            server.make_url("/_sandbox/faults"),
            json={"kind": "status", "status": 449, "count": 10_000_000}) as r:
        assert r.status == 201


def _check(ops: dict[str, tuple[int, int]], final: dict[str, dict[str, Any]],
           journal: list[Any], sandbox: Any) -> None:
    assert len(ops) == 2 * len(CONTACTS) and set(final) == set(ops)
    states = {op: final[op]["status"] for op in ops}
    odd = [final[op] for op, (_, who) in ops.items()
           if states[op] != ("superseded" if who == OLD else "succeeded")]
    assert not odd, odd[:3]
    # The old one of each pair was still queued when the new one came: superseded.
    assert {states[op] for op, (_, who) in ops.items() if who == OLD} == {"superseded"}
    assert {states[op] for op, (_, who) in ops.items() if who == NEW} == {"succeeded"}
    successes = Counter()
    for e in journal:
        if e.status == 200 and e.path.endswith("/conversation/assignee"):
            contact = int(e.path.split("/")[3].removeprefix("id:"))
            successes[(contact, json.loads(e.body)["assignee"])] += 1
    # Exactly one successful upstream assignment per operation not superseded, none else.
    expected = Counter({(c, NEW): 1 for c in CONTACTS})
    assert successes == expected, (successes - expected, expected - successes)
    assert {sandbox.contacts[c].assignee for c in CONTACTS} == {NEW}
