"""The soak: mixed traffic with faults for ``HARDENING_SOAK_S`` seconds (``make
soak``: 30 minutes). Skipped unless that variable is set.

A gateway process (in-process state) serves the three sandboxes through fault
proxies; a steady open-loop stream of assigns, unassigns, queued requests,
reads and bad requests runs while a seeded schedule injects a fault every
couple of seconds: the sandboxes' own (slow, hung, dropped, 5xx, 429, 449,
HTML, broken JSON) and the network's (latency, a bandwidth limit, resets and
silent peers mid-answer).

Expected: no 500; resident memory and open files, idle after the run, within
10% of what they were idle after the warm-up (which lasts until the in-process
store holds its bound of final operations); every queued (202) operation, and
every tenth one answered 200, final at ``GET /v1/operations/{id}`` once it is
``CHECK_AFTER_S`` old: no operation lost. The numbers go to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.operations import MEMORY_FINALS
from gateway.registry import sandboxes
from tests.hardening.fault_proxy import FaultProxy
from tests.hardening.support import (
    PROVIDER_KEYS,
    PROVIDERS,
    TENANT,
    auth,
    config_dict,
    count,
    open_files,
    rss_kib,
    sandbox_base_url,
)
from tests.hardening.test_faults import FAULTS, Fault
from tests.procs import ROOT, GatewayProcess

SOAK_S = float(os.environ.get("HARDENING_SOAK_S", "0"))
RATE = 15.0  # requests per second, open loop
CONCURRENCY = 24
FAULT_EVERY_S = 2.0
SAMPLE_EVERY_S = 5.0
IDLE_S = 35.0  # aiohttp closes idle pooled connections 15-30 s after their last use
FINAL = {"succeeded", "failed", "superseded"}
#: The share of the mix that becomes an operation (valid writes; measured: 0.88).
OPS_SHARE = 0.85
#: An operation is looked at once this old: past give_up_after_s (30 s below), so
#: final, and long before the in-process store (the newest MEMORY_FINALS finals)
#: drops it. Looking only at the end would find the early ones dropped, not lost.
CHECK_AFTER_S = 45.0
RESULTS = ROOT / "bench" / "RESULTS.md"
CONTACTS: dict[str, list[dict[str, str]]] = {
    "teli": [{"phone": "+15551234567"}, {"phone": "(555) 765-4321"}],
    "vambe": [{"id": f"22222222-2222-4222-8222-00000000000{i}"} for i in (1, 2)]
    + [{"phone": "+56 9 1234 5678"}],
    "aelyst": [{"id": str(i)} for i in (1, 2, 3, 4, 5)] + [{"email": "alex@example.com"}],
}
ASSIGNEES: dict[str, list[dict[str, str]]] = {
    "teli": [{"id": "user_xyz789"}, {"email": "jane@acme.com"}],
    "vambe": [{"id": "11111111-1111-4111-8111-000000000001"}, {"email": "bob@acme.com"}],
    "aelyst": [{"id": "17"}, {"email": "jane@acme.com"}],
}

pytestmark = pytest.mark.skipif(SOAK_S <= 0, reason="make soak sets HARDENING_SOAK_S")


@dataclass
class Soak:
    statuses: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    to_check: set[str] = field(default_factory=set)
    checked: int = 0
    lost: list[str] = field(default_factory=list)
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss, fds)
    sent: int = 0
    created: deque[tuple[float, str]] = field(default_factory=deque)  # (t, id) to look at
    finals_at_base: int = 0


def _request(rng: random.Random) -> tuple[str, str, dict[str, Any] | bytes, dict[str, str]]:
    """One request of the mix: mostly writes, some reads, some bad ones."""
    roll = rng.random()
    if roll < 0.05:
        return "GET", "/v1/tenants", b"", auth()
    if roll < 0.10:
        bad = rng.choice([{"tenant": "t-aelyst", "contact": {"phone": "call me"},
                           "assignee": {"id": "17"}}, {"tenant": "nope", "contact": {"id": "1"},
                                                      "assignee": {"id": "17"}}])
        return "POST", "/v1/assign", bad, auth()
    if roll < 0.12:
        return "POST", "/v1/assign", b"{" * 20_000, {**auth(), "Content-Type": "application/json"}
    ptype = rng.choice(PROVIDERS)
    body: dict[str, Any] = {"tenant": TENANT[ptype], "contact": rng.choice(CONTACTS[ptype])}
    headers = auth()
    if roll < 0.2:
        headers["Prefer"] = "respond-async"
    if ptype != "vambe" and roll > 0.85:
        return "POST", "/v1/unassign", body, headers
    body["assignee"] = rng.choice(ASSIGNEES[ptype])
    return "POST", "/v1/assign", body, headers


async def _traffic(session: aiohttp.ClientSession, url: str, soak: Soak, until: float) -> None:
    rng = random.Random(1)
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(CONCURRENCY)
    tasks: set[asyncio.Task[None]] = set()

    async def one(method: str, path: str, body: dict[str, Any] | bytes,
                  headers: dict[str, str]) -> None:
        async with sem:
            kw: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
            async with session.request(method, url + path, headers=headers, **kw) as r:
                answer = await r.json(content_type=None)
        soak.statuses[f"{r.status} {answer.get('code', 'ok')}"] += 1
        op_id = answer.get("operation_id") if r.status in (200, 202) else None
        if op_id and (r.status == 202 or soak.sent % 10 == 0):
            soak.to_check.add(op_id)
            soak.created.append((loop.time(), op_id))

    nxt = loop.time()
    while loop.time() < until:
        soak.sent += 1
        task = asyncio.create_task(one(*_request(rng)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        nxt += 1 / RATE
        await asyncio.sleep(max(0.0, nxt - loop.time()))
    await asyncio.gather(*tasks)


async def _faults(boxes: dict[str, tuple[str, FaultProxy]], session: aiohttp.ClientSession,
                  soak: Soak, until: float) -> None:
    rng = random.Random(2)
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        ptype = rng.choice(PROVIDERS)
        fault: Fault = rng.choice(FAULTS[1:])
        root, proxy = boxes[ptype]
        if fault.sandbox is not None:
            async with session.post(root + "/_sandbox/faults",
                                    json={**fault.sandbox, "count": fault.count}) as r:
                assert r.status == 201
        if fault.net is not None:
            proxy.queue(fault.net, fault.count)
        soak.faults[fault.name] += fault.count
        await asyncio.sleep(FAULT_EVERY_S)
        proxy.clear()
        async with session.delete(root + "/_sandbox/faults"):
            pass


async def _sample(pid: int, soak: Soak, until: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        soak.samples.append((loop.time(), rss_kib(pid), open_files(pid)))
        await asyncio.sleep(SAMPLE_EVERY_S)


async def _checker(session: aiohttp.ClientSession, url: str, soak: Soak, until: float) -> None:
    """Looks at each operation to check once it is CHECK_AFTER_S old; what is not final
    then stays in ``to_check`` for :func:`_check`."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        while soak.created and soak.created[0][0] <= loop.time() - CHECK_AFTER_S:
            op_id = soak.created.popleft()[1]
            async with session.get(f"{url}/v1/operations/{op_id}", headers=auth()) as r:
                status = (await r.json())["status"] if r.status == 200 else "missing"
            if status in FINAL and op_id in soak.to_check:
                soak.to_check.discard(op_id)
                soak.checked += 1
        await asyncio.sleep(1)


