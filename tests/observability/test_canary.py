"""Secrets never leave: distinctive keys, every error path, then a search for them.

Each provider's api_key and each client key is a distinctive canary string.
The run goes through every refusal the gateway makes itself and every upstream
fault (through the sandboxes' fault API, a provider that refuses our key for
real, and one that refuses connections), then searches every log record at
DEBUG, every response (status, headers, body) and the /metrics text for any
8-character piece of any canary.
"""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.auth import hash_key
from gateway.config import build_config
from gateway.registry import sandboxes
from tests.conftest import Sandbox
from tests.contract.cases import CASES
from tests.contract.test_faults import FAULTS
from tests.observability.support import obs_config

CANARY = {t: f"CANARYprov{t}Q7x9Zk3" for t in CASES}
CLIENT_CANARY = "CANARYclientW4m8Tp2"
OTHER_CANARY = "CANARYotherH6v1Rn5"
WRONG_CANARY = "CANARYwrongJ3c7Lb9"
BADKEY_CANARY = "CANARYbadkeyF2s5Yd8"


def _pieces(secret: str, n: int = 8) -> set[str]:
    return {secret[i:i + n] for i in range(len(secret) - n + 1)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def canary_sandboxes(aiohttp_server: Callable[..., Any],
                           control_session: aiohttp.ClientSession) -> dict[str, Sandbox]:
    out = {}
    for ptype in CASES:
        app = sandboxes()[ptype](api_key=CANARY[ptype])
        out[ptype] = Sandbox(ptype, await aiohttp_server(app), control_session)
    return out


def _config(sbx: dict[str, Sandbox]) -> dict[str, Any]:
    raw = obs_config(sbx)
    for ptype, p in raw["providers"].items():
        p["api_key"] = CANARY[ptype.removesuffix("-sb")]
    raw["providers"]["teli-badkey"] = {**raw["providers"]["teli-sb"], "api_key": BADKEY_CANARY}
    raw["providers"]["aelyst-dead"] = {**raw["providers"]["aelyst-sb"],
                                       "base_url": f"http://127.0.0.1:{_free_port()}/v1"}
    raw["tenants"]["t-badkey"] = {**raw["tenants"]["t-teli"], "provider": "teli-badkey"}
    raw["tenants"]["t-dead"] = {"provider": "aelyst-dead"}
    raw["clients"][0].update(key_sha256=hash_key(CLIENT_CANARY),
                             tenants=[*raw["clients"][0]["tenants"], "t-badkey", "t-dead"])
    raw["clients"][1]["key_sha256"] = hash_key(OTHER_CANARY)
    return raw


class Recorder:
    """Sends requests and keeps everything a client could see."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw
        self.seen: list[str] = []

    async def send(self, method: str, path: str, key: str | None = CLIENT_CANARY,
                   **kw: Any) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kw.pop("headers", {}))
        async with self.gw.request(method, path, headers=headers, **kw) as r:
            body = await r.text()
            self.seen.append(f"{r.status} {dict(r.headers)} {body}")
            return int(r.status)


def _assign(case: Any, **over: Any) -> dict[str, Any]:
    return {"tenant": case.tenant, "contact": case.direct_contact,
            "assignee": {"id": case.assignee_id}, **over}


async def _gateway_refusals(rec: Recorder) -> None:
    body = _assign(CASES["aelyst"])
    basic = base64.b64encode(f"app:{CLIENT_CANARY}".encode()).decode()
    await rec.send("POST", "/v1/assign", key=None, json=body)
    await rec.send("POST", "/v1/assign", key=WRONG_CANARY, json=body)
    await rec.send("POST", "/v1/assign", key=None, json=body,
                   headers={"Authorization": f"Basic {basic}"})
    await rec.send("POST", "/v1/assign", key=OTHER_CANARY, json=body)
    await rec.send("POST", "/v1/assign", json={**body, "tenant": "nope"})
    await rec.send("POST", "/v1/assign", json={**body, "surprise": CLIENT_CANARY})
    await rec.send("POST", "/v1/assign", json={**body, "contact": {"phone": "call me"}})
    await rec.send("POST", "/v1/assign", data="{not json", headers={
        "Content-Type": "application/json"})
    await rec.send("POST", "/v1/assign", data="x", headers={"Content-Type": "text/plain"})
    await rec.send("POST", "/v1/assign", data="x" * 20_000, headers={
        "Content-Type": "application/json"})
    await rec.send("POST", "/v1/unassign", json={"tenant": "t-vambe",
                                                 "contact": CASES["vambe"].direct_contact})
    await rec.send("GET", "/v1/assign")
    await rec.send("GET", f"/v1/{CLIENT_CANARY}")
    await rec.send("POST", "/admin/reload", key=OTHER_CANARY)
    for path in ("/v1/tenants", "/healthz", "/readyz", "/openapi.json", "/metrics"):
        await rec.send("GET", path)


async def _upstream_faults(rec: Recorder, sbx: dict[str, Sandbox]) -> set[str]:
    codes = set()
    for case in CASES.values():
        box = sbx[case.type]
        assert await rec.send("POST", "/v1/assign", json=_assign(case)) == 200
        for _, fault, _ in FAULTS:
            await box.fault(**fault)
            await rec.send("POST", "/v1/assign", json=_assign(case))
            codes.add(rec.seen[-1].split(" ", 1)[0])
            async with box.session.delete(box.server.make_url("/_sandbox/faults")):
                pass
    for tenant in ("t-badkey", "t-dead"):
        await rec.send("POST", "/v1/assign", json=_assign(CASES["teli"], tenant=tenant))
    return codes


async def test_no_key_reaches_a_log_line_a_response_or_a_metric(
        aiohttp_client: Callable[..., Any], canary_sandboxes: dict[str, Sandbox],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # access_log=None as `gateway serve` runs it: aiohttp's own access log writes raw
    # paths, which is why the gateway writes its own line instead.
    server = TestServer(create_app(build_config(_config(canary_sandboxes), env={})))
    await server.start_server(access_log=None)
    gw = await aiohttp_client(server)
    rec = Recorder(gw)
    await _gateway_refusals(rec)
    statuses = await _upstream_faults(rec, canary_sandboxes)
    assert {"404", "502", "503", "504"} <= statuses
    scrape = await (await gw.get("/metrics")).text()
    outputs = {"metrics": scrape, "responses": "\n".join(rec.seen),
               "logs": "\n".join(r.getMessage() for r in caplog.records)}
    assert '"code":"upstream_auth_failed"' in outputs["logs"]  # the run reached them all
    assert '"code":"upstream_timeout"' in outputs["logs"]
    secrets = [*CANARY.values(), CLIENT_CANARY, OTHER_CANARY, WRONG_CANARY, BADKEY_CANARY]
    for where, text in outputs.items():
        for secret in secrets:
            leaked = [p for p in _pieces(secret) if p in text]
            assert not leaked, f"{where} contains {leaked[:3]} of a key"
