"""Teli partner API simulator: thread assign/unassign, org users, campaign contacts.

Built only from the provider documents (providers.md section 1 and the captured
"Assign Thread" page). It shares no code with the Teli adapter on purpose: a
misreading of the docs then shows up as a disagreement between the two.

Routes, all under ``/v1`` and all behind ``X-API-Key``:

- ``POST /v1/threads/assign``
- ``POST /v1/threads/unassign``
- ``GET  /v1/organizations/{org_id}/users``
- ``GET  /v1/campaigns/{campaign_id}/contacts``

Control routes (``/_sandbox/...``: faults, journal, state, reset) come from SandboxKit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from providers.sandboxkit import SandboxKit, load_seed

POWERED_BY = "Teli"
CONTROL_PREFIX = "/_sandbox/"  # SandboxKit's control routes
DEFAULT_CONTACTS_LIMIT = 1000
MAX_CONTACTS_LIMIT = 10000  # [DOC] larger limits are capped silently, not rejected
ASSIGN_REQUIRED = "campaign_id, phone_number, and assigned_user_id are required"
UNASSIGN_REQUIRED = "campaign_id and phone_number are required"

Json = dict[str, Any]


@dataclass
class User:
    unique_id: str
    id: str
    name: str
    email: str
    permission: str
    organization_id: str
    tenant_id: str
    status: str
    phone: str | None


@dataclass
class Thread:
    phone_number: str  # as stored: with or without "+"
    campaign_id: str
    first_name: str
    last_name: str
    assigned_user_id: str | None = None
    lead_outcome: str | None = None
    ai_active: bool = True
    drips_scheduled: int = 0

    @property
    def thread_id(self) -> str:
        # [DOC] thread_id is "{phone_number}_{campaign_id}", using the stored phone.
        return f"{self.phone_number}_{self.campaign_id}"


def phone_digits(phone: str) -> str:
    # Open question 1 in providers.md: the docs call E.164 only "recommended" and
    # say numbers may be stored with or without "+", so we match on digits only.
    return re.sub(r"[^0-9]", "", phone)


class TeliState:
    """In-memory provider state, rebuilt from the seed on every reset."""

    def __init__(self, seed: Json, clock: Callable[[], float]) -> None:
        self._seed = seed
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        orgs: dict[str, Any] = self._seed.get("organizations") or {}
        campaigns: dict[str, Any] = self._seed.get("campaigns") or {}
        self.users = {str(org_id): _parse_users(str(org_id), org) for org_id, org in orgs.items()}
        self.campaign_orgs = {
            str(cid): str(c.get("organization_id", "")) for cid, c in campaigns.items()
        }
        self.threads = [
            _parse_thread(str(cid), raw)
            for cid, campaign in campaigns.items()
            for raw in campaign.get("threads") or []
        ]
        self.assignments: list[Json] = []

    def find_thread(self, campaign_id: str, phone: str) -> Thread | None:
        wanted = phone_digits(phone)
        for thread in self.threads:
            if thread.campaign_id == campaign_id and phone_digits(thread.phone_number) == wanted:
                return thread
        return None

    def find_user(self, unique_id: str, organization_id: str | None) -> User | None:
        # [DOC] organization_id is optional; when given, the user must be in that org.
        org_ids = [organization_id] if organization_id else list(self.users)
        for org_id in org_ids:
            for user in self.users.get(org_id, []):
                if user.unique_id == unique_id:
                    return user
        return None

    def assign(self, thread: Thread, user: User) -> None:
        # [DOC] side effects: lead_outcome "qualified", thread completed (AI stops),
        # scheduled drips cancelled. Re-assigning simply overwrites (open question 2).
        thread.assigned_user_id = user.unique_id
        thread.lead_outcome = "qualified"
        thread.ai_active = False
        thread.drips_scheduled = 0
        self._log(thread, user.unique_id)

    def unassign(self, thread: Thread) -> None:
        # [DOC] unassign does NOT restart the AI or the drips: only the owner is cleared.
        thread.assigned_user_id = None
        self._log(thread, None)

    def _log(self, thread: Thread, user_id: str | None) -> None:
        entry = {"thread_id": thread.thread_id, "user_id": user_id, "at": self._clock()}
        self.assignments.append(entry)

    def dump(self) -> Json:
        threads = {
            t.thread_id: {
                "phone_number": t.phone_number,
                "campaign_id": t.campaign_id,
                "assigned_user_id": t.assigned_user_id,
                "lead_outcome": t.lead_outcome,
                "ai_active": t.ai_active,
                "drips_scheduled": t.drips_scheduled,
            }
            for t in self.threads
        }
        return {"threads": threads, "assignments": [dict(a) for a in self.assignments]}


def _parse_users(org_id: str, org: Json) -> list[User]:
    tenant_id = str(org.get("tenant_id", ""))
    return [
        User(
            unique_id=str(raw["unique_id"]),
            id=str(raw["id"]),
            name=str(raw["name"]),
            email=str(raw["email"]),
            permission=str(raw.get("permission", "user")),
            organization_id=org_id,
            tenant_id=tenant_id,
            status=str(raw.get("status", "active")),
            phone=raw.get("phone"),
        )
        for raw in org.get("users") or []
    ]


def _parse_thread(campaign_id: str, raw: Json) -> Thread:
    return Thread(
        phone_number=str(raw["phone_number"]),
        campaign_id=campaign_id,
        first_name=str(raw.get("first_name", "")),
        last_name=str(raw.get("last_name", "")),
        assigned_user_id=raw.get("assigned_user_id"),
        lead_outcome=raw.get("lead_outcome"),
        ai_active=bool(raw.get("ai_active", True)),
        drips_scheduled=int(raw.get("drips_scheduled", 0)),
    )


STATE = web.AppKey("teli_state", TeliState)


# --- responses --------------------------------------------------------------------


def _ok(**body: Any) -> web.Response:
    # [DOC] every success and error body carries powered_by: "Teli".
    return web.json_response({"success": True, **body, "powered_by": POWERED_BY})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    # [DOC] error shape {"error": "<text>", "success": false, "powered_by": "Teli"}.
    body = {"error": message, "success": False, "powered_by": POWERED_BY}
    return web.json_response(body, status=status, headers=headers)


def error_response(status: int, retry_after: float | None) -> tuple[Json, dict[str, str]]:
    """Body for a fault the kit injects; the kit itself adds Retry-After when given."""
    if status == 403:
        # [DOC] one page shows 403 with a "detail" field next to "error".
        detail = "This endpoint requires an admin role"
        body: Json = {"success": False, "error": "Admin permission required", "detail": detail}
        return {**body, "powered_by": POWERED_BY}, {}
    return {"error": _fault_message(status), "success": False, "powered_by": POWERED_BY}, {}


def _fault_message(status: int) -> str:
    if status == 401:
        return "Invalid API key"
    if status == 404:
        # [DOC] the thread endpoints' not-found text (unassign's; assign's adds
        # " for <phone> in campaign <id>"). Unknown routes keep their own "Not found".
        return "Thread not found"
    if status == 429:
        # 429 is not documented for Teli at all: this wording is our invention.
        return "Too many requests"
    if status >= 500:
        return "Internal server error"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Request failed"


# --- middleware -------------------------------------------------------------------


def _is_control(request: web.Request) -> bool:
    return request.path.startswith(CONTROL_PREFIX)


def _auth_middleware(api_key: str) -> Middleware:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _is_control(request):
            return await handler(request)
        given = request.headers.get("X-API-Key")
        # [DOC] distinct 401 texts for a missing and a wrong key. The docs drop
        # powered_by or success on some 401 examples; we keep the general shape.
        if not given:
            return _error(401, "API key is required")
        if given != api_key:
            return _error(401, "Invalid API key")
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            # Unknown routes are undocumented; answer in Teli's error shape anyway.
            return _error(exc.status, "Not found" if exc.status == 404 else exc.reason)

    return auth


# --- handlers ---------------------------------------------------------------------


async def _json_object(request: web.Request) -> Json | None:
    try:
        data = await request.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _text(data: Json | None, key: str) -> str | None:
    # The docs type every field as a string; anything else counts as missing.
    value = data.get(key) if data else None
    return value if isinstance(value, str) and value else None


async def assign_thread(request: web.Request) -> web.Response:
    data = await _json_object(request)
    campaign_id, phone = _text(data, "campaign_id"), _text(data, "phone_number")
    user_id = _text(data, "assigned_user_id")
    if campaign_id is None or phone is None or user_id is None:
        return _error(400, ASSIGN_REQUIRED)
    state = request.app[STATE]
    thread = state.find_thread(campaign_id, phone)
    if thread is None:
        return _error(404, f"Thread not found for {phone} in campaign {campaign_id}")
    # Undocumented: an inactive user is still assignable (the docs only say
    # "not found"); the status is visible in the users list for callers who care.
    user = state.find_user(user_id, _text(data, "organization_id"))
    if user is None:
        return _error(404, f"User '{user_id}' not found")
    state.assign(thread, user)
    return _ok(
        message=f"Thread assigned to {user.name}",
        thread_id=thread.thread_id,
        assigned_to={"user_id": user.unique_id, "name": user.name},
    )


async def unassign_thread(request: web.Request) -> web.Response:
    data = await _json_object(request)
    campaign_id, phone = _text(data, "campaign_id"), _text(data, "phone_number")
    if campaign_id is None or phone is None:
        return _error(400, UNASSIGN_REQUIRED)
    state = request.app[STATE]
    thread = state.find_thread(campaign_id, phone)
    if thread is None:
        return _error(404, "Thread not found")
    # Open question 2: unassigning an unassigned thread is undocumented. We answer
    # 200 (idempotent clear), the most lenient reading; the log still records it.
    state.unassign(thread)
    return _ok(message="Thread unassigned", thread_id=thread.thread_id)


def _user_json(user: User) -> Json:
    return {
        "unique_id": user.unique_id,
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "permission": user.permission,
        "organization_id": user.organization_id,
        "tenant_id": user.tenant_id,
        "status": user.status,
        "phone": user.phone,
    }


async def list_users(request: web.Request) -> web.Response:
    users = request.app[STATE].users.get(request.match_info["org_id"])
    if users is None:
        return _error(404, "Organization not found")  # [DOC] text from users/create
    return _ok(count=len(users), users=[_user_json(u) for u in users])


def _int_param(request: web.Request, name: str, default: int, minimum: int) -> int:
    # Undocumented: unparsable or out-of-range values fall back to the default.
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        return default
    return value if value >= minimum else default


def _visible(threads: list[Thread], request: web.Request) -> list[Thread]:
    # [DOC] non-admin users only see threads assigned to them. Without a user_id
    # there is nobody to filter for, so everything is returned (undocumented).
    user_id = request.query.get("user_id")
    is_admin = request.query.get("is_admin", "false").lower() in ("true", "1")
    if user_id and not is_admin:
        return [t for t in threads if t.assigned_user_id == user_id]
    return threads


def _contact_json(thread: Thread) -> Json:
    # [DOC] the contact field list is cut off after first/last name; the
    # assignment fields are our guess (open question 5).
    return {
        "thread_id": thread.thread_id,
        "phone_number": thread.phone_number,
        "first_name": thread.first_name,
        "last_name": thread.last_name,
        "assigned_user_id": thread.assigned_user_id,
        "lead_outcome": thread.lead_outcome,
    }


async def list_contacts(request: web.Request) -> web.Response:
    state = request.app[STATE]
    campaign_id = request.match_info["campaign_id"]
    if campaign_id not in state.campaign_orgs:
        return _error(404, "Campaign not found")  # undocumented; Teli's shape
    limit = min(_int_param(request, "limit", DEFAULT_CONTACTS_LIMIT, 1), MAX_CONTACTS_LIMIT)
    offset = _int_param(request, "offset", 0, 0)
    threads = _visible([t for t in state.threads if t.campaign_id == campaign_id], request)
    page = threads[offset : offset + limit]
    return _ok(
        contacts=[_contact_json(t) for t in page],
        total=len(threads),
        returned=len(page),
        limit=limit,
        offset=offset,
        has_more=offset + len(page) < len(threads),
    )


# --- app --------------------------------------------------------------------------


def create_app(
    *,
    api_key: str = "teli-sandbox-key",
    data_file: str | Path | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    state = TeliState(load_seed("teli", data_file), clock)
    kit = SandboxKit(
        error_response=error_response, dump_state=state.dump, reset_state=state.reset, clock=clock
    )
    # The kit runs outermost so injected faults and the journal see every request,
    # including the ones our auth middleware rejects.
    app = web.Application(middlewares=[kit.middleware, _auth_middleware(api_key)])
    app[STATE] = state
    app.router.add_post("/v1/threads/assign", assign_thread)
    app.router.add_post("/v1/threads/unassign", unassign_thread)
    app.router.add_get("/v1/organizations/{org_id}/users", list_users)
    app.router.add_get("/v1/campaigns/{campaign_id}/contacts", list_contacts)
    kit.install(app)
    return app
