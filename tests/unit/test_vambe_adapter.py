from __future__ import annotations

import re
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
    Email,
    ProviderContactId,
    ProviderUserId,
    TenantContext,
    UnassignCommand,
    UpstreamRequest,
    UpstreamResponse,
)
from providers.vambe import wire
from providers.vambe.adapter import VambeAdapter
from tests.unit.fake_upstream import FakeUpstream, json_reply, outcome, raw_reply

CONTACT = "3f2c1a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f"
OTHER = "7e6d5c4b-3a2f-4e1d-8c0b-a9f8e7d6c5b4"
MEMBER = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
PHONE = E164("+56912345678")
TENANT = TenantContext("acme", "CL")
SEARCH = "/api/public/contacts/search"
MEMBERS = "/api/public/team-members/all"
ASSIGN = f"/api/public/contact/{CONTACT}/assign-team-member/{MEMBER}"
OK = {"success": True, "message": "Team member assigned successfully"}
HTML = "<html><body>Bad Gateway</body></html>"
TEAM = [
    {"id": MEMBER, "name": "Jane Smith", "first_name": "Jane", "last_name": "Smith",
     "email": "Jane@Acme.com", "phone": "+56900000001"},
    {"id": OTHER, "name": None, "first_name": "Ana", "last_name": "Pérez",
     "email": "ana@acme.com", "phone": None},
    {"id": "00000000-0000-4000-8000-000000000000", "name": "No Email", "email": None},
]


def contact(cid: str, phone: str | None, email: str | None = None, platform: str = "whatsapp",
            ) -> dict[str, Any]:
    return {"id": cid, "name": "Juan", "phone": phone, "email": email, "platform": platform,
            "chat_status": "ATTENDED", "created_at": "2025-01-01T00:00:00Z"}


def assign_cmd(contact_ref: ContactRef, assignee: AssigneeRef, **kw: Any) -> AssignCommand:
    return AssignCommand(TENANT, contact_ref, assignee, **kw)


# --- pure wire functions ---------------------------------------------------------------


def test_search_requests() -> None:
    assert wire.phone_search_request(PHONE) == UpstreamRequest(
        "lookup_contact", "GET", SEARCH, query=(("phone", "56912345678"),)
    )
    assert wire.email_search_request(Email("juan@x.cl")) == UpstreamRequest(
        "lookup_contact", "GET", SEARCH, query=(("email", "juan@x.cl"),)
    )
    assert wire.team_members_request() == UpstreamRequest("lookup_assignee", "GET", MEMBERS)


@pytest.mark.parametrize(
    ("mode", "flag"), [("replace", "true"), ("add", "false")]
)
def test_assign_request(mode: Any, flag: str) -> None:
    request = wire.assign_request(ProviderContactId(CONTACT), ProviderUserId(MEMBER), mode)
    assert request == UpstreamRequest(
        "assign", "POST", ASSIGN, query=(("removeExistingAgents", flag),), json=None
    )


def test_read_phone_search_keeps_exact_digit_matches_only() -> None:
    results = [
        contact(OTHER, "+569123456789"),  # a longer number containing ours
        contact(CONTACT, "+56 9 1234 5678"),  # ours, formatted differently
        contact(CONTACT, "56912345678", platform="instagram"),  # same contact, again
        contact(MEMBER, None, "juan@x.cl"),  # matched on another channel, no phone
    ]
    assert wire.read_phone_search(json_reply(200, results), PHONE) == CONTACT


def test_read_phone_search_lower_cases_ids() -> None:
    results = [contact(CONTACT.upper(), "+56912345678")]
    assert wire.read_phone_search(json_reply(200, results), PHONE) == CONTACT


def test_read_phone_search_with_several_contacts_is_ambiguous() -> None:
    results = [contact(CONTACT, "+56912345678"),
               contact(OTHER, "56912345678", platform="webchat")]
    with pytest.raises(errors.AmbiguousContact) as caught:
        wire.read_phone_search(json_reply(200, results), PHONE)
    detail = caught.value.detail
    assert "2 contacts" in detail
    assert "platforms: webchat, whatsapp" in detail
    assert "5691234" not in detail


@pytest.mark.parametrize("results", [[], [contact(OTHER, "+5691234567")]])
def test_read_phone_search_without_exact_match(results: list[Any]) -> None:
    with pytest.raises(errors.ContactNotFound) as caught:
        wire.read_phone_search(json_reply(200, results), PHONE)
    assert "5691234" not in caught.value.detail


def test_read_email_search_is_exact_but_ignores_case() -> None:
    results = [contact(OTHER, None, "xjuan@x.cl"), contact(CONTACT, None, "Juan@X.cl")]
    assert wire.read_email_search(json_reply(200, results), Email("juan@x.cl")) == CONTACT
    with pytest.raises(errors.ContactNotFound) as caught:
        wire.read_email_search(json_reply(200, results[:1]), Email("juan@x.cl"))
    assert "juan" not in caught.value.detail


