"""The shared sandbox kit, exercised on a tiny fake provider over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from providers import sandboxkit
from providers.sandboxkit import JournalEntry, SandboxKit, load_seed

Client = TestClient[web.Request, web.Application]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeProvider:
    """Counts handled requests so tests can see whether a fault touched state."""

    def __init__(self) -> None:
        self.handled = 0
        self.resets = 0

    @staticmethod
    def error_response(
        status: int, retry_after: float | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        headers = {"X-Fake": "1"} if status == 429 else {}
        return {"code": status, "message": f"fake {status}"}, headers

    def dump(self) -> dict[str, Any]:
        return {"handled": self.handled, "resets": self.resets}

    def reset(self) -> None:
        self.resets += 1

    async def handle(self, request: web.Request) -> web.Response:
        self.handled += 1
        return web.json_response({"ok": True, "tail": request.match_info["tail"]})


def make_app(
    provider: FakeProvider, clock: FakeClock, *, pass_middleware: bool = True
) -> web.Application:
    kit = SandboxKit(
        error_response=provider.error_response,
        dump_state=provider.dump,
        reset_state=provider.reset,
        clock=clock,
    )
    app = web.Application(middlewares=[kit.middleware] if pass_middleware else [])
    kit.install(app)
    app.router.add_route("*", "/api/{tail:.*}", provider.handle)
    return app


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(aiohttp_client: Any, provider: FakeProvider, clock: FakeClock) -> Client:
    client: Client = await aiohttp_client(make_app(provider, clock))
    return client


async def queue(client: Client, **fault: Any) -> dict[str, Any]:
    resp = await client.post("/_sandbox/faults", json=fault)
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def journal(client: Client) -> list[dict[str, Any]]:
    resp = await client.get("/_sandbox/journal")
    entries: list[dict[str, Any]] = (await resp.json())["entries"]
    return entries


async def test_journal_records_raw_request(client: Client, clock: FakeClock) -> None:
    clock.now = 123.5
    resp = await client.post(
        "/api/contact/phone:%2B601%2Fx?limit=5&a=%20b", data='{"a": 1}', headers={"X-Test": "yes"}
    )
    assert resp.status == 200
    [entry] = await journal(client)
    assert entry["method"] == "POST"
    assert entry["path"] == "/api/contact/phone:%2B601%2Fx"
    assert entry["query"] == "limit=5&a=%20b"
    assert entry["headers"]["X-Test"] == "yes"
    assert entry["body"] == '{"a": 1}'
    assert entry["status"] == 200
    assert entry["at"] == 123.5


async def test_control_requests_are_not_journaled(client: Client) -> None:
    await client.get("/_sandbox/state")
    await queue(client, kind="html", path_prefix="/nowhere")
    assert await journal(client) == []


async def test_unrouted_request_is_journaled_with_its_status(client: Client) -> None:
    resp = await client.get("/missing")
    assert resp.status == 404
    assert [e["status"] for e in await journal(client)] == [404]


async def test_status_fault_uses_provider_error_and_retry_after(
    client: Client, provider: FakeProvider
) -> None:
    assert await queue(client, kind="status", status=429, retry_after=2) == {"queued": 1}
    resp = await client.post("/api/x")
    assert resp.status == 429
    assert await resp.json() == {"code": 429, "message": "fake 429"}
    assert resp.headers["Retry-After"] == "2"
    assert resp.headers["X-Fake"] == "1"
    assert provider.handled == 0
    assert [e["status"] for e in await journal(client)] == [429]


async def test_status_fault_without_retry_after_has_no_header(client: Client) -> None:
    await queue(client, kind="status", status=503, retry_after=None)
    resp = await client.get("/api/x")
    assert resp.status == 503
    assert "Retry-After" not in resp.headers


async def test_fractional_retry_after_is_kept(client: Client) -> None:
    await queue(client, kind="status", status=500, retry_after=0.25)
    resp = await client.get("/api/x")
    assert resp.headers["Retry-After"] == "0.25"


async def test_delay_fault_then_normal_handling(client: Client, provider: FakeProvider) -> None:
    await queue(client, kind="delay", delay_s=0.2)
    started = time.monotonic()
    resp = await client.get("/api/slow")
    assert time.monotonic() - started >= 0.19
    assert resp.status == 200
    assert provider.handled == 1


async def test_hang_fault_answers_504_after_delay(client: Client, provider: FakeProvider) -> None:
    await queue(client, kind="hang", delay_s=0.1)
    resp = await client.get("/api/x")
    assert resp.status == 504
    assert provider.handled == 0


async def test_hang_fault_default_makes_the_client_time_out(client: Client) -> None:
    await queue(client, kind="hang")
    with pytest.raises(asyncio.TimeoutError):
        await client.post("/api/x", timeout=aiohttp.ClientTimeout(total=0.2))
    await asyncio.sleep(0.2)  # the server notices the client left within ~50 ms
    assert [e["status"] for e in await journal(client)] == [0]


async def test_drop_fault_disconnects_without_response(
    client: Client, provider: FakeProvider
) -> None:
    await queue(client, kind="drop")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post("/api/x", json={"a": 1})
    assert provider.handled == 0
    resp = await client.post("/api/x")  # the next request is served normally
    assert resp.status == 200
    assert [e["status"] for e in await journal(client)] == [0, 200]


async def test_html_fault_defaults_to_502(client: Client) -> None:
    await queue(client, kind="html")
    resp = await client.get("/api/x")
    assert resp.status == 502
    assert resp.content_type == "text/html"
    assert await resp.text() == "<html><body><h1>Bad Gateway</h1></body></html>"


async def test_html_fault_with_status(client: Client) -> None:
    await queue(client, kind="html", status=503)
    assert (await client.get("/api/x")).status == 503


async def test_malformed_fault_is_truncated_json(client: Client) -> None:
    await queue(client, kind="malformed")
    resp = await client.get("/api/x")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(await resp.text())


async def test_count_exhausts(client: Client) -> None:
    assert await queue(client, kind="status", status=500, count=2) == {"queued": 2}
    statuses = [(await client.get("/api/x")).status for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert (await (await client.get("/_sandbox/faults")).json()) == {"faults": []}


async def test_path_prefix_and_method_matching(client: Client) -> None:
    await queue(client, kind="status", status=500, method="post", path_prefix="/api/contact/")
    assert (await client.get("/api/contact/1")).status == 200  # wrong method
    assert (await client.post("/api/other")).status == 200  # wrong path
    assert (await client.post("/api/contact/1")).status == 500
    assert (await client.post("/api/contact/1")).status == 200


async def test_first_matching_fault_wins(client: Client) -> None:
    await queue(client, kind="status", status=500, path_prefix="/api/a")
    await queue(client, kind="status", status=503)
    assert (await client.get("/api/b")).status == 503
    assert (await client.get("/api/a")).status == 500


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "explode"},
        {"kind": "status"},
        {"kind": "status", "status": 42},
        {"kind": "status", "status": True},
        {"kind": "html", "count": 0},
        {"kind": "html", "count": 1.5},
        {"kind": "delay"},
        {"kind": "delay", "delay_s": -1},
        {"kind": "html", "method": 3},
        {"kind": "html", "typo": 1},
        ["not", "an", "object"],
    ],
)
async def test_bad_fault_body_is_400(client: Client, body: Any) -> None:
    resp = await client.post("/_sandbox/faults", json=body)
    assert resp.status == 400
    assert "error" in await resp.json()


async def test_non_json_fault_body_is_400(client: Client) -> None:
    resp = await client.post("/_sandbox/faults", data="nope")
    assert resp.status == 400


async def test_delete_faults_and_journal(client: Client) -> None:
    await queue(client, kind="status", status=500)
    assert (await client.delete("/_sandbox/faults")).status == 200
    assert (await client.get("/api/x")).status == 200
    assert len(await journal(client)) == 1
    assert (await client.delete("/_sandbox/journal")).status == 200
    assert await journal(client) == []


async def test_state_and_reset(client: Client, provider: FakeProvider) -> None:
    await client.get("/api/x")
    await queue(client, kind="status", status=500)
    assert await (await client.get("/_sandbox/state")).json() == {"handled": 1, "resets": 0}
    resp = await client.post("/_sandbox/reset")
    assert await resp.json() == {"reset": True}
    assert provider.resets == 1
    assert await journal(client) == []
    assert (await client.get("/api/x")).status == 200  # the fault was cleared too


async def test_install_adds_middleware_when_not_given(
    aiohttp_client: Any, provider: FakeProvider, clock: FakeClock
) -> None:
    client = await aiohttp_client(make_app(provider, clock, pass_middleware=False))
    await queue(client, kind="status", status=500)
    assert (await client.get("/api/x")).status == 500


def test_install_does_not_duplicate_middleware(provider: FakeProvider, clock: FakeClock) -> None:
    assert len(make_app(provider, clock).middlewares) == 1


def test_journal_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandboxkit, "JOURNAL_CAP", 3)
    provider = FakeProvider()
    kit = SandboxKit(
        error_response=provider.error_response, dump_state=provider.dump, reset_state=provider.reset
    )
    for i in range(5):
        kit.record(JournalEntry("GET", f"/{i}", "", {}, "", 200, float(i)))
    assert [e.path for e in kit.journal] == ["/2", "/3", "/4"]


def test_load_seed_from_file(tmp_path: Path) -> None:
    seed = tmp_path / "x.yaml"
    seed.write_text("users:\n  - id: 1\n")
    assert load_seed("x", seed) == {"users": [{"id": 1}]}
    assert load_seed("x", str(seed)) == {"users": [{"id": 1}]}


def test_load_seed_rejects_non_mapping(tmp_path: Path) -> None:
    seed = tmp_path / "x.yaml"
    seed.write_text("- 1\n")
    with pytest.raises(ValueError, match="mapping"):
        load_seed("x", seed)


def test_load_seed_default_location() -> None:
    assert "contacts" in load_seed("aelyst", None)