async def _finals(url: str) -> int:
    """Operations the gateway has recorded final (its metrics)."""
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("gateway_operations_total{")
                   and 'status="queued"' not in line))


async def _check(session: aiohttp.ClientSession, url: str, soak: Soak, patience_s: float) -> None:
    """Every operation to check must be final within ``patience_s`` of the last look."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    pending = set(soak.to_check)
    while pending and loop.time() < deadline:
        for op_id in sorted(pending):
            async with session.get(f"{url}/v1/operations/{op_id}", headers=auth()) as r:
                status = (await r.json())["status"] if r.status == 200 else "missing"
            if status in FINAL:
                pending.discard(op_id)
                soak.checked += 1
        if pending:
            await asyncio.sleep(1)
    soak.lost = sorted(pending)


@pytest.fixture
async def soak_sandboxes() -> AsyncIterator[dict[str, tuple[str, FaultProxy]]]:
    runners, out = [], {}
    for ptype in PROVIDERS:
        runner = web.AppRunner(sandboxes()[ptype](api_key=PROVIDER_KEYS[ptype]),
                               access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        proxy = FaultProxy("127.0.0.1", port)
        await proxy.start()
        runners.append(runner)
        out[ptype] = (f"http://127.0.0.1:{port}", proxy)
    async with aiohttp.ClientSession() as s, s.post(
            out["aelyst"][0] + "/_sandbox/ratelimit", json={"enabled": False}) as r:
        assert r.status == 200
    yield out
    for _, proxy in out.values():
        await proxy.close()
    for runner in runners:
        await runner.cleanup()


@pytest.mark.timeout(int(SOAK_S) + 900)
async def test_soak(soak_sandboxes: dict[str, tuple[str, FaultProxy]], tmp_path: Path) -> None:
    roots = {p: sandbox_base_url(p, f"http://127.0.0.1:{px.port}")
             for p, (_, px) in soak_sandboxes.items()}
    cfg = config_dict(roots)
    for p in cfg["providers"].values():
        p.update(timeout_s=0.4, retry={"deadline_s": 1.2, "max_attempts": 4,
                                       "backoff_base_s": 0.02, "backoff_max_s": 0.1,
                                       "queued_backoff_s": 0.5, "give_up_after_s": 30})
    gw = GatewayProcess(cfg, tmp_path)
    await gw.start()
    soak = Soak()
    started = time.time()
    # The baseline is taken once the in-process store is full (MEMORY_FINALS final records,
    # ~2.7 KB each, by design): memory that levels off at a bound is not a leak, and
    # before the bound it grows ~2 MiB a minute. A soak too short to fill it by half
    # time is not judged on memory (see _verdict).
    warm_s = min(SOAK_S / 2, max(60.0, 1.1 * MEMORY_FINALS / (RATE * OPS_SHARE)))
    try:
        assert gw.proc is not None
        pid = gw.proc.pid
        loop = asyncio.get_running_loop()
        await _phase(gw.url, soak_sandboxes, soak, pid, loop.time() + warm_s)
        before = await _idle(pid)
        soak.finals_at_base = await _finals(gw.url)
        await _phase(gw.url, soak_sandboxes, soak, pid, loop.time() + SOAK_S - warm_s)
        after = await _idle(pid)
        async with aiohttp.ClientSession() as session:
            await _check(session, gw.url, soak, patience_s=90)
    finally:
        await gw.stop()
    verdict = _verdict(soak, before, after)
    _write_results(soak, verdict, started)
    for key, n in soak.statuses.items():
        count("soak answers", key, n)
    count("soak", "requests", soak.sent)
    count("soak", "faults injected", sum(soak.faults.values()))
    count("soak", "operations checked", soak.checked)
    count("soak", "lost operations", len(soak.lost))
    assert not any(k.startswith("500") for k in soak.statuses), soak.statuses
    assert soak.lost == [], soak.lost[:20]
    assert verdict["rss_ok"] and verdict["fds_ok"], verdict


async def _phase(url: str, boxes: dict[str, tuple[str, FaultProxy]], soak: Soak, pid: int,
                 until: float) -> None:
    # A session per phase, closed at its end: its keep-alive connections are
    # the load's, not the gateway's, and must not count in the idle samples.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(_traffic(session, url, soak, until),
                             _faults(boxes, session, soak, until), _sample(pid, soak, until),
                             _checker(session, url, soak, until))


async def _idle(pid: int) -> tuple[int, int]:
    """(RSS KiB, open files) once idle: the load's connections are closed and the
    gateway's pooled ones to providers (aiohttp: 15 s keep-alive) have expired or
    settled, so what is left open is what stays open."""
    await asyncio.sleep(IDLE_S)
    return rss_kib(pid), open_files(pid)


def _verdict(soak: Soak, before: tuple[int, int], after: tuple[int, int]) -> dict[str, Any]:
    """Flat: idle after the run within 10% of idle after the warm-up, once the store is
    full (before that, RSS is not judged: it grows by design)."""
    (rss0, fds0), (rss1, fds1) = before, after
    judged = soak.finals_at_base >= MEMORY_FINALS
    return {"rss_base_kib": rss0, "rss_end_kib": rss1,
            "rss_ok": rss1 <= rss0 * 1.10 or not judged, "rss_judged": judged,
            "finals_at_base": soak.finals_at_base,
            "fds_base": fds0, "fds_end": fds1, "fds_ok": fds1 <= fds0 * 1.10 + 1,
            "rss_max_kib": max(s[1] for s in soak.samples),
            "fds_max": max(s[2] for s in soak.samples), "samples": len(soak.samples)}


def _write_results(soak: Soak, verdict: dict[str, Any], started: float) -> None:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(soak.statuses.items()))
    faults = ", ".join(f"{k}: {v}" for k, v in sorted(soak.faults.items()))
    t0 = soak.samples[0][0] if soak.samples else 0.0
    minute: dict[int, int] = {}
    for t, kib, _ in soak.samples:
        minute.setdefault(int((t - t0) // 60), kib)
    series = ", ".join(f"{kib / 1024:.0f}" for _, kib in sorted(minute.items()))
    rss = (f"{verdict['rss_base_kib']} / {verdict['rss_end_kib']} "
           f"({'flat' if verdict['rss_ok'] else 'GREW'})")
    if not verdict["rss_judged"]:
        rss += (f" (not judged: {verdict['finals_at_base']} of {MEMORY_FINALS} final "
                "records kept at the baseline)")
    fds = (f"{verdict['fds_base']} / {verdict['fds_end']} "
           f"({'flat' if verdict['fds_ok'] else 'GREW'})")
    section = f"""<!-- soak:start -->
