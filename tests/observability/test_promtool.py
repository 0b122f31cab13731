"""The metrics as scraped, the rules and the dashboard, checked by Prometheus's own tools.

`promtool check metrics` lints a real `/metrics` scrape taken after every
route, every provider and several error codes were driven through a gateway
on loopback; `promtool check rules` and `promtool test rules` check the rule
file and its unit tests (deploy/prometheus/alerts_test.yml).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from gateway.app import create_app
from gateway.config import build_config
from gateway.http import UNMATCHED
from tests.conftest import Sandbox
from tests.observability.support import (
    RULE_TESTS,
    RULES,
    RUNBOOK,
    alerts,
    all_expressions,
    dashboard,
    dashboard_targets,
    drive_everything,
    families,
    label_values,
    metric_names,
    obs_config,
    promtool,
    route_requests,
)

#: The metric names DESIGN.md fixes as a contract.
DESIGN_METRICS = {
    "gateway_requests_total", "gateway_request_duration_seconds",
    "gateway_upstream_requests_total", "gateway_upstream_duration_seconds",
    "gateway_retries_total", "gateway_ratelimit_wait_seconds",
    "gateway_ratelimit_rejected_total", "gateway_ratelimit_degraded", "gateway_operations",
    "gateway_operations_total", "gateway_translation_cache_total",
    "gateway_config_reloads_total", "gateway_build_info",
}


@pytest.fixture
async def driven(aiohttp_client: Callable[..., Any],
                 sandboxes_up: dict[str, Sandbox]) -> tuple[str, set[str], Any]:
    """A real scrape after every route, provider and several error codes: (text, codes, app)."""
    app = create_app(build_config(obs_config(sandboxes_up), env={}))
    gw = await aiohttp_client(app)
    codes = await drive_everything(gw, sandboxes_up, route_requests(app))
    resp = await gw.get("/metrics")
    assert resp.status == 200
    return await resp.text(), codes, app


async def test_promtool_check_metrics_passes_on_a_real_scrape(
        driven: tuple[str, set[str], Any]) -> None:
    text, codes, app = driven
    assert {"ok", "unauthorized", "forbidden", "not_found", "contact_not_found",
            "upstream_unavailable"} <= codes
    result = promtool("check", "metrics", stdin=text.encode())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout  # no lint findings at all
    labels = label_values(text)
    routes = {v for k, v in labels if k == "route"}
    assert {path for _, path in _templates(app)} <= routes
    assert {v for k, v in labels if k == "provider"} >= {"teli-sb", "vambe-sb", "aelyst-sb"}


def _templates(app: Any) -> list[tuple[str, str]]:
    return [(r.method, res.canonical) for res in app.router.resources() for r in res
            if res.name != UNMATCHED]


async def test_every_design_metric_is_exported(driven: tuple[str, set[str], Any]) -> None:
    text = driven[0]
    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert declared >= DESIGN_METRICS
    assert 'gateway_build_info{version="' in text


async def test_the_dashboard_and_rules_read_only_exported_metrics(
        driven: tuple[str, set[str], Any]) -> None:
    exported = families(driven[0]) | set(re.findall(r"^# TYPE (\S+) ", driven[0], re.M))
    for where, expr in all_expressions():
        unknown = metric_names(expr) - exported
        assert not unknown, f"{where} reads metrics the gateway does not export: {unknown}"


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_fire_each_alert_and_keep_it_quiet() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for c in t.get("alert_rule_test", [])]
    for alert in alerts():
        name = alert["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no test makes it fire"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no test keeps it quiet"


def test_every_alert_has_summary_description_and_a_runbook_section() -> None:
    anchors = {re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
               for h in re.findall(r"^## (.+)$", RUNBOOK.read_text(), re.M)}
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names))
    for alert in alerts():
        notes = alert["annotations"]
        assert notes["summary"] and notes["description"], alert["alert"]
        page, _, anchor = notes["runbook"].partition("#")
        assert page == "deploy/RUNBOOK.md"
        assert anchor in anchors, f"{alert['alert']}: no RUNBOOK.md section #{anchor}"
        assert alert["labels"]["severity"] in {"critical", "warning"}


def test_the_dashboard_covers_what_on_call_needs() -> None:
    exprs = " ".join(e for _, e in dashboard_targets())
    for metric in ("gateway_requests_total", "gateway_upstream_duration_seconds_bucket",
                   "gateway_upstream_requests_total", "gateway_retries_total",
                   "gateway_ratelimit_wait_seconds", "gateway_ratelimit_rejected_total",
                   "gateway_operations", "gateway_ratelimit_degraded",
                   "gateway_config_reloads_total"):
        assert metric in exprs, f"no panel reads {metric}"
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "provider"}
