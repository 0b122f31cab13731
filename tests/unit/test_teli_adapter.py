from __future__ import annotations

import re
import time
from email.utils import formatdate
from typing import Any

import pytest

from gateway import errors
from gateway.registry import adapters
from gateway.spi import (
    E164,
    Adapter,
    AssignCommand,
    AssigneeRef,
    ContactRef,
    ProviderUserId,
    TenantContext,
    UnassignCommand,
    UpstreamRequest,
    UpstreamResponse,
)
from providers.teli import wire
from providers.teli.adapter import TeliAdapter
from tests.unit.fake_upstream import FakeUpstream, json_reply, outcome, raw_reply

PHONE = E164("+15551234567")
TENANT = TenantContext("acme", "US", campaign_id="camp_abc123", organization_id="org_456")
HTML = "<html><body><h1>502 Bad Gateway</h1></body></html>"
ASSIGNED = {
    "success": True,
    "message": "Thread assigned to Jane Smith",
    "thread_id": "+15551234567_camp_abc123",
    "assigned_to": {"user_id": "user_xyz789", "name": "Jane Smith"},
    "powered_by": "Teli",
}
USERS = {
    "success": True,
    "count": 4,
    "users": [
        {"unique_id": "1763661807373x532913854895880007", "email": "Jane@Acme.com",
         "name": "Jane Smith", "status": "active"},
        {"unique_id": "1763661807373x000000000000000001", "email": "old@acme.com",
         "name": "Old Timer", "status": "inactive"},
        {"unique_id": "1763661807373x000000000000000002", "email": "sus@acme.com",
         "status": "suspended"},
        {"unique_id": "1763661807373x000000000000000003", "name": "No Email", "status": "active"},
    ],
}


def teli_error(status: int, text: str) -> UpstreamResponse:
    return json_reply(status, {"error": text, "success": False, "powered_by": "Teli"})


def assign_cmd(assignee: AssigneeRef, tenant: TenantContext = TENANT, **kw: Any) -> AssignCommand:
    kw.setdefault("campaign_id", tenant.campaign_id)
    return AssignCommand(tenant, ContactRef("phone", PHONE), assignee, **kw)


# --- pure wire functions ---------------------------------------------------------------


def test_assign_request_with_every_field() -> None:
    request = wire.assign_request(
        "camp_abc123", PHONE, ProviderUserId("user_xyz789"), "org_456", "admin_user_001"
    )
    assert request == UpstreamRequest(
        "assign", "POST", "/v1/threads/assign",
        json={
            "campaign_id": "camp_abc123",
            "phone_number": "+15551234567",
            "assigned_user_id": "user_xyz789",
            "organization_id": "org_456",
            "assigned_by": "admin_user_001",
        },
    )


def test_assign_request_leaves_out_optional_fields() -> None:
    request = wire.assign_request("camp_abc123", PHONE, ProviderUserId("user_xyz789"))
    assert request.json == {
        "campaign_id": "camp_abc123",
        "phone_number": "+15551234567",
        "assigned_user_id": "user_xyz789",
    }
    assert request.query == ()


def test_unassign_and_users_requests() -> None:
    assert wire.unassign_request("camp_abc123", PHONE) == UpstreamRequest(
        "unassign", "POST", "/v1/threads/unassign",
        json={"campaign_id": "camp_abc123", "phone_number": "+15551234567"},
    )
    assert wire.users_request("org_456") == UpstreamRequest(
        "lookup_assignee", "GET", "/v1/organizations/org_456/users"
    )
    assert wire.users_request("a/b").path == "/v1/organizations/a%2Fb/users"


def test_read_assign() -> None:
    assert wire.read_assign(json_reply(200, ASSIGNED)) == outcome(
        "+15551234567_camp_abc123", "user_xyz789", "Jane Smith"
    )


def test_read_unassign() -> None:
    body = {"success": True, "message": "Thread unassigned",
            "thread_id": "+15551234567_camp_abc123", "powered_by": "Teli"}
    assert wire.read_unassign(json_reply(200, body)) == outcome("+15551234567_camp_abc123")


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (teli_error(400, "campaign_id, phone_number, and assigned_user_id are required"),
         errors.UpstreamRejected),
        (json_reply(401, {"error": "Invalid API key", "powered_by": "Teli"}),
         errors.UpstreamAuthFailed),
        (json_reply(403, {"success": False, "error": "Admin permission required", "detail": "x"}),
         errors.UpstreamAuthFailed),
        (teli_error(404, "User 'user_xyz789' not found"), errors.AssigneeNotFound),
        (teli_error(404, "Thread not found for +15551234567 in campaign camp_abc123"),
         errors.ContactNotFound),
        # Not one of Teli's documented 404 texts: a wrong base_url (Teli-shaped or not)
        # says nothing about the thread or the user.
        (raw_reply(404, HTML), errors.UpstreamRejected),
        (teli_error(404, "Not found"), errors.UpstreamRejected),
        (teli_error(404, "Campaign not found"), errors.UpstreamRejected),
        (teli_error(409, "conflict"), errors.UpstreamRejected),
        (teli_error(422, "nope"), errors.UpstreamRejected),
        (raw_reply(429, ""), errors.UpstreamRateLimited),
        (teli_error(500, "Failed to assign thread"), errors.UpstreamServerError),
        (raw_reply(502, HTML), errors.UpstreamServerError),
        (raw_reply(503, ""), errors.UpstreamServerError),
        (raw_reply(504, HTML), errors.UpstreamServerError),
        (raw_reply(302, ""), errors.UpstreamMalformed),
    ],
)
def test_read_assign_maps_error_statuses(
    response: UpstreamResponse, expected: type[errors.GatewayError]
) -> None:
    with pytest.raises(expected) as caught:
        wire.read_assign(response)
    assert type(caught.value) is expected
    # Our own texts only: no phone, no id or text from the upstream body.
    for leak in ("+1555", "camp_abc123", "user_xyz789", "<html", "Invalid API key", "Admin"):
        assert leak not in caught.value.detail


