"""Every metric the gateway exports, built against an injected registry.

Label values come only from closed sets: route templates (the app's router;
anything unmatched is ``other``), canonical codes, configured provider names,
upstream operation names, listed upstream statuses (else their class), retry
reasons and cache results. A value outside its set is folded into a fixed one
rather than becoming a new series. Children are resolved once and kept, so the
hot path does a dict look-up and an increment. Adapters never import this
module: the gateway records around them. The dashboard and alerts built on
these names are in ``deploy/grafana`` and ``deploy/prometheus``.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily

from gateway.errors import ERROR_CODES

VERSION = "0.1.0"

# A refusal the gateway answers itself takes ~100 us; a request that waits on
# a provider's retries takes seconds. One bucket set must resolve both ends.
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
         1, 2.5, 5, 10, 30)
# One upstream attempt: loopback sandboxes answer in ~1 ms, providers in
# tens of ms to seconds, and timeout_s caps an attempt (default 5, at most 300).
_UPSTREAM = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
_WAIT = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)

ROUTES = frozenset({
    "/v1/assign", "/v1/unassign", "/v1/tenants", "/v1/operations/{id}", "/healthz",
    "/readyz", "/metrics", "/openapi.json", "/admin/reload", "other",
})
#: ``cancelled``: the handler was cancelled (the server shutting down) before it answered;
#: ``client_closed``: the client closed its connection before the answer.
RESULT_CODES = ERROR_CODES | {"ok", "queued", "cancelled", "client_closed"}
STATUS_CLASSES = frozenset({"1xx", "2xx", "3xx", "4xx", "5xx", "timeout", "error"})
#: Upstream statuses kept exact, so a dashboard tells a provider's 401 (our key) from
#: its 404 (a contact) or 429 (its limit); any other status is reduced to its class.
UPSTREAM_STATUSES = frozenset({
    "200", "201", "202", "204", "400", "401", "403", "404", "405", "409", "410", "413",
    "415", "422", "429", "449", "500", "501", "502", "503", "504",
})
RETRY_REASONS = frozenset({"449", "429", "5xx", "timeout", "connect"})
CACHE_RESULTS = ("hit", "miss")
OPERATION_STATUSES = ("queued", "running", "succeeded", "failed", "superseded")
#: The most (provider, operation, status) triples ``Metrics.exchange`` keeps resolved.
_EXCHANGE_PAIRS = 1024


class LoopValue:
    """A metric value for a process whose metrics live on one thread (the event loop).

    prometheus_client's default value (``MutexValue``) takes a lock on every
    increment, for threaded servers; a request here makes about ten of them.
    Every recorder and the ``/metrics`` scrape run on the event loop's thread,
    so a plain float is exact. Installed by :func:`use_loop_values` when the
    library uses its default (not in its multiprocess mode).
    """

    __slots__ = ("_exemplar", "_value")
    _multiprocess = False

    def __init__(self, typ: str, metric_name: str, name: str, labelnames: Any,
                 labelvalues: Any, help_text: str, **kwargs: Any) -> None:
        self._value = 0.0
        self._exemplar: Any = None

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


def use_loop_values() -> None:
    if prometheus_values.ValueClass is prometheus_values.MutexValue:
        prometheus_values.ValueClass = LoopValue


class Pair:
    """A counter child and a histogram child recorded together (a request, an exchange),
    or a histogram child alone (``counter`` None).

    With :class:`LoopValue` values the hot path writes them directly: one bisect
    instead of the library's ~nine calls (``inc`` and ``observe`` each check the
    child, then increment through the value), the same arithmetic
    (``Histogram.observe`` counts ``amount`` in the first bucket whose bound is
    ``>=`` it). ``tests/observability/test_metrics.py`` holds the two to the same
    ``/metrics`` text. Children whose values are anything else (multiprocess mode,
    a library that changed its internals) go through the public methods.
    """

    __slots__ = ("bounds", "buckets", "count", "counter", "fast", "histogram", "sum")

    def __init__(self, counter: Any, histogram: Any) -> None:
        self.counter, self.histogram = counter, histogram
        value = None if counter is None else getattr(counter, "_value", None)
        total = getattr(histogram, "_sum", None)
        buckets = getattr(histogram, "_buckets", None)
        bounds = getattr(histogram, "_upper_bounds", None)
        self.count = value if isinstance(value, LoopValue) else None
        self.sum = total if isinstance(total, LoopValue) else None
        self.buckets: list[LoopValue] = buckets if isinstance(buckets, list) else []
        self.bounds: list[float] = bounds if isinstance(bounds, list) else []
        self.fast = ((counter is None or self.count is not None) and self.sum is not None
                     and len(self.buckets) == len(self.bounds) > 0
                     and self.bounds[-1] == math.inf
                     and all(isinstance(b, LoopValue) for b in self.buckets))

    def record(self, seconds: float) -> None:
        """One increment of the counter (if any) and one observation of ``seconds``."""
        total = self.sum
        if not self.fast or total is None or seconds != seconds:  # NaN: as the library
            if self.counter is not None:
                self.counter.inc()
            self.histogram.observe(seconds)
            return
        if self.count is not None:
            self.count._value += 1.0
        total._value += seconds
        self.buckets[bisect_left(self.bounds, seconds)]._value += 1.0


def upstream_status(status: str) -> str:
    """The label for an upstream status: exact when listed, else its class (``"418"`` -> 4xx)."""
    if status in UPSTREAM_STATUSES or status in STATUS_CLASSES:
        return status
    if len(status) == 3 and status.isdigit() and "1" <= status[0] <= "5":
        return status[0] + "xx"
    return "error"


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
    """The gateway's metric families; ``request``, ``exchange``, ``cache`` and ``retry``
    record with label guards, other recorders use ``child`` on the families directly."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # The *_created series double the series count for no dashboard's benefit.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        use_loop_values()
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
        for status in ("queued", "running"):
            # The statuses the executor reports, at 0 from the start: "the queue is
            # growing" then has a baseline, and the dashboard shows 0, not "no data".
            self.operations.set(status, 0)
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
        self._requests: dict[tuple[str, str], Pair] = {}
        self._exchanges: dict[tuple[str, str, str], Pair] = {}
        self._waits: dict[str, Pair] = {}  # configured provider names: a closed set
        self._op_values: dict[str, LoopValue] = {}
        self.routes: frozenset[str] = ROUTES

    def add_routes(self, routes: Iterable[str]) -> None:
        """Accept these route templates as labels (the app's router: a closed set)."""
        self.routes = self.routes | frozenset(routes)

    def child(self, metric: Any, *labels: str) -> Any:
        """The labelled child, resolved once and then reused."""
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def request(self, route: str, code: str, seconds: float) -> None:
        # The hot path: one dict look-up for both children once a pair was seen.
        pair = self._requests.get((route, code))
        if pair is None:
            pair = self._request_children(route, code)
        pair.record(seconds)

    def _request_children(self, route: str, code: str) -> Pair:
        label_route = route if route in self.routes else "other"
        label_code = code if code in RESULT_CODES else "internal_error"
        pair = Pair(self.child(self.requests, label_route, label_code),
                    self.child(self.request_duration, label_route))
        if route in self.routes and code in RESULT_CODES:
            # Only closed-set keys are cached, so the cache cannot grow with request data.
            self._requests[(route, code)] = pair
        return pair

    def exchange(self, provider: str, operation: str, status: str, seconds: float) -> None:
        # As ``request``: one look-up for both children once the triple was seen.
        pair = self._exchanges.get((provider, operation, status))
        if pair is None:
            pair = Pair(self.child(self.upstream, provider, operation, upstream_status(status)),
                        self.child(self.upstream_duration, provider, operation))
            if len(self._exchanges) >= _EXCHANGE_PAIRS:
                self._exchanges.clear()  # statuses are numbers: kept bounded all the same
            self._exchanges[(provider, operation, status)] = pair
        pair.record(seconds)

    def operation_reached(self, status: str) -> None:
        """``gateway_operations_total{status}`` (statuses: a closed set)."""
        value = self._op_values.get(status)
        if value is None:
            child = self.child(self.operations_total, status)
            found = getattr(child, "_value", None)
            if not isinstance(found, LoopValue):
                child.inc()
                return
            value = self._op_values[status] = found
        value._value += 1.0

    def ratelimit_waited(self, provider: str, seconds: float) -> None:
        pair = self._waits.get(provider)
        if pair is None:
            pair = self._waits[provider] = Pair(None, self.child(self.ratelimit_wait, provider))
        pair.record(seconds)

    def cache(self, kind: str, result: str) -> None:
        if (id(self.translation_cache), kind, result) not in self._children:
            # Both results start at 0 together, so a hit ratio exists from the first miss.
            for r in CACHE_RESULTS:
                self.child(self.translation_cache, kind, r)
        self.child(self.translation_cache, kind, result).inc()

    def retry(self, provider: str, reason: str) -> None:
        self.child(self.retries, provider, reason if reason in RETRY_REASONS else "other").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _NoopChild:
    """Stands in for a labelled child when recording is off."""

    def inc(self, amount: float = 1) -> None:
        return None

    def observe(self, amount: float) -> None:
        return None

    def set(self, value: float) -> None:
        return None


