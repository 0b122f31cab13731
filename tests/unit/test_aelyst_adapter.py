from __future__ import annotations

import re
from typing import Any

import pytest

from gateway import errors
from gateway.registry import adapters
from gateway.spi import (
    Adapter,
    AssignCommand,
    AssigneeRef,
    ContactRef,
    Outcome,
    TenantContext,
    UnassignCommand,
    UpstreamRequest,
    UpstreamResponse,
)
from providers.aelyst import wire
from providers.aelyst.adapter import AelystAdapter
from tests.unit.fake_upstream import FakeUpstream, json_reply, outcome, raw_reply

TENANT = TenantContext("acme", "MY")
PHONE = ContactRef("phone", "+60121233112")
PHONE_PATH = "/contact/phone:%2B60121233112/conversation/assignee"
HTML = "<html><body>Service Unavailable</body></html>"
QUEUED = {"code": 449, "message": "Your request cannot be processed at the moment as it is "
          "currently in queue. Please try again in a few minutes."}


def aelyst_error(status: int, message: str, headers: dict[str, str] | None = None,
                 ) -> UpstreamResponse:
    return json_reply(status, {"code": status, "message": message}, headers)


# --- pure wire functions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "identifier", "path"),
    [
        (PHONE, "phone:+60121233112", PHONE_PATH),
        (ContactRef("email", "abdc@gmail.com"), "email:abdc@gmail.com",
         "/contact/email:abdc@gmail.com/conversation/assignee"),
        (ContactRef("id", "123"), "id:123", "/contact/id:123/conversation/assignee"),
        (ContactRef("email", "a/b?c#d@x.io"), "email:a/b?c#d@x.io",
         "/contact/email:a%2Fb%3Fc%23d@x.io/conversation/assignee"),
    ],
)
def test_identifier_and_path(ref: ContactRef, identifier: str, path: str) -> None:
    assert wire.identifier(ref) == identifier
    assert wire.assignee_request(ref, None).path == path


def test_assign_by_id_sends_an_integer() -> None:
    assert wire.assignee_request(PHONE, AssigneeRef("id", "17")) == UpstreamRequest(
        "assign", "POST", PHONE_PATH, json={"assignee": 17}
    )


def test_assign_by_email_sends_the_email() -> None:
    request = wire.assignee_request(PHONE, AssigneeRef("email", "jane@acme.com"))
    assert request.json == {"assignee": "jane@acme.com"}


def test_unassign_sends_null() -> None:
    assert wire.assignee_request(PHONE, None) == UpstreamRequest(
        "unassign", "POST", PHONE_PATH, json={"assignee": None}
    )


@pytest.mark.parametrize("value", ["abc", "1.5", "-3", "١٢"])
def test_non_numeric_assignee_id_is_invalid(value: str) -> None:
    with pytest.raises(errors.InvalidRequest):
        wire.assignee_request(PHONE, AssigneeRef("id", value))


@pytest.mark.parametrize(
    ("assignee", "expected"),
    [
        (AssigneeRef("id", "17"), outcome("42", "17")),
        (AssigneeRef("email", "jane@acme.com"), outcome("42", "jane@acme.com")),
        (None, outcome("42")),
    ],
)
def test_read_assignee(assignee: AssigneeRef | None, expected: Outcome) -> None:
    assert wire.read_assignee(json_reply(200, {"contactId": 42}), assignee) == expected


@pytest.mark.parametrize(
    "body", [HTML, '{"contactId": 4', "", "{}", '{"contactId": "42"}', '{"contactId": true}',
             '{"contactId": 4.5}', "[42]"],
)
def test_read_assignee_refuses_undocumented_2xx_bodies(body: str) -> None:
    with pytest.raises(errors.UpstreamMalformed):
        wire.read_assignee(raw_reply(200, body), None)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (aelyst_error(400, "Validation error."), errors.UpstreamRejected),
        (aelyst_error(401, "UN_AUTHORIZED"), errors.UpstreamAuthFailed),
        (aelyst_error(403, "Forbidden"), errors.UpstreamAuthFailed),
        (aelyst_error(404, "Contact not found"), errors.ContactNotFound),
        (aelyst_error(404, "User not found"), errors.AssigneeNotFound),
        # Not Aelyst's {code, message} not-found answer: a wrong base_url or a proxy's
        # 404 is no statement about the contact or the assignee.
        (raw_reply(404, HTML), errors.UpstreamRejected),
        (raw_reply(404, "404: Not Found"), errors.UpstreamRejected),
        (json_reply(404, {"message": "Contact not found"}), errors.UpstreamRejected),
        (aelyst_error(404, "Not Found"), errors.UpstreamRejected),
        (aelyst_error(409, "Conflict"), errors.UpstreamRejected),
        (aelyst_error(429, "Too Many Requests", {"Retry-After": "1"}), errors.UpstreamRateLimited),
        (json_reply(449, QUEUED), errors.UpstreamQueued),
        (aelyst_error(500, "Unexpected error occurred"), errors.UpstreamServerError),
        (raw_reply(502, HTML), errors.UpstreamServerError),
        (raw_reply(503, HTML), errors.UpstreamServerError),
        (raw_reply(504, ""), errors.UpstreamServerError),
        (raw_reply(301, ""), errors.UpstreamMalformed),
    ],
)
def test_read_assignee_maps_error_statuses(
    response: UpstreamResponse, expected: type[errors.GatewayError]
) -> None:
    with pytest.raises(expected) as caught:
        wire.read_assignee(response, AssigneeRef("id", "17"))
    assert type(caught.value) is expected
    for leak in ("UN_AUTHORIZED", "Validation error", "Unexpected error", "<html", "60121"):
        assert leak not in caught.value.detail


def test_unassign_404_is_never_the_assignee() -> None:
    with pytest.raises(errors.ContactNotFound):
        wire.read_assignee(aelyst_error(404, "Contact not found"), None)
    # Unassign sends no user: a 404 naming one is not an answer about this request.
    with pytest.raises(errors.UpstreamRejected):
        wire.read_assignee(aelyst_error(404, "User not found"), None)
    with pytest.raises(errors.UpstreamRejected):
        wire.read_assignee(raw_reply(404, "404: Not Found"), None)


@pytest.mark.parametrize(
    ("response", "expected_cls", "retry_after"),
    [
        (aelyst_error(429, "Too Many Requests", {"Retry-After": "1"}),
         errors.UpstreamRateLimited, 1.0),
        (aelyst_error(429, "Too Many Requests"), errors.UpstreamRateLimited, None),
        (json_reply(449, QUEUED), errors.UpstreamQueued, None),
        (json_reply(449, QUEUED, {"Retry-After": "60"}), errors.UpstreamQueued, 60.0),
    ],
)
def test_retryable_errors_carry_retry_after(
    response: UpstreamResponse, expected_cls: type[errors.GatewayError], retry_after: float | None
) -> None:
    with pytest.raises(expected_cls) as caught:
        wire.read_assignee(response, None)
    assert caught.value.retryable
    assert caught.value.retry_after == retry_after


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {"Retry-After": "1", "X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0"}, 1.0),
        (429, {"Retry-After": "2.5"}, 2.5),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        (449, {"Retry-After": "60"}, None),  # queued, not a rate signal
        (200, {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0"}, 1.0),
        (200, {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "2"}, None),
        (200, {}, None),
    ],
)
def test_rate_feedback(status: int, headers: dict[str, str], expected: float | None) -> None:
    assert wire.rate_feedback(UpstreamResponse(status, headers, b"")) == expected


# --- adapter orchestration through the fake upstream -------------------------------------


def test_adapter_declarations() -> None:
    adapter: Adapter = AelystAdapter("aelyst-main", "sekret-token")
    assert adapters()["aelyst"] is AelystAdapter
    assert "sekret" not in repr(adapter)
    assert adapter.auth_headers() == {"Authorization": "Bearer sekret-token"}
    caps = AelystAdapter.capabilities
    assert caps.public() == {
        "unassign": True, "modes": ["replace"],
        "contact_kinds": ["phone", "email", "id"], "assignee_kinds": ["email", "id"],
    }
    assert re.fullmatch(caps.assignee_id_pattern, "17")
    assert not re.fullmatch(caps.contact_id_pattern, "id:17")
    defaults = AelystAdapter.defaults
    assert defaults.base_url == "https://api.aelyst.ai/v1"
    assert (defaults.rate_limit.rate, defaults.rate_limit.burst, defaults.rate_limit.scope) == (
        5, 1, "path")
    assert (defaults.retry.max_attempts, defaults.retry.queued_backoff_s) == (6, 30)


@pytest.mark.parametrize(
    ("assignee", "body"),
    [(AssigneeRef("id", "17"), {"assignee": 17}),
     (AssigneeRef("email", "jane@acme.com"), {"assignee": "jane@acme.com"})],
)
async def test_assign_sends_one_request_without_lookup(assignee: AssigneeRef, body: Any) -> None:
    upstream = FakeUpstream().on("POST", PHONE_PATH, json_reply(200, {"contactId": 42}))
    result = await AelystAdapter("a", "k").assign(upstream, AssignCommand(TENANT, PHONE, assignee))
    assert result == outcome("42", assignee.value, None)
    [request] = upstream.requests
    assert request.json == body
    assert upstream.loads == []


async def test_assign_refuses_add_mode() -> None:
    cmd = AssignCommand(TENANT, PHONE, AssigneeRef("id", "17"), mode="add")
    with pytest.raises(errors.UnsupportedOperation):
        await AelystAdapter("a", "k").assign(FakeUpstream(), cmd)


async def test_unassign() -> None:
    upstream = FakeUpstream().on("POST", "/contact/id:42/conversation/assignee",
                                 json_reply(200, {"contactId": 42}))
    cmd = UnassignCommand(TENANT, ContactRef("id", "42"))
    assert await AelystAdapter("a", "k").unassign(upstream, cmd) == outcome("42")
    assert upstream.requests[0].json == {"assignee": None}


async def test_queued_contact_surfaces_as_retryable() -> None:
    upstream = FakeUpstream().on("POST", PHONE_PATH, json_reply(449, QUEUED))
    with pytest.raises(errors.UpstreamQueued) as caught:
        await AelystAdapter("a", "k").assign(
            upstream, AssignCommand(TENANT, PHONE, AssigneeRef("id", "17")))
    assert caught.value.reason == "449"
