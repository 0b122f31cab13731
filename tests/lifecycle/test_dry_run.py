"""Dry runs: identifiers resolved through the provider (reads only), nothing written."""

from __future__ import annotations

from typing import Any

from tests.conftest import KEYS, Sandbox, auth


async def test_dry_run_resolves_but_never_writes(gw: Any,
                                                 sandboxes_up: dict[str, Sandbox]) -> None:
    resp = await gw.post("/v1/assign?dry_run=true", headers=auth(), json={
        "tenant": "t-teli", "contact": {"phone": "(555) 123-4567"},
        "assignee": {"email": "jane@acme.com"}})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["status"] == "dry_run" and body["provider"] == "teli"
    sent = body["would_send"]
    assert sent["method"] == "POST"
    assert sent["url"].endswith("/v1/threads/assign")
    assert sent["body"]["assigned_user_id"] == "user_xyz789"  # resolved by a real look-up
    assert sent["body"]["phone_number"] == "+15551234567"
    journal = await sandboxes_up["teli"].journal()
    assert [e["method"] for e in journal] == ["GET"]
    assert (await sandboxes_up["teli"].state())["assignments"] == []
    assert KEYS["teli"] not in await resp.text()


async def test_dry_run_shows_the_encoded_path(gw: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    resp = await gw.post("/v1/unassign?dry_run=1", headers=auth(), json={
        "tenant": "t-aelyst", "contact": {"phone": "+60 12-123 3112"}})
    body = await resp.json()
    assert body["would_send"]["url"].endswith(
        "/v1/contact/phone:%2B60121233112/conversation/assignee")
    assert body["would_send"]["body"] == {"assignee": None}
    assert await sandboxes_up["aelyst"].journal() == []


async def test_dry_run_checks_capabilities(gw: Any) -> None:
    resp = await gw.post("/v1/unassign?dry_run=true", headers=auth(), json={
        "tenant": "t-vambe", "contact": {"phone": "+56912345678"}})
    assert (await resp.json())["code"] == "unsupported_operation"


async def test_dry_run_reports_lookup_failures(gw: Any) -> None:
    resp = await gw.post("/v1/assign?dry_run=true", headers=auth(), json={
        "tenant": "t-vambe", "contact": {"phone": "+15557654321"},
        "assignee": {"email": "jane@acme.com"}})
    assert (resp.status, (await resp.json())["code"]) == (409, "ambiguous_contact")
