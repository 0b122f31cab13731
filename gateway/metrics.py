"""Every metric the gateway exports, built against an injected registry.

Label values come only from closed sets: route templates, canonical error
codes, configured provider names, upstream operation names, status classes and
retry reasons. Children are resolved once and kept, so the hot path does a dict
lookup and an increment. Adapters never import this module: the gateway
records around them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from gateway.errors import ERROR_CODES

VERSION = "0.1.0"

# Sub-millisecond gateway work up to multi-second upstream calls.
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_UPSTREAM = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
_WAIT = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)

ROUTES = frozenset({
    "/v1/assign", "/v1/unassign", "/v1/tenants", "/v1/operations/{id}", "/healthz",
    "/readyz", "/metrics", "/openapi.json", "/admin/reload", "other",
})
RESULT_CODES = ERROR_CODES | {"ok", "queued"}
STATUS_CLASSES = frozenset({"1xx", "2xx", "3xx", "4xx", "5xx", "timeout", "error"})


class StatusGauge:
    """``gateway_operations{status}``, a gauge beside the counter ``gateway_operations_total``.

    prometheus_client reserves a counter's base name, so a stock Gauge of that
    name cannot be registered; this collector has no ``describe`` and the
    registry (``auto_describe=False``) does not check it. The two families
    render as distinct metric names in the text format.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self.name, self.documentation = name, documentation
        self.values: dict[str, float] = {}

    def set(self, status: str, value: float) -> None:
        self.values[status] = value

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=["status"])
        for status, value in sorted(self.values.items()):
            family.add_metric([status], value)
        yield family


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # The *_created series double the series count for no dashboard's benefit.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter("gateway_requests_total", "Requests answered, by route and code",
                                ["route", "code"], registry=r)
        self.request_duration = Histogram(
            "gateway_request_duration_seconds", "Time to answer a request", ["route"],
            buckets=_FAST, registry=r)
        self.upstream = Counter(
            "gateway_upstream_requests_total", "Exchanges with providers",
            ["provider", "operation", "status"], registry=r)
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds", "Time of one exchange with a provider",
            ["provider", "operation"], buckets=_UPSTREAM, registry=r)
        self.retries = Counter("gateway_retries_total", "Upstream retries, by reason",
                               ["provider", "reason"], registry=r)
        self.ratelimit_wait = Histogram(
            "gateway_ratelimit_wait_seconds", "Time waited for a rate-limit token",
            ["provider"], buckets=_WAIT, registry=r)
        self.ratelimit_rejected = Counter(
            "gateway_ratelimit_rejected_total", "Requests refused by the gateway's limits",
            ["scope"], registry=r)
        self.ratelimit_degraded = Gauge(
            "gateway_ratelimit_degraded", "1 while the shared limiter's Redis is unreachable",
            registry=r)
        self.operations = StatusGauge("gateway_operations", "Operations by current status")
        r.register(self.operations)
        self.operations_total = Counter("gateway_operations_total",
                                        "Operations that reached a status", ["status"], registry=r)
        self.translation_cache = Counter(
            "gateway_translation_cache_total", "Translation cache look-ups",
            ["kind", "result"], registry=r)
        self.reloads = Counter("gateway_config_reloads_total", "Configuration reloads",
                               ["result"], registry=r)
        self.build_info = Gauge("gateway_build_info", "The running version", ["version"],
                                registry=r)
        self.build_info.labels(VERSION).set(1)
        self._children: dict[tuple[object, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """The labelled child, resolved once and then reused."""
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def request(self, route: str, code: str, seconds: float) -> None:
        route = route if route in ROUTES else "other"
        code = code if code in RESULT_CODES else "internal_error"
        self.child(self.requests, route, code).inc()
        self.child(self.request_duration, route).observe(seconds)

    def exchange(self, provider: str, operation: str, status: str, seconds: float) -> None:
        status = status if status in STATUS_CLASSES else "error"
        self.child(self.upstream, provider, operation, status).inc()
        self.child(self.upstream_duration, provider, operation).observe(seconds)

    def cache(self, kind: str, result: str) -> None:
        self.child(self.translation_cache, kind, result).inc()

    def retry(self, provider: str, reason: str) -> None:
        self.child(self.retries, provider, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
