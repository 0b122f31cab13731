"""HTTP plumbing: JSON and problem+json responses, the error middleware, body reading.

:func:`problem_middleware` is the one place a :class:`GatewayError` becomes
``application/problem+json``, and where every request is counted (metrics) and
written as one JSON line (:mod:`gateway.logs`).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Protocol, TypeVar

import orjson
from aiohttp import hdrs, web
from pydantic import BaseModel, ValidationError

from gateway import ids, logs
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from gateway.ratelimit.wiring import add_headers as ratelimit_headers
from gateway.runtime import METRICS, REQUEST_ID

MAX_BODY = 16 * 1024
#: The status recorded (never sent) for a request whose client closed the connection.
CLIENT_CLOSED_STATUS = 499
#: A body must arrive within this long once it is being read: a client that
#: drips its body a byte at a time (slow-loris) would otherwise hold the
#: request, its task and its connection for as long as it likes.
BODY_TIMEOUT_S = 10.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
M = TypeVar("M", bound=BaseModel)


class RequestGuard(Protocol):
    """Work around every handler, run by :func:`problem_middleware` itself: a second
    aiohttp middleware would cost a coroutine layer (and its partial) per request."""

    def enter(self, request: web.Request, route: str) -> object:
        """Before the handler; raise a :class:`GatewayError` to refuse the request.
        What it returns is given to :meth:`leave`."""
        ...

    def leave(self, entered: object) -> None:
        """After the handler, however it ended (only when :meth:`enter` returned)."""
        ...


#: The app's guard, if any (the lifecycle installs one: drain and runtime pinning).
GUARD = web.AppKey("request_guard", RequestGuard)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The label of a request no route takes (metrics and access lines).
OTHER_ROUTE = "other"
#: The name of the app's last route, which takes every request no other route takes.
UNMATCHED = "unmatched"


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None,
                  content_type: str = "application/json") -> web.Response:
    body = dumps(obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj)
    return web.Response(body=body, status=status, headers=headers, content_type=content_type)


def problem_response(err: GatewayError, request_id: str) -> web.Response:
    headers = {"X-Request-ID": request_id}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    if isinstance(err, MethodNotAllowed):
        headers["Allow"] = err.allow
    return json_response(err.problem(), err.status, headers, "application/problem+json")


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else OTHER_ROUTE


def add_route(app: web.Application, method: str, path: str, handler: Handler) -> None:
    """Route ``method path`` to ``handler`` through :func:`problem_middleware` (GET
    routes take HEAD too, as aiohttp's ``add_get`` does)."""
    serve = partial(problem_middleware, handler=handler, route=path)
    if method == "GET":
        app.router.add_get(path, serve)
    else:
        app.router.add_route(method, path, serve)


class _Anything(web.DynamicResource):
    """A resource that matches every request target, those that are not a path too
    (``OPTIONS *``): aiohttp's router would answer one no route matches itself, in
    plain text, uncounted and unlogged. ``_match`` is aiohttp's hook for a resource's
    own matching (abstract in ``web.Resource``)."""

    def _match(self, path: str) -> dict[str, str] | None:
        return {"path": path}


def add_unmatched_route(app: web.Application) -> None:
    """The app's last route: a request no other route takes is answered as every error
    is, 404, or 405 with ``Allow`` when its path takes other methods."""
    resource = _Anything("/{path:.*}", name=UNMATCHED)
    app.router.register_resource(resource)
    resource.add_route("*", partial(problem_middleware, handler=_unmatched, route=OTHER_ROUTE))


async def _unmatched(request: web.Request) -> web.StreamResponse:
    this = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not this:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:  # as aiohttp's router writes it
        raise MethodNotAllowed("this route does not take that method",
                               allow=",".join(sorted(allowed)))
    raise NotFound("no such route")


def _map_http(exc: web.HTTPException) -> GatewayError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(f"bodies are limited to {MAX_BODY} bytes")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed("this route does not take that method",
                                allow=exc.headers.get("Allow", ""))
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("no such route")
    return InvalidRequest("the request could not be read")


def _request_id(request: web.Request) -> str:
    # A client's id is kept only when it is short and plain: it goes into logs and upstream.
    rid = request.headers.get("X-Request-ID", "")
    return rid if rid and _REQUEST_ID.match(rid) else ids.token_hex(8)


async def problem_middleware(request: web.Request, handler: Handler,
                             route: str | None = None) -> web.StreamResponse:
    """The one place errors become problem+json, and every request is counted and logged.

    The gateway's routes call it directly (:func:`add_route`), ``route`` given: an
    aiohttp middleware costs a layer of aiohttp's own per request (it sets the match's
    current app around the handler). As an aiohttp middleware (tests' apps) it is
    :data:`PROBLEM_MIDDLEWARE`.
    One coroutine around the handler, the app's guard included: a layer here would be
    a frame that every suspension of every request resumes."""
    rid = request[REQUEST_ID] = _request_id(request)
    rec = logs.AccessRecord(rid, request.method, route or _route(request))
    token = logs.begin(rec)
    loop = asyncio.get_running_loop()
    start = loop.time()
    app = request.app  # a property that looks the app up: read once
    guard = app.get(GUARD)
    try:
        try:
            try:
                if guard is None:
                    resp = await handler(request)
                else:
                    entered = guard.enter(request, rec.route)
                    try:
                        resp = await handler(request)
                    finally:
                        guard.leave(entered)
            except web.HTTPException as e:
                if e.status < 400:
                    rec.status = e.status  # a redirect: aiohttp sends it as it is
                    raise
                raise _map_http(e) from None
        except GatewayError as e:
            rec.code = e.code
            resp = problem_response(e, rid)
        except ConnectionResetError:
            # The client went away mid-request (aiohttp's ClientConnectionResetError is
            # one): not the gateway's failure, so not a 500 and not an ERROR line. The
            # answer is never delivered; 499 (as nginx logs it) only labels the record.
            rec.code, rec.status = "client_closed", CLIENT_CLOSED_STATUS
            resp = web.Response(status=CLIENT_CLOSED_STATUS)
        except Exception as e:  # the last line of defence: never a traceback to a client
            # Only the type's name is kept: the exception's text could carry request data.
            rec.code, rec.error = "internal_error", type(e).__name__
            resp = problem_response(GatewayError("an unexpected error occurred"), rid)
        else:
            rec.code = "queued" if resp.status == 202 else "ok"
        resp.headers["X-Request-ID"] = rid
        ratelimit_headers(resp)
        rec.status = resp.status
        return resp
    except asyncio.CancelledError:
        rec.code = "cancelled"
        raise
    finally:
        rec.duration_s = loop.time() - start
        app[METRICS].request(rec.route, rec.code, rec.duration_s)
        logs.emit(rec)
        logs.end(token)


#: :func:`problem_middleware` as an aiohttp middleware. aiohttp marks a middleware with
#: an attribute, which a compiled function cannot take (gateway/_native.py): the mark
#: goes on a partial.
PROBLEM_MIDDLEWARE = web.middleware(partial(problem_middleware))


async def read_body(request: web.Request, model: type[M]) -> M:
    # The raw headers first: aiohttp's content_type and content_length properties parse
    # the header on every read, in Python. Only a type with parameters or another
    # spelling ("application/json; charset=utf-8", "...+json") is parsed.
    headers = request.headers
    if headers.get(hdrs.CONTENT_TYPE) != "application/json":
        content_type = request.content_type
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise UnsupportedMediaType("send Content-Type: application/json")
    length = headers.get(hdrs.CONTENT_LENGTH)  # digits only: the HTTP parser checked it
    if length is not None and int(length) > MAX_BODY:
        raise PayloadTooLarge(f"bodies are limited to {MAX_BODY} bytes")
    try:
        content = request.content
        if content.is_eof():
            # The whole body came with the headers: taken as it is, with no coroutine
            # (request.read() runs two of aiohttp's per body, to find there is no more).
            # Nothing reads the body again. aiohttp's client_max_size applies only
            # to read(): the limit is checked here (the Content-Length may be absent).
            raw = content.read_nowait()
            if len(raw) > MAX_BODY:
                raise PayloadTooLarge(f"bodies are limited to {MAX_BODY} bytes")
        else:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                raw = await request.read()
    except TimeoutError:
        raise InvalidRequest(f"the body did not arrive within {BODY_TIMEOUT_S:g} s") from None
    except web.RequestPayloadError:
        # A body its own Content-Encoding cannot decode (bad gzip or deflate): the
        # client's mistake, so a 400, not the catch-all's 500.
        raise InvalidRequest("the body could not be decoded as its Content-Encoding "
                             "says") from None
    try:
        # The common case in one pass (pydantic parses the JSON itself). Any failure is
        # diagnosed again below, so every refusal reads exactly as it always has.
        # The validator itself: model_validate_json is a Python frame around this call.
        valid: M = model.__pydantic_validator__.validate_json(raw)
        return valid
    except ValidationError:
        pass
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InvalidRequest("the body does not match the API", errors=_field_errors(e)) from None


#: The most field errors one answer lists: a 16 KiB body of unknown keys would
#: otherwise come back as a 90 KiB answer naming each of them.
MAX_FIELD_ERRORS = 20


def _field_errors(err: ValidationError) -> list[dict[str, str]]:
    # Only locations and messages: the rejected input is never echoed back.
    return [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in err.errors(include_url=False)[:MAX_FIELD_ERRORS]]