def test_unassign_404_is_the_thread_only_when_teli_says_so() -> None:
    with pytest.raises(errors.ContactNotFound):
        wire.read_unassign(teli_error(404, "Thread not found"))
    # The only documented 404 here is "Thread not found"; anything else is no
    # statement about the thread (and never about a user: none is sent).
    for response in (teli_error(404, "User 'x' not found"), teli_error(404, "Not found"),
                     raw_reply(404, HTML)):
        with pytest.raises(errors.UpstreamRejected):
            wire.read_unassign(response)


@pytest.mark.parametrize(
    "body",
    [
        HTML,
        '{"success": true, "thread_id": "+1555',
        "",
        "[]",
        '{"success": true, "message": "ok"}',
        '{"success": true, "thread_id": "t", "assigned_to": {"name": "Jane"}}',
        '{"success": true, "thread_id": 42, "assigned_to": {"user_id": "u"}}',
    ],
)
def test_read_assign_refuses_undocumented_2xx_bodies(body: str) -> None:
    with pytest.raises(errors.UpstreamMalformed):
        wire.read_assign(raw_reply(200, body))


def test_success_false_on_2xx_is_a_rejection() -> None:
    with pytest.raises(errors.UpstreamRejected):
        wire.read_assign(json_reply(200, {**ASSIGNED, "success": False}))


def test_429_carries_retry_after() -> None:
    with pytest.raises(errors.UpstreamRateLimited) as caught:
        wire.read_assign(UpstreamResponse(429, {"Retry-After": "7"}, b"{}"))
    assert caught.value.retry_after == 7.0
    with pytest.raises(errors.UpstreamRateLimited) as caught:
        wire.read_assign(raw_reply(429, ""))
    assert caught.value.retry_after is None


def test_read_users_keeps_active_users_by_lower_case_email() -> None:
    assert wire.read_users(json_reply(200, USERS)) == {
        "jane@acme.com": ("1763661807373x532913854895880007", "Jane Smith"),
    }


@pytest.mark.parametrize("body", [HTML, '{"success": true}', '{"users": {}}'])
def test_read_users_refuses_undocumented_bodies(body: str) -> None:
    with pytest.raises(errors.UpstreamMalformed):
        wire.read_users(raw_reply(200, body))


def test_read_users_unknown_organization() -> None:
    with pytest.raises(errors.UpstreamRejected):
        wire.read_users(teli_error(404, "Organization not found"))


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {"Retry-After": "3"}, 3.0),
        (429, {"retry-after": "1.5"}, 1.5),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past
        (429, {"Retry-After": "soon"}, None),
        (429, {"Retry-After": "-4"}, None),
        (429, {}, None),
        (429, {"X-RateLimit-Remaining": "0"}, 1.0),
        (200, {"X-RateLimit-Remaining": "0"}, 1.0),
        (200, {"X-RateLimit-Remaining": "4"}, None),
        (200, {"Retry-After": "3"}, None),
    ],
)
def test_rate_feedback(status: int, headers: dict[str, str], expected: float | None) -> None:
    assert wire.rate_feedback(UpstreamResponse(status, headers, b"{}")) == expected


def test_rate_feedback_reads_an_http_date() -> None:
    headers = {"Retry-After": formatdate(time.time() + 30, usegmt=True)}
    wait = wire.rate_feedback(UpstreamResponse(429, headers, b""))
    assert wait is not None
    assert 27 < wait <= 30


# --- adapter orchestration through the fake upstream -------------------------------------


def test_adapter_declarations() -> None:
    adapter: Adapter = TeliAdapter("teli-main", "sekret-key")
    assert adapters()["teli"] is TeliAdapter
    assert "sekret" not in repr(adapter)
    assert "sekret" not in str(adapter)
    assert adapter.auth_headers() == {"X-API-Key": "sekret-key"}
    caps = TeliAdapter.capabilities
    assert caps.public() == {
        "unassign": True, "modes": ["replace"],
        "contact_kinds": ["phone"], "assignee_kinds": ["email", "id"],
    }
    assert TeliAdapter.defaults.base_url == "https://partner.teli.ai/api/proxy"
    assert TeliAdapter.defaults.rate_limit.rate == 10


