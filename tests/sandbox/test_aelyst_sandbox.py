"""The Aelyst sandbox against the documented wire behaviour (providers.md section 3)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from providers.aelyst.sandbox import QUEUED_MESSAGE, create_app

Client = TestClient[web.Request, web.Application]
TOKEN = "aelyst-sandbox-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ASSIGN = "/v1/contact/{}/conversation/assignee"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(aiohttp_client: Any, clock: FakeClock) -> Client:
    client: Client = await aiohttp_client(create_app(clock=clock))
    return client


async def assign(client: Client, identifier: str, body: Any) -> tuple[int, Any]:
    resp = await client.post(ASSIGN.format(identifier), json=body, headers=AUTH)
    return resp.status, await resp.json()


async def state(client: Client) -> dict[str, Any]:
    result: dict[str, Any] = await (await client.get("/_sandbox/state")).json()
    return result


# -- auth -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"X-Api-Key": TOKEN}],
)
async def test_missing_or_wrong_token_is_401(client: Client, headers: dict[str, str]) -> None:
    resp = await client.post(ASSIGN.format("id:1"), json={"assignee": 17}, headers=headers)
    assert resp.status == 401
    assert await resp.json() == {"code": 401, "message": "UN_AUTHORIZED"}
    assert (await state(client))["assignments"] == []


async def test_custom_api_key(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(api_key="k-1"))
    resp = await client.get("/v1/contact/id:1", headers={"Authorization": "Bearer k-1"})
    assert resp.status == 200


# -- assign / unassign ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "contact_id"),
    [
        ("id:1", 1),
        ("email:abdc@gmail.com", 1),
        ("email:ALEX@example.com", 2),
        ("phone:%2B60121233112", 1),
        ("phone:+15557654321", 3),
    ],
)
async def test_assign_by_each_identifier_form(
    client: Client, identifier: str, contact_id: int
) -> None:
    assert await assign(client, identifier, {"assignee": 18}) == (200, {"contactId": contact_id})
    snapshot = await state(client)
    assert snapshot["contacts"][str(contact_id)]["assignee"] == 18
    assert snapshot["assignments"] == [{"contactId": contact_id, "assignee": 18, "at": 1000.0}]


async def test_assign_by_email(client: Client) -> None:
    assert await assign(client, "id:3", {"assignee": "carol@acme.com"}) == (200, {"contactId": 3})
    assert (await state(client))["contacts"]["3"]["assignee"] == 19


async def test_unassign_with_null(client: Client) -> None:
    assert (await state(client))["contacts"]["2"]["assignee"] == 17  # seeded
    assert await assign(client, "id:2", {"assignee": None}) == (200, {"contactId": 2})
    contact = await (await client.get("/v1/contact/id:2", headers=AUTH)).json()
    assert contact["assignee"] is None
    assert (await state(client))["assignments"][-1]["assignee"] is None


async def test_reassign_to_same_user_is_a_logged_200(client: Client) -> None:
    assert (await assign(client, "id:2", {"assignee": 17}))[0] == 200
    assert len((await state(client))["assignments"]) == 1


async def test_encoded_slash_does_not_split_the_path(client: Client) -> None:
    # If the router split on %2F this would be aiohttp's plain-text 404, not Aelyst's JSON.
    assert await assign(client, "email:a%2Fb@example.com", {"assignee": 17}) == (
        404,
        {"code": 404, "message": "Contact not found"},
    )


@pytest.mark.parametrize(
    "identifier",
    ["1", "id:abc", "id:0", "name:x", "email:nope", "phone:60121233112", "phone:%2060121233112"],
)
async def test_bad_identifier_is_400(client: Client, identifier: str) -> None:
    assert await assign(client, identifier, {"assignee": 17}) == (
        400,
        {"code": 400, "message": "Validation error."},
    )


@pytest.mark.parametrize(
    "body",
    [{}, {"user": 17}, {"assignee": True}, {"assignee": 17.0}, {"assignee": "17"},
     {"assignee": [17]}, {"assignee": 0}, ["assignee"]],
)  # fmt: skip
async def test_bad_body_is_400(client: Client, body: Any) -> None:
    assert await assign(client, "id:1", body) == (
        400,
        {"code": 400, "message": "Validation error."},
    )


async def test_non_json_body_is_400(client: Client) -> None:
    resp = await client.post(ASSIGN.format("id:1"), data="assignee=17", headers=AUTH)
    assert resp.status == 400
    assert await resp.json() == {"code": 400, "message": "Validation error."}


@pytest.mark.parametrize("identifier", ["id:99", "email:who@example.com", "phone:%2B19990000000"])
async def test_unknown_contact_is_404(client: Client, identifier: str) -> None:
    assert await assign(client, identifier, {"assignee": 17}) == (
        404,
        {"code": 404, "message": "Contact not found"},
    )


@pytest.mark.parametrize("assignee", [99, "nobody@acme.com", 20, "dana@acme.com"])
async def test_unknown_or_pending_user_is_404(client: Client, assignee: Any) -> None:
    assert await assign(client, "id:1", {"assignee": assignee}) == (
        404,
        {"code": 404, "message": "User not found"},
    )
    assert (await state(client))["assignments"] == []


# -- reads ------------------------------------------------------------------------------


async def test_get_contact_object(client: Client) -> None:
    resp = await client.get("/v1/contact/phone:%2B15551234567", headers=AUTH)
    contact = await resp.json()
    assert contact["id"] == 2
    assert contact["phone"] == "+15551234567"
    assert contact["assignee"] == {
        "id": 17,
        "firstName": "Jane",
        "lastName": "Smith",
        "email": "jane@acme.com",
    }
    expected = {"id", "firstName", "lastName", "phone", "email", "language", "profilePic",
                "countryCode", "custom_fields", "status", "tags", "assignee", "lifecycle",
                "created_at", "isBlocked"}  # fmt: skip
    assert set(contact) == expected


async def test_list_users_hides_pending_invitations(client: Client) -> None:
    body = await (await client.get("/v1/space/user", headers=AUTH)).json()
    assert [u["id"] for u in body["items"]] == [17, 18, 19]
    assert body["items"][0] == {
        "id": 17,
        "firstName": "Jane",
        "lastName": "Smith",
        "email": "jane@acme.com",
        "role": "agent",
        "team": {"id": 1, "name": "Support"},
        "restrictions": [],
    }
    assert body["pagination"] == {"next": None, "previous": None}


async def test_list_users_pages_with_cursor(client: Client) -> None:
    first = await (await client.get("/v1/space/user?limit=2", headers=AUTH)).json()
    assert [u["id"] for u in first["items"]] == [17, 18]
    assert first["pagination"]["next"].endswith("/v1/space/user?limit=2&cursorId=18")
    second = await (await client.session.get(first["pagination"]["next"], headers=AUTH)).json()
    assert [u["id"] for u in second["items"]] == [19]
    assert second["pagination"]["next"] is None
    assert second["pagination"]["previous"].endswith("/v1/space/user?limit=2")


@pytest.mark.parametrize("query", ["limit=0", "limit=100", "limit=abc", "cursorId=x"])
async def test_list_users_bad_query_is_400(client: Client, query: str) -> None:
    resp = await client.get(f"/v1/space/user?{query}", headers=AUTH)
    assert resp.status == 400


async def test_list_users_limit_99_is_ok(client: Client) -> None:
    assert (await client.get("/v1/space/user?limit=99", headers=AUTH)).status == 200


async def test_get_user(client: Client) -> None:
    assert (await (await client.get("/v1/space/user/18", headers=AUTH)).json())["email"] == (
        "bob@acme.com"
    )
    assert (await client.get("/v1/space/user/20", headers=AUTH)).status == 404
    assert (await client.get("/v1/space/user/abc", headers=AUTH)).status == 400


# -- rate limit ---------------------------------------------------------------------------


async def test_rate_limit_sliding_window(client: Client, clock: FakeClock) -> None:
    path = "/v1/contact/id:1"
    for expected_remaining in ("4", "3", "2", "1", "0"):
        resp = await client.get(path, headers=AUTH)
        assert resp.status == 200
        assert resp.headers["X-RateLimit-Limit"] == "5"
        assert resp.headers["X-RateLimit-Remaining"] == expected_remaining
        clock.now += 0.1
    clock.now = 1000.4  # hits at 1000.0 .. 1000.4
    resp = await client.get(path, headers=AUTH)
    assert resp.status == 429
    assert await resp.json() == {"code": 429, "message": "Too Many Requests"}
    assert resp.headers["Retry-After"] == "1"  # 0.6 s rounded up
    assert resp.headers["X-RateLimit-Limit"] == "5"
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    clock.now = 1000.99
    assert (await client.get(path, headers=AUTH)).status == 429
    clock.now = 1001.0  # the 1000.0 hit leaves the window: exactly one slot frees
    assert (await client.get(path, headers=AUTH)).status == 200
    assert (await client.get(path, headers=AUTH)).status == 429
    assert (await state(client))["rate_limit"]["admitted"] == 6
    assert (await state(client))["rate_limit"]["rejected"] == 3


async def test_rate_limit_is_per_method_and_path(client: Client) -> None:
    for _ in range(5):
        assert (await client.get("/v1/contact/id:1", headers=AUTH)).status == 200
    assert (await client.get("/v1/contact/id:2", headers=AUTH)).status == 200
    assert (await assign(client, "id:1", {"assignee": 17}))[0] == 200
    assert (await client.get("/v1/contact/id:1", headers=AUTH)).status == 429


async def test_rejected_429_does_not_apply_the_assignment(client: Client) -> None:
    for _ in range(5):
        assert (await assign(client, "id:1", {"assignee": 17}))[0] == 200
    assert (await assign(client, "id:1", {"assignee": 18}))[0] == 429
    assert (await state(client))["contacts"]["1"]["assignee"] == 17


async def test_unauthorized_requests_do_not_count(client: Client) -> None:
    for _ in range(10):
        assert (await client.get("/v1/contact/id:1")).status == 401
    assert (await client.get("/v1/contact/id:1", headers=AUTH)).status == 200


async def test_rate_limit_toggle(client: Client) -> None:
    resp = await client.post("/_sandbox/ratelimit", json={"enabled": False})
    assert await resp.json() == {"enabled": False}
    for _ in range(8):
        resp = await client.get("/v1/contact/id:1", headers=AUTH)
        assert resp.status == 200
    assert "X-RateLimit-Limit" not in resp.headers
    assert (await client.post("/_sandbox/ratelimit", json={"enabled": "no"})).status == 400
    await client.post("/_sandbox/ratelimit", json={"enabled": True})
    for _ in range(5):
        await client.get("/v1/contact/id:1", headers=AUTH)
    assert (await client.get("/v1/contact/id:1", headers=AUTH)).status == 429


async def test_rate_limit_off_at_creation(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(rate_limit=False))
    statuses = {(await client.get("/v1/contact/id:1", headers=AUTH)).status for _ in range(10)}
    assert statuses == {200}


# -- 449 --------------------------------------------------------------------------------


async def test_processing_contact_answers_449_until_ready(client: Client, clock: FakeClock) -> None:
    status, body = await assign(client, "id:5", {"assignee": 17})
    assert (status, body) == (449, {"code": 449, "message": QUEUED_MESSAGE})
    assert body["message"] == (
        "Your request cannot be processed at the moment as it is currently in queue. "
        "Please try again in a few minutes."
    )
    assert (await client.get("/v1/contact/phone:%2B15550000005", headers=AUTH)).status == 449
    assert (await state(client))["assignments"] == []
    clock.now += 2.0
    assert await assign(client, "id:5", {"assignee": 17}) == (200, {"contactId": 5})


async def test_contact_with_zero_processing_is_never_queued(client: Client) -> None:
    assert await assign(client, "id:4", {"assignee": 17}) == (200, {"contactId": 4})


# -- faults, journal, reset -----------------------------------------------------------


async def test_injected_429_has_aelyst_headers(client: Client) -> None:
    await client.post("/_sandbox/faults", json={"kind": "status", "status": 429, "retry_after": 3})
    status, body = await assign(client, "id:1", {"assignee": 17})
    assert (status, body) == (429, {"code": 429, "message": "Too Many Requests"})
    assert (await state(client))["contacts"]["1"]["assignee"] is None


async def test_injected_429_headers(client: Client) -> None:
    await client.post("/_sandbox/faults", json={"kind": "status", "status": 429, "retry_after": 3})
    resp = await client.get("/v1/contact/id:1", headers=AUTH)
    assert resp.headers["Retry-After"] == "3"
    assert resp.headers["X-RateLimit-Limit"] == "5"
    assert resp.headers["X-RateLimit-Remaining"] == "0"


@pytest.mark.parametrize(
    ("status", "message"), [(449, QUEUED_MESSAGE), (500, "Unexpected error occurred")]
)
async def test_injected_status_uses_documented_text(
    client: Client, status: int, message: str
) -> None:
    await client.post("/_sandbox/faults", json={"kind": "status", "status": status})
    assert await assign(client, "id:1", {"assignee": 17}) == (
        status,
        {"code": status, "message": message},
    )


async def test_journal_records_raw_encoded_path_and_headers(client: Client) -> None:
    await assign(client, "phone:%2B60121233112", {"assignee": 17})
    [entry] = (await (await client.get("/_sandbox/journal")).json())["entries"]
    assert entry["path"] == "/v1/contact/phone:%2B60121233112/conversation/assignee"
    assert entry["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert entry["body"] == '{"assignee": 17}'
    assert entry["status"] == 200


async def test_reset_restores_seed_and_restarts_timers(client: Client, clock: FakeClock) -> None:
    clock.now += 5
    await assign(client, "id:2", {"assignee": None})
    await assign(client, "id:5", {"assignee": 18})
    await client.post("/_sandbox/ratelimit", json={"enabled": False})
    assert await (await client.post("/_sandbox/reset")).json() == {"reset": True}
    snapshot = await state(client)
    assert snapshot["contacts"]["2"]["assignee"] == 17
    assert snapshot["contacts"]["5"]["assignee"] is None
    assert snapshot["assignments"] == []
    assert snapshot["rate_limit"] == {"enabled": True, "admitted": 0, "rejected": 0, "paths": {}}
    assert (await assign(client, "id:5", {"assignee": 18}))[0] == 449


async def test_seed_file_override(aiohttp_client: Any, tmp_path: Any) -> None:
    seed = tmp_path / "aelyst.yaml"
    seed.write_text(
        "users: [{id: 1, firstName: A, lastName: B, email: a@b.co}]\n"
        "contacts: [{id: 7, phone: '+15550000007'}]\n"
    )
    client = await aiohttp_client(create_app(data_file=seed))
    assert await assign(client, "id:7", {"assignee": "a@b.co"}) == (200, {"contactId": 7})
