"""Canary secrets in every credential; every error path driven; nothing leaks.

Every provider key and client key is a canary (tests.hardening.support). After
driving every error path the gateway has (client errors, each upstream fault
on each provider, a refused connection, a provider refusing our key, queued
work), no eight-character substring of any canary may appear in: any log
record (every logger, DEBUG and up, with tracebacks), any response (body and
headers), ``/metrics``, any ``/v1/operations/{id}`` view, or the journal of a
sandbox other than the provider's own. A provider's own journal holds its key
in its credential header and nowhere else. Client credentials (Authorization,
cookies, look-alike key headers) never reach any provider.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.auth import hash_key
from gateway.config import build_config
from tests.conftest import Sandbox
from tests.hardening.conftest import clear_journal
from tests.hardening.support import (
    ALL_SECRETS,
    CLIENT_KEYS,
    PROVIDER_KEYS,
    PROVIDERS,
    TENANT,
    auth,
    config_dict,
    count,
)

#: Two more credentials: one for a provider on a closed port, one a key the
#: Teli sandbox refuses (the gateway's own credential being wrong).
EXTRA = {"provider:dead": "p4IBomDudynj8hQQYvqNV7rI7P",
         "provider:badkey": "O1l012XnuF1Swqaz50e47Dylmv"}
SECRETS = {**ALL_SECRETS, **EXTRA}
_GRAMS = {n: {s[i:i + 8] for i in range(len(s) - 7)} for n, s in SECRETS.items()}
#: Which credential header each sandbox reads.
CRED_HEADER = {"teli": "X-API-Key", "vambe": "x-api-key", "aelyst": "Authorization"}
DIRECT: dict[str, dict[str, Any]] = {
    "teli": {"contact": {"phone": "+15551234567"}, "assignee": {"id": "user_xyz789"}},
    "vambe": {"contact": {"id": "22222222-2222-4222-8222-000000000001"},
              "assignee": {"id": "11111111-1111-4111-8111-000000000001"}},
    "aelyst": {"contact": {"id": "3"}, "assignee": {"id": "17"}},
}
FAULTS: list[dict[str, Any]] = [
    {"kind": "status", "status": s} for s in (400, 401, 403, 404, 409, 422, 500, 502, 503)
] + [
    # Retry-After 0: the limiter's pause after a provider's 429 must not turn the
    # next rows into the gateway's own rate_limited.
    {"kind": "status", "status": 429, "retry_after": 0},
    {"kind": "status", "status": 449},
    {"kind": "hang", "delay_s": 5},
    {"kind": "drop"},
    {"kind": "html", "status": 502},
    {"kind": "html", "status": 200},
    {"kind": "malformed", "status": 200},
]
#: Headers a careless proxy would forward: each carries a client secret.
CLIENT_CREDENTIALS = {
    "Cookie": f"session={CLIENT_KEYS['duo']}",
    "X-API-Key": CLIENT_KEYS["solo-vambe"],
    "x-api-key": CLIENT_KEYS["solo-vambe"],
    "Proxy-Authorization": f"Bearer {CLIENT_KEYS['solo-teli']}",
    "X-Forwarded-Authorization": CLIENT_KEYS["admin"],
}


def _leaks(text: str, names: list[str] | None = None) -> list[str]:
    wanted = list(SECRETS) if names is None else names
    return sorted(n for n in wanted if any(g in text for g in _GRAMS[n]))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(sbx: dict[str, Sandbox]) -> dict[str, Any]:
    cfg = config_dict({p: s.base_url for p, s in sbx.items()})
    for p in cfg["providers"].values():
        p.update(timeout_s=0.3, retry={"deadline_s": 0.8, "max_attempts": 2,
                                       "backoff_base_s": 0.01, "backoff_max_s": 0.02,
                                       "queued_backoff_s": 0.05, "give_up_after_s": 2})
    cfg["providers"]["dead"] = {**cfg["providers"]["aelyst-sb"],
                                "base_url": f"http://127.0.0.1:{_closed_port()}/v1",
                                "api_key": EXTRA["provider:dead"]}
    cfg["providers"]["badkey"] = {**cfg["providers"]["teli-sb"],
                                  "api_key": EXTRA["provider:badkey"]}
    cfg["tenants"]["t-dead"] = {"provider": "dead"}
    cfg["tenants"]["t-badkey"] = dict(cfg["tenants"]["t-teli"], provider="badkey")
    app = next(c for c in cfg["clients"] if c["name"] == "app")
    app["tenants"] += ["t-dead", "t-badkey"]
    # A client with a budget of one request, to reach rate_limited.
    cfg["clients"].append({"name": "tiny", "key_sha256": hash_key(CLIENT_KEYS["duo"] + "t"),
                           "tenants": ["t-teli"], "rate_limit": {"rate": 0.01, "burst": 1}})
    return cfg


class Recorder:
    """Sends requests and keeps every answer (status, headers, body) as text."""

    def __init__(self, gw: TestClient[Any, Any]) -> None:
        self.gw = gw
        self.answers: list[str] = []
        self.op_ids: set[str] = set()

    async def send(self, method: str, path: str, *, own_field: str | None = None,
                   **kw: Any) -> Any:
        """``own_field``: an unknown body key the request itself sent. The 400 names
        it (so the client can fix its request); that echo to its sender is the one
        place request text may come back, and it is removed before the leak check."""
        resp = await self.gw.request(method, path, **kw)
        text = await resp.text()
        if own_field is not None:
            assert resp.status == 400 and f'"field":"{own_field}"' in text, text
            text = text.replace(own_field, "(own field)")
        self.answers.append(f"{resp.status}\n{dict(resp.headers)}\n{text}")
        assert resp.status != 500, text
        count("secret paths", f"{method} {resp.status}")
        if resp.status in (200, 202) and path.startswith("/v1/") and "operation_id" in text:
            self.op_ids.add((await resp.json())["operation_id"])
        return resp


async def _client_errors(r: Recorder) -> None:
    body = {"tenant": "t-aelyst", **DIRECT["aelyst"]}
    # 401: none, wrong scheme, a provider's key sent as a client key, near misses
    for value in (None, f"Basic {CLIENT_KEYS['app']}", f"Bearer {PROVIDER_KEYS['aelyst']}",
                  f"Bearer {CLIENT_KEYS['app']}x", f"Bearer {CLIENT_KEYS['app'][:-1]}",
                  f"bearer  {PROVIDER_KEYS['teli']}  ", "Bearer " + "k" * 600):
        await r.send("POST", "/v1/assign", json=body,
                     headers={} if value is None else {"Authorization": value})
    await r.send("GET", "/v1/tenants",
                 headers={"Authorization": f"Bearer {PROVIDER_KEYS['vambe']}"})
    # 403, 404, 400 with secrets in refused fields, 405, 413, 415, 422, 409, 429
    await r.send("POST", "/v1/assign", json=body, headers=auth("solo-teli"))
    await r.send("POST", "/v1/assign", json={**body, "tenant": "nope"}, headers=auth())
    for field in ({"contact": {"phone": CLIENT_KEYS["duo"]}},
                  {"contact": {"email": PROVIDER_KEYS["teli"] + "@x"}},
                  {"assignee": {"id": PROVIDER_KEYS["vambe"]}},
                  {"mode": CLIENT_KEYS["admin"]}, {"tenant": PROVIDER_KEYS["aelyst"]}):
        await r.send("POST", "/v1/assign", json={**body, **field}, headers=auth())
    await r.send("POST", "/v1/assign", json={**body, CLIENT_KEYS["admin"]: 1}, headers=auth(),
                 own_field=CLIENT_KEYS["admin"])
    await r.send("POST", "/v1/assign", data=PROVIDER_KEYS["teli"],
                 headers={**auth(), "Content-Type": "application/json"})
    await r.send("POST", "/v1/assign", data=b"x" * 17_000,
                 headers={**auth(), "Content-Type": "application/json"})
    await r.send("POST", "/v1/assign", data=CLIENT_KEYS["duo"],
                 headers={**auth(), "Content-Type": "text/plain"})
    await r.send("PUT", "/v1/assign", headers=auth())
    await r.send("GET", f"/v1/{CLIENT_KEYS['duo']}", headers=auth())
    await r.send("GET", f"/v1/operations/{CLIENT_KEYS['duo']}", headers=auth())
    await r.send("POST", "/v1/unassign", json={"tenant": "t-vambe",
                                               "contact": DIRECT["vambe"]["contact"]},
                 headers=auth())
    await r.send("POST", "/v1/assign", json={"tenant": "t-teli", "contact": {"email": "a@b.co"},
                                             "assignee": {"id": "user_xyz789"}}, headers=auth())
    idem = {**auth(), "Idempotency-Key": "canary-idem-1"}
    await r.send("POST", "/v1/assign", json=body, headers=idem)
    await r.send("POST", "/v1/assign", json={**body, "mode": "replace", "assigned_by": "x"},
                 headers=idem)
    await r.send("POST", "/v1/assign", json=body,
                 headers={**auth(), "Idempotency-Key": CLIENT_KEYS["duo"] * 11})
    tiny = {"Authorization": f"Bearer {CLIENT_KEYS['duo']}t"}
    teli_body = {"tenant": "t-teli", **DIRECT["teli"]}
    for _ in range(2):
        await r.send("POST", "/v1/assign", json=teli_body, headers=tiny)


async def _upstream_errors(r: Recorder, sbx: dict[str, Sandbox]) -> None:
    for ptype in PROVIDERS:
        body = {"tenant": TENANT[ptype], **DIRECT[ptype]}
        for fault in FAULTS:
            await sbx[ptype].fault(**{**fault, "count": 5})
            resp = await r.send("POST", "/v1/assign", json=body,
                                headers={**auth(), **CLIENT_CREDENTIALS})
            assert resp.status != 429, f"{ptype} {fault}: the row never reached the provider"
            async with sbx[ptype].session.delete(sbx[ptype]._url("/_sandbox/faults")):
                pass
            count("secret faults injected", ptype)
        # queued work: answered 202, finished in the background
        await r.send("POST", "/v1/assign", json=body,
                     headers={**auth(), **CLIENT_CREDENTIALS, "Prefer": "respond-async"})
        if ptype != "vambe":
            await r.send("POST", "/v1/unassign", json={"tenant": TENANT[ptype],
                                                       "contact": DIRECT[ptype]["contact"]},
                         headers={**auth(), **CLIENT_CREDENTIALS})
    for tenant in ("t-dead", "t-badkey"):
        await r.send("POST", "/v1/assign", json={"tenant": tenant, **DIRECT[
            "aelyst" if tenant == "t-dead" else "teli"]}, headers={**auth(), **CLIENT_CREDENTIALS})


def _log_text(records: list[logging.LogRecord]) -> str:
    # aiohttp.access is the test server's request-line log (client text, e.g. a
    # key a client put in its own URL); `gateway serve` runs with access_log=None
    # and logs route templates only (tests/hardening/test_schema_fuzz.py reads
    # a served gateway's whole output).
    fmt = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(fmt.format(rec) for rec in records if rec.name != "aiohttp.access")


@pytest.fixture
async def canary_gw(aiohttp_client: Callable[..., Any],
                    hsandboxes: dict[str, Sandbox]) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(build_config(_config(hsandboxes), env={})))
    return client


async def test_no_secret_leaks_on_any_error_path(
        canary_gw: TestClient[Any, Any], hsandboxes: dict[str, Sandbox],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for sbx in hsandboxes.values():
        await clear_journal(sbx)
    r = Recorder(canary_gw)
    await _client_errors(r)
    await _upstream_errors(r, hsandboxes)
    views = []
    for op_id in sorted(r.op_ids):
        views.append(await (await canary_gw.get(f"/v1/operations/{op_id}",
                                                 headers=auth())).text())
    metrics = await (await canary_gw.get("/metrics")).text()
    count("secret checks", "answers", len(r.answers))
    count("secret checks", "operations viewed", len(views))
    count("secret checks", "log records", len(caplog.records))

    for answer in r.answers:
        assert _leaks(answer) == [], f"a secret in a response: {answer}"
    assert _leaks("\n".join(views)) == [], "a secret in an operation"
    assert _leaks(metrics) == [], "a secret in /metrics"
    assert _leaks(_log_text(caplog.records)) == [], "a secret in a log record"
    await _check_journals(hsandboxes)


async def _check_journals(sbx: dict[str, Sandbox]) -> None:
    # The badkey provider is Teli's sandbox with a key the sandbox refuses:
    # that key legitimately reaches (only) Teli, in Teli's credential header.
    own = {"teli": ["provider:teli", "provider:badkey"], "vambe": ["provider:vambe"],
           "aelyst": ["provider:aelyst"]}
    total = 0
    for ptype, box in sbx.items():
        entries = await box.journal()
        total += len(entries)
        foreign = [n for n in SECRETS if n not in own[ptype]]
        for e in entries:
            headers = {k.lower(): v for k, v in e["headers"].items()}
            cred = headers.pop(CRED_HEADER[ptype].lower(), "")
            assert _leaks(cred, own[ptype]) != [], f"{ptype} got no credential: {e}"
            assert "cookie" not in headers and "proxy-authorization" not in headers, e
            rest = f"{e['path']}?{e['query']}\n{headers}\n{e['body']}\n{cred}"
            assert _leaks(rest, foreign) == [], f"a foreign secret reached {ptype}: {e}"
            assert _leaks(f"{e['path']}?{e['query']}\n{headers}\n{e['body']}",
                          own[ptype]) == [], f"{ptype}'s key outside its header: {e}"
    count("secret checks", "upstream requests", total)
    assert total > 0

