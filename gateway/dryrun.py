"""Dry runs: resolve and check everything, send nothing that writes.

``POST /v1/assign?dry_run=true`` (and unassign) runs the adapter against an
:class:`Upstream` that lets reads through (contact searches, user lists: the
identifier translation) and captures the first write instead of sending it.
The answer shows what would be sent, so the platform team can check a
provider swap against real traffic before making it. No credential is shown:
headers are the gateway's to add and never part of the answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.errors import GatewayError
from gateway.service import Plan, attempt, contact_dict
from gateway.spi import UpstreamRequest, UpstreamResponse
from gateway.upstream import Call, ProviderClient

T = TypeVar("T")
_READS = frozenset({"GET", "HEAD"})


class _Captured(Exception):
    def __init__(self, request: UpstreamRequest) -> None:
        super().__init__("captured")
        self.request = request


class DryRunUpstream:
    """Reads go through ``call``; the first write stops the adapter, captured."""

    def __init__(self, call: Call) -> None:
        self.call = call

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if request.method.upper() in _READS:
            return await self.call.send(request)
        raise _Captured(request)

    async def lookup(self, kind: str, key: str, load: Callable[[], Awaitable[T]]) -> T:
        return await self.call.lookup(kind, key, load)


def describe(request: UpstreamRequest, pc: ProviderClient) -> dict[str, Any]:
    return {
        "method": request.method,
        "url": str(pc.url(request)),
        "query": dict(request.query),
        "body": request.json,
    }


async def dry_run(plan: Plan, pc: ProviderClient, call: Call) -> dict[str, Any]:
    """What the plan would send to its provider, after real look-ups."""
    upstream = DryRunUpstream(call)
    try:
        await attempt(plan, pc, upstream)
    except _Captured as c:
        return {
            "status": "dry_run",
            "operation": plan.operation,
            "tenant": plan.tenant,
            "provider": pc.type,
            "provider_name": pc.name,
            "contact": contact_dict(plan.contact, None),
            "would_send": describe(c.request, pc),
        }
    raise GatewayError("the adapter finished without a write to show")