@pytest.mark.parametrize("body", [HTML, "[{", '{"id": "x"}', '[{"phone": "+1"}]', "[7]"])
def test_read_search_refuses_undocumented_bodies(body: str) -> None:
    with pytest.raises(errors.UpstreamMalformed):
        wire.read_phone_search(raw_reply(200, body), PHONE)


def test_read_team_members_by_lower_case_email() -> None:
    assert wire.read_team_members(json_reply(200, TEAM)) == {
        "jane@acme.com": (MEMBER, "Jane Smith"),
        "ana@acme.com": (OTHER, "Ana Pérez"),  # no name: first + last
    }


def test_read_assign() -> None:
    response = json_reply(200, OK)
    result = wire.read_assign(response, ProviderContactId(CONTACT), ProviderUserId(MEMBER), "J")
    assert result == outcome(CONTACT, MEMBER, "J")


def test_read_assign_success_false_is_a_rejection() -> None:
    with pytest.raises(errors.UpstreamRejected):
        wire.read_assign(json_reply(200, {"success": False, "message": "no"}),
                         ProviderContactId(CONTACT), ProviderUserId(MEMBER))


@pytest.mark.parametrize("body", [HTML, '{"success": tr', "", '{"message": "ok"}', "[]"])
def test_read_assign_refuses_undocumented_2xx_bodies(body: str) -> None:
    with pytest.raises(errors.UpstreamMalformed):
        wire.read_assign(raw_reply(201, body), ProviderContactId(CONTACT), ProviderUserId(MEMBER))


def nest(status: int, message: Any) -> UpstreamResponse:
    return json_reply(status, {"statusCode": status, "message": message, "error": "x"})


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (nest(400, "Invalid contact or agent ID"), errors.UpstreamRejected),
        (nest(401, "Unauthorized"), errors.UpstreamAuthFailed),
        (raw_reply(403, HTML), errors.UpstreamAuthFailed),
        (nest(404, "Team member not found"), errors.AssigneeNotFound),
        (nest(404, "Agent does not belong to this organization"), errors.AssigneeNotFound),
        (nest(404, ["teamMemberId: team member not found"]), errors.AssigneeNotFound),
        (nest(404, "Contact not found"), errors.ContactNotFound),
        # Documented: 404 means the contact or the team member is not found; a body
        # naming neither is read as the contact, the path's subject.
        (json_reply(404, {"statusCode": 404}), errors.ContactNotFound),
        (raw_reply(404, HTML), errors.ContactNotFound),
        (nest(404, "Not Found"), errors.ContactNotFound),
        # Nest's unknown-route answer (a wrong base_url) is about neither.
        (nest(404, f"Cannot POST /api/public/api/public/contact/{CONTACT}/assign-team-member/"
                   f"{MEMBER}?removeExistingAgents=true"), errors.UpstreamRejected),
        (nest(409, "conflict"), errors.UpstreamRejected),
        (raw_reply(429, "", {"Retry-After": "12"}), errors.UpstreamRateLimited),
        (nest(500, "Internal server error"), errors.UpstreamServerError),
        (raw_reply(502, HTML), errors.UpstreamServerError),
        (raw_reply(503, ""), errors.UpstreamServerError),
        (raw_reply(504, HTML), errors.UpstreamServerError),
    ],
)
def test_read_assign_maps_error_statuses(
    response: UpstreamResponse, expected: type[errors.GatewayError]
) -> None:
    with pytest.raises(expected) as caught:
        wire.read_assign(response, ProviderContactId(CONTACT), ProviderUserId(MEMBER))
    assert type(caught.value) is expected
    for leak in (CONTACT, MEMBER, "<html", "organization", "Internal server"):
        assert leak not in caught.value.detail
    if expected is errors.UpstreamRateLimited:
        assert caught.value.retry_after == 12.0


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {"Retry-After": "5"}, 5.0),
        (429, {}, None),
        (200, {"x-ratelimit-remaining": "0"}, 1.0),
        (200, {}, None),
    ],
)
def test_rate_feedback(status: int, headers: dict[str, str], expected: float | None) -> None:
    assert wire.rate_feedback(UpstreamResponse(status, headers, b"")) == expected


# --- adapter orchestration through the fake upstream -------------------------------------


def test_adapter_declarations() -> None:
    adapter: Adapter = VambeAdapter("vambe-main", "sekret-key")
    assert adapters()["vambe"] is VambeAdapter
    assert "sekret" not in repr(adapter)
    assert adapter.auth_headers() == {"x-api-key": "sekret-key"}
    caps = VambeAdapter.capabilities
    assert caps.public() == {
        "unassign": False, "modes": ["replace", "add"],
        "contact_kinds": ["phone", "email", "id"], "assignee_kinds": ["email", "id"],
    }
    assert re.fullmatch(caps.contact_id_pattern, CONTACT)
    assert re.fullmatch(caps.assignee_id_pattern, MEMBER.upper())
    assert not re.fullmatch(caps.contact_id_pattern, "12345")
    assert VambeAdapter.defaults.base_url == "https://api.vambe.me"


