"""A simulator of the Aelyst Developer API, built only from the provider documents.

Sources: /work/shared/providers.md section 3 and the updateassignee page
(seeds/aelyst-conversation-assignee.txt). It shares no code with the Aelyst adapter on
purpose: a misreading in either one then shows up as a failing contract test.

Served under ``/v1`` (base URL ``http://127.0.0.1:PORT/v1``):

- ``POST /v1/contact/{identifier}/conversation/assignee``  body ``{"assignee": id|email|null}``
- ``GET  /v1/contact/{identifier}``
- ``GET  /v1/space/user?limit=&cursorId=`` and ``GET /v1/space/user/{id}``

Control: the shared kit's ``/_sandbox/...`` routes plus ``POST /_sandbox/ratelimit``
``{"enabled": bool}``. Request order: kit faults, then auth (401), then the rate limit
(429), then validation (400), contact lookup (404), queue state (449), user lookup (404).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web

from providers.sandboxkit import Handler, SandboxKit, format_seconds, load_seed

# Documented error texts; every Aelyst error body is {"code": int, "message": str}.
QUEUED_MESSAGE = (
    "Your request cannot be processed at the moment as it is currently in queue. "
    "Please try again in a few minutes."
)
MESSAGES = {
    400: "Validation error.",
    401: "UN_AUTHORIZED",
    404: "Contact not found",
    429: "Too Many Requests",
    449: QUEUED_MESSAGE,
    500: "Unexpected error occurred",
}
# Undocumented: providers.md open question 1 asks whether an unknown assignee is 400 or
# 404; this sandbox guesses 404 with this text (and uses it for GET /space/user/{id}).
USER_NOT_FOUND = "User not found"
# The overview page's "5 requests per second per unique request path" is normative; the
# per-endpoint pages' "X-RateLimit-Limit: 10" is only an illustrative example.
RATE_LIMIT = 5
WINDOW_S = 1.0

# Identifier forms from the docs: id:123, email:abdc@gmail.com, phone:+60121233112.
# Phones must be E.164 with their "+": a "+" decoded as a space (the classic form-decoding
# bug) or left out fails as a validation error, not as an unknown contact. That strictness
# is a guess (open question 5).
_ID_RE = re.compile(r"id:([1-9][0-9]{0,17})")
_EMAIL_RE = re.compile(r"email:([^@\s]+@[^@\s]+\.[^@\s]+)")
_PHONE_RE = re.compile(r"phone:(\+[1-9][0-9]{5,14})")
_EMAIL_VALUE_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class AelystError(Exception):
    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.message = message or MESSAGES[status]


def error_response(status: int, retry_after: float | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The documented error body; 429 carries the documented rate-limit headers."""
    message = MESSAGES.get(status) or _reason(status)
    headers: dict[str, str] = {}
    if status == 429:
        headers = {
            "Retry-After": format_seconds(1.0 if retry_after is None else retry_after),
            "X-RateLimit-Limit": str(RATE_LIMIT),
            "X-RateLimit-Remaining": "0",
        }
    return {"code": status, "message": message}, headers


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _error(exc: AelystError) -> web.Response:
    # 449 is not an IANA status; aiohttp would send an empty reason phrase.
    reason = "Retry With" if exc.status == 449 else None
    body = {"code": exc.status, "message": exc.message}
    return web.json_response(body, status=exc.status, reason=reason)


@dataclass
class User:
    id: int
    firstName: str
    lastName: str
    email: str
    role: str = "agent"
    team: dict[str, Any] = field(default_factory=lambda: {"id": 1, "name": "Default"})
    pending: bool = False  # pending invitations are left out of every user lookup [DOC]

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "firstName": self.firstName, "lastName": self.lastName,
            "email": self.email, "role": self.role, "team": self.team, "restrictions": [],
        }  # fmt: skip


@dataclass
class Contact:
    id: int
    phone: str | None = None
    email: str | None = None
    firstName: str = ""
    lastName: str = ""
    language: str = "en"
    profilePic: str | None = None
    countryCode: str | None = None
    custom_fields: list[dict[str, Any]] = field(default_factory=list)
    status: str = "open"
    tags: list[str] = field(default_factory=list)
    assignee: int | None = None
    lifecycle: str | None = None
    created_at: int = 1_700_000_000
    isBlocked: bool = False
    processing_until_s: float = 0.0


