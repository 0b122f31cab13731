"""Shared toolkit for provider sandboxes: fault injection, request journal, control API.

A sandbox builds its own provider routes and hands the kit three callables: how the
provider shapes an error body, how to dump its state and how to reset it. The kit then
adds the same control surface to every sandbox, under ``/_sandbox/``:

- ``POST /_sandbox/faults`` queues faults, ``DELETE`` clears them, ``GET`` lists them;
- ``GET /_sandbox/journal`` lists every provider request seen, ``DELETE`` clears it;
- ``GET /_sandbox/state`` dumps provider state, ``POST /_sandbox/reset`` resets everything.

Control requests are never journaled and never consume faults.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml
from aiohttp import web
from aiohttp.typedefs import Middleware

ErrorResponse = Callable[[int, float | None], tuple[dict[str, Any], dict[str, str]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONTROL_PREFIX = "/_sandbox/"
JOURNAL_CAP = 100_000
FAULT_KINDS = frozenset({"status", "delay", "hang", "drop", "html", "malformed"})
HTML_BODY = "<html><body><h1>Bad Gateway</h1></body></html>"
MALFORMED_BODY = '{"success": tru'
_FAULT_FIELDS = frozenset(
    {"kind", "status", "count", "delay_s", "retry_after", "method", "path_prefix"}
)


@dataclass
class JournalEntry:
    """One provider request as received: raw (still percent-encoded) path, no query."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: str
    status: int  # 0 when the connection was dropped
    at: float


@dataclass
class Fault:
    kind: str
    status: int | None = None
    count: int = 1
    delay_s: float | None = None
    retry_after: float | None = None
    method: str | None = None
    path_prefix: str | None = None

    def matches(self, method: str, raw_path: str) -> bool:
        if self.count < 1:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path_prefix is None or raw_path.startswith(self.path_prefix)


class FaultError(ValueError):
    """A fault body that cannot be queued; the message is returned to the caller."""


def format_seconds(value: float) -> str:
    """Render seconds for a header: ``1.0`` as ``1``, ``0.5`` as ``0.5``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultError(f"{key} must be a number >= 0")
    return float(value)


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise FaultError(f"{key} must be a string or null")
    return value


def parse_fault(body: Any) -> Fault:
    """Validate a ``POST /_sandbox/faults`` body; raise FaultError naming the bad key."""
    if not isinstance(body, dict):
        raise FaultError("body must be a JSON object")
    unknown = sorted(set(body) - _FAULT_FIELDS)
    if unknown:
        raise FaultError(f"unknown keys: {', '.join(unknown)}")
    kind = body.get("kind")
    if kind not in FAULT_KINDS:
        raise FaultError(f"kind must be one of {', '.join(sorted(FAULT_KINDS))}")
    status, count = body.get("status"), body.get("count", 1)
    if status is not None and (
        isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599
    ):
        raise FaultError("status must be an integer between 100 and 599")
    if kind == "status" and status is None:
        raise FaultError("status is required for kind=status")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise FaultError("count must be an integer >= 1")
    delay_s = _number(body, "delay_s")
    if kind == "delay" and delay_s is None:
        raise FaultError("delay_s is required for kind=delay")
    return Fault(
        kind=kind,
        status=status,
        count=count,
        delay_s=delay_s,
        retry_after=_number(body, "retry_after"),
        method=_optional_str(body, "method"),
        path_prefix=_optional_str(body, "path_prefix"),
    )


def load_seed(name: str, data_file: str | Path | None) -> dict[str, Any]:
    """Read a sandbox's seed YAML, by default ``config/sandbox-data/<name>.yaml``."""
    if data_file is None:
        # GATEWAY_SANDBOX_DATA points an installed package (a container image)
        # at the seed files; a source checkout finds them in config/.
        base = os.environ.get("GATEWAY_SANDBOX_DATA")
        folder = Path(base) if base else Path(__file__).resolve().parents[1] / "config"
        data_file = (folder if base else folder / "sandbox-data") / f"{name}.yaml"
    with Path(data_file).open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{data_file}: seed data must be a YAML mapping")
    return data


def _raw_path(request: web.Request) -> tuple[str, str]:
    path, _, query = request.raw_path.partition("?")
    return path, query


