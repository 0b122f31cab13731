"""Behaviour kept by the hot-path work: a client that goes away, metrics off, op records."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web

from gateway import logs
from gateway.http import CLIENT_CLOSED_STATUS, _answer
from gateway.metrics import RESULT_CODES, Metrics, NullMetrics, metrics_from_env


async def test_a_client_that_goes_away_is_not_an_internal_error(
        caplog: pytest.LogCaptureFixture) -> None:
    rec = logs.AccessRecord("rid", "POST", "/v1/assign")

    async def handler(request: web.Request) -> web.StreamResponse:
        raise ConnectionResetError("Connection lost")

    resp = await _answer(None, handler, rec)  # type: ignore[arg-type]
    assert (rec.code, rec.status, resp.status) == ("client_closed", 499, CLIENT_CLOSED_STATUS)
    assert rec.error is None and "client_closed" in RESULT_CODES
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        logs.emit(rec)
    assert not caplog.records  # DEBUG only: not an ERROR line, not even an INFO one


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
