"""bench.floor is a yardstick: it must keep doing the work it claims, or its count
would flatter the bar. Over real loopback HTTP to the benchmark's fake upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bench.floor import create_app
from bench.load import CLIENT_KEY
from bench.upstream import Upstream

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}


def _body(contact: str = "42", assignee: str = "17") -> bytes:
    return orjson.dumps({"tenant": "bench", "contact": {"id": contact},
                         "assignee": {"id": assignee}, "mode": "replace"})


@pytest.fixture
async def floor() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(lambda: Upstream(0.0), "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    client = TestClient(TestServer(create_app(f"http://127.0.0.1:{port}")))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        upstream.close()
        await upstream.wait_closed()


async def test_an_assign_goes_upstream_and_comes_back_as_the_contract_says(
        floor: TestClient) -> None:  # type: ignore[type-arg]
    resp = await floor.post("/v1/assign", data=_body("42"),
                            headers={**AUTH, "X-Request-ID": "req-1"})
    assert resp.status == 200
    body = await resp.json()
    # The fake upstream answers the contact id it found in the path: the request went.
    assert body["contact"]["provider_id"] == "42"
    assert body["status"] == "assigned" and body["operation_id"].startswith("op_")
    assert resp.headers["X-Request-ID"] == "req-1"
    assert int(resp.headers["RateLimit-Remaining"]) < int(resp.headers["RateLimit-Limit"])


@pytest.mark.parametrize(("headers", "body", "status"), [
    ({"Authorization": "Bearer nope"}, _body(), 401),
    (AUTH, b'{"tenant": "bench"}', 400),
    (AUTH, _body(contact="x1"), 400),
])
async def test_what_the_contract_refuses_is_refused(
        floor: TestClient, headers: dict[str, str], body: bytes,  # type: ignore[type-arg]
        status: int) -> None:
    resp = await floor.post("/v1/assign", data=body, headers=headers)
    assert resp.status == status