async def test_assign_by_ids_sends_one_request() -> None:
    upstream = FakeUpstream().on("POST", ASSIGN, json_reply(200, OK))
    cmd = assign_cmd(ContactRef("id", CONTACT.upper()), AssigneeRef("id", MEMBER), mode="add")
    result = await VambeAdapter("v", "k").assign(upstream, cmd)
    assert result == outcome(CONTACT, MEMBER, None)
    [request] = upstream.requests
    assert request.query == (("removeExistingAgents", "false"),)
    assert request.json is None


async def test_assign_by_phone_and_email_resolves_both_once() -> None:
    search = [contact(OTHER, "+569123456780"), contact(CONTACT, "+56912345678")]
    upstream = (
        FakeUpstream()
        .on("GET", SEARCH, json_reply(200, search))
        .on("GET", MEMBERS, json_reply(200, TEAM))
        .on("POST", ASSIGN, json_reply(200, OK), json_reply(200, OK))
    )
    cmd = assign_cmd(ContactRef("phone", PHONE), AssigneeRef("email", "jane@acme.com"))
    adapter = VambeAdapter("v", "k")
    for _ in range(2):
        assert await adapter.assign(upstream, cmd) == outcome(CONTACT, MEMBER, "Jane Smith")
    assert upstream.loads == [("vambe.contact_phone", PHONE), ("vambe.team_members", "all")]
    assert [r.operation for r in upstream.requests] == [
        "lookup_contact", "lookup_assignee", "assign", "assign"]
    assert upstream.requests[2].query == (("removeExistingAgents", "true"),)


async def test_assign_by_contact_email() -> None:
    upstream = (
        FakeUpstream()
        .on("GET", SEARCH, json_reply(200, [contact(CONTACT, None, "juan@x.cl")]))
        .on("POST", ASSIGN, json_reply(200, OK))
    )
    cmd = assign_cmd(ContactRef("email", "juan@x.cl"), AssigneeRef("id", MEMBER))
    assert await VambeAdapter("v", "k").assign(upstream, cmd) == outcome(CONTACT, MEMBER)
    assert upstream.requests[0].query == (("email", "juan@x.cl"),)
    assert upstream.loads == [("vambe.contact_email", "juan@x.cl")]


async def test_ambiguous_phone_sends_no_assign() -> None:
    search = [contact(CONTACT, "+56912345678"), contact(OTHER, "+56912345678", platform="web")]
    upstream = FakeUpstream().on("GET", SEARCH, json_reply(200, search))
    cmd = assign_cmd(ContactRef("phone", PHONE), AssigneeRef("id", MEMBER))
    with pytest.raises(errors.AmbiguousContact):
        await VambeAdapter("v", "k").assign(upstream, cmd)
    assert [r.operation for r in upstream.requests] == ["lookup_contact"]


async def test_unknown_phone_is_cached_as_not_found() -> None:
    upstream = FakeUpstream().on("GET", SEARCH, json_reply(200, []))
    cmd = assign_cmd(ContactRef("phone", PHONE), AssigneeRef("id", MEMBER))
    adapter = VambeAdapter("v", "k")
    for _ in range(2):
        with pytest.raises(errors.ContactNotFound):
            await adapter.assign(upstream, cmd)
    assert len(upstream.requests) == 1


async def test_search_404_is_not_a_cached_contact_miss() -> None:
    # Search documents no 404 at all: the route is missing (a wrong base_url, here
    # with /api/public twice), which is no answer about the contact.
    route_miss = nest(404, f"Cannot GET /api/public/api/public/contacts/search?phone={PHONE[1:]}")
    upstream = FakeUpstream().on("GET", SEARCH, route_miss, route_miss)
    cmd = assign_cmd(ContactRef("phone", PHONE), AssigneeRef("id", MEMBER))
    adapter = VambeAdapter("v", "k")
    for _ in range(2):
        with pytest.raises(errors.UpstreamRejected) as caught:
            await adapter.assign(upstream, cmd)
        assert "Cannot" not in caught.value.detail
    assert len(upstream.requests) == 2  # searched again: no negative entry


def test_search_404_naming_the_contact_is_not_found() -> None:
    with pytest.raises(errors.ContactNotFound):
        wire.read_phone_search(nest(404, "Contact not found"), PHONE)


async def test_unknown_assignee_email() -> None:
    upstream = FakeUpstream().on("GET", MEMBERS, json_reply(200, TEAM))
    cmd = assign_cmd(ContactRef("id", CONTACT), AssigneeRef("email", "ghost@acme.com"))
    with pytest.raises(errors.AssigneeNotFound) as caught:
        await VambeAdapter("v", "k").assign(upstream, cmd)
    assert "ghost" not in caught.value.detail


async def test_unassign_is_unsupported() -> None:
    upstream = FakeUpstream()
    with pytest.raises(errors.UnsupportedOperation):
        await VambeAdapter("v", "k").unassign(
            upstream, UnassignCommand(TENANT, ContactRef("id", CONTACT))
        )
    assert upstream.requests == []