_NOOP_CHILD = _NoopChild()


class NullMetrics(Metrics):
    """``GATEWAY_METRICS=off``: the same families (``/metrics`` still answers), but the
    request path records nothing, so the cost of recording can be measured."""

    def child(self, metric: Any, *labels: str) -> Any:
        return _NOOP_CHILD

    def request(self, route: str, code: str, seconds: float) -> None:
        return None

    def exchange(self, provider: str, operation: str, status: str, seconds: float) -> None:
        return None

    def ratelimit_waited(self, provider: str, seconds: float) -> None:
        return None

    def operation_reached(self, status: str) -> None:
        return None

    def cache(self, kind: str, result: str) -> None:
        return None

    def retry(self, provider: str, reason: str) -> None:
        return None


#: ``GATEWAY_METRICS=off`` (also ``0``, ``false``, ``no``) turns recording off.
METRICS_ENV = "GATEWAY_METRICS"


def metrics_from_env(environ: Mapping[str, str] | None = None) -> Metrics:
    """The gateway's metrics, as ``GATEWAY_METRICS`` says; read once, at app creation."""
    value = (os.environ if environ is None else environ).get(METRICS_ENV, "on")
    off = value.strip().lower() in ("off", "0", "false", "no")
    return NullMetrics() if off else Metrics()
