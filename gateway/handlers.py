"""The route handlers of the canonical API."""

from __future__ import annotations

import asyncio
from functools import partial

from aiohttp import web

from gateway import idempotency, logs
from gateway.config import ClientSpec
from gateway.dryrun import dry_run
from gateway.executor import EXECUTOR
from gateway.http import Handler, json_response, read_body
from gateway.lifecycle import runtime_of
from gateway.models import AssignRequest, Queued, UnassignRequest
from gateway.ratelimit import check_client, gate_for
from gateway.redis_conn import REDIS_ERRORS
from gateway.runtime import (
    METRICS,
    OPENAPI,
    REDIS,
    REQUEST_ID,
    RUNTIME,
    Runtime,
)
from gateway.service import Done, Plan, plan
from gateway.spi import Operation
from gateway.upstream import Call


def authenticate(request: web.Request, rt: Runtime | None = None) -> ClientSpec:
    """The client of the request's key; ``rt``: its runtime, when the caller has it."""
    auth = (rt or runtime_of(request)).auth
    client = auth.authenticate(request.headers.get("Authorization"))
    logs.annotate_client(client.name)
    return client


def _writer(operation: Operation, model: type[UnassignRequest]) -> Handler:
    """The handler of a write route. One coroutine from the request to the executor,
    with no layer between in the common case (no ``Idempotency-Key``, no dry run):
    each layer would be a frame that every suspension of the request resumes."""

    async def handler(request: web.Request) -> web.Response:
        rt, app = runtime_of(request), request.app  # a property: read once
        client = authenticate(request, rt)
        pending = check_client(app, client)  # the client's own budget, before any work
        if pending is not None:
            await pending
        body = await read_body(request, model)
        if request.query_string and request.query.get("dry_run", "").lower() in ("true", "1"):
            return await _dry_run(request, rt, client, operation, body)
        if idempotency.HEADER in request.headers:
            return await idempotency.guarded(request, client.name, operation, body,
                                             partial(_run, request, rt, client, operation, body))
        # As _run, in this frame: a coroutine of its own would be one more frame that
        # every suspension of the request resumes.
        prefer_async = _prefers_async(request)
        return _answer(await app[EXECUTOR].submit(
            rt, _plan(rt, client, operation, body), request[REQUEST_ID], prefer_async),
            prefer_async)

    handler.__name__ = handler.__qualname__ = operation
    return handler


async def _run(request: web.Request, rt: Runtime, client: ClientSpec, operation: Operation,
               body: UnassignRequest) -> web.Response:
    """Plan, then run within the provider's deadline (200), or queue (202 and Location)."""
    prefer_async = _prefers_async(request)
    return _answer(await request.app[EXECUTOR].submit(
        rt, _plan(rt, client, operation, body), request[REQUEST_ID], prefer_async),
        prefer_async)


def _plan(rt: Runtime, client: ClientSpec, operation: Operation, body: UnassignRequest) -> Plan:
    p = plan(rt.config, rt.routes, client, operation, body)
    logs.annotate_plan(p)
    return p


def _answer(out: Done | Queued, prefer_async: bool) -> web.Response:
    """200 with the result, or 202 with ``Location`` (and ``Preference-Applied``)."""
    logs.annotate_result(out)
    if isinstance(out, Done):
        return json_response(out.body)
    headers = {"Location": f"/v1/operations/{out.operation_id}"}
    if prefer_async:
        headers["Preference-Applied"] = "respond-async"
    return json_response(out, 202, headers)


async def _dry_run(request: web.Request, rt: Runtime, client: ClientSpec,
                   operation: Operation, body: UnassignRequest) -> web.Response:
    """Resolve and check against the tenant's current provider; reads only."""
    p = _plan(rt, client, operation, body)
    pc = rt.providers[p.provider]
    deadline = asyncio.get_running_loop().time() + pc.deadline_s
    call = Call(pc, deadline, {"X-Request-ID": request[REQUEST_ID]},
                gate=gate_for(request.app))
    return json_response(await dry_run(p, pc, call))


def _prefers_async(request: web.Request) -> bool:
    prefs = request.headers.getall("Prefer", ())
    if not prefs:
        return False
    return any(p.split("=")[0].strip().lower() == "respond-async"
               for value in prefs for p in value.replace(";", ",").split(","))


async def operation(request: web.Request) -> web.Response:
    """``GET /v1/operations/{id}``: only the client that made it may see it."""
    client = authenticate(request)
    found = await request.app[EXECUTOR].view(request.match_info["id"], client.name)
    return json_response(found)


assign = _writer("assign", AssignRequest)
unassign = _writer("unassign", UnassignRequest)


async def tenants(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    client = authenticate(request)
    out = []
    for name in client.tenants:
        pc = rt.providers[rt.config.tenants[name].provider]
        out.append({"name": name, "provider": pc.type,
                    "capabilities": pc.adapter.capabilities.public()})
    return json_response({"tenants": out})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if not request.app[RUNTIME].ready:
        return json_response({"status": "not ready", "reason": "shutting down"}, 503)
    if REDIS in request.app:
        try:
            await request.app[REDIS].ping()
        except REDIS_ERRORS:
            return json_response({"status": "not ready", "reason": "redis unreachable"}, 503)
    return json_response({"status": "ready"})


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
