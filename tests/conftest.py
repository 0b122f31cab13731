"""Shared fixtures: the three sandboxes on real loopback HTTP, and a gateway in front.

Nothing is mocked but the clock and randomness: the gateway's adapters talk to
the sandboxes over TCP on 127.0.0.1, exactly as they would to a provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import Services, create_app
from gateway.auth import hash_key
from gateway.config import Config, build_config
from gateway.registry import sandboxes

pytest_plugins = ["tests.redis_server"]

PROVIDER_TYPES = ("teli", "vambe", "aelyst")
KEYS = {"teli": "teli-sandbox-key", "vambe": "vambe-sandbox-key", "aelyst": "aelyst-sandbox-token"}
CLIENT_KEY = "test-client-key"
OTHER_CLIENT_KEY = "other-client-key"
_BASE_PATH = {"teli": "", "vambe": "", "aelyst": "/v1"}


@dataclass
class Sandbox:
    """A running sandbox and its control API."""

    type: str
    server: TestServer
    session: aiohttp.ClientSession

    @property
    def base_url(self) -> str:
        return str(self.server.make_url(_BASE_PATH[self.type])).rstrip("/")

    def _url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def fault(self, kind: str = "status", **spec: Any) -> None:
        async with self.session.post(self._url("/_sandbox/faults"),
                                     json={"kind": kind, **spec}) as r:
            assert r.status == 201, await r.text()

    async def journal(self) -> list[dict[str, Any]]:
        async with self.session.get(self._url("/_sandbox/journal")) as r:
            return list((await r.json())["entries"])

    async def state(self) -> Any:
        async with self.session.get(self._url("/_sandbox/state")) as r:
            return await r.json()

    async def reset(self) -> None:
        async with self.session.post(self._url("/_sandbox/reset")) as r:
            assert r.status == 200


@pytest.fixture
async def control_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


@pytest.fixture
async def sandboxes_up(
    aiohttp_server: Callable[..., Any], control_session: aiohttp.ClientSession
) -> dict[str, Sandbox]:
    out = {}
    for ptype in PROVIDER_TYPES:
        app = sandboxes()[ptype](api_key=KEYS[ptype])
        out[ptype] = Sandbox(ptype, await aiohttp_server(app), control_session)
    return out


def gateway_config_dict(sbx: dict[str, Sandbox], **overrides: Any) -> dict[str, Any]:
    """A configuration with one tenant per provider, each on its sandbox."""
    providers: dict[str, Any] = {
        f"{t}-sb": {"type": t, "base_url": s.base_url, "api_key": KEYS[t], "timeout_s": 2,
                    "retry": {"deadline_s": 3}}
        for t, s in sbx.items()
    }
    tenants: dict[str, Any] = {
        "t-teli": {"provider": "teli-sb", "campaign_id": "camp_abc123",
                   "organization_id": "org_456"},
        "t-vambe": {"provider": "vambe-sb", "default_region": "CL"},
        "t-aelyst": {"provider": "aelyst-sb"},
    }
    cfg: dict[str, Any] = {
        "clients": [
            {"name": "app", "key_sha256": hash_key(CLIENT_KEY), "tenants": list(tenants)},
            {"name": "other", "key_sha256": hash_key(OTHER_CLIENT_KEY), "tenants": ["t-teli"]},
        ],
        "tenants": tenants,
        "providers": providers,
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def gateway_config(sandboxes_up: dict[str, Sandbox]) -> Config:
    return build_config(gateway_config_dict(sandboxes_up), env={})


@pytest.fixture
def services() -> Services:
    counter = iter(range(1, 1_000_000))
    return Services(new_id=lambda: f"op_test{next(counter):06d}")


@pytest.fixture
async def gw(aiohttp_client: Callable[..., Any], gateway_config: Config,
             services: Services) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(gateway_config, services=services))
    return client


def auth(key: str = CLIENT_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
