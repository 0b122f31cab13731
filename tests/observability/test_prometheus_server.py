"""A real Prometheus scrapes a running gateway; every dashboard and rule expression runs.

The gateway is a `gateway serve` subprocess on a free loopback port, in front
of the sandboxes (in this process, on loopback). Prometheus (Debian's package,
which `make test` installs) scrapes it every second with the rule file loaded.
Once the target is up with a few samples, every expression of the dashboard
and of the rule file is evaluated through the HTTP API: each must succeed,
every rule must evaluate healthy, and the request-rate panel must have data.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.app import create_app
from gateway.config import build_config
from tests.conftest import Sandbox, auth
from tests.contract.cases import CASES
from tests.observability.support import (
    REQUEST_RATE_PANEL,
    RULES,
    all_expressions,
    dashboard_targets,
    drive_everything,
    obs_config,
    route_requests,
    tool,
)
from tests.observability.support import rules as rule_list
from tests.procs import GatewayProcess, free_port

pytestmark = pytest.mark.timeout(90)
WAIT_S = 30


class Prometheus:
    """``prometheus`` on a free loopback port, scraping one target every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.log = workdir / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "gateway",
                                "static_configs": [{"targets": [target]}]}],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                tool("prometheus"), f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
                stdout=out, stderr=out)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


async def _get(s: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with s.get(url, params=params) as r:
        return await r.json(content_type=None)


async def _query(s: aiohttp.ClientSession, prom: Prometheus, expr: str) -> Any:
    return await _get(s, f"{prom.url}/api/v1/query", query=expr)


async def _traffic(gw_url: str) -> None:
    """Steady requests through every provider, plus refusals, until cancelled."""
    async with aiohttp.ClientSession(base_url=gw_url) as s:
        while True:
            for case in CASES.values():
                body = {"tenant": case.tenant, "contact": case.direct_contact,
                        "assignee": {"id": case.assignee_id}}
                async with s.post("/v1/assign", json=body, headers=auth()) as r:
                    await r.read()
            async with s.post("/v1/assign", json={}) as r:
                await r.read()
            await asyncio.sleep(0.1)


@pytest.fixture
async def stack(tmp_path: Path, sandboxes_up: dict[str, Sandbox]
                ) -> AsyncIterator[tuple[Prometheus, str]]:
    raw = obs_config(sandboxes_up)
    gw = GatewayProcess(raw, tmp_path)
    prom = Prometheus(tmp_path, f"127.0.0.1:{gw.port}")
    traffic: asyncio.Task[None] | None = None
    try:
        await gw.start()
        async with aiohttp.ClientSession(base_url=gw.url) as s:
            routes = route_requests(create_app(build_config(raw, env={})))
            await drive_everything(s, sandboxes_up, routes)
        traffic = asyncio.create_task(_traffic(gw.url))
        await prom.start()
        yield prom, gw.url
    finally:
        if traffic is not None:
            traffic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await traffic
        await prom.stop()
        await gw.stop()


async def _wait_for_samples(s: aiohttp.ClientSession, prom: Prometheus) -> None:
    """Until the target is up with at least 3 scrapes and every rule evaluated once."""
    async with asyncio.timeout(WAIT_S):
        while True:
            await asyncio.sleep(0.5)
            # Until it is ready, Prometheus refuses connections or answers in plain text.
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                got = await _query(s, prom, 'min_over_time(up{job="gateway"}[1m]) '
                                            'and count_over_time(up{job="gateway"}[1m]) >= 3')
                rules = await _get(s, f"{prom.url}/api/v1/rules")
                evaluated = all(r.get("lastEvaluation", "0001").startswith("20")
                                for g in rules["data"]["groups"] for r in g["rules"])
                if got["data"]["result"] and got["data"]["result"][0]["value"][1] == "1" \
                        and evaluated:
                    return


async def test_prometheus_evaluates_every_dashboard_and_rule_expression(
        stack: tuple[Prometheus, str]) -> None:
    prom, _ = stack
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        try:
            await _wait_for_samples(s, prom)
        except TimeoutError:
            pytest.fail(f"no healthy scrapes within {WAIT_S} s; prometheus said:\n"
                        + prom.output())
        for where, expr in all_expressions():
            answer = await _query(s, prom, expr)
            assert answer["status"] == "success", (where, expr, answer)
            print(f"{where}: {len(answer['data']['result'])} series")
        [rate] = [e for title, e in dashboard_targets() if title == REQUEST_RATE_PANEL]
        result = (await _query(s, prom, rate))["data"]["result"]
        assert result, f"no request rate from {rate}"
        assert any(r["metric"].get("code") == "ok" and float(r["value"][1]) > 0 for r in result)
        rules = await _get(s, f"{prom.url}/api/v1/rules")
        for group in rules["data"]["groups"]:
            for rule in group["rules"]:
                assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        loaded = [r["name"] for g in rules["data"]["groups"] for r in g["rules"]]
        assert sorted(loaded) == sorted(r.get("alert") or r["record"] for r in rule_list())
