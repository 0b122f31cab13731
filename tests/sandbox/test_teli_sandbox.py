"""The Teli sandbox against the documented Teli behaviour (providers.md section 1)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from providers.teli.sandbox import create_app

Client = TestClient[web.Request, web.Application]

KEY = "teli-sandbox-key"
AUTH = {"X-API-Key": KEY}
CAMP = "camp_abc123"
CAMP2 = "1763661807373x000000000000000777"
JANE = "user_xyz789"
BOB = "1763661807373x532913854895880007"
CAROL = "1763661807374x100000000000000003"
JANE_789 = "1763661807375x200000000000000001"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, clock: FakeClock) -> Client:
    return await aiohttp_client(create_app(clock=clock))


async def post(client: Client, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post(path, json=body, headers=AUTH)
    return resp.status, await resp.json()


async def get(client: Client, path: str, **params: str) -> tuple[int, Any]:
    resp = await client.get(path, params=params, headers=AUTH)
    return resp.status, await resp.json()


async def state(client: Client) -> dict[str, Any]:
    resp = await client.get("/_sandbox/state")
    data: dict[str, Any] = await resp.json()
    return data


def assign_body(phone: str = "+15551234567", user: str = JANE, **extra: str) -> dict[str, str]:
    return {"campaign_id": CAMP, "phone_number": phone, "assigned_user_id": user, **extra}


# --- auth -------------------------------------------------------------------------

ROUTES = [
    ("POST", "/v1/threads/assign"),
    ("POST", "/v1/threads/unassign"),
    ("GET", "/v1/organizations/org_456/users"),
    ("GET", f"/v1/campaigns/{CAMP}/contacts"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_missing_key_is_401(client: Client, method: str, path: str) -> None:
    resp = await client.request(method, path, json={})
    assert resp.status == 401
    assert await resp.json() == {
        "error": "API key is required", "success": False, "powered_by": "Teli"
    }


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_wrong_key_is_401(client: Client, method: str, path: str) -> None:
    resp = await client.request(method, path, json={}, headers={"X-API-Key": "nope"})
    assert resp.status == 401
    assert await resp.json() == {
        "error": "Invalid API key", "success": False, "powered_by": "Teli"
    }


async def test_custom_api_key(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_app(api_key="other"))
    resp = await client.get("/v1/organizations/org_456/users", headers={"X-API-Key": "other"})
    assert resp.status == 200


async def test_unknown_route_uses_teli_error_shape(client: Client) -> None:
    status, body = await get(client, "/v1/nothing")
    assert status == 404
    assert body == {"error": "Not found", "success": False, "powered_by": "Teli"}


# --- assign -----------------------------------------------------------------------


async def test_assign_doc_example(client: Client, clock: FakeClock) -> None:
    body = assign_body(organization_id="org_456", assigned_by="admin_user_001")
    status, data = await post(client, "/v1/threads/assign", body)
    assert status == 200
    assert data == {
        "success": True,
        "message": "Thread assigned to Jane Smith",
        "thread_id": "+15551234567_camp_abc123",
        "assigned_to": {"user_id": JANE, "name": "Jane Smith"},
        "powered_by": "Teli",
    }
    dump = await state(client)
    assert dump["threads"]["+15551234567_camp_abc123"] == {
        "phone_number": "+15551234567",
        "campaign_id": CAMP,
        "assigned_user_id": JANE,
        "lead_outcome": "qualified",
        "ai_active": False,
        "drips_scheduled": 0,
    }
    assert dump["assignments"] == [
        {"thread_id": "+15551234567_camp_abc123", "user_id": JANE, "at": 1000.0}
    ]


async def test_seeded_threads_start_unassigned_with_ai_and_drips(client: Client) -> None:
    thread = (await state(client))["threads"]["+15551234567_camp_abc123"]
    assert thread["assigned_user_id"] is None
    assert thread["ai_active"] is True
    assert thread["drips_scheduled"] == 2
    assert thread["lead_outcome"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"phone_number": "+15551234567", "assigned_user_id": JANE},
        {"campaign_id": CAMP, "assigned_user_id": JANE},
        {"campaign_id": CAMP, "phone_number": "+15551234567"},
        {"campaign_id": "", "phone_number": "+15551234567", "assigned_user_id": JANE},
        {"campaign_id": CAMP, "phone_number": "+15551234567", "assigned_user_id": None},
        [CAMP, "+15551234567", JANE],
    ],
)
async def test_assign_missing_fields_is_400(client: Client, body: Any) -> None:
    status, data = await post(client, "/v1/threads/assign", body)
    assert status == 400
    assert data == {
        "error": "campaign_id, phone_number, and assigned_user_id are required",
        "success": False,
        "powered_by": "Teli",
    }


async def test_assign_non_json_body_is_400(client: Client) -> None:
    resp = await client.post("/v1/threads/assign", data="not json", headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"] == (
        "campaign_id, phone_number, and assigned_user_id are required"
    )


async def test_assign_unknown_thread_is_404(client: Client) -> None:
    status, data = await post(client, "/v1/threads/assign", assign_body(phone="+15550009999"))
    assert status == 404
    assert data == {
        "error": "Thread not found for +15550009999 in campaign camp_abc123",
        "success": False,
        "powered_by": "Teli",
    }


async def test_assign_unknown_campaign_is_thread_404(client: Client) -> None:
    body = {**assign_body(), "campaign_id": "camp_missing"}
    status, data = await post(client, "/v1/threads/assign", body)
    assert status == 404
    assert data["error"] == "Thread not found for +15551234567 in campaign camp_missing"


async def test_assign_unknown_user_is_404(client: Client) -> None:
    status, data = await post(client, "/v1/threads/assign", assign_body(user="user_nobody"))
    assert status == 404
    assert data == {"error": "User 'user_nobody' not found", "success": False, "powered_by": "Teli"}
    assert (await state(client))["assignments"] == []


async def test_assign_user_from_other_org_is_404_when_org_given(client: Client) -> None:
    body = assign_body(user=JANE_789, organization_id="org_456")
    status, data = await post(client, "/v1/threads/assign", body)
    assert status == 404
    assert data["error"] == f"User '{JANE_789}' not found"


async def test_assign_without_org_finds_user_in_any_org(client: Client) -> None:
    status, data = await post(client, "/v1/threads/assign", assign_body(user=JANE_789))
    assert status == 200
    assert data["assigned_to"] == {"user_id": JANE_789, "name": "Jane Smith"}


async def test_assign_inactive_user_is_allowed(client: Client) -> None:
    status, data = await post(client, "/v1/threads/assign", assign_body(user=CAROL))
    assert status == 200
    assert data["message"] == "Thread assigned to Carol King"


@pytest.mark.parametrize(
    ("given", "thread_id"),
    [
        ("+15550001111", "15550001111_camp_abc123"),  # stored without "+"
        ("15550001111", "15550001111_camp_abc123"),
        ("15551234567", "+15551234567_camp_abc123"),  # stored with "+"
        ("+1 (555) 123-4567", "+15551234567_camp_abc123"),
    ],
)
async def test_phone_matches_on_digits_and_answers_stored_form(
    client: Client, given: str, thread_id: str
) -> None:
    status, data = await post(client, "/v1/threads/assign", assign_body(phone=given))
    assert status == 200
    assert data["thread_id"] == thread_id
    assert (await state(client))["threads"][thread_id]["assigned_user_id"] == JANE


async def test_reassign_overwrites(client: Client, clock: FakeClock) -> None:
    await post(client, "/v1/threads/assign", assign_body(user=JANE))
    clock.now = 1001.0
    status, data = await post(client, "/v1/threads/assign", assign_body(user=BOB))
    assert status == 200
    assert data["message"] == "Thread assigned to Bob Stone"
    dump = await state(client)
    assert dump["threads"]["+15551234567_camp_abc123"]["assigned_user_id"] == BOB
    assert [(a["user_id"], a["at"]) for a in dump["assignments"]] == [
        (JANE, 1000.0), (BOB, 1001.0)
    ]


async def test_same_phone_in_other_campaign_is_a_separate_thread(client: Client) -> None:
    body = {**assign_body(), "campaign_id": CAMP2}
    status, data = await post(client, "/v1/threads/assign", body)
    assert status == 200
    assert data["thread_id"] == f"+15551234567_{CAMP2}"
    threads = (await state(client))["threads"]
    assert threads["+15551234567_camp_abc123"]["assigned_user_id"] is None
    assert threads[f"+15551234567_{CAMP2}"]["assigned_user_id"] == JANE


# --- unassign ---------------------------------------------------------------------


async def test_unassign_clears_owner_but_keeps_ai_and_drips_stopped(
    client: Client, clock: FakeClock
) -> None:
    await post(client, "/v1/threads/assign", assign_body())
    clock.now = 1005.0
    body = {"campaign_id": CAMP, "phone_number": "+15551234567"}
    status, data = await post(client, "/v1/threads/unassign", body)
    assert status == 200
    assert data == {
        "success": True,
        "message": "Thread unassigned",
        "thread_id": "+15551234567_camp_abc123",
        "powered_by": "Teli",
    }
    dump = await state(client)
    thread = dump["threads"]["+15551234567_camp_abc123"]
    assert thread["assigned_user_id"] is None
    assert (thread["ai_active"], thread["drips_scheduled"]) == (False, 0)
    assert thread["lead_outcome"] == "qualified"
    assert dump["assignments"][-1] == {
        "thread_id": "+15551234567_camp_abc123", "user_id": None, "at": 1005.0
    }


async def test_unassign_unassigned_thread_is_200(client: Client) -> None:
    body = {"campaign_id": CAMP, "phone_number": "15557654321"}
    status, data = await post(client, "/v1/threads/unassign", body)
    assert status == 200
    assert data["thread_id"] == "+15557654321_camp_abc123"


@pytest.mark.parametrize(
    "body", [{"campaign_id": CAMP}, {"phone_number": "+15551234567"}, {}, "x"]
)
async def test_unassign_missing_fields_is_400(client: Client, body: Any) -> None:
    status, data = await post(client, "/v1/threads/unassign", body)
    assert status == 400
    assert data == {
        "error": "campaign_id and phone_number are required",
        "success": False,
        "powered_by": "Teli",
    }


async def test_unassign_unknown_thread_is_404(client: Client) -> None:
    body = {"campaign_id": CAMP, "phone_number": "+15550009999"}
    status, data = await post(client, "/v1/threads/unassign", body)
    assert status == 404
    assert data == {"error": "Thread not found", "success": False, "powered_by": "Teli"}


# --- users ------------------------------------------------------------------------


async def test_list_users(client: Client) -> None:
    status, data = await get(client, "/v1/organizations/org_456/users")
    assert status == 200
    assert data["success"] is True
    assert data["powered_by"] == "Teli"
    assert data["count"] == 3
    assert [u["unique_id"] for u in data["users"]] == [JANE, BOB, CAROL]
    assert data["users"][0] == {
        "unique_id": JANE,
        "id": "7b0e5c1a-0000-4000-8000-000000000001",
        "name": "Jane Smith",
        "email": "jane@acme.com",
        "permission": "admin",
        "organization_id": "org_456",
        "tenant_id": "tenant_acme",
        "status": "active",
        "phone": "+15550100001",
    }
    assert data["users"][2]["status"] == "inactive"


async def test_same_email_in_two_orgs_has_two_unique_ids(client: Client) -> None:
    _, data = await get(client, "/v1/organizations/org_789/users")
    assert [(u["email"], u["unique_id"]) for u in data["users"]] == [("jane@acme.com", JANE_789)]


async def test_users_of_unknown_org_is_404(client: Client) -> None:
    status, data = await get(client, "/v1/organizations/org_nope/users")
    assert status == 404
    assert data == {"error": "Organization not found", "success": False, "powered_by": "Teli"}


# --- contacts ---------------------------------------------------------------------


async def test_contacts_defaults(client: Client) -> None:
    status, data = await get(client, f"/v1/campaigns/{CAMP}/contacts")
    assert status == 200
    assert (data["total"], data["returned"], data["limit"], data["offset"]) == (3, 3, 1000, 0)
    assert data["has_more"] is False
    assert data["contacts"][2] == {
        "thread_id": "15550001111_camp_abc123",
        "phone_number": "15550001111",
        "first_name": "Sam",
        "last_name": "Ortiz",
        "assigned_user_id": None,
        "lead_outcome": None,
    }


async def test_contacts_limit_is_capped_silently(client: Client) -> None:
    status, data = await get(client, f"/v1/campaigns/{CAMP}/contacts", limit="50000")
    assert status == 200
    assert data["limit"] == 10000


async def test_contacts_paging(client: Client) -> None:
    _, data = await get(client, f"/v1/campaigns/{CAMP}/contacts", limit="2", offset="1")
    assert [c["phone_number"] for c in data["contacts"]] == ["+15557654321", "15550001111"]
    assert (data["returned"], data["has_more"]) == (2, False)
    _, data = await get(client, f"/v1/campaigns/{CAMP}/contacts", limit="1")
    assert (data["returned"], data["total"], data["has_more"]) == (1, 3, True)


async def test_contacts_non_admin_sees_only_assigned(client: Client) -> None:
    await post(client, "/v1/threads/assign", assign_body(user=BOB))
    path = f"/v1/campaigns/{CAMP}/contacts"
    _, data = await get(client, path, user_id=BOB, is_admin="false")
    assert [c["thread_id"] for c in data["contacts"]] == ["+15551234567_camp_abc123"]
    assert data["contacts"][0]["lead_outcome"] == "qualified"
    assert data["total"] == 1
    _, data = await get(client, path, user_id=BOB, is_admin="true")
    assert data["total"] == 3


async def test_contacts_of_unknown_campaign_is_404(client: Client) -> None:
    status, data = await get(client, "/v1/campaigns/camp_nope/contacts")
    assert status == 404
    assert data == {"error": "Campaign not found", "success": False, "powered_by": "Teli"}


# --- control surface and faults -----------------------------------------------------


async def test_reset_restores_seed(client: Client) -> None:
    before = await state(client)
    await post(client, "/v1/threads/assign", assign_body())
    assert await state(client) != before
    resp = await client.post("/_sandbox/reset")
    assert resp.status == 200
    assert await state(client) == before


async def test_injected_429_uses_teli_shape_and_retry_after(client: Client) -> None:
    fault = {"kind": "status", "status": 429, "retry_after": 3}
    assert (await client.post("/_sandbox/faults", json=fault)).status == 201
    resp = await client.post("/v1/threads/assign", json=assign_body(), headers=AUTH)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "3"
    assert await resp.json() == {
        "error": "Too many requests", "success": False, "powered_by": "Teli"
    }
    assert (await state(client))["assignments"] == []


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, {"error": "Internal server error", "success": False, "powered_by": "Teli"}),
        (
            403,
            {
                "success": False,
                "error": "Admin permission required",
                "detail": "This endpoint requires an admin role",
                "powered_by": "Teli",
            },
        ),
    ],
)
async def test_injected_errors_use_teli_shape(
    client: Client, status: int, body: dict[str, Any]
) -> None:
    await client.post("/_sandbox/faults", json={"kind": "status", "status": status})
    resp = await client.get("/v1/organizations/org_456/users", headers=AUTH)
    assert resp.status == status
    assert await resp.json() == body


async def test_journal_records_rejected_requests(client: Client) -> None:
    await client.post("/v1/threads/assign", json=assign_body())
    resp = await client.get("/_sandbox/journal")
    entries = (await resp.json())["entries"]
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("POST", "/v1/threads/assign", 401)
    ]
