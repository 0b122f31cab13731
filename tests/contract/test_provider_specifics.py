"""Behaviour one provider has and the others do not."""

from __future__ import annotations

from typing import Any

from tests.conftest import Sandbox, auth

VAMBE_CONTACT = "22222222-2222-4222-8222-000000000001"
JANE_V, BOB_V = "11111111-1111-4111-8111-000000000001", "11111111-1111-4111-8111-000000000002"


async def test_vambe_add_keeps_existing_agents(gw: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    for uid, mode in ((JANE_V, "replace"), (BOB_V, "add"), (BOB_V, "add")):
        resp = await gw.post("/v1/assign", headers=auth(), json={
            "tenant": "t-vambe", "contact": {"id": VAMBE_CONTACT}, "assignee": {"id": uid},
            "mode": mode})
        assert resp.status == 200, await resp.text()
    state = await sandboxes_up["vambe"].state()
    assert sorted(state["contacts"][VAMBE_CONTACT]["agents"]) == [JANE_V, BOB_V]
    queries = [e["query"] for e in await sandboxes_up["vambe"].journal() if e["method"] == "POST"]
    assert queries == ["removeExistingAgents=true", "removeExistingAgents=false",
                       "removeExistingAgents=false"]


async def test_vambe_phone_on_two_channels_is_ambiguous(gw: Any) -> None:
    resp = await gw.post("/v1/assign", headers=auth(), json={
        "tenant": "t-vambe", "contact": {"phone": "+15557654321"}, "assignee": {"id": JANE_V}})
    body = await resp.json()
    assert (resp.status, body["code"]) == (409, "ambiguous_contact")
    assert "7654321" not in body["detail"]


async def test_vambe_partial_matches_are_filtered(gw: Any) -> None:
    # +15551234 is a prefix of +15551234567: the provider's partial search returns
    # both, and only the exact one may be chosen.
    resp = await gw.post("/v1/assign", headers=auth(), json={
        "tenant": "t-vambe", "contact": {"phone": "+1 555 1234"}, "assignee": {"id": JANE_V}})
    if resp.status == 400:  # too short to be a possible number in any region
        return
    body = await resp.json()
    assert resp.status == 200, body
    assert body["contact"]["provider_id"] == "22222222-2222-4222-8222-000000000005"


async def test_teli_requires_a_campaign(gw: Any, aiohttp_client: Any,
                                        sandboxes_up: dict[str, Sandbox]) -> None:
    from gateway.app import create_app
    from gateway.config import build_config
    from tests.conftest import gateway_config_dict

    raw = gateway_config_dict(sandboxes_up)
    del raw["tenants"]["t-teli"]["campaign_id"]
    client = await aiohttp_client(create_app(build_config(raw, env={})))
    body = {"tenant": "t-teli", "contact": {"phone": "+15551234567"},
            "assignee": {"id": "user_xyz789"}}
    resp = await client.post("/v1/assign", headers=auth(), json=body)
    err = await resp.json()
    assert (resp.status, err["code"]) == (400, "invalid_request")
    assert err["errors"][0]["field"] == "campaign_id"
    resp = await client.post("/v1/assign", headers=auth(), json={**body, "campaign_id":
                                                                  "camp_abc123"})
    assert resp.status == 200
    assert sum(e["method"] == "POST" for e in await sandboxes_up["teli"].journal()) == 1


async def test_teli_phone_stored_without_plus(gw: Any) -> None:
    resp = await gw.post("/v1/assign", headers=auth(), json={
        "tenant": "t-teli", "contact": {"phone": "+1 555 000 1111"},
        "assignee": {"id": "user_xyz789"}})
    assert resp.status == 200, await resp.text()


async def test_teli_assign_side_effects(gw: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    await gw.post("/v1/assign", headers=auth(), json={
        "tenant": "t-teli", "contact": {"phone": "+15551234567"},
        "assignee": {"id": "user_xyz789"}})
    await gw.post("/v1/unassign", headers=auth(), json={
        "tenant": "t-teli", "contact": {"phone": "+15551234567"}})
    thread = (await sandboxes_up["teli"].state())["threads"]["+15551234567_camp_abc123"]
    # Documented: assign stops the AI and marks the lead qualified; unassign undoes neither.
    assert thread["lead_outcome"] == "qualified"
    assert thread["ai_active"] is False


async def test_aelyst_phone_plus_travels_encoded(gw: Any, sandboxes_up: dict[str, Sandbox]) -> None:
    resp = await gw.post("/v1/assign", headers=auth(), json={
        "tenant": "t-aelyst", "contact": {"phone": "+60 12-123 3112"}, "assignee": {"id": "17"}})
    assert resp.status == 200, await resp.text()
    paths = [e["path"] for e in await sandboxes_up["aelyst"].journal()]
    assert paths == ["/v1/contact/phone:%2B60121233112/conversation/assignee"]


async def test_directory_override_answers_first(gw: Any, aiohttp_client: Any,
                                                sandboxes_up: dict[str, Sandbox]) -> None:
    from gateway.app import create_app
    from gateway.config import build_config
    from tests.conftest import gateway_config_dict

    raw = gateway_config_dict(sandboxes_up, directory={"bob@acme.com": {"teli-sb": "user_xyz789"}})
    client = await aiohttp_client(create_app(build_config(raw, env={})))
    resp = await client.post("/v1/assign", headers=auth(), json={
        "tenant": "t-teli", "contact": {"phone": "+15551234567"},
        "assignee": {"email": "bob@acme.com"}})
    assert (await resp.json())["assignee"]["provider_id"] == "user_xyz789"
    assert [e["method"] for e in await sandboxes_up["teli"].journal()] == ["POST"]
