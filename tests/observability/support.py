"""What the observability tests share: the deploy files' expressions, promtool, traffic.

The dashboard and rule files are read as deployed; every PromQL expression in
them is extracted here so that the Prometheus test and the metric-name test
check the same list. :func:`drive_everything` sends a request to every route
the app has, through every provider, and into several error codes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from gateway.auth import hash_key
from gateway.http import UNMATCHED
from tests.conftest import OTHER_CLIENT_KEY, Sandbox, auth, gateway_config_dict
from tests.contract.cases import CASES

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "gateway.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
RUNBOOK = ROOT / "deploy" / "RUNBOOK.md"

#: Grafana's variables, as the test Prometheus must see them.
DASHBOARD_VARS = {"$__rate_interval": "1m", "$provider": ".*"}
REQUEST_RATE_PANEL = "Request rate by code"


def tool(name: str) -> str:
    """A Prometheus binary: `make test` installs them, so a missing one is a failure."""
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed: run `make test` (it installs Debian's "
                    "prometheus package), or apt-get install prometheus")
    return exe


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel, variables substituted."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in DASHBOARD_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']!r}: {expr}"
            out.append((panel["title"], expr))
    return out


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for g in groups for rule in g["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def all_expressions() -> list[tuple[str, str]]:
    """(where, expression): every dashboard query and every rule."""
    return dashboard_targets() + [(r.get("alert") or r["record"], r["expr"]) for r in rules()]


def metric_names(expr: str) -> set[str]:
    """The gateway metric names an expression reads (``gateway_...``, not recorded ``gateway:``)."""
    return set(re.findall(r"\b(gateway_[a-z_]+)\b", expr))


def families(scrape: str) -> set[str]:
    """Every sample name in a text-format scrape (histograms give _bucket/_count/_sum)."""
    return {line.split("{")[0].split(" ")[0] for line in scrape.splitlines()
            if line and not line.startswith("#")}


def series(scrape: str) -> list[str]:
    return [line.rsplit(" ", 1)[0] for line in scrape.splitlines()
            if line and not line.startswith("#")]


def label_values(scrape: str) -> set[tuple[str, str]]:
    return set(re.findall(r'(\w+)="([^"]*)"', "\n".join(series(scrape))))


def obs_config(sbx: dict[str, Sandbox], **overrides: Any) -> dict[str, Any]:
    """The shared test configuration with one attempt per request and limits out of the way.

    One attempt keeps each injected fault a single exchange, whatever the retry
    policy; generous limits keep the gateway's own 429s out of tests that are
    not about them.
    """
    raw = gateway_config_dict(sbx, **overrides)
    for p in raw["providers"].values():
        p["timeout_s"] = 0.5
        p["retry"] = {"max_attempts": 1, "deadline_s": 1}
        p["rate_limit"] = {"rate": 100_000, "burst": 100_000}
    raw["clients"].append({"name": "ops", "key_sha256": hash_key("obs-admin-key"),
                           "tenants": ["t-teli"], "admin": True})
    return raw


def route_requests(app: web.Application) -> list[tuple[str, str]]:
    """(method, path) for every route the app has, placeholders filled with a harmless id."""
    out = []
    for resource in app.router.resources():
        if resource.name == UNMATCHED:  # what no route takes: no route of its own
            continue
        path = re.sub(r"\{[^}]+\}", "op_0000000000", resource.canonical)
        for route in resource:
            if route.method != "HEAD":
                out.append((route.method, path))
    return out


async def drive_everything(client: Any, sbx: dict[str, Sandbox],
                           routes: list[tuple[str, str]]) -> set[str]:
    """Every route, every provider, several error codes; returns the codes seen.

    ``client`` is an aiohttp TestClient or a ClientSession with a ``base_url``.
    """
    codes: set[str] = set()

    async def send(method: str, path: str, **kw: Any) -> None:
        kw.setdefault("headers", auth())
        async with client.request(method, path, **kw) as r:
            body = await r.read()
            codes.add(json.loads(body).get("code", "ok") if r.status >= 400 else "ok")

    for method, path in routes:
        await send(method, path, json={})
    for case in CASES.values():
        await send("POST", "/v1/assign", json={
            "tenant": case.tenant, "contact": case.contact,
            "assignee": {"email": case.assignee_email}})
        await send("POST", "/v1/unassign", json={"tenant": case.tenant, "contact": case.contact})
        await send("POST", "/v1/assign", json={
            "tenant": case.tenant, "contact": case.missing_contact,
            "assignee": {"id": case.assignee_id}})
        await sbx[case.type].fault("status", status=503, count=1)
        await send("POST", "/v1/assign", json={
            "tenant": case.tenant, "contact": case.direct_contact,
            "assignee": {"id": case.assignee_id}})
    await send("POST", "/v1/assign", json={}, headers={})
    await send("POST", "/v1/assign", json={"tenant": "t-aelyst", "contact": {"id": "3"},
                                           "assignee": {"id": "17"}},
               headers=auth(OTHER_CLIENT_KEY))
    await send("GET", "/no/such/route")
    return codes
