"""The Vambe sandbox against the documented Vambe behaviour (providers.md section 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from providers.vambe.sandbox import create_app

Client = TestClient[web.Request, web.Application]

KEY = "vambe-sandbox-key"
AUTH = {"x-api-key": KEY}
JANE = "11111111-1111-4111-8111-000000000001"
BOB = "11111111-1111-4111-8111-000000000002"
CAROL = "11111111-1111-4111-8111-000000000003"
DANA = "11111111-1111-4111-8111-000000000004"  # inactive
ALEX = "22222222-2222-4222-8222-000000000001"  # +56912345678
RILEY = "22222222-2222-4222-8222-000000000002"  # +15551234567
MORGAN_WA = "22222222-2222-4222-8222-000000000003"  # +15557654321 whatsapp
MORGAN_WEB = "22222222-2222-4222-8222-000000000004"  # +15557654321 webchat
SHORT = "22222222-2222-4222-8222-000000000005"  # +15551234
SAM = "22222222-2222-4222-8222-000000000006"  # webchat, no phone
MISSING = "99999999-9999-4999-8999-999999999999"


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, clock: FakeClock) -> Client:
    return await aiohttp_client(create_app(clock=clock))


def assign_path(contact: str, member: str) -> str:
    return f"/api/public/contact/{contact}/assign-team-member/{member}"


async def assign(
    client: Client, contact: str, member: str, remove: str | None = None
) -> tuple[int, Any]:
    params = {} if remove is None else {"removeExistingAgents": remove}
    resp = await client.post(assign_path(contact, member), params=params, headers=AUTH)
    return resp.status, await resp.json()


async def get(client: Client, path: str, **params: str) -> tuple[int, Any]:
    resp = await client.get(path, params=params, headers=AUTH)
    return resp.status, await resp.json()


async def state(client: Client) -> dict[str, Any]:
    resp = await client.get("/_sandbox/state")
    data: dict[str, Any] = await resp.json()
    return data


async def search_ids(client: Client, **params: str) -> list[str]:
    status, data = await get(client, "/api/public/contacts/search", **params)
    assert status == 200
    return [c["id"] for c in data]


# --- auth -------------------------------------------------------------------------

ROUTES = [
    ("POST", assign_path(ALEX, JANE)),
    ("GET", "/api/public/team-members/all"),
    ("GET", "/api/public/contacts/search?phone=1"),
    ("GET", f"/api/public/contact/{ALEX}/info"),
]
UNAUTHORIZED = {"statusCode": 401, "message": "Unauthorized", "error": "Unauthorized"}


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}])
async def test_missing_or_wrong_key_is_401(
    client: Client, method: str, path: str, headers: dict[str, str]
) -> None:
    resp = await client.request(method, path, headers=headers)
    assert resp.status == 401
    assert await resp.json() == UNAUTHORIZED


async def test_unauthorized_assign_changes_nothing(client: Client) -> None:
    await client.post(assign_path(ALEX, JANE))
    assert (await state(client))["contacts"][ALEX]["agents"] == []


async def test_unknown_route_is_nest_404(client: Client) -> None:
    status, data = await get(client, "/api/public/contact/search")
    assert status == 404
    assert data == {
        "statusCode": 404, "message": "Cannot GET /api/public/contact/search", "error": "Not Found"
    }


# --- assign -----------------------------------------------------------------------


async def test_assign_success(client: Client) -> None:
    status, data = await assign(client, ALEX, JANE)
    assert status == 200
    assert data == {"success": True, "message": "Team member assigned successfully"}
    dump = await state(client)
    assert dump["contacts"][ALEX] == {
        "phone": "+56912345678", "email": "alex@example.com", "platform": "whatsapp",
        "agents": [JANE],
    }
    assert dump["assignments"] == [
        {"contact_id": ALEX, "team_member_id": JANE, "remove_existing": False, "at": 500.0}
    ]


async def test_default_adds_and_is_idempotent(client: Client) -> None:
    await assign(client, ALEX, JANE)
    await assign(client, ALEX, BOB, "false")
    status, _ = await assign(client, ALEX, JANE)
    assert status == 200
    assert (await state(client))["contacts"][ALEX]["agents"] == [JANE, BOB]


async def test_remove_existing_replaces(client: Client, clock: FakeClock) -> None:
    await assign(client, ALEX, JANE)
    await assign(client, ALEX, BOB)
    clock.now = 501.0
    status, _ = await assign(client, ALEX, CAROL, "true")
    assert status == 200
    dump = await state(client)
    assert dump["contacts"][ALEX]["agents"] == [CAROL]
    assert dump["assignments"][-1] == {
        "contact_id": ALEX, "team_member_id": CAROL, "remove_existing": True, "at": 501.0
    }
    await assign(client, ALEX, CAROL, "TRUE")
    assert (await state(client))["contacts"][ALEX]["agents"] == [CAROL]


async def test_assign_accepts_upper_case_uuids(client: Client) -> None:
    status, _ = await assign(client, ALEX.upper(), JANE.upper())
    assert status == 200
    assert (await state(client))["contacts"][ALEX]["agents"] == [JANE]


@pytest.mark.parametrize(("contact", "member"), [("alex", JANE), (ALEX, "jane"), ("1", "2")])
async def test_assign_non_uuid_is_400(client: Client, contact: str, member: str) -> None:
    status, data = await assign(client, contact, member)
    assert status == 400
    assert data == {
        "statusCode": 400, "message": "Invalid contact or agent ID", "error": "Bad Request"
    }


async def test_assign_non_boolean_flag_is_400(client: Client) -> None:
    status, data = await assign(client, ALEX, JANE, "yes")
    assert status == 400
    assert data["message"] == "removeExistingAgents must be a boolean value"


async def test_assign_unknown_contact_is_404(client: Client) -> None:
    status, data = await assign(client, MISSING, JANE)
    assert status == 404
    assert data == {"statusCode": 404, "message": "Contact not found", "error": "Not Found"}


@pytest.mark.parametrize("member", [MISSING, DANA])
async def test_assign_unknown_or_inactive_member_is_404(client: Client, member: str) -> None:
    status, data = await assign(client, ALEX, member)
    assert status == 404
    assert data == {"statusCode": 404, "message": "Team member not found", "error": "Not Found"}
    assert (await state(client))["assignments"] == []


# --- team members -----------------------------------------------------------------


async def test_team_members_all(client: Client) -> None:
    status, data = await get(client, "/api/public/team-members/all")
    assert status == 200
    assert [m["email"] for m in data] == [
        "jane@acme.com", "bob@acme.com", "carol@acme.com", "dana@acme.com"
    ]
    assert data[0] == {
        "id": JANE,
        "name": "Jane Smith",
        "first_name": "Jane",
        "last_name": "Smith",
        "email": "jane@acme.com",
        "phone": "+15550100001",
    }


# --- search -----------------------------------------------------------------------


@pytest.mark.parametrize("phone", ["+56912345678", "56912345678", "12345678"])
async def test_search_phone_is_sanitized_partial(client: Client, phone: str) -> None:
    assert await search_ids(client, phone=phone) == [ALEX]


async def test_search_same_phone_on_two_channels(client: Client) -> None:
    status, data = await get(client, "/api/public/contacts/search", phone="+15557654321")
    assert status == 200
    assert [(c["id"], c["platform"]) for c in data] == [
        (MORGAN_WA, "whatsapp"), (MORGAN_WEB, "webchat")
    ]


async def test_search_partial_match_includes_longer_numbers(client: Client) -> None:
    assert await search_ids(client, phone="+15551234") == [RILEY, SHORT]
    assert await search_ids(client, phone="+15551234567") == [RILEY]


async def test_search_email_partial_case_insensitive(client: Client) -> None:
    assert await search_ids(client, email="SAM@Example.COM") == [SAM]
    assert await search_ids(client, email="morgan@") == [MORGAN_WA, MORGAN_WEB]


async def test_search_phone_and_email_must_both_match(client: Client) -> None:
    assert await search_ids(client, phone="15557654321", email="morgan") == [MORGAN_WA, MORGAN_WEB]
    assert await search_ids(client, phone="15557654321", email="alex") == []


async def test_search_no_match_is_empty_list(client: Client) -> None:
    assert await search_ids(client, phone="+4400000000") == []


@pytest.mark.parametrize("params", [{}, {"phone": ""}, {"phone": "abc"}, {"email": ""}])
async def test_search_needs_phone_or_email(client: Client, params: dict[str, str]) -> None:
    status, data = await get(client, "/api/public/contacts/search", **params)
    assert status == 400
    assert data == {
        "statusCode": 400,
        "message": "At least one of phone or email is required",
        "error": "Bad Request",
    }


async def test_search_contact_object(client: Client) -> None:
    _, data = await get(client, "/api/public/contacts/search", email="alex@example.com")
    assert data == [
        {
            "id": ALEX,
            "name": "Alex Example",
            "phone": "+56912345678",
            "email": "alex@example.com",
            "platform": "whatsapp",
            "last_message_at": "2025-01-12T09:30:00.000Z",
            "chat_status": "UNATTENDED",
            "created_at": "2025-01-10T12:00:00.000Z",
            "client_id": "33333333-3333-4333-8333-333333333333",
            "ai_customer_id": "55555555-5555-4555-8555-000000000001",
            "default_stage_id": "44444444-4444-4444-8444-444444444444",
        }
    ]


async def test_search_returns_at_most_50(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    contacts = [
        {"id": f"22222222-2222-4222-8222-{n:012d}", "phone": f"+1555000{n:04d}",
         "platform": "whatsapp"}
        for n in range(60)
    ]
    seed = tmp_path / "vambe.yaml"
    seed.write_text(yaml.safe_dump({"team_members": [], "contacts": contacts}))
    client = await aiohttp_client(create_app(data_file=seed))
    assert len(await search_ids(client, phone="1555000")) == 50


# --- info -------------------------------------------------------------------------


async def test_info_lists_assigned_agents(client: Client) -> None:
    await assign(client, MORGAN_WA, JANE)
    await assign(client, MORGAN_WA, BOB)
    status, data = await get(client, f"/api/public/contact/{MORGAN_WA}/info")
    assert status == 200
    assert data["id"] == MORGAN_WA
    assert data["phone"] == "+15557654321"
    assert data["chat_status"] == "UNATTENDED"
    assert data["assigned_agents"] == [
        {"agent_id": JANE, "agent_name": "Jane Smith"},
        {"agent_id": BOB, "agent_name": "Bob Stone"},
    ]


async def test_info_of_unassigned_contact(client: Client) -> None:
    _, data = await get(client, f"/api/public/contact/{SAM}/info")
    assert data["phone"] is None
    assert data["assigned_agents"] == []


async def test_info_unknown_contact_is_404(client: Client) -> None:
    status, data = await get(client, f"/api/public/contact/{MISSING}/info")
    assert status == 404
    assert data == {"statusCode": 404, "message": "Contact not found", "error": "Not Found"}


async def test_info_non_uuid_is_400(client: Client) -> None:
    status, data = await get(client, "/api/public/contact/not-a-uuid/info")
    assert status == 400
    assert data["error"] == "Bad Request"


# --- control surface and faults -----------------------------------------------------


async def test_reset_restores_seed(client: Client) -> None:
    before = await state(client)
    await assign(client, ALEX, JANE)
    assert await state(client) != before
    assert (await client.post("/_sandbox/reset")).status == 200
    assert await state(client) == before


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (429, {"statusCode": 429, "message": "Too Many Requests", "error": "Too Many Requests"}),
        (500, {"statusCode": 500, "message": "Internal server error",
               "error": "Internal Server Error"}),
    ],
)
async def test_injected_errors_use_nest_shape(
    client: Client, status: int, body: dict[str, Any]
) -> None:
    fault = {"kind": "status", "status": status, "retry_after": 2}
    assert (await client.post("/_sandbox/faults", json=fault)).status == 201
    resp = await client.post(assign_path(ALEX, JANE), headers=AUTH)
    assert resp.status == status
    assert resp.headers["Retry-After"] == "2"
    assert await resp.json() == body
    assert (await state(client))["contacts"][ALEX]["agents"] == []


async def test_journal_records_requests(client: Client) -> None:
    await assign(client, ALEX, JANE, "true")
    entries = (await (await client.get("/_sandbox/journal")).json())["entries"]
    assert [(e["method"], e["path"], e["query"], e["status"]) for e in entries] == [
        ("POST", assign_path(ALEX, JANE), "removeExistingAgents=true", 200)
    ]
