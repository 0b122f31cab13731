"""Vambe public API simulator: assign team member, team list, contact search and info.

Built only from the provider documents (providers.md section 2 and the captured
"Assign team member to contact" page). It shares no code with the Vambe adapter on
purpose: a misreading of the docs then shows up as a disagreement between the two.

Routes, all under ``/api/public`` and all behind ``x-api-key``:

- ``POST /api/public/contact/{aiContactId}/assign-team-member/{teamMemberId}``
- ``GET  /api/public/team-members/all``
- ``GET  /api/public/contacts/search?phone=&email=``
- ``GET  /api/public/contact/{aiContactId}/info``

Control routes (``/_sandbox/...``: faults, journal, state, reset) come from SandboxKit.

Vambe documents status codes only, never error bodies. providers.md says they "may
follow a framework default such as {statusCode, message, error}", so every error here
uses the NestJS default shape; an adapter should still parse errors defensively.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from providers.sandboxkit import SandboxKit, load_seed

CONTROL_PREFIX = "/_sandbox/"  # SandboxKit's control routes
SEARCH_LIMIT = 50  # [DOC] search returns at most 50 contacts
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)

Json = dict[str, Any]


@dataclass
class TeamMember:
    id: str
    first_name: str
    last_name: str
    email: str
    phone: str | None
    active: bool

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


@dataclass
class Contact:
    id: str
    name: str
    phone: str | None
    email: str | None
    platform: str
    chat_status: str
    created_at: str
    last_message_at: str | None
    ai_customer_id: str
    agents: list[str] = field(default_factory=list)  # team member ids, in assign order


def sanitize_phone(phone: str) -> str:
    # [DOC] search sanitizes phones: "+56912345678", "56912345678" and "12345678"
    # all find the same contact, so only digits take part in the match.
    return re.sub(r"[^0-9]", "", phone)


class VambeState:
    """In-memory provider state, rebuilt from the seed on every reset."""

    def __init__(self, seed: Json, clock: Callable[[], float]) -> None:
        self._seed = seed
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self.client_id = str(self._seed.get("client_id", ""))
        self.default_stage_id = self._seed.get("default_stage_id")
        members = [_parse_member(raw) for raw in self._seed.get("team_members") or []]
        contacts = [_parse_contact(raw) for raw in self._seed.get("contacts") or []]
        self.members = {m.id: m for m in members}
        self.contacts = {c.id: c for c in contacts}
        self.assignments: list[Json] = []

    def assign(self, contact: Contact, member: TeamMember, remove_existing: bool) -> None:
        # [DOC] default adds the agent (several agents per contact, and "assigning the
        # same agent multiple times won't create duplicates"); removeExistingAgents=true
        # leaves only the new agent.
        if remove_existing:
            contact.agents = [member.id]
        elif member.id not in contact.agents:
            contact.agents.append(member.id)
        self.assignments.append({
            "contact_id": contact.id,
            "team_member_id": member.id,
            "remove_existing": remove_existing,
            "at": self._clock(),
        })

    def search(self, phone: str | None, email: str | None) -> list[Contact]:
        # Undocumented: with both phone and email given, a contact must match both.
        found = [
            c
            for c in self.contacts.values()
            if _phone_matches(c, phone) and _email_matches(c, email)
        ]
        return found[:SEARCH_LIMIT]

    def dump(self) -> Json:
        contacts = {
            c.id: {"phone": c.phone, "email": c.email, "platform": c.platform,
                   "agents": list(c.agents)}
            for c in self.contacts.values()
        }
        return {"contacts": contacts, "assignments": [dict(a) for a in self.assignments]}


def _phone_matches(contact: Contact, digits: str | None) -> bool:
    # [DOC] partial match: the stored number's digits contain the query's digits.
    if digits is None:
        return True
    return contact.phone is not None and digits in sanitize_phone(contact.phone)


def _email_matches(contact: Contact, email: str | None) -> bool:
    # [DOC] partial, case-insensitive.
    if email is None:
        return True
    return contact.email is not None and email.lower() in contact.email.lower()


def _parse_member(raw: Json) -> TeamMember:
    return TeamMember(
        id=str(raw["id"]).lower(),
        first_name=str(raw.get("first_name", "")),
        last_name=str(raw.get("last_name", "")),
        email=str(raw["email"]),
        phone=raw.get("phone"),
        active=bool(raw.get("active", True)),
    )


def _parse_contact(raw: Json) -> Contact:
    return Contact(
        id=str(raw["id"]).lower(),
        name=str(raw.get("name", "")),
        phone=raw.get("phone"),
        email=raw.get("email"),
        platform=str(raw.get("platform", "whatsapp")),
        chat_status=str(raw.get("chat_status", "UNATTENDED")),
        created_at=str(raw.get("created_at", "")),
        last_message_at=raw.get("last_message_at"),
        ai_customer_id=str(raw.get("ai_customer_id", "")),
        agents=[str(a).lower() for a in raw.get("agents") or []],
    )


STATE = web.AppKey("vambe_state", VambeState)


# --- responses --------------------------------------------------------------------


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(status: int, message: str | None = None) -> Json:
    """NestJS default exception body (Vambe's error bodies are undocumented)."""
    if message is None:
        message = "Internal server error" if status == 500 else _phrase(status)
    return {"statusCode": status, "message": message, "error": _phrase(status)}


def _error(status: int, message: str | None = None) -> web.Response:
    return web.json_response(error_body(status, message), status=status)


def error_response(status: int, retry_after: float | None) -> tuple[Json, dict[str, str]]:
    """Body for a fault the kit injects; the kit itself adds Retry-After when given."""
    return error_body(status), {}


# --- middleware -------------------------------------------------------------------


def _auth_middleware(api_key: str) -> Middleware:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return await handler(request)
        if request.match_info.http_exception is not None:
            # NestJS routes before its guards run, so an unknown route is a 404
            # whatever the key, worded like Express's "Cannot GET /path".
            return _error(404, f"Cannot {request.method} {request.path}")
        # [DOC] 401 for a missing or invalid key; one body for both (Nest's default).
        if request.headers.get("x-api-key") != api_key:
            return _error(401)
        return await handler(request)

    return auth


# --- handlers ---------------------------------------------------------------------


def _contact_json(state: VambeState, contact: Contact) -> Json:
    return {
        "id": contact.id,
        "name": contact.name,
        "phone": contact.phone,
        "email": contact.email,
        "platform": contact.platform,
        "last_message_at": contact.last_message_at,
        "chat_status": contact.chat_status,
        "created_at": contact.created_at,
        "client_id": state.client_id,
        "ai_customer_id": contact.ai_customer_id,
        "default_stage_id": state.default_stage_id,
    }


def _member_json(member: TeamMember) -> Json:
    return {
        "id": member.id,
        "name": member.name,
        "first_name": member.first_name,
        "last_name": member.last_name,
        "email": member.email,
        "phone": member.phone,
    }


def _parse_bool(value: str | None) -> bool | None:
    if value is None:
        return False  # [DOC] removeExistingAgents defaults to false
    return {"true": True, "false": False}.get(value.lower())


async def assign_team_member(request: web.Request) -> web.Response:
    contact_id = request.match_info["contact_id"].lower()
    member_id = request.match_info["member_id"].lower()
    # [DOC] 400 "invalid contact or agent ID": both path ids must be UUIDs.
    if not (UUID_RE.match(contact_id) and UUID_RE.match(member_id)):
        return _error(400, "Invalid contact or agent ID")
    remove_existing = _parse_bool(request.query.get("removeExistingAgents"))
    if remove_existing is None:
        # Undocumented: a non-boolean flag is rejected the way a Nest pipe would.
        return _error(400, "removeExistingAgents must be a boolean value")
    state = request.app[STATE]
    contact = state.contacts.get(contact_id)
    if contact is None:
        return _error(404, "Contact not found")
    member = state.members.get(member_id)
    # [DOC] "the team member must exist and be active in your organization".
    if member is None or not member.active:
        return _error(404, "Team member not found")
    state.assign(contact, member, remove_existing)
    # The docs give no status code for success; NestJS would default a POST to 201,
    # but we follow the documented "success" response and answer 200.
    return web.json_response({"success": True, "message": "Team member assigned successfully"})


async def list_team_members(request: web.Request) -> web.Response:
    # The endpoint is ".../all" and its fields carry no status, so inactive members
    # are listed too: a caller can only learn of inactivity from assign's 404.
    members = request.app[STATE].members.values()
    return web.json_response([_member_json(m) for m in members])


async def search_contacts(request: web.Request) -> web.Response:
    raw_phone = request.query.get("phone")
    digits = sanitize_phone(raw_phone) if raw_phone else ""
    email = request.query.get("email") or None
    # [DOC] at least one of phone/email is required. A phone without digits counts
    # as absent (undocumented): after sanitizing it would match every contact.
    if not digits and email is None:
        return _error(400, "At least one of phone or email is required")
    state = request.app[STATE]
    found = state.search(digits or None, email)
    # [DOC] search spans all channels, so one person can come back several times.
    return web.json_response([_contact_json(state, c) for c in found])


async def contact_info(request: web.Request) -> web.Response:
    contact_id = request.match_info["contact_id"].lower()
    if not UUID_RE.match(contact_id):
        return _error(400, "Invalid contact ID")  # undocumented; mirrors assign's 400
    state = request.app[STATE]
    contact = state.contacts.get(contact_id)
    if contact is None:
        return _error(404, "Contact not found")
    body = _contact_json(state, contact)
    body.update(last_message_content=None, is_chat_read=True, blocked=False)
    # The docs say info shows "which team members are currently assigned" but the
    # field name is cut off (open question 2). We borrow assigned_agents
    # [{agent_id, agent_name}] from the analytics endpoint, the only documented one.
    body["assigned_agents"] = [
        {"agent_id": a, "agent_name": state.members[a].name if a in state.members else None}
        for a in contact.agents
    ]
    return web.json_response(body)


# --- app --------------------------------------------------------------------------


def create_app(
    *,
    api_key: str = "vambe-sandbox-key",
    data_file: str | Path | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    state = VambeState(load_seed("vambe", data_file), clock)
    kit = SandboxKit(
        error_response=error_response, dump_state=state.dump, reset_state=state.reset, clock=clock
    )
    # The kit runs outermost so injected faults and the journal see every request,
    # including the ones our auth middleware rejects.
    app = web.Application(middlewares=[kit.middleware, _auth_middleware(api_key)])
    app[STATE] = state
    base = "/api/public"
    app.router.add_post(
        base + "/contact/{contact_id}/assign-team-member/{member_id}", assign_team_member
    )
    app.router.add_get(base + "/team-members/all", list_team_members)
    app.router.add_get(base + "/contacts/search", search_contacts)
    app.router.add_get(base + "/contact/{contact_id}/info", contact_info)
    kit.install(app)
    return app
