"""The physical limit for this stack: a bare aiohttp passthrough proxy.

One shared ClientSession with an unbounded pool, no parsing: the body bytes
go to the same path on the upstream and the upstream's bytes come back.
uvloop, no access log.

    python -m bench.passthrough --port 9001 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.Response:
    body = await request.read()
    async with request.app[SESSION].post(
        request.app[UPSTREAM] + request.path_qs, data=body,
        headers={"Content-Type": "application/json"},
    ) as resp:
        payload = await resp.read()
        return web.Response(body=payload, status=resp.status, content_type="application/json")


async def shared_session(app: web.Application) -> AsyncIterator[None]:
    """``app[SESSION]``: one session, an unbounded pool, no cookies (a cleanup ctx)."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    app[SESSION] = aiohttp.ClientSession(connector=connector,
                                         cookie_jar=aiohttp.DummyCookieJar())
    yield
    await app[SESSION].close()


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(shared_session)
    app.router.add_post("/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    print(f"passthrough ready on {args.host}:{args.port} -> {args.upstream}", flush=True)
    web.run_app(create_app(args.upstream), host=args.host, port=args.port,
                access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