## Soak (`make soak`)

Run {when}, {SOAK_S / 60:g} minutes, {RATE:g} requests/s open loop, a fault every
{FAULT_EVERY_S:g} s (tests/hardening/test_soak.py).

| measure | value |
| --- | --- |
| requests | {soak.sent} |
| faults injected | {sum(soak.faults.values())} |
| operations checked final | {soak.checked} |
| lost operations | {len(soak.lost)} |
| RSS idle after warm-up / idle at end (KiB) | {rss} |
| open files idle after warm-up / idle at end | {fds} |
| peak RSS (KiB) / peak open files under load | {verdict['rss_max_kib']} / {verdict['fds_max']} |
| 500 answers | {sum(v for k, v in soak.statuses.items() if k.startswith('500'))} |

Answers: {answers}.

Resident memory under load, MiB, one sample a minute: {series}.
The warm-up (the baseline) lasts until the in-process store holds its bound of
{MEMORY_FINALS} final operations (about 2.8 KB each, kept for
`GET /v1/operations/{{id}}`): memory grows by design until then, and must be
flat after ({verdict['finals_at_base']} final records at the baseline).

Faults: {faults}.
<!-- soak:end -->
"""
    RESULTS.parent.mkdir(exist_ok=True)
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark and soak results\n"
    if "<!-- soak:start -->" in text:
        head, _, rest = text.partition("<!-- soak:start -->")
        text = head + section + rest.partition("<!-- soak:end -->\n")[2]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
