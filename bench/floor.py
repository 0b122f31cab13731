"""The floor: the least work the v1 contract asks per assign, on the passthrough's stack.

Not the gateway and not a candidate for it: a yardstick. One handler does, inline
and with no layer between, only what ``POST /v1/assign`` must do on every request
whatever the design (DESIGN.md, "The canonical HTTP API"):

- a request id (the client's ``X-Request-ID`` when plain, else a new one), sent
  upstream and back;
- the client authenticated by the SHA-256 of its bearer key, its tenant checked;
- the client's token bucket spent (the gateway's own in-process GCRA), and
  ``RateLimit-*`` headers on the answer;
- the body validated by the gateway's own pydantic model (``gateway.models``);
- the Aelyst request built (each path segment encoded, the JSON body) and the
  provider's bucket spent;
- one exchange bounded by a timeout, the answer's JSON checked for ``contactId``;
- the canonical result (an operation id) as JSON;
- the four request and exchange metrics and one JSON access line, through the
  gateway's own ``Metrics`` and ``LineWriter`` (a write per loop turn);
- the operation kept in a bounded map (``GET /v1/operations/{id}`` needs it), as
  many as the gateway keeps in process.

It serves with the gateway's garbage-collector settings (``gateway.cli.tune_gc``) and
takes the gateway's two stage turns (``gateway.executor.Executor._turn``): one
event-loop turn after the body is checked and one after the exchange, while
another request is in the handler.

Everything else the gateway does is left out: idempotency keys, per-contact
ordering, retries and queued work, directory look-ups, reload and drain, error
mapping beyond a 4xx/5xx, other providers. So a real gateway costs at least this;
``bench.instructions --system floor`` counts it next to the passthrough.

    python -m bench.floor --port 9002 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import math
import re
import sys
import time
from urllib.parse import quote

import aiohttp
import orjson
import uvloop
from aiohttp import web
from pydantic import ValidationError

from bench.load import CLIENT_KEY
from bench.passthrough import SESSION, UPSTREAM, shared_session
from gateway import ids
from gateway.cli import tune_gc
from gateway.deadline import deadline
from gateway.logs import LineWriter
from gateway.metrics import Metrics
from gateway.models import AssignRequest
from gateway.operations import MEMORY_FINALS
from gateway.ratelimit.gcra import Bucket
from gateway.ratelimit.memory import MemoryBackend

_RID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_AELYST_ID = re.compile(r"[0-9]{1,18}")  # Aelyst's contact and user ids are integers
RATE, BURST = 1_000_000.0, 1_000_000  # as bench.run configures the gateway: never refuses


class State:
    def __init__(self) -> None:
        self.clients = {hashlib.sha256(CLIENT_KEY.encode()).hexdigest():
                        ("bench", frozenset({"bench", "bench-slow"}))}
        # The gateway's own in-process buckets (GCRA), one for the client, one for Aelyst.
        self.buckets = MemoryBackend(time.monotonic)
        self.bucket = Bucket.of(RATE, BURST)
        self.ops: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self.metrics = Metrics()  # the gateway's families, recorded as the gateway does
        self.access = LineWriter(sys.stdout.fileno())  # the gateway's: a write per turn
        self.inflight = 0  # requests in the handler now (see turn)


STATE = web.AppKey("state", State)


def problem(status: int, code: str, rid: str) -> web.Response:
    return web.Response(body=orjson.dumps({"code": code, "status": status}), status=status,
                        headers={"X-Request-ID": rid}, content_type="application/problem+json")


async def assign(request: web.Request) -> web.Response:
    st = request.app[STATE]
    st.inflight += 1
    try:
        return await _assign(request, st)
    finally:
        st.inflight -= 1


async def turn(st: State) -> None:
    """The gateway's stage turn (``Executor._turn``): one event-loop turn while another
    request is in the handler, so that under load the loop runs each stage for every
    ready request before the next (measured: 7% to 10% less CPU per request at 64
    connections for these two)."""
    if st.inflight > 1:
        await asyncio.sleep(0)


async def _assign(request: web.Request, st: State) -> web.Response:
    loop = asyncio.get_running_loop()
    start = loop.time()
    rid = request.headers.get("X-Request-ID", "")
    if not (rid and _RID.match(rid)):
        rid = ids.token_hex(8)
    auth = request.headers.get("Authorization", "")
    client = st.clients.get(hashlib.sha256(auth[7:].encode()).hexdigest()) \
        if auth.startswith("Bearer ") else None
    if client is None:
        return problem(401, "unauthenticated", rid)
    spent = st.buckets.reserve_now("client:" + client[0], st.bucket, 0.0)
    if not spent.allowed:
        return problem(429, "rate_limited", rid)
    try:
        body = AssignRequest.model_validate_json(await request.read())
    except ValidationError:
        return problem(400, "invalid_request", rid)
    if body.tenant not in client[1]:
        return problem(403, "forbidden", rid)
    if (body.contact.id is None or body.assignee.id is None
            or not _AELYST_ID.fullmatch(body.contact.id)
            or not _AELYST_ID.fullmatch(body.assignee.id)):
        return problem(400, "invalid_identifier", rid)
    await turn(st)
    path = "/contact/" + quote("id:" + body.contact.id, safe="") + "/conversation/assignee"
    payload = orjson.dumps({"assignee": int(body.assignee.id)})
    if not st.buckets.reserve_now("fast:account", st.bucket, 0.0).allowed:
        return problem(429, "rate_limited", rid)
    t0 = loop.time()
    try:
        with deadline(5):  # the gateway's timer on each exchange
            async with request.app[SESSION].post(
                request.app[UPSTREAM] + path, data=payload,
                headers={"Authorization": "Bearer bench-token", "User-Agent": "floor/1",
                         "Content-Type": "application/json", "X-Request-ID": rid},
            ) as resp:
                status, raw = resp.status, await resp.read()
    except (TimeoutError, aiohttp.ClientError, OSError):
        return problem(502, "upstream_unavailable", rid)
    await turn(st)
    st.metrics.exchange("fast", "assign", str(status), loop.time() - t0)
    answer = orjson.loads(raw) if status == 200 else None
    if not isinstance(answer, dict) or type(answer.get("contactId")) is not int:
        return problem(502, "upstream_error", rid)
    op_id = ids.operation_id()
    out = orjson.dumps({
        "status": "assigned", "operation_id": op_id, "tenant": body.tenant,
        "provider": "aelyst", "contact": {"id": body.contact.id,
                                          "provider_id": str(answer["contactId"])},
        "assignee": {"provider_id": body.assignee.id}, "attempts": 1})
    st.ops[op_id] = out
    if len(st.ops) > MEMORY_FINALS:  # as many as the gateway keeps in process
        st.ops.popitem(last=False)
    duration = loop.time() - start
    st.metrics.request("/v1/assign", "ok", duration)
    st.access.write(orjson.dumps({
        "request_id": rid, "method": "POST", "route": "/v1/assign", "status": 200,
        "code": "ok", "client": client[0], "tenant": body.tenant, "operation_id": op_id,
        "duration_ms": round(duration * 1000, 3)}))
    return web.Response(body=out, content_type="application/json", headers={
        "X-Request-ID": rid, "RateLimit-Limit": str(BURST),
        "RateLimit-Remaining": str(spent.remaining),
        "RateLimit-Reset": str(math.ceil(spent.reset_s))})


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/") + "/v1"
    app[STATE] = State()
    app.cleanup_ctx.append(shared_session)  # the passthrough's, as it sets it up
    app.router.add_post("/v1/assign", assign)
    app.on_startup.append(_tune_gc)
    return app


async def _tune_gc(app: web.Application) -> None:
    tune_gc()  # the gateway's collector settings: it serves with them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    print(f"floor ready on {args.host}:{args.port} -> {args.upstream}", file=sys.stderr,
          flush=True)
    web.run_app(create_app(args.upstream), host=args.host, port=args.port,
                access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
