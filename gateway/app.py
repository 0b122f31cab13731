"""The HTTP application: routes, the problem+json middleware, and its resources.

Resources live on the ``Application`` under typed ``web.AppKey`` s and are
opened and closed in ``cleanup_ctx``. :class:`Runtime` is everything built
from one configuration; a reload builds a new one and swaps it in, keeping the
provider clients whose configuration did not change.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.auth import ClientAuth
from gateway.config import ClientSpec, Config
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from gateway.metrics import Metrics
from gateway.models import AssignRequest, UnassignRequest
from gateway.openapi import build_openapi
from gateway.registry import AdapterClass, adapters
from gateway.service import Plan, attempt, plan, result
from gateway.spi import Operation
from gateway.upstream import Call, LookupCache, ProviderClient, new_session

log = logging.getLogger("gateway")
MAX_BODY = 16 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
M = TypeVar("M", bound=BaseModel)


@dataclass
class Runtime:
    """Everything built from one configuration."""

    config: Config
    auth: ClientAuth
    providers: dict[str, ProviderClient]
    ready: bool = True


@dataclass
class Services:
    """Injected dependencies: the adapter registry, ids, and the clock."""

    registry: Mapping[str, AdapterClass] = field(default_factory=adapters)
    new_id: Callable[[], str] = field(default=lambda: "op_" + secrets.token_hex(12))
    clock: Callable[[], float] | None = None  # None: the event loop's clock


RUNTIME = web.AppKey("runtime", Runtime)
METRICS = web.AppKey("metrics", Metrics)
SERVICES = web.AppKey("services", Services)
OPENAPI = web.AppKey("openapi", bytes)
REQUEST_ID = web.RequestKey("request_id", str)
CLIENT_NAME = web.RequestKey("client", str)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None,
                  content_type: str = "application/json") -> web.Response:
    body = dumps(obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj)
    return web.Response(body=body, status=status, headers=headers, content_type=content_type)


def problem_response(err: GatewayError, request_id: str) -> web.Response:
    headers = {"X-Request-ID": request_id}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(err.retry_after + 0.999)))
    return json_response(err.problem(), err.status, headers, "application/problem+json")


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "other"


def _map_http(exc: web.HTTPException) -> GatewayError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(f"bodies are limited to {MAX_BODY} bytes")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed("this route does not take that method")
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("no such route")
    return InvalidRequest("the request could not be read")


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The one place errors become problem+json, and every request is counted."""
    rid = request.headers.get("X-Request-ID", "")
    if not _REQUEST_ID.match(rid):
        rid = secrets.token_hex(8)
    request[REQUEST_ID] = rid
    loop = asyncio.get_running_loop()
    start = loop.time()
    code = "ok"
    try:
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            raise _map_http(e) from None
        code = "queued" if resp.status == 202 else "ok"
        resp.headers["X-Request-ID"] = rid
        return resp
    except GatewayError as e:
        code = e.code
        return problem_response(e, rid)
    except Exception as e:  # the last line of defence: never a traceback to a client
        code = "internal_error"
        # The exception's text is not logged: it could carry request data.
        log.error("unhandled %s on %s", type(e).__name__, _route(request))
        return problem_response(GatewayError("an unexpected error occurred"), rid)
    finally:
        request.app[METRICS].request(_route(request), code, loop.time() - start)


async def read_body(request: web.Request, model: type[M]) -> M:
    if request.content_type != "application/json" and not request.content_type.endswith("+json"):
        raise UnsupportedMediaType("send Content-Type: application/json")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge(f"bodies are limited to {MAX_BODY} bytes")
    raw = await request.read()
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


def _field_errors(err: ValidationError) -> list[dict[str, str]]:
    # Only locations and messages: the rejected input is never echoed back.
    return [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in err.errors(include_url=False)]


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
        return json_response({"status": "not ready"}, 503)
    return json_response({"status": "ready"})


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


def build_providers(
    config: Config, registry: Mapping[str, AdapterClass], metrics: Metrics,
    previous: Mapping[str, ProviderClient] | None = None,
) -> dict[str, ProviderClient]:
    """One client per configured provider; an unchanged one is kept with its session and cache."""
    out: dict[str, ProviderClient] = {}
    for name, pcfg in config.providers.items():
        old = (previous or {}).get(name)
        if old is not None and old.config == pcfg:
            out[name] = old
            continue
        adapter = registry[pcfg.type](name, pcfg.api_key.get_secret_value())
        out[name] = ProviderClient(pcfg, adapter, new_session(), LookupCache(), metrics)
    return out


async def close_providers(clients: Mapping[str, ProviderClient],
                          keep: Mapping[str, ProviderClient] | None = None) -> None:
    kept = {id(c) for c in (keep or {}).values()}
    for c in clients.values():
        if id(c) not in kept:
            await c.session.close()


def create_app(config: Config, *, metrics: Metrics | None = None,
               services: Services | None = None) -> web.Application:
    app = web.Application(middlewares=[problem_middleware], client_max_size=MAX_BODY)
    app[METRICS] = metrics or Metrics()
    app[SERVICES] = services or Services()
    app[OPENAPI] = dumps(build_openapi())

    async def resources(app: web.Application) -> AsyncIterator[None]:
        providers = build_providers(config, app[SERVICES].registry, app[METRICS])
        app[RUNTIME] = Runtime(config, ClientAuth(config.clients), providers)
        yield
        await close_providers(app[RUNTIME].providers)

    app.cleanup_ctx.append(resources)
    app.router.add_post("/v1/assign", assign)
    app.router.add_post("/v1/unassign", unassign)
    app.router.add_get("/v1/tenants", tenants)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/openapi.json", openapi)
    return app
