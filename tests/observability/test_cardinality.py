"""Request data never becomes a metric label: the series count stops growing.

10,000 requests with random phones, emails, ids, tenants, keys, request ids
and paths (unknown routes included) are sent through a gateway on loopback.
The mix of request kinds repeats every few dozen requests, so the first 100
reach every code path; after that, only the data changes. If any of it leaked
into a label, each request would add a series.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import Any

from gateway.app import create_app
from gateway.config import build_config
from gateway.metrics import (
    OPERATION_STATUSES,
    RESULT_CODES,
    STATUS_CLASSES,
    UPSTREAM_STATUSES,
)
from tests.conftest import OTHER_CLIENT_KEY, Sandbox, auth
from tests.contract.cases import CASES
from tests.observability.support import label_values, obs_config, series

TOTAL, FIRST = 10_000, 100
Request = tuple[str, str, dict[str, Any]]


class Junk:
    """Random request data from a seeded source (randomness is the one thing we control)."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)

    def word(self, n: int = 8) -> str:
        return "".join(self.rnd.choices(string.ascii_lowercase + string.digits, k=n))

    def phone(self) -> str:
        return f"+1{self.rnd.randint(201, 989)}{self.rnd.randint(2_000_000, 9_999_999)}"

    def email(self) -> str:
        return f"{self.word()}@{self.word(5)}.com"


def _writes(j: Junk) -> list[Request]:
    out: list[Request] = []
    for c in CASES.values():
        out += [
            ("POST", "/v1/assign", {"json": {"tenant": c.tenant, "contact": {"phone": j.phone()},
                                             "assignee": {"email": j.email()}}}),
            ("POST", "/v1/assign", {"json": {"tenant": c.tenant, "contact": c.direct_contact,
                                             "assignee": {"id": c.assignee_id}}}),
            ("POST", "/v1/unassign", {"json": {"tenant": c.tenant,
                                               "contact": {"phone": j.phone()}}}),
        ]
    out.append(("POST", "/v1/assign", {"json": {
        "tenant": "t-aelyst", "contact": {"email": j.email()}, "assignee": {"id": "17"}}}))
    return out


def _refusals(j: Junk) -> list[Request]:
    body = {"tenant": "t-aelyst", "contact": {"phone": j.phone()}, "assignee": {"id": "17"}}
    return [
        ("POST", "/v1/assign", {"json": {**body, "tenant": j.word()}}),
        ("POST", "/v1/assign", {"json": {**body, "contact": {"phone": "call " + j.phone()}}}),
        ("POST", "/v1/assign", {"json": {**body, j.word(): j.email()}}),
        ("POST", "/v1/assign", {"json": body, "headers": auth(j.word(20))}),
        ("POST", "/v1/assign", {"json": body, "headers": auth(OTHER_CLIENT_KEY)}),
        ("POST", "/v1/assign", {"data": j.email(), "headers": {
            **auth(), "Content-Type": "text/plain"}}),
        ("POST", "/v1/assign", {"data": "x" * 20_000, "headers": {
            **auth(), "Content-Type": "application/json"}}),
    ]


def _reads(j: Junk) -> list[Request]:
    return [
        ("GET", f"/v1/contacts/{j.phone()}", {}),
        ("GET", f"/{j.email()}", {}),
        ("POST", f"/v1/assign/{j.word()}", {"json": {}}),
        ("GET", f"/v1/operations/op_{j.word(24)}", {}),
        ("GET", "/v1/assign", {}),
        ("GET", f"/v1/tenants?phone={j.phone()}", {}),
        ("GET", "/healthz", {}),
        ("GET", "/readyz", {}),
        ("DELETE", f"/{j.word()}/{j.phone()}", {}),
    ]


def mix(j: Junk) -> list[Request]:
    """One round of every request kind, with fresh random data.

    The requests the gateway refuses itself carry most of the random data and cost
    a fraction of one that reaches a sandbox, so they come five times a round.
    """
    return _writes(j) + [r for _ in range(5) for r in _refusals(j) + _reads(j)]


async def _send(gw: Any, j: Junk, req: Request) -> None:
    method, path, kw = req
    headers = {**auth(), "X-Request-ID": j.word(16), **kw.pop("headers", {})}
    async with gw.request(method, path, headers=headers, **kw) as r:
        await r.read()


async def _run(gw: Any, j: Junk, n: int) -> None:
    # One at a time: client, gateway and sandboxes share this process's one core,
    # so concurrency would only add queueing, not speed.
    pending: list[Request] = []
    while len(pending) < n:
        pending += mix(j)
    for req in pending[:n]:
        await _send(gw, j, req)


async def _scrape(gw: Any) -> list[str]:
    resp = await gw.get("/metrics")
    return series(await resp.text())


async def test_series_count_does_not_grow_with_request_data(
        aiohttp_client: Callable[..., Any], sandboxes_up: dict[str, Sandbox]) -> None:
    raw = obs_config(sandboxes_up)
    for p in raw["providers"].values():
        # No timeout on a busy test machine: a timeout is a real code path, seen or not.
        p.update(timeout_s=10, retry={"max_attempts": 1, "deadline_s": 20})
    gw = await aiohttp_client(create_app(build_config(raw, env={})))
    # Aelyst's sandbox enforces 5 requests/s per path, as Aelyst does; this test is
    # about labels, not limits, and sends far more than that.
    async with sandboxes_up["aelyst"].session.post(
            sandboxes_up["aelyst"].server.make_url("/_sandbox/ratelimit"),
            json={"enabled": False}) as r:
        assert r.status == 200
    j = Junk(seed=5)
    assert len(mix(j)) < FIRST  # the first 100 requests run every kind
    await _run(gw, j, FIRST)
    await _scrape(gw)  # /metrics is a route too: count from the second scrape
    after_first = await _scrape(gw)
    await _run(gw, j, TOTAL - FIRST)
    after_all = await _scrape(gw)
    new = sorted(set(after_all) - set(after_first))
    print(f"series after {FIRST} requests: {len(after_first)}, after {TOTAL}: {len(after_all)}")
    assert len(after_all) == len(after_first), f"new series: {new[:20]}"
    _assert_closed_labels("\n".join(s + " 0" for s in after_all))


def _assert_closed_labels(text: str) -> None:
    allowed = {
        "code": RESULT_CODES,
        "provider": {"teli-sb", "vambe-sb", "aelyst-sb"},
        "status": UPSTREAM_STATUSES | STATUS_CLASSES | set(OPERATION_STATUSES),
        "operation": {"assign", "unassign", "lookup_contact", "lookup_assignee"},
        "result": {"hit", "miss", "success", "failure"},
    }
    for key, value in label_values(text):
        assert "@" not in value and "+1" not in value, (key, value)
        if key in allowed:
            assert value in allowed[key], (key, value)
        if key == "route":
            assert value == "other" or value.startswith("/"), value
            assert not any(ch.isdigit() for ch in value.replace("v1", "")), value