class SlidingWindow:
    """At most ``limit`` admissions per (method, path) in any ``window_s`` span."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s = limit, window_s
        self.hits: dict[str, deque[float]] = {}

    def admit(self, key: str, now: float) -> tuple[bool, int, float]:
        """Return (admitted, remaining, seconds until a slot frees)."""
        hits = self.hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if len(hits) >= self.limit:
            return False, 0, hits[0] + self.window_s - now
        hits.append(now)
        return True, self.limit - len(hits), 0.0


class AelystSandbox:
    def __init__(
        self, *, api_key: str, seed: dict[str, Any], clock: Callable[[], float], rate_limit: bool
    ) -> None:
        self.api_key, self.seed, self.clock = api_key, seed, clock
        self.initial_rate_limit = rate_limit
        self.reset()

    def reset(self) -> None:
        """Back to the seed: also restarts the processing timers and the limiter."""
        self.users = {u.id: u for u in (User(**raw) for raw in self.seed.get("users", []))}
        self.contacts = {c.id: c for c in (Contact(**raw) for raw in self.seed.get("contacts", []))}
        self.assignments: list[dict[str, Any]] = []
        self.started_at = self.clock()
        self.rate_limit = self.initial_rate_limit
        self.limiter = SlidingWindow(RATE_LIMIT, WINDOW_S)
        self.counts: dict[str, dict[str, int]] = {}

    def dump(self) -> dict[str, Any]:
        contacts = {
            str(c.id): {"id": c.id, "phone": c.phone, "email": c.email, "assignee": c.assignee}
            for c in self.contacts.values()
        }
        totals = {
            kind: sum(c[kind] for c in self.counts.values()) for kind in ("admitted", "rejected")
        }
        rate_limit = {"enabled": self.rate_limit, **totals, "paths": self.counts}
        return {"contacts": contacts, "assignments": self.assignments, "rate_limit": rate_limit}

    # -- lookups ---------------------------------------------------------------------

    def find_contact(self, identifier: str) -> Contact:
        if m := _ID_RE.fullmatch(identifier):
            found = self.contacts.get(int(m[1]))
        elif m := _EMAIL_RE.fullmatch(identifier):
            # Case-insensitive, as emails are in practice; undocumented.
            found = next((c for c in self.contacts.values() if _same_email(c.email, m[1])), None)
        elif m := _PHONE_RE.fullmatch(identifier):
            found = next((c for c in self.contacts.values() if c.phone == m[1]), None)
        else:
            raise AelystError(400)
        if found is None:
            raise AelystError(404)
        return found

    def check_not_queued(self, contact: Contact) -> None:
        # [DOC] 449: the request "is currently in queue"; [INF] the contact is still being
        # processed (the docs ask to wait after creating a contact). Seeded per contact.
        if self.clock() - self.started_at < contact.processing_until_s:
            raise AelystError(449)

    def find_user(self, key: int | str) -> User:
        if isinstance(key, int):
            user = self.users.get(key)
        else:
            user = next((u for u in self.users.values() if _same_email(u.email, key)), None)
        if user is None or user.pending:
            raise AelystError(404, USER_NOT_FOUND)
        return user

    # -- auth and rate limit -----------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() == self.api_key

    def limit(self, request: web.Request) -> dict[str, str]:
        """Count the request against its (method, path) window; raise 429 when full.

        [DOC] 5 req/s per method and per unique request path, path parameters included,
        so /v1/contact/1 and /v1/contact/2 are separate buckets. The key uses the decoded
        path, so phone:%2B1... and phone:+1... share a bucket (undocumented).
        """
        if not self.rate_limit:
            return {}
        key = f"{request.method} {request.path}"
        admitted, remaining, wait_s = self.limiter.admit(key, self.clock())
        counts = self.counts.setdefault(key, {"admitted": 0, "rejected": 0})
        counts["admitted" if admitted else "rejected"] += 1
        if not admitted:
            raise RateLimited(max(1, math.ceil(wait_s)))
        return {"X-RateLimit-Limit": str(RATE_LIMIT), "X-RateLimit-Remaining": str(remaining)}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sandbox/"):
            return await handler(request)
        # Auth is checked before the limiter: limits are per workspace [DOC] and the
        # workspace is only known from the token, so a 401 is not counted anywhere.
        if not self.authorized(request):
            return _error(AelystError(401))
        try:
            headers = self.limit(request)
        except RateLimited as exc:
            body, extra = error_response(429, exc.retry_after)
            return web.json_response(body, status=429, headers=extra)
        try:
            response = await handler(request)
        except AelystError as exc:
            response = _error(exc)
        response.headers.update(headers)
        return response


class RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def _same_email(a: str | None, b: str) -> bool:
    return a is not None and a.lower() == b.lower()


def _assignee(body: Any) -> int | str | None:
    """Validate the updateassignee body: ``assignee`` is required, may be null [DOC]."""
    if not isinstance(body, dict) or "assignee" not in body:
        raise AelystError(400)
    value = body["assignee"]
    if value is None:
        return None
    # User IDs are integers [DOC]; a numeric *string* is taken as a (malformed) email,
    # which makes an adapter that stringifies ids fail loudly. That strictness is a guess.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and _EMAIL_VALUE_RE.fullmatch(value):
        return value
    raise AelystError(400)


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"-?[0-9]{1,18}", raw):
        raise AelystError(400)
    return int(raw)


def _page_url(request: web.Request, limit: int, cursor: int | None) -> str:
    query = {"limit": str(limit)}
    if cursor is not None:
        query["cursorId"] = str(cursor)
    return str(request.url.with_query(query))


class Handlers:
    def __init__(self, sandbox: AelystSandbox) -> None:
        self.sandbox = sandbox

    async def update_assignee(self, request: web.Request) -> web.Response:
        identifier = request.match_info["identifier"]  # percent-decoded, %2F included
        try:
            body = json.loads(await request.text())
        except ValueError:
            raise AelystError(400) from None
        key = _assignee(body)
        contact = self.sandbox.find_contact(identifier)
        self.sandbox.check_not_queued(contact)
        user_id = None if key is None else self.sandbox.find_user(key).id
        contact.assignee = user_id
        # Every 200 is logged, even a re-assignment to the current assignee (open
        # question 2 guesses that is a 200 no-op), so tests can count upstream successes.
        entry = {"contactId": contact.id, "assignee": user_id, "at": self.sandbox.clock()}
        self.sandbox.assignments.append(entry)
        return web.json_response({"contactId": contact.id})

    async def get_contact(self, request: web.Request) -> web.Response:
        contact = self.sandbox.find_contact(request.match_info["identifier"])
        self.sandbox.check_not_queued(contact)
        return web.json_response(self.contact_wire(contact))

    def contact_wire(self, contact: Contact) -> dict[str, Any]:
        wire = {k: v for k, v in vars(contact).items() if k != "processing_until_s"}
        user = self.sandbox.users.get(contact.assignee) if contact.assignee else None
        wire["assignee"] = None if user is None else {
            "id": user.id, "firstName": user.firstName,
            "lastName": user.lastName, "email": user.email,
        }  # fmt: skip
        return wire

    async def list_users(self, request: web.Request) -> web.Response:
        # [DOC] limit defaults to 10 and must be >= 1 and < 100.
        limit = _int_param(request, "limit", 10)
        cursor = _int_param(request, "cursorId", None)
        if limit is None or not 1 <= limit < 100:
            raise AelystError(400)
        # [INF] cursorId is the id of the last user already seen; users sorted by id.
        visible = sorted(
            (u for u in self.sandbox.users.values() if not u.pending), key=lambda u: u.id
        )
        after = [u for u in visible if cursor is None or u.id > cursor]
        before = [u for u in visible if cursor is not None and u.id <= cursor]
        page = after[:limit]
        nxt = _page_url(request, limit, page[-1].id) if len(after) > limit else None
        prev = None
        if before:
            prev_cursor = before[-limit - 1].id if len(before) > limit else None
            prev = _page_url(request, limit, prev_cursor)
        items = [u.wire() for u in page]
        return web.json_response({"items": items, "pagination": {"next": nxt, "previous": prev}})

    async def get_user(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        if not re.fullmatch(r"[0-9]{1,18}", raw):
            raise AelystError(400)
        # A 404 is not in the getuser page's error list (400, 401, 429, 500); a guess.
        return web.json_response(self.sandbox.find_user(int(raw)).wire())

    async def toggle_rate_limit(self, request: web.Request) -> web.Response:
        try:
            enabled = (await request.json())["enabled"]
        except (ValueError, KeyError, TypeError):
            enabled = None
        if not isinstance(enabled, bool):
            return web.json_response({"error": 'body must be {"enabled": bool}'}, status=400)
        self.sandbox.rate_limit = enabled
        return web.json_response({"enabled": enabled})


AELYST_SANDBOX = web.AppKey("aelyst_sandbox", AelystSandbox)
SANDBOX_KIT = web.AppKey("aelyst_sandbox_kit", SandboxKit)


def create_app(
    *,
    api_key: str = "aelyst-sandbox-token",
    data_file: str | Path | None = None,
    clock: Callable[[], float] = time.monotonic,
    rate_limit: bool = True,
) -> web.Application:
    sandbox = AelystSandbox(
        api_key=api_key, seed=load_seed("aelyst", data_file), clock=clock, rate_limit=rate_limit
    )
    kit = SandboxKit(
        error_response=error_response, dump_state=sandbox.dump, reset_state=sandbox.reset,
        clock=clock,
    )  # fmt: skip
    # The kit's middleware is outermost: injected faults act before auth and the limiter.
    app = web.Application(middlewares=[kit.middleware, sandbox.middleware])
    app[AELYST_SANDBOX], app[SANDBOX_KIT] = sandbox, kit
    kit.install(app)
    handlers = Handlers(sandbox)
    app.router.add_post("/_sandbox/ratelimit", handlers.toggle_rate_limit)
    app.router.add_post("/v1/contact/{identifier}/conversation/assignee", handlers.update_assignee)
    app.router.add_get("/v1/contact/{identifier}", handlers.get_contact)
    app.router.add_get("/v1/space/user", handlers.list_users)
    app.router.add_get("/v1/space/user/{id}", handlers.get_user)
    return app