@pytest.mark.parametrize("user_id", ["1763661807373x532913854895880007", "user_xyz789"])
def test_assignee_id_pattern_accepts_documented_shapes(user_id: str) -> None:
    assert re.fullmatch(TeliAdapter.capabilities.assignee_id_pattern, user_id)


async def test_assign_by_id_sends_one_request() -> None:
    upstream = FakeUpstream().on("POST", "/v1/threads/assign", json_reply(200, ASSIGNED))
    cmd = assign_cmd(AssigneeRef("id", "user_xyz789"), assigned_by="admin_user_001")
    result = await TeliAdapter("t", "k").assign(upstream, cmd)
    assert result == outcome("+15551234567_camp_abc123", "user_xyz789", "Jane Smith")
    [request] = upstream.requests
    assert request.json["assigned_user_id"] == "user_xyz789"
    assert request.json["organization_id"] == "org_456"
    assert request.json["assigned_by"] == "admin_user_001"


async def test_assign_by_email_looks_up_the_organization_once() -> None:
    upstream = (
        FakeUpstream()
        .on("GET", "/v1/organizations/org_456/users", json_reply(200, USERS))
        .on("POST", "/v1/threads/assign", json_reply(200, ASSIGNED), json_reply(200, ASSIGNED))
    )
    adapter = TeliAdapter("t", "k")
    for _ in range(2):
        await adapter.assign(upstream, assign_cmd(AssigneeRef("email", "jane@acme.com")))
    assert upstream.loads == [("teli.users", "org_456")]
    assert [r.operation for r in upstream.requests] == ["lookup_assignee", "assign", "assign"]
    assert upstream.requests[1].json["assigned_user_id"] == "1763661807373x532913854895880007"


@pytest.mark.parametrize("email", ["old@acme.com", "sus@acme.com", "nobody@acme.com"])
async def test_assign_by_email_needs_an_active_user(email: str) -> None:
    upstream = FakeUpstream().on("GET", "/v1/organizations/org_456/users", json_reply(200, USERS))
    with pytest.raises(errors.AssigneeNotFound) as caught:
        await TeliAdapter("t", "k").assign(upstream, assign_cmd(AssigneeRef("email", email)))
    assert email not in caught.value.detail
    assert [r.operation for r in upstream.requests] == ["lookup_assignee"]


async def test_assign_by_email_without_organization_is_untranslatable() -> None:
    tenant = TenantContext("acme", "US", campaign_id="camp_abc123")
    upstream = FakeUpstream()
    with pytest.raises(errors.UntranslatableIdentifier):
        await TeliAdapter("t", "k").assign(
            upstream, assign_cmd(AssigneeRef("email", "jane@acme.com"), tenant)
        )
    assert upstream.requests == []


async def test_assign_without_campaign_is_invalid() -> None:
    upstream = FakeUpstream()
    cmd = assign_cmd(AssigneeRef("id", "user_xyz789"), campaign_id=None)
    with pytest.raises(errors.InvalidRequest) as caught:
        await TeliAdapter("t", "k").assign(upstream, cmd)
    assert caught.value.errors == [{
        "field": "campaign_id",
        "message": "required: the tenant's provider (Teli) keys threads by phone and campaign",
    }]
    assert upstream.requests == []


async def test_assign_refuses_add_mode() -> None:
    with pytest.raises(errors.UnsupportedOperation):
        await TeliAdapter("t", "k").assign(
            FakeUpstream(), assign_cmd(AssigneeRef("id", "u"), mode="add")
        )


async def test_unassign() -> None:
    body = {"success": True, "message": "Thread unassigned",
            "thread_id": "+15551234567_camp_abc123", "powered_by": "Teli"}
    upstream = FakeUpstream().on("POST", "/v1/threads/unassign", json_reply(200, body))
    cmd = UnassignCommand(TENANT, ContactRef("phone", PHONE), campaign_id="camp_abc123")
    assert await TeliAdapter("t", "k").unassign(upstream, cmd) == outcome(
        "+15551234567_camp_abc123"
    )
    assert upstream.requests[0].json == {"campaign_id": "camp_abc123", "phone_number": PHONE}


async def test_unassign_without_campaign_is_invalid() -> None:
    cmd = UnassignCommand(TENANT, ContactRef("phone", PHONE))
    with pytest.raises(errors.InvalidRequest):
        await TeliAdapter("t", "k").unassign(FakeUpstream(), cmd)


async def test_transport_errors_pass_through() -> None:
    upstream = FakeUpstream().on("POST", "/v1/threads/assign", errors.UpstreamTimeout())
    with pytest.raises(errors.UpstreamTimeout):
        await TeliAdapter("t", "k").assign(upstream, assign_cmd(AssigneeRef("id", "u")))
