"""Aelyst's wire format for conversation assignment: pure builders and readers.

Source: https://developers.aelyst.ai/api/operations/updateassignee/. One
endpoint does both: ``{"assignee": <user id int> | "<email>" | null}`` on
``POST /contact/{identifier}/conversation/assignee``, where the identifier is
``id:123``, ``email:a@b.c`` or ``phone:+60121233112``. Errors are ``{code, message}``.
"""

from __future__ import annotations

import re

import orjson
from pydantic import ValidationError

from gateway.errors import (
    AssigneeNotFound,
    ContactNotFound,
    InvalidRequest,
    ProviderError,
    UpstreamAuthFailed,
    UpstreamMalformed,
    UpstreamQueued,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
)
from gateway.spi import (
    AssigneeRef,
    ContactRef,
    Outcome,
    ProviderContactId,
    ProviderUserId,
    UpstreamOperation,
    UpstreamRequest,
    UpstreamResponse,
    encode_segment,
    retry_after_s,
    standard_rate_feedback,
)
from providers.aelyst.models import AssigneeResponse

# Undocumented (open question 1): how Aelyst words an unknown assignee. Normalized
# text such as "user not found" or "assignee 17 not found".
_USER_NOT_FOUND = re.compile(r"(user|assignee)\b.*\bnot found")


def identifier(contact: ContactRef) -> str:
    """``phone:+<digits>``, ``email:<addr>`` or ``id:<n>``: Aelyst's three documented forms."""
    return f"{contact.kind}:{contact.value}"


def assignee_request(contact: ContactRef, assignee: AssigneeRef | None) -> UpstreamRequest:
    """Assign (an assignee) or unassign (None): Aelyst reads ``null`` as unassign."""
    # Literal parts as literals: only the identifier is checked and encoded.
    path = f"/contact/{encode_segment(identifier(contact))}/conversation/assignee"
    operation: UpstreamOperation = "unassign" if assignee is None else "assign"
    return UpstreamRequest(operation, "POST", path, json={"assignee": _assignee_value(assignee)})


def read_assignee(response: UpstreamResponse, assignee: AssigneeRef | None) -> Outcome:
    _raise_for_status(response, assign=assignee is not None)
    try:
        # The validator itself: model_validate_json is a Python frame around it.
        body: AssigneeResponse = AssigneeResponse.__pydantic_validator__.validate_json(
            response.body)
    except ValidationError:  # invalid JSON included
        # "from None": a validation error quotes the body, which must not reach logs.
        raise UpstreamMalformed(
            "Aelyst answered with a body that is not its documented JSON") from None
    # Aelyst reports only the contact; the assignee is what we sent (id or email).
    assignee_id = None if assignee is None else ProviderUserId(assignee.value)
    return Outcome(ProviderContactId(str(body.contactId)), assignee_id)


def rate_feedback(response: UpstreamResponse) -> float | None:
    # Documented: 429 with Retry-After (seconds) and X-RateLimit-Remaining per
    # method + path, in a one-second window. A 449 is a queued contact, not a
    # rate signal: not counted.
    return standard_rate_feedback(response)


def _assignee_value(assignee: AssigneeRef | None) -> int | str | None:
    if assignee is None:
        return None
    if assignee.kind == "email":
        return assignee.value  # Aelyst takes an email directly: no lookup needed
    # User ids are integers on the wire; a quoted number would be read as an email.
    if not assignee.value.isascii() or not assignee.value.isdigit():
        raise InvalidRequest(
            "assignee.id must be a number",
            errors=[{"field": "assignee.id", "message": "Aelyst user ids are integers"}],
        )
    return int(assignee.value)


def _not_found(response: UpstreamResponse, *, assign: bool) -> ProviderError:
    message = _error_message(response)
    text = None if message is None else _normalize(message)
    # Documented: 404 {"code": 404, "message": "Contact not found"}.
    if text == "contact not found":
        return ContactNotFound("Aelyst has no contact with this identifier")
    # What an unknown assignee gets is an open question (400 or 404); a 404 in
    # Aelyst's shape saying a user is not found is taken as that, on assign only
    # (unassign sends no user).
    if assign and text is not None and _USER_NOT_FOUND.fullmatch(text):
        return AssigneeNotFound("Aelyst has no user with this id or email")
    # Anything else (plain text, another message) is no answer about this
    # contact or user: most likely a base_url that misses /v1. Not the client's
    # fault, and never cached as a miss.
    return UpstreamRejected(
        "Aelyst answered 404 without its documented not-found error; check the base_url")


def _raise_for_status(response: UpstreamResponse, *, assign: bool) -> None:
    status = response.status
    if 200 <= status < 300:
        return
    if status in (401, 403):
        raise UpstreamAuthFailed(f"Aelyst refused the gateway's token ({status})")
    if status == 404:
        raise _not_found(response, assign=assign)
    if status == 429:
        raise UpstreamRateLimited(
            "Aelyst is rate limiting the gateway", retry_after=retry_after_s(response.headers))
    if status == 449:
        # Documented: "currently in queue. Please try again in a few minutes."
        # No Retry-After is documented for it; honour one if it comes.
        raise UpstreamQueued(
            "Aelyst has queued this contact; try again later",
            retry_after=retry_after_s(response.headers))
    if 400 <= status < 500:
        raise UpstreamRejected(f"Aelyst refused the request ({status})")
    if 500 <= status < 600:
        # A 503's Retry-After (RFC 9110) is passed on to the client when retries end.
        raise UpstreamServerError(f"Aelyst failed to answer ({status})",
                                  retry_after=retry_after_s(response.headers))
    raise UpstreamMalformed(f"Aelyst answered with an unexpected status ({status})")


def _error_message(response: UpstreamResponse) -> str | None:
    """The ``message`` of Aelyst's ``{code, message}`` body (``code`` the status), or
    None when the body has another shape."""
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("code") != response.status:
        return None
    message = body.get("message")
    return message if isinstance(message, str) else None


def _normalize(message: str) -> str:
    return message.strip().rstrip(".").lower()
