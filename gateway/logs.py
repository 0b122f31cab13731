"""One structured JSON line per request, and the masking of personal data in it.

The HTTP middleware opens an :class:`AccessRecord` for each request and
writes it as one JSON line on the ``gateway.access`` logger when the answer is
decided. What only the handler learns (tenant, provider, operation, contact,
attempts) it adds with :func:`annotate`, from anywhere in the request's task:
the record travels in a context variable, so the retry and operation code can
annotate without being handed the request.

What a line may hold is closed by construction: names from configuration,
canonical codes, route templates, ids the gateway made or validated, and
contacts masked by :func:`mask_phone` / :func:`mask_email`. Never a body, a
header other than the request id, a key, or an exception's text (its type name
only: aiohttp and provider texts can carry URLs, identifiers and keys).

Lines cost nothing when ``gateway.access`` is disabled for their level: the
check comes before any formatting. A served gateway (``gateway serve``) writes
its INFO lines through a :class:`LineWriter` instead of the logging machinery:
the lines of one event-loop turn go out in one ``write``, and no ``LogRecord``
is built per request (under load that was a tenth of the gateway's own work).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass

import orjson

from gateway.models import Queued
from gateway.service import Done, Plan

ACCESS_LOG = logging.getLogger("gateway.access")

_CURRENT: ContextVar[AccessRecord | None] = ContextVar("gateway_access_record", default=None)


@dataclass(init=False, slots=True)
class AccessRecord:
    """The facts of one request; filled in as they become known."""

    request_id: str
    method: str
    route: str
    client: str | None = None
    tenant: str | None = None
    provider: str | None = None  # the configured provider name, as in metric labels
    operation: str | None = None
    contact: str | None = None  # masked
    operation_id: str | None = None
    attempts: int | None = None
    status: int = 0
    code: str = "ok"
    error: str | None = None  # an unhandled exception's type name, never its text
    duration_s: float = 0.0

    # Written out (init=False): compiled, a dataclass's generated __init__ is
    # interpreted code, a call per request; this one is native (gateway/_native.py).
    def __init__(self, request_id: str, method: str, route: str) -> None:
        self.request_id = request_id
        self.method = method
        self.route = route
        self.client = None
        self.tenant = None
        self.provider = None
        self.operation = None
        self.contact = None
        self.operation_id = None
        self.attempts = None
        self.status = 0
        self.code = "ok"
        self.error = None
        self.duration_s = 0.0

    def line(self) -> bytes:
        # round(x * 1000) / 1000, not round(x, 3): the same digits (a last digit may
        # differ in a half-way case) at a third of the cost, since round() with
        # ndigits goes through a decimal string.
        return orjson.dumps({
            "ts": round(time.time() * 1000) / 1000, "event": "request",
            "request_id": self.request_id,
            "method": self.method, "route": self.route, "status": self.status,
            "code": self.code, "client": self.client, "tenant": self.tenant,
            "provider": self.provider, "operation": self.operation, "contact": self.contact,
            "operation_id": self.operation_id, "attempts": self.attempts,
            "duration_s": round(self.duration_s * 1e6) / 1e6, "error": self.error,
        })


def begin(record: AccessRecord) -> Token[AccessRecord | None]:
    """Make ``record`` the current request's (the middleware calls this)."""
    return _CURRENT.set(record)


def end(token: Token[AccessRecord | None]) -> None:
    _CURRENT.reset(token)


def current() -> AccessRecord | None:
    return _CURRENT.get()


def annotate(*, client: str | None = None, tenant: str | None = None,
             provider: str | None = None, operation: str | None = None,
             contact: str | None = None, operation_id: str | None = None,
             attempts: int | None = None) -> None:
    """Add what is known about the current request; a no-op outside a request.

    ``contact`` must already be masked (:func:`mask_contact`).
    """
    rec = _CURRENT.get()
    if rec is None:
        return
    if client is not None:
        rec.client = client
    if tenant is not None:
        rec.tenant = tenant
    if provider is not None:
        rec.provider = provider
    if operation is not None:
        rec.operation = operation
    if contact is not None:
        rec.contact = contact
    if operation_id is not None:
        rec.operation_id = operation_id
    if attempts is not None:
        rec.attempts = attempts


def annotate_client(name: str) -> None:
    """The client the request authenticated as."""
    rec = _CURRENT.get()
    if rec is not None:
        rec.client = name


def annotate_plan(plan: Plan) -> None:
    """What a write request resolved to, before anything is sent."""
    rec = _CURRENT.get()
    if rec is None:
        return
    c = plan.contact
    rec.tenant, rec.provider, rec.operation = plan.tenant, plan.provider, plan.operation
    rec.contact = mask_contact(phone=c.phone, email=c.email, id=c.id)


