"""The canonical API's own behaviour: auth, validation, tenants, discovery."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import pytest

from tests.conftest import OTHER_CLIENT_KEY, Sandbox, auth

ASSIGN = {"tenant": "t-aelyst", "contact": {"phone": "+15551234567"},
          "assignee": {"email": "jane@acme.com"}}


async def _problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"].endswith("/" + code)
    return body


async def test_missing_and_unknown_keys_are_unauthorized(gw: Any) -> None:
    await _problem(await gw.post("/v1/assign", json=ASSIGN), 401, "unauthorized")
    await _problem(await gw.post("/v1/assign", json=ASSIGN, headers=auth("nope")),
                   401, "unauthorized")
    await _problem(await gw.post("/v1/assign", json=ASSIGN,
                                 headers={"Authorization": "Basic dGVzdA=="}), 401, "unauthorized")


async def test_key_sees_only_its_tenants(gw: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    body = await _problem(await gw.post("/v1/assign", json=ASSIGN, headers=auth(OTHER_CLIENT_KEY)),
                          403, "forbidden")
    assert "provider" not in body
    assert await sandboxes_up["aelyst"].journal() == []
    resp = await gw.get("/v1/tenants", headers=auth(OTHER_CLIENT_KEY))
    assert [t["name"] for t in (await resp.json())["tenants"]] == ["t-teli"]


async def test_unknown_tenant(gw: Any) -> None:
    await _problem(await gw.post("/v1/assign", json={**ASSIGN, "tenant": "nope"},
                                 headers=auth()), 404, "unknown_tenant")


async def test_tenant_optional_for_single_tenant_key(gw: Any) -> None:
    body = {"contact": {"phone": "+15551234567"}, "assignee": {"id": "user_xyz789"}}
    resp = await gw.post("/v1/assign", json=body, headers=auth(OTHER_CLIENT_KEY))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["tenant"] == "t-teli"
    multi = await gw.post("/v1/assign", json=body, headers=auth())
    err = await _problem(multi, 400, "invalid_request")
    assert err["errors"][0]["field"] == "tenant"


@pytest.mark.parametrize(("body", "field"), [
    ({**ASSIGN, "surprise": 1}, "surprise"),
    ({**ASSIGN, "contact": {"phone": "+1555", "email": "a@b.co"}}, "contact"),
    ({**ASSIGN, "contact": {}}, "contact"),
    ({**ASSIGN, "assignee": {}}, "assignee"),
    ({**ASSIGN, "mode": "merge"}, "mode"),
    ({**ASSIGN, "contact": {"phone": "call me"}}, "contact.phone"),
    ({**ASSIGN, "contact": {"phone": "1-800-FLOWERS"}}, "contact.phone"),
    ({**ASSIGN, "contact": {"email": "a/../b@x.com"}}, "contact.email"),
    ({**ASSIGN, "assignee": {"email": "not-an-email"}}, "assignee.email"),
    ({**ASSIGN, "assignee": {"id": "17x"}}, "assignee.id"),
    ({**ASSIGN, "contact": {"id": "../admin"}}, "contact.id"),
    ({key: v for key, v in ASSIGN.items() if key != "contact"}, "contact"),
])
async def test_invalid_bodies_name_the_field(gw: Any, sandboxes_up: dict[str, Sandbox],
                                             body: dict[str, Any], field: str) -> None:
    err = await _problem(await gw.post("/v1/assign", json=body, headers=auth()),
                         400, "invalid_request")
    assert any(e["field"].startswith(field) for e in err["errors"]), err
    assert await sandboxes_up["aelyst"].journal() == []


async def test_rejected_input_is_not_echoed(gw: Any) -> None:
    resp = await gw.post("/v1/assign", headers=auth(),
                         json={**ASSIGN, "contact": {"phone": "secret-ish 555 letters"}})
    assert "secret-ish" not in await resp.text()


async def test_body_limits_and_media_type(gw: Any) -> None:
    big = {**ASSIGN, "assigned_by": "x" * 20_000}
    await _problem(await gw.post("/v1/assign", json=big, headers=auth()),
                   413, "payload_too_large")
    await _problem(await gw.post("/v1/assign", data="tenant=x", headers=auth()),
                   415, "unsupported_media_type")
    await _problem(await gw.post("/v1/assign", data=b"{not json",
                                 headers={**auth(), "Content-Type": "application/json"}),
                   400, "invalid_request")
    await _problem(await gw.post("/v1/assign", data=b"[1, 2]",
                                 headers={**auth(), "Content-Type": "application/json"}),
                   400, "invalid_request")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_its_content_encoding_cannot_decode_is_a_400(gw: Any,
                                                                 encoding: str) -> None:
    body = await _problem(await gw.post("/v1/assign", data=b"not compressed at all", headers={
        **auth(), "Content-Type": "application/json", "Content-Encoding": encoding}),
        400, "invalid_request")
    assert "Content-Encoding" in body["detail"]


async def test_a_compressed_body_is_accepted(gw: Any) -> None:
    resp = await gw.post("/v1/assign", data=gzip.compress(json.dumps(ASSIGN).encode()),
                         headers={**auth(), "Content-Type": "application/json",
                                  "Content-Encoding": "gzip"})
    assert resp.status == 200, await resp.text()


async def test_unknown_route_and_method(gw: Any) -> None:
    await _problem(await gw.get("/v2/whatever"), 404, "not_found")
    await _problem(await gw.get("/v1/assign", headers=auth()), 405, "method_not_allowed")


async def test_what_no_route_takes_is_answered_as_every_error_is(gw: Any) -> None:
    # No aiohttp middleware: the app's last route takes these (gateway.http.add_route).
    assert not gw.server.app.middlewares
    for method, path in (("POST", "/"), ("DELETE", "/v1/operations/x/y"), ("PUT", "/x.json")):
        resp = await gw.request(method, path, headers={"X-Request-ID": "rid-1"})
        await _problem(resp, 404, "not_found")
        assert resp.headers["X-Request-ID"] == "rid-1"
    for method, path, allow in (("DELETE", "/v1/operations/op_1", {"GET", "HEAD"}),
                                ("PUT", "/v1/unassign", {"POST"}),
                                ("POST", "/healthz", {"GET", "HEAD"})):
        resp = await gw.request(method, path)
        await _problem(resp, 405, "method_not_allowed")
        assert set(resp.headers["Allow"].split(",")) == allow
    assert (await gw.head("/healthz")).status == 200  # a GET route takes HEAD
    # A request target that is not a path: aiohttp's router would answer it itself.
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    try:
        writer.write(b"OPTIONS * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        head = (await asyncio.wait_for(reader.read(4096), 5)).split(b"\r\n\r\n")[0].lower()
    finally:
        writer.close()
    assert head.startswith(b"http/1.1 404") and b"application/problem+json" in head
    text = await (await gw.get("/metrics")).text()
    assert 'route="other"' in text and "/{path}" not in text


async def test_capability_checks_happen_before_any_call(
        gw: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    resp = await gw.post("/v1/unassign", headers=auth(),
                         json={"tenant": "t-vambe", "contact": {"phone": "+56912345678"}})
    err = await _problem(resp, 422, "unsupported_operation")
    assert err["provider"] == "vambe"
    assert err["capabilities"]["unassign"] is False
    resp = await gw.post("/v1/assign", headers=auth(),
                         json={**ASSIGN, "tenant": "t-teli", "contact": {"email": "a@b.co"}})
    await _problem(resp, 422, "untranslatable_identifier")
    resp = await gw.post("/v1/assign", headers=auth(), json={**ASSIGN, "mode": "add"})
    await _problem(resp, 422, "unsupported_operation")
    for sbx in sandboxes_up.values():
        assert await sbx.journal() == []


async def test_tenants_lists_capabilities(gw: Any) -> None:
    resp = await gw.get("/v1/tenants", headers=auth())
    assert resp.status == 200
    tenants = {t["name"]: t for t in (await resp.json())["tenants"]}
    assert tenants["t-vambe"]["provider"] == "vambe"
    assert tenants["t-vambe"]["capabilities"]["modes"] == ["replace", "add"]
    assert tenants["t-aelyst"]["capabilities"]["unassign"] is True


async def test_health_ready_openapi_metrics(gw: Any) -> None:
    assert (await gw.get("/healthz")).status == 200
    assert (await gw.get("/readyz")).status == 200
    spec = await (await gw.get("/openapi.json")).json()
    assert set(spec["paths"]) >= {"/v1/assign", "/v1/unassign", "/v1/tenants"}
    assert "AssignRequest" in spec["components"]["schemas"]
    text = await (await gw.get("/metrics")).text()
    assert "gateway_build_info" in text


async def test_request_id_is_echoed_or_generated(gw: Any) -> None:
    resp = await gw.get("/v1/tenants", headers={**auth(), "X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = await gw.get("/v1/tenants", headers={**auth(), "X-Request-ID": "bad id!"})
    assert resp.headers["X-Request-ID"] != "bad id!"
