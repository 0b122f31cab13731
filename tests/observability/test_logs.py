"""One structured JSON line per request: what it holds, what it never holds."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from gateway import logs
from gateway.http import PROBLEM_MIDDLEWARE
from gateway.metrics import Metrics
from gateway.runtime import METRICS
from tests.conftest import Sandbox, auth

ACCESS = "gateway.access"


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS]


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=ACCESS)
    return caplog


async def test_a_request_is_one_line_with_its_facts(gw: Any, sandboxes_up: dict[str, Sandbox],
                                                     access: pytest.LogCaptureFixture) -> None:
    resp = await gw.post("/v1/assign", headers={**auth(), "X-Request-ID": "req-42.a"}, json={
        "tenant": "t-aelyst", "contact": {"id": "3"}, "assignee": {"id": "17"}})
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-Request-ID"] == "req-42.a"
    [line] = lines(access)
    assert line["request_id"] == "req-42.a"
    assert (line["client"], line["tenant"], line["provider"], line["operation"]) == (
        "app", "t-aelyst", "aelyst-sb", "assign")
    assert (line["route"], line["method"], line["status"], line["code"]) == (
        "/v1/assign", "POST", 200, "ok")
    assert line["attempts"] == 1
    assert line["operation_id"] == (await resp.json())["operation_id"]
    assert line["contact"] == "id:3"
    assert isinstance(line["duration_s"], float) and line["duration_s"] > 0
    assert line["error"] is None
    # The same id went to the provider, so one id follows the request through both logs.
    [entry] = await sandboxes_up["aelyst"].journal()
    assert {k.lower(): v for k, v in entry["headers"].items()}["x-request-id"] == "req-42.a"


async def test_a_failed_request_names_its_operation_and_attempts(
        gw: Any, sandboxes_up: dict[str, Sandbox], access: pytest.LogCaptureFixture) -> None:
    await sandboxes_up["aelyst"].fault(status=400, count=1)  # refused: no retry
    resp = await gw.post("/v1/assign", headers=auth(), json={
        "tenant": "t-aelyst", "contact": {"id": "3"}, "assignee": {"id": "17"}})
    assert resp.status == 502, await resp.text()
    [line] = lines(access)
    assert (line["code"], line["attempts"]) == ("upstream_rejected", 1)
    assert isinstance(line["operation_id"], str) and line["operation_id"].startswith("op_")


@pytest.mark.parametrize("given", [None, "", "has space", "x" * 65, "+15551234567", "a\u00e9"])
async def test_a_missing_or_unsafe_request_id_is_replaced(
        gw: Any, access: pytest.LogCaptureFixture, given: str | None) -> None:
    headers = {} if given is None else {"X-Request-ID": given}
    resp = await gw.get("/healthz", headers=headers)
    rid = resp.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{16}", rid)
    assert lines(access)[0]["request_id"] == rid


@pytest.mark.parametrize(("tenant", "contact", "masked", "secret"), [
    ("t-teli", {"phone": "+15551234567"}, "+1555***4567", "5551234567"),
    ("t-teli", {"phone": "(555) 123-4567"}, "+1555***4567", "1234567"),
    ("t-aelyst", {"email": "Jane.Doe@acme.com"}, "j***@acme.com", "jane.doe"),
])
async def test_contacts_are_masked(gw: Any, access: pytest.LogCaptureFixture, tenant: str,
                                   contact: dict[str, str], masked: str, secret: str) -> None:
    await gw.post("/v1/assign", headers=auth(), json={
        "tenant": tenant, "contact": contact, "assignee": {"email": "nobody@acme.com"}})
    [line] = lines(access)
    assert line["contact"] == masked
    text = access.records[0].getMessage().lower()
    assert secret not in text and "nobody" not in text


async def test_refusals_name_the_code_not_the_input(gw: Any,
                                                    access: pytest.LogCaptureFixture) -> None:
    await gw.get("/v1/contacts/+15551234567?email=jane@acme.com")
    await gw.post("/v1/assign", headers=auth("wrong-key-9876"), json={})
    await gw.post("/v1/assign", headers=auth(), json={
        "tenant": "t-teli", "contact": {"phone": "call +15551234567"}, "assignee": {"id": "u"}})
    got = lines(access)
    assert [(x["route"], x["status"], x["code"]) for x in got] == [
        ("other", 404, "not_found"), ("/v1/assign", 401, "unauthorized"),
        ("/v1/assign", 400, "invalid_request")]
    assert got[1]["client"] is None and got[2]["client"] == "app"
    text = "\n".join(r.getMessage() for r in access.records)
    for leak in ("5551234567", "jane", "wrong-key", "contacts", "call"):
        assert leak not in text


def _boom_app(message: str) -> web.Application:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError(message)

    app = web.Application(middlewares=[PROBLEM_MIDDLEWARE])
    app[METRICS] = Metrics()
    app.router.add_get("/boom", boom)
    return app


async def test_an_unhandled_exception_logs_its_type_never_its_text(
        aiohttp_client: Callable[..., Any], access: pytest.LogCaptureFixture) -> None:
    client = await aiohttp_client(_boom_app("token=CANARY-in-exception +15551234567"))
    resp = await client.get("/boom")
    assert resp.status == 500
    assert (await resp.json())["code"] == "internal_error"
    [record] = [r for r in access.records if r.name == ACCESS]
    assert record.levelno == logging.ERROR
    line = json.loads(record.getMessage())
    assert (line["code"], line["error"], line["route"]) == ("internal_error", "RuntimeError",
                                                             "/boom")
    everything = "\n".join(r.getMessage() for r in access.records) + await resp.text()
    assert "CANARY" not in everything and "5551234567" not in everything


async def test_a_disabled_level_writes_nothing(gw: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=ACCESS)
    await gw.get("/healthz")
    await gw.get("/nope")
    assert [r for r in caplog.records if r.name == ACCESS] == []


def test_masks() -> None:
    assert logs.mask_phone("+15551234567") == "+1555***4567"
    assert logs.mask_phone("+60121233112") == "+6012***3112"
    assert logs.mask_phone("+1555") == "***"
    assert logs.mask_email("jane@acme.com") == "j***@acme.com"
    assert logs.mask_email("not-an-email") == "***"
    assert logs.mask_id("3") == "3"
    assert logs.mask_id("22222222-2222-4222-8222-000000000001") == "22222***0001"
    assert logs.mask_id("15551234567") == "15551***4567"
    assert logs.mask_id("jane@acme.com") == "j***@acme.com"
    assert logs.mask_contact(email="a@b.co") == "a***@b.co"
    assert logs.mask_contact() is None


def test_annotating_outside_a_request_does_nothing() -> None:
    logs.annotate(tenant="t", attempts=3)
    assert logs.current() is None