class SandboxKit:
    def __init__(
        self,
        *,
        error_response: ErrorResponse,
        dump_state: Callable[[], Any],
        reset_state: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._error_response = error_response
        self._dump_state = dump_state
        self._reset_state = reset_state
        self._clock = clock
        self.journal: list[JournalEntry] = []
        self.faults: list[Fault] = []
        self.middleware = self._make_middleware()

    def install(self, app: web.Application) -> None:
        """Add the control routes; also add the middleware, outermost, if not yet present."""
        if self.middleware not in app.middlewares:
            app.middlewares.insert(0, self.middleware)
        app.router.add_post("/_sandbox/faults", self._post_faults)
        app.router.add_get("/_sandbox/faults", self._get_faults)
        app.router.add_delete("/_sandbox/faults", self._delete_faults)
        app.router.add_get("/_sandbox/journal", self._get_journal)
        app.router.add_delete("/_sandbox/journal", self._delete_journal)
        app.router.add_get("/_sandbox/state", self._get_state)
        app.router.add_post("/_sandbox/reset", self._post_reset)

    def take_fault(self, method: str, raw_path: str) -> Fault | None:
        """Consume one use of the first queued fault matching this request."""
        for fault in self.faults:
            if fault.matches(method, raw_path):
                fault.count -= 1
                if fault.count < 1:
                    self.faults.remove(fault)
                return fault
        return None

    def record(self, entry: JournalEntry) -> None:
        self.journal.append(entry)
        if len(self.journal) > JOURNAL_CAP:
            del self.journal[: len(self.journal) - JOURNAL_CAP]

    def _make_middleware(self) -> Middleware:
        # web.middleware() marks its argument with an attribute, which a bound method
        # cannot carry, so the middleware is a plain closure over the kit.
        @web.middleware
        async def sandbox_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._handle(request, handler)

        return sandbox_middleware

    async def _handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path, query = _raw_path(request)
        if path.startswith(CONTROL_PREFIX):
            return await handler(request)
        entry = JournalEntry(
            method=request.method,
            path=path,
            query=query,
            headers=dict(request.headers),
            body=(await request.read()).decode("utf-8", "replace"),
            status=0,
            at=self._clock(),
        )
        self.record(entry)
        fault = self.take_fault(request.method, path)
        try:
            response = await self._respond(request, handler, fault)
        except web.HTTPException as exc:
            entry.status = exc.status
            raise
        except Exception:
            entry.status = 500
            raise
        entry.status = response.status
        return response

    async def _respond(
        self, request: web.Request, handler: Handler, fault: Fault | None
    ) -> web.StreamResponse:
        if fault is None:
            return await handler(request)
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay_s or 0.0)
            return await handler(request)
        if fault.kind == "hang":
            await _hang(request, 3600.0 if fault.delay_s is None else fault.delay_s)
            return self.error(504, None)
        if fault.kind == "drop":
            _drop(request)
        if fault.kind == "html":
            return web.Response(
                status=fault.status or 502, text=HTML_BODY, content_type="text/html"
            )
        if fault.kind == "malformed":
            return web.Response(
                status=fault.status or 200, text=MALFORMED_BODY, content_type="application/json"
            )
        assert fault.status is not None  # parse_fault requires it for kind=status
        return self.error(fault.status, fault.retry_after)

    def error(self, status: int, retry_after: float | None) -> web.Response:
        """The provider's documented error response for ``status``."""
        body, headers = self._error_response(status, retry_after)
        headers = dict(headers)
        if retry_after is not None:
            headers.setdefault("Retry-After", format_seconds(retry_after))
        return web.json_response(body, status=status, headers=headers)

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            fault = parse_fault(await request.json())
        except ValueError as exc:  # FaultError, or a body that is not JSON
            message = str(exc) if isinstance(exc, FaultError) else "body must be JSON"
            return web.json_response({"error": message}, status=400)
        self.faults.append(fault)
        return web.json_response({"queued": fault.count}, status=201)

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": [asdict(f) for f in self.faults]})

    async def _delete_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"cleared": True})

    async def _get_journal(self, request: web.Request) -> web.Response:
        return web.json_response({"entries": [asdict(e) for e in self.journal]})

    async def _delete_journal(self, request: web.Request) -> web.Response:
        self.journal.clear()
        return web.json_response({"cleared": True})

    async def _get_state(self, request: web.Request) -> web.Response:
        return web.json_response(self._dump_state())

    async def _post_reset(self, request: web.Request) -> web.Response:
        self._reset_state()
        self.faults.clear()
        self.journal.clear()
        return web.json_response({"reset": True})


async def _hang(request: web.Request, seconds: float) -> None:
    """Sleep up to ``seconds``, but stop (as a dropped request) once the client has gone.

    aiohttp does not cancel a handler when its client disconnects, so a plain hour-long
    sleep would hold the server's shutdown for its whole grace period.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        if request.transport is None or request.transport.is_closing():
            raise asyncio.CancelledError
        await asyncio.sleep(min(remaining, 0.05))


def _drop(request: web.Request) -> NoReturn:
    """Abort the connection so the client gets a disconnect and no HTTP response.

    aiohttp answers 500 to a handler exception unless the transport is already gone,
    so the transport is aborted first; CancelledError then unwinds the handler quietly.
    Note that aiohttp's client silently retries an idempotent request (GET, PUT,
    DELETE...) once when a reused keep-alive connection drops, so to observe a drop on
    such a method queue it with count >= 2 or use a fresh connection.
    """
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError
