"""Vambe's wire format for team-member assignment: pure builders and readers.

Sources: https://docs.vambe.me/reference/team-members/assign-team-member-to-contact,
.../team-members/get-all-team-members and .../contact/search-contacts. Contacts
and team members are UUIDs; error bodies are not documented at all (only the
statuses 400, 401, 404 and 500), so they are read defensively.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import orjson
from pydantic import TypeAdapter, ValidationError

from gateway.errors import (
    AmbiguousContact,
    AssigneeNotFound,
    ContactNotFound,
    ProviderError,
    UpstreamAuthFailed,
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
)
from gateway.spi import (
    E164,
    Email,
    Mode,
    Outcome,
    ProviderContactId,
    ProviderUserId,
    UpstreamRequest,
    UpstreamResponse,
    encode_segment,
    retry_after_s,
    standard_rate_feedback,
)
from providers.vambe.models import AssignResponse, Contact, TeamMember

#: email (lower-case) -> (team member id, display name).
TeamDirectory = dict[str, tuple[ProviderUserId, str | None]]


_CONTACTS = TypeAdapter(list[Contact])
_MEMBERS = TypeAdapter(list[TeamMember])
_ASSIGN = TypeAdapter(AssignResponse)
_NON_DIGITS = re.compile(r"\D")
_ROUTE_MISS = re.compile(r"cannot [a-z]+ /")  # Express: "Cannot GET /path"
T = TypeVar("T")


def search_request(field: Literal["phone", "email"], value: str) -> UpstreamRequest:
    return UpstreamRequest(
        "lookup_contact", "GET", "/api/public/contacts/search", query=((field, value),)
    )


def phone_search_request(phone: E164) -> UpstreamRequest:
    # Vambe sanitizes the phone itself; digits only keeps "+" out of the query string.
    return search_request("phone", _digits(phone))


def email_search_request(email: Email) -> UpstreamRequest:
    return search_request("email", email)


def read_phone_search(response: UpstreamResponse, phone: E164) -> ProviderContactId:
    # Search matches partial numbers across all channels ("12345678" finds
    # "+56912345678"), so only contacts whose digits equal ours count. Searching
    # the full number keeps the documented 50-result cap from hiding an exact hit.
    wanted = _digits(phone)
    return _pick(_contacts(response), lambda c: _digits(c.phone or "") == wanted, "phone")


def read_email_search(response: UpstreamResponse, email: Email) -> ProviderContactId:
    # Search matches partial addresses, ignoring case: keep exact ones only.
    wanted = email.strip().lower()
    return _pick(_contacts(response), lambda c: (c.email or "").strip().lower() == wanted, "email")


def team_members_request() -> UpstreamRequest:
    return UpstreamRequest("lookup_assignee", "GET", "/api/public/team-members/all")


def read_team_members(response: UpstreamResponse) -> TeamDirectory:
    _raise_for_status(response, lambda _: UpstreamRejected("Vambe has no team-member list here"))
    found: TeamDirectory = {}
    for member in _parse(_MEMBERS, response):
        if member.email:
            found.setdefault(
                member.email.strip().lower(),
                (ProviderUserId(member.id.lower()), member.display_name()),
            )
    return found


def assign_request(
    contact_id: ProviderContactId, member_id: ProviderUserId, mode: Mode
) -> UpstreamRequest:
    path = (f"/api/public/contact/{encode_segment(contact_id)}"
            f"/assign-team-member/{encode_segment(member_id)}")
    # Vambe's default (false) adds the agent next to the existing ones.
    remove = "true" if mode == "replace" else "false"
    return UpstreamRequest("assign", "POST", path, query=(("removeExistingAgents", remove),))


def read_assign(
    response: UpstreamResponse,
    contact_id: ProviderContactId,
    member_id: ProviderUserId,
    name: str | None = None,
) -> Outcome:
    _raise_for_status(response, _assign_not_found)
    if not _parse(_ASSIGN, response).success:
        raise UpstreamRejected("Vambe answered success: false")
    return Outcome(contact_id, member_id, name)


def rate_feedback(response: UpstreamResponse) -> float | None:
    # No limit or 429 is documented for these endpoints; honour the usual headers if sent.
    return standard_rate_feedback(response)


def _contacts(response: UpstreamResponse) -> list[Contact]:
    # Search answers an empty list when nothing matches and documents no 404: only
    # one that says the contact is not found is read as a miss.
    _raise_for_status(response, _search_not_found)
    return _parse(_CONTACTS, response)


def _pick(
    contacts: list[Contact], matches: Callable[[Contact], bool], kind: str
) -> ProviderContactId:
    hits = [c for c in contacts if matches(c)]
    ids = sorted({c.id.lower() for c in hits})
    if not ids:
        raise ContactNotFound(f"Vambe has no contact with this {kind}")
    if len(ids) > 1:
        # One person often exists once per channel; picking one would be a guess.
        platforms = ", ".join(sorted({c.platform or "unknown" for c in hits}))
        raise AmbiguousContact(
            f"Vambe has {len(ids)} contacts with this {kind} (platforms: {platforms}); "
            "send contact.id instead"
        )
    return ProviderContactId(ids[0])


def _search_not_found(response: UpstreamResponse) -> ProviderError:
    if _is_route_miss(response):
        return _route_miss()
    return ContactNotFound("Vambe has no contact for this search")


def _assign_not_found(response: UpstreamResponse) -> ProviderError:
    # Documented: 404 "Contact or team member not found", no body documented. A guess
    # from NestJS's default {statusCode, message, error}: a message naming the team
    # member or agent blames the assignee; anything else the contact, as documented,
    # except Nest's unknown-route answer ("Cannot POST /api/public/contact/..."),
    # which is no answer about either.
    if _is_route_miss(response):
        return _route_miss()
    text = _error_message(response).lower()
    if "team member" in text or "agent" in text:
        return AssigneeNotFound("Vambe has no team member with this id")
    return ContactNotFound("Vambe has no contact with this id")


def _is_route_miss(response: UpstreamResponse) -> bool:
    return _ROUTE_MISS.match(_error_message(response).lower()) is not None


def _route_miss() -> UpstreamRejected:
    # A 404 about no contact and no team member: most likely a wrong base_url (one
    # with /api/public already in it). Not the client's fault, never cached as a miss.
    return UpstreamRejected(
        "Vambe answered 404 without naming a contact or team member; check the base_url")


def _error_message(response: UpstreamResponse) -> str:
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return ""
    message: Any = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, list):  # NestJS validation pipes send a list of texts
        message = " ".join(m for m in message if isinstance(m, str))
    return message if isinstance(message, str) else ""


def _raise_for_status(
    response: UpstreamResponse, on_404: Callable[[UpstreamResponse], ProviderError]
) -> None:
    status = response.status
    if 200 <= status < 300:
        return
    if status in (401, 403):
        raise UpstreamAuthFailed(f"Vambe refused the gateway's API key ({status})")
    if status == 404:
        raise on_404(response)
    if status == 429:
        raise UpstreamRateLimited(
            "Vambe is rate limiting the gateway", retry_after=retry_after_s(response.headers))
    if 400 <= status < 500:
        raise UpstreamRejected(f"Vambe refused the request ({status})")
    if 500 <= status < 600:
        # A 503's Retry-After (RFC 9110) is passed on to the client when retries end.
        raise UpstreamServerError(f"Vambe failed to answer ({status})",
                                  retry_after=retry_after_s(response.headers))
    raise UpstreamMalformed(f"Vambe answered with an unexpected status ({status})")


def _parse(adapter: TypeAdapter[T], response: UpstreamResponse) -> T:
    try:
        return adapter.validate_python(orjson.loads(response.body))
    except (orjson.JSONDecodeError, ValidationError):
        # "from None": a validation error quotes the body, which must not reach logs.
        raise UpstreamMalformed(
            "Vambe answered with a body that is not its documented JSON") from None


def _digits(phone: str) -> str:
    return _NON_DIGITS.sub("", phone)
