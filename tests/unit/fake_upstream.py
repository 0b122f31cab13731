"""An in-memory :class:`gateway.spi.Upstream` for adapter tests.

A test double of the gateway's side of the SPI, not of the network: it records
the requests an adapter asks for, answers scripted responses per method and
path, and caches lookups in a dict (negative results too, like the gateway).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import orjson

from gateway.errors import AssigneeNotFound, ContactNotFound
from gateway.spi import (
    Outcome,
    ProviderContactId,
    ProviderUserId,
    UpstreamRequest,
    UpstreamResponse,
)

T = TypeVar("T")
Reply = UpstreamResponse | BaseException


def json_reply(
    status: int, body: Any, headers: Mapping[str, str] | None = None
) -> UpstreamResponse:
    return UpstreamResponse(status, dict(headers or {}), orjson.dumps(body))


def raw_reply(status: int, body: str, headers: Mapping[str, str] | None = None) -> UpstreamResponse:
    return UpstreamResponse(status, dict(headers or {}), body.encode())


def outcome(contact: str, assignee: str | None = None, name: str | None = None) -> Outcome:
    """An expected Outcome from plain strings (the provider-id NewTypes are for code, not tests)."""
    user = None if assignee is None else ProviderUserId(assignee)
    return Outcome(ProviderContactId(contact), user, name)


class FakeUpstream:
    def __init__(self) -> None:
        self.requests: list[UpstreamRequest] = []
        self.loads: list[tuple[str, str]] = []  # lookups that missed the cache
        self._replies: dict[tuple[str, str], deque[Reply]] = {}
        self._cache: dict[tuple[str, str], Any] = {}

    def on(self, method: str, path: str, *replies: Reply) -> FakeUpstream:
        """Script replies for one method and path, answered in order."""
        self._replies.setdefault((method, path), deque()).extend(replies)
        return self

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        self.requests.append(request)
        queue = self._replies.get((request.method, request.path))
        if not queue:
            raise AssertionError(f"unscripted request: {request.method} {request.path}")
        reply = queue.popleft()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def lookup(self, kind: str, key: str, load: Callable[[], Awaitable[T]]) -> T:
        if (kind, key) in self._cache:
            cached = self._cache[kind, key]
            if isinstance(cached, ContactNotFound | AssigneeNotFound):
                raise cached
            return cast(T, cached)
        self.loads.append((kind, key))
        try:
            value = await load()
        except (ContactNotFound, AssigneeNotFound) as exc:
            self._cache[kind, key] = exc
            raise
        self._cache[kind, key] = value
        return value
