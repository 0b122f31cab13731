"""The metrics module on its own: closed label sets, cached children, an injected registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.metrics import Metrics, upstream_status

ROOT = Path(__file__).resolve().parents[2]


def _samples(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for fam in m.registry.collect() for s in fam.samples if s.name == name}


def test_values_outside_their_sets_fold_into_fixed_labels() -> None:
    m = Metrics()
    m.request("/v1/contacts/+15551234567", "ok", 0.001)
    m.request("/v1/assign", "jane@acme.com", 0.001)
    m.retry("teli-main", "because")
    requests = _samples(m, "gateway_requests_total")
    assert requests == {(("code", "ok"), ("route", "other")): 1.0,
                        (("code", "internal_error"), ("route", "/v1/assign")): 1.0}
    assert _samples(m, "gateway_retries_total") == {
        (("provider", "teli-main"), ("reason", "other")): 1.0}


def test_routes_come_from_the_router() -> None:
    m = Metrics()
    m.request("/v2/new", "ok", 0.001)
    m.add_routes(["/v2/new"])
    m.request("/v2/new", "ok", 0.001)
    assert {dict(k)["route"] for k in _samples(m, "gateway_requests_total")} == {"other",
                                                                                  "/v2/new"}


def test_upstream_statuses_are_exact_when_listed_else_their_class() -> None:
    assert [upstream_status(s) for s in ("200", "401", "449", "503", "418", "599", "2xx",
                                         "timeout", "999", "abc")] == [
        "200", "401", "449", "503", "4xx", "5xx", "2xx", "timeout", "error", "error"]


def test_children_are_resolved_once() -> None:
    m = Metrics()
    assert m.child(m.upstream, "p", "assign", "200") is m.child(m.upstream, "p", "assign", "200")
    m.request("/v1/assign", "ok", 0.001)
    pair = m._requests[("/v1/assign", "ok")]
    m.request("/v1/assign", "ok", 0.002)
    assert m._requests[("/v1/assign", "ok")] is pair
    for i in range(50):
        m.request(f"/junk/{i}", f"code-{i}", 0.001)
    # Keys outside the closed sets are never cached: the cache cannot grow with them.
    assert set(m._requests) == {("/v1/assign", "ok")}


def test_a_cache_kind_starts_with_both_results() -> None:
    m = Metrics()
    m.cache("vambe.contact_phone", "miss")
    assert _samples(m, "gateway_translation_cache_total") == {
        (("kind", "vambe.contact_phone"), ("result", "hit")): 0.0,
        (("kind", "vambe.contact_phone"), ("result", "miss")): 1.0}


def test_each_instance_uses_its_own_injected_registry() -> None:
    a, b = Metrics(CollectorRegistry(auto_describe=False)), Metrics()
    a.request("/healthz", "ok", 0.001)
    assert b"gateway_requests_total{" not in b.render()
    assert b'gateway_requests_total{code="ok",route="/healthz"} 1.0' in a.render()
    assert b'gateway_build_info{version="' in b.render()
    assert b'gateway_operations{status="queued"} 0.0' in b.render()


def test_adapters_import_nothing_from_the_metrics() -> None:
    for path in (ROOT / "providers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("gateway.metrics", "prometheus_client")), path


@pytest.mark.parametrize("seconds", [0.0, 0.0001, 0.00010001, 0.003, 1, 2.5, 29.9, 30, 31, 1e9])
def test_the_direct_recording_writes_what_the_library_would(seconds: float) -> None:
    """Metrics.request, .exchange and .ratelimit_waited write LoopValues directly (Pair);
    the /metrics text must be the one prometheus_client's own inc() and observe() give,
    on every bucket edge (a bound itself counts in its bucket) and past the last one."""
    fast, slow = Metrics(), Metrics()
    for _ in range(3):
        fast.request("/v1/assign", "ok", seconds)
        fast.exchange("aelyst-main", "assign", "200", seconds)
        fast.ratelimit_waited("aelyst-main", seconds)
        slow.child(slow.requests, "/v1/assign", "ok").inc()
        slow.child(slow.request_duration, "/v1/assign").observe(seconds)
        slow.child(slow.upstream, "aelyst-main", "assign", "200").inc()
        slow.child(slow.upstream_duration, "aelyst-main", "assign").observe(seconds)
        slow.child(slow.ratelimit_wait, "aelyst-main").observe(seconds)
    assert fast._requests[("/v1/assign", "ok")].fast  # the direct path ran
    assert fast.render() == slow.render()


def test_values_the_direct_path_cannot_take_go_through_the_library() -> None:
    m = Metrics()
    m.request("/v1/assign", "ok", float("nan"))  # prometheus_client counts no bucket
    text = m.render().decode()
    assert 'gateway_requests_total{code="ok",route="/v1/assign"} 1.0' in text
    assert 'gateway_request_duration_seconds_count{route="/v1/assign"} 0.0' in text
