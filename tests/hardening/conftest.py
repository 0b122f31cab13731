"""Fixtures of the hardening suite, and the counts it prints at the end.

``hsandboxes`` are the three sandboxes on loopback with the canary provider
keys of :mod:`tests.hardening.support`; ``hgw`` is a gateway in front of them
whose clients hold the canary client keys. The counts (examples, identifiers,
requests, faults, lost operations) are printed after the run whatever pytest's
capture mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import build_config
from gateway.registry import sandboxes
from tests.conftest import Sandbox
from tests.hardening.support import PROVIDER_KEYS, PROVIDERS, REPORT, config_dict


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORT:
        return
    terminalreporter.section("hardening counts")
    for section in sorted(REPORT):
        parts = ", ".join(f"{k}={v}" for k, v in sorted(REPORT[section].items()))
        terminalreporter.write_line(f"{section}: {parts}")


async def clear_journal(sbx: Sandbox) -> None:
    async with sbx.session.delete(sbx._url("/_sandbox/journal")) as r:
        assert r.status == 200


@pytest.fixture
async def hsandboxes(aiohttp_server: Callable[..., Any],
                     control_session: aiohttp.ClientSession) -> dict[str, Sandbox]:
    out = {}
    for ptype in PROVIDERS:
        app = sandboxes()[ptype](api_key=PROVIDER_KEYS[ptype])
        out[ptype] = Sandbox(ptype, await aiohttp_server(app), control_session)
    # Aelyst's sandbox enforces the documented 5 req/s per path; these tests
    # check what is sent, not its pace (tests/ratelimit owns that).
    async with control_session.post(out["aelyst"]._url("/_sandbox/ratelimit"),
                                    json={"enabled": False}) as r:
        assert r.status == 200, await r.text()
    return out


@pytest.fixture
def hconfig(hsandboxes: dict[str, Sandbox]) -> dict[str, Any]:
    return config_dict({p: s.base_url for p, s in hsandboxes.items()})


@pytest.fixture
async def hgw(aiohttp_client: Callable[..., Any],
              hconfig: dict[str, Any]) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(build_config(hconfig, env={})))
    return client
