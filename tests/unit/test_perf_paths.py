"""Behaviour kept by the hot-path work: a client that goes away, metrics off, op records."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from gateway.http import CLIENT_CLOSED_STATUS, PROBLEM_MIDDLEWARE
from gateway.metrics import RESULT_CODES, Metrics, NullMetrics, metrics_from_env
from gateway.runtime import METRICS


def _closing_app() -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise ConnectionResetError("Connection lost")

    app = web.Application(middlewares=[PROBLEM_MIDDLEWARE])
    app[METRICS] = Metrics()
    app.router.add_get("/gone", handler)
    return app


async def test_a_client_that_goes_away_is_not_an_internal_error(
        aiohttp_client: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    client = await aiohttp_client(_closing_app())
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        resp = await client.get("/gone")
    assert resp.status == CLIENT_CLOSED_STATUS and "client_closed" in RESULT_CODES
    assert not caplog.records  # DEBUG only: not an ERROR line, not even an INFO one
    with caplog.at_level(logging.DEBUG, logger="gateway.access"):
        await client.get("/gone")
    [record] = [r for r in caplog.records if r.name == "gateway.access"]
    line = json.loads(record.getMessage())
    assert (record.levelno, line["code"], line["status"]) == (logging.DEBUG, "client_closed",
                                                              CLIENT_CLOSED_STATUS)
    assert "error" not in line or line["error"] is None


def test_gateway_metrics_off_records_nothing() -> None:
    assert type(metrics_from_env({})) is Metrics
    assert type(metrics_from_env({"GATEWAY_METRICS": "on"})) is Metrics
    off = metrics_from_env({"GATEWAY_METRICS": "off"})
    assert isinstance(off, NullMetrics)
    off.request("/v1/assign", "ok", 0.01)
    off.exchange("p", "assign", "200", 0.01)
    off.child(off.operations_total, "succeeded").inc()
    text = off.render().decode()
    assert 'gateway_requests_total{code="ok"' not in text
    assert "gateway_operations_total{" not in text
