"""Teli's wire format for thread assignment: pure builders and readers.

Sources: https://docs.teli.ai/partner-api1/threads/assign, .../threads/unassign,
https://docs.teli.ai/partner-api/users/list and .../errors. A thread is keyed
by campaign and phone; users are referenced by ``unique_id`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import orjson
from pydantic import ValidationError

from gateway.errors import (
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
    Outcome,
    ProviderContactId,
    ProviderUserId,
    UpstreamRequest,
    UpstreamResponse,
    encode_segment,
    retry_after_s,
    standard_rate_feedback,
)
from providers.teli.models import (
    AssignResponse,
    UnassignResponse,
    User,
    UsersResponse,
    Wire,
)

#: email (lower-case) -> (unique_id, name), active users of one organization.
UserDirectory = dict[str, tuple[ProviderUserId, str | None]]


W = TypeVar("W", bound=Wire)


def assign_request(
    campaign_id: str,
    phone: E164,
    user_id: ProviderUserId,
    organization_id: str | None = None,
    assigned_by: str | None = None,
) -> UpstreamRequest:
    body: dict[str, str] = {
        "campaign_id": campaign_id,
        "phone_number": phone,
        "assigned_user_id": user_id,
    }
    # Both optional in the docs: sending null could overwrite Teli's own defaults.
    if organization_id:
        body["organization_id"] = organization_id
    if assigned_by:
        body["assigned_by"] = assigned_by
    return UpstreamRequest("assign", "POST", "/v1/threads/assign", json=body)


def unassign_request(campaign_id: str, phone: E164) -> UpstreamRequest:
    body = {"campaign_id": campaign_id, "phone_number": phone}
    return UpstreamRequest("unassign", "POST", "/v1/threads/unassign", json=body)


def users_request(organization_id: str) -> UpstreamRequest:
    path = f"/v1/organizations/{encode_segment(organization_id)}/users"
    return UpstreamRequest("lookup_assignee", "GET", path)


def read_assign(response: UpstreamResponse) -> Outcome:
    _raise_for_status(response, _assign_not_found)
    body = _parse(AssignResponse, response)
    _require_success(body.success)
    return Outcome(
        ProviderContactId(body.thread_id),
        ProviderUserId(body.assigned_to.user_id),
        body.assigned_to.name,
    )


def read_unassign(response: UpstreamResponse) -> Outcome:
    # The only documented 404 here is "Thread not found".
    _raise_for_status(response, lambda r: _not_found(r, user=False))
    body = _parse(UnassignResponse, response)
    _require_success(body.success)
    return Outcome(ProviderContactId(body.thread_id))


def read_users(response: UpstreamResponse) -> UserDirectory:
    """Active users by lower-case email; inactive and suspended ones cannot take threads."""
    _raise_for_status(response, lambda _: UpstreamRejected(
        "Teli does not know the tenant's organization_id"))
    found: UserDirectory = {}
    for raw in _parse(UsersResponse, response).users:
        try:
            user = User.model_validate(raw)
        except ValidationError:
            continue  # a user without unique_id or email cannot be reached by email
        # Documented statuses: active, inactive, suspended; a missing one is not active.
        if (user.status or "").lower() == "active":
            email = user.email.strip().lower()
            found.setdefault(email, (ProviderUserId(user.unique_id), user.name))
    return found


def rate_feedback(response: UpstreamResponse) -> float | None:
    # Teli documents no rate limit and no 429; honour the usual headers if they appear.
    return standard_rate_feedback(response)


def _assign_not_found(response: UpstreamResponse) -> ProviderError:
    return _not_found(response, user=True)


def _not_found(response: UpstreamResponse, *, user: bool) -> ProviderError:
    # Documented 404 texts: "Thread not found for <phone> in campaign <id>" (assign)
    # or "Thread not found" (unassign), the contact; "User '<id>' not found"
    # (assign only), the assignee.
    text = _error_text(response)
    if text.startswith("Thread not found"):
        return ContactNotFound("Teli found no thread for this phone in the campaign")
    if user and text.startswith("User ") and text.endswith(" not found"):
        return AssigneeNotFound("Teli has no user with this id")
    # Any other 404 (an unknown route answers {"error": "Not found"}) is no answer
    # about the thread or the user: most likely a wrong base_url. Not the client's
    # fault, and never cached as a miss.
    return UpstreamRejected(
        "Teli answered 404 without a documented not-found error; check the base_url")


def _raise_for_status(
    response: UpstreamResponse, on_404: Callable[[UpstreamResponse], ProviderError]
) -> None:
    status = response.status
    if 200 <= status < 300:
        return
    if status in (401, 403):
        raise UpstreamAuthFailed(f"Teli refused the gateway's API key ({status})")
    if status == 404:
        raise on_404(response)
    if status == 429:
        raise UpstreamRateLimited(
            "Teli is rate limiting the gateway", retry_after=retry_after_s(response.headers))
    if 400 <= status < 500:
        raise UpstreamRejected(f"Teli refused the request ({status})")
    if 500 <= status < 600:
        # A 503's Retry-After (RFC 9110) is passed on to the client when retries end.
        raise UpstreamServerError(f"Teli failed to answer ({status})",
                                  retry_after=retry_after_s(response.headers))
    raise UpstreamMalformed(f"Teli answered with an unexpected status ({status})")


def _error_text(response: UpstreamResponse) -> str:
    """The ``error`` of Teli's ``{error, success, powered_by}`` body, or "" if unreadable."""
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return ""
    text = body.get("error") if isinstance(body, dict) else None
    return text if isinstance(text, str) else ""


def _parse(model: type[W], response: UpstreamResponse) -> W:
    try:
        parsed: W = model.__pydantic_validator__.validate_json(response.body)
        return parsed
    except ValidationError:  # invalid JSON included
        # "from None": a validation error quotes the body, which must not reach logs.
        raise UpstreamMalformed(
            "Teli answered with a body that is not its documented JSON") from None


def _require_success(success: bool) -> None:
    if not success:
        raise UpstreamRejected("Teli answered success: false")