def annotate_result(result: object) -> None:
    """The operation id and attempts of an answer (Done for a 200, Queued for a 202)."""
    rec = _CURRENT.get()
    if rec is None:
        return
    if isinstance(result, Done):
        body = result.body  # Done.operation_id and .attempts read these two
        rec.operation_id, rec.attempts = body["operation_id"], body["attempts"]
    elif isinstance(result, Queued):
        rec.operation_id = result.operation_id


_LEVELS = {"internal_error": logging.ERROR, "client_closed": logging.DEBUG}
#: One write carries at most this much; a turn with more lines writes more than once.
WRITE_CHUNK = 1 << 16
#: A full non-blocking descriptor is waited for this long, this many times at most.
WAIT_S, MAX_WAITS = 0.1, 10


class LineWriter:
    """Lines to a file descriptor, batched per event-loop turn.

    :meth:`write` queues a line and, once per turn, schedules :meth:`flush` with
    ``call_soon``: every line of the turn goes out in one ``os.write``, right
    after the turn, so a line is never held longer than the loop is busy. Outside
    a running loop a line is written at once. The descriptor is written as
    logging's stream handler writes stderr: blocking, in full.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lines: list[bytes] = []
        self._scheduled = False

    def write(self, line: bytes) -> None:
        self._lines.append(line)
        if self._scheduled:
            return
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no running loop
            self.flush()
        else:
            self._scheduled = True

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        data = b"\n".join(self._lines) + b"\n"
        self._lines.clear()
        waits = sent = 0
        # Bounded: a blocking write takes >= 512 bytes unless a signal interrupts it.
        # An offset, not a memoryview cut after each write: compiled, a memoryview is
        # taken for bytes (gateway/_native.py). A slice that covers all of the bytes
        # is the bytes themselves, not a copy.
        for _ in range(len(data) // 512 + 2 + MAX_WAITS):
            if sent >= len(data):
                return
            try:
                sent += os.write(self.fd, data[sent:sent + WRITE_CHUNK])
            except InterruptedError:
                continue
            except BlockingIOError:
                # A descriptor someone made non-blocking (a shared pipe): wait for room
                # as a blocking write would, but a second at most in all.
                if waits == MAX_WAITS:
                    return
                waits += 1
                select.select([], [self.fd], [], WAIT_S)
            except OSError:
                return  # stderr is gone: nothing to tell anyone either


_WRITER: LineWriter | None = None


def write_lines_to(fd: int | None) -> None:
    """Write INFO access lines straight to ``fd`` (None: through logging again)."""
    global _WRITER
    if _WRITER is not None:
        _WRITER.flush()
    _WRITER = None if fd is None else LineWriter(fd)


def emit(record: AccessRecord) -> None:
    """Write the record's line: ERROR for the gateway's own failures, DEBUG for a client
    that went away, INFO otherwise. Nothing is built unless the level is enabled."""
    level = _LEVELS.get(record.code, logging.INFO)
    if level == logging.INFO and _WRITER is not None:
        if ACCESS_LOG.isEnabledFor(level):
            _WRITER.write(record.line())
        return
    if ACCESS_LOG.isEnabledFor(level):
        # Straight to handle(): Logger.log would first walk the stack for the caller's
        # file and line (findCaller), which no access line shows. Handlers, filters
        # and propagation are as for any record; the line is the whole message.
        ACCESS_LOG.handle(ACCESS_LOG.makeRecord(
            ACCESS_LOG.name, level, __file__, 0, record.line().decode(), (), None))


def mask_phone(phone: str) -> str:
    """``+15551234567`` -> ``+1555***4567``: enough to tell numbers apart, not to dial one."""
    if len(phone) < 10:
        return "***"
    return phone[:5] + "***" + phone[-4:]


def mask_email(email: str) -> str:
    """``jane@acme.com`` -> ``j***@acme.com``: the domain says which customer, not who."""
    local, sep, domain = email.rpartition("@")
    if not sep or not local:
        return "***"
    return local[0] + "***@" + domain


def mask_id(value: str) -> str:
    """A provider id, masked unless short: some providers take a phone or email as an id."""
    if "@" in value:
        return mask_email(value)
    if len(value) <= 6:
        return value  # Aelyst's small integers; too short to be anyone's number
    if len(value) < 10:
        return value[:2] + "***" + value[-2:]
    return value[:5] + "***" + value[-4:]


def mask_contact(*, phone: str | None = None, email: str | None = None,
                 id: str | None = None) -> str | None:
    """A contact for a log line, whichever kind it is, masked."""
    if phone is not None:
        return mask_phone(phone)
    if email is not None:
        return mask_email(email)
    return None if id is None else "id:" + mask_id(id)
