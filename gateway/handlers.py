"""The route handlers of the canonical API."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.config import ClientSpec
from gateway.http import json_response, read_body
from gateway.models import AssignRequest, UnassignRequest
from gateway.redis_conn import REDIS_ERRORS
from gateway.runtime import (
    CLIENT_NAME,
    METRICS,
    OPENAPI,
    REDIS,
    REQUEST_ID,
    RUNTIME,
    SERVICES,
    Runtime,
)
from gateway.service import Plan, attempt, plan, result
from gateway.spi import Operation
from gateway.upstream import Call


def authenticate(request: web.Request) -> ClientSpec:
    client = request.app[RUNTIME].auth.authenticate(request.headers.get("Authorization"))
    request[CLIENT_NAME] = client.name
    return client


async def _write(request: web.Request, operation: Operation,
                 model: type[UnassignRequest]) -> web.Response:
    rt = request.app[RUNTIME]
    client = authenticate(request)
    body = await read_body(request, model)
    p = plan(rt.config, rt.providers, client, operation, body)
    return json_response(await run_plan(request.app, rt, p, request[REQUEST_ID]))


async def run_plan(app: web.Application, rt: Runtime, p: Plan, request_id: str) -> Any:
    """Run a plan synchronously within its provider's deadline."""
    pc = rt.providers[p.provider]
    loop = asyncio.get_running_loop()
    call = Call(pc, loop.time() + pc.config.retry.deadline_s, {"X-Request-ID": request_id})
    outcome = await attempt(p, pc, call)
    return result(p, pc.config.type, outcome, app[SERVICES].new_id(), 1)


async def assign(request: web.Request) -> web.Response:
    return await _write(request, "assign", AssignRequest)


async def unassign(request: web.Request) -> web.Response:
    return await _write(request, "unassign", UnassignRequest)


async def tenants(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    client = authenticate(request)
    out = []
    for name in client.tenants:
        pc = rt.providers[rt.config.tenants[name].provider]
        out.append({"name": name, "provider": pc.config.type,
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
