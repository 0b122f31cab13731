"""What a provider adapter is, and what the gateway gives it.

An adapter translates; it never sleeps, retries, counts or limits. The gateway
hands it an :class:`Upstream` for each operation: ``send`` performs one HTTP
exchange with the provider (the gateway adds the base URL, the credential
headers the adapter names, the timeout, the rate limit and the metrics), and
``lookup`` caches a translation (a user list, a contact search) with
coalescing and negative caching.

An adapter module provides a class implementing :class:`Adapter`, registered
under its ``type`` through the ``gateway.adapters`` entry point.

Translation is pure: building an :class:`UpstreamRequest` and reading an
:class:`UpstreamResponse` are synchronous functions, tested with literals.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, ClassVar, Final, Literal, NewType, Protocol, TypeVar
from urllib.parse import quote

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import InvalidRequest

# Canonical identifiers (what clients send, normalized) and provider
# identifiers (what the provider calls the same thing) are distinct types.
E164 = NewType("E164", str)
Email = NewType("Email", str)
ProviderContactId = NewType("ProviderContactId", str)
ProviderUserId = NewType("ProviderUserId", str)

ContactKind = Literal["phone", "email", "id"]
AssigneeKind = Literal["email", "id"]
Mode = Literal["replace", "add"]
Operation = Literal["assign", "unassign"]

#: Upstream operation names used as metric labels; adapters use only these.
UPSTREAM_OPERATIONS = ("assign", "unassign", "lookup_contact", "lookup_assignee")
UpstreamOperation = Literal["assign", "unassign", "lookup_contact", "lookup_assignee"]

JSON = Any
T = TypeVar("T")


@dataclass(init=False, unsafe_hash=True)
class ContactRef:
    """A contact as the client named it, already normalized (E.164, lower-case email)."""

    kind: Final[ContactKind]
    value: Final[str]

    def __init__(self, kind: ContactKind, value: str) -> None:
        self.kind = kind
        self.value = value


@dataclass(init=False, unsafe_hash=True)
class AssigneeRef:
    kind: Final[AssigneeKind]
    value: Final[str]

    def __init__(self, kind: AssigneeKind, value: str) -> None:
        self.kind = kind
        self.value = value


@dataclass(init=False, unsafe_hash=True)
class TenantContext:
    """What an adapter may know of the tenant it serves."""

    name: Final[str]
    default_region: Final[str]
    campaign_id: Final[str | None]
    organization_id: Final[str | None]

    def __init__(self, name: str, default_region: str, campaign_id: str | None = None,
                 organization_id: str | None = None) -> None:
        self.name = name
        self.default_region = default_region
        self.campaign_id = campaign_id
        self.organization_id = organization_id


@dataclass(init=False, unsafe_hash=True)
class AssignCommand:
    tenant: Final[TenantContext]
    contact: Final[ContactRef]
    assignee: Final[AssigneeRef]
    mode: Final[Mode]
    campaign_id: Final[str | None]  # the request's, else the tenant's
    assigned_by: Final[str | None]

    def __init__(self, tenant: TenantContext, contact: ContactRef, assignee: AssigneeRef,
                 mode: Mode = "replace", campaign_id: str | None = None,
                 assigned_by: str | None = None) -> None:
        self.tenant = tenant
        self.contact = contact
        self.assignee = assignee
        self.mode = mode
        self.campaign_id = campaign_id
        self.assigned_by = assigned_by


@dataclass(init=False, unsafe_hash=True)
class UnassignCommand:
    tenant: Final[TenantContext]
    contact: Final[ContactRef]
    campaign_id: Final[str | None]
    assigned_by: Final[str | None]

    def __init__(self, tenant: TenantContext, contact: ContactRef,
                 campaign_id: str | None = None, assigned_by: str | None = None) -> None:
        self.tenant = tenant
        self.contact = contact
        self.campaign_id = campaign_id
        self.assigned_by = assigned_by


@dataclass(init=False, unsafe_hash=True)
class Outcome:
    """What the provider did, in canonical terms."""

    contact_provider_id: Final[ProviderContactId]
    assignee_provider_id: Final[ProviderUserId | None]
    assignee_name: Final[str | None]

    def __init__(self, contact_provider_id: ProviderContactId,
                 assignee_provider_id: ProviderUserId | None = None,
                 assignee_name: str | None = None) -> None:
        self.contact_provider_id = contact_provider_id
        self.assignee_provider_id = assignee_provider_id
        self.assignee_name = assignee_name


@dataclass(init=False, unsafe_hash=True)
class UpstreamRequest:
    """One HTTP exchange an adapter wants made.

    ``path`` is already percent-encoded (each identifier through :func:`encode_segment`,
    or the whole path with :func:`encode_path`) and
    is appended to the provider's ``base_url``. ``json`` of ``None`` means no
    body at all; a body that is JSON ``null`` inside an object is just a dict.
    """

    operation: Final[UpstreamOperation]
    method: Final[str]
    path: Final[str]
    query: Final[tuple[tuple[str, str], ...]]
    json: Final[JSON]

    def __init__(self, operation: UpstreamOperation, method: str, path: str,
                 query: tuple[tuple[str, str], ...] = (), json: JSON = None) -> None:
        self.operation = operation
        self.method = method
        self.path = path
        self.query = query
        self.json = json


@dataclass(init=False, unsafe_hash=True)
class UpstreamResponse:
    status: Final[int]
    headers: Final[Mapping[str, str]]
    body: Final[bytes]

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider can do: checked before any call, published at /v1/tenants."""

    unassign: bool
    modes: tuple[Mode, ...]
    contact_kinds: tuple[ContactKind, ...]
    assignee_kinds: tuple[AssigneeKind, ...]
    # Provider-id formats, checked on client input before anything is sent.
    contact_id_pattern: str = r"[A-Za-z0-9_.:+@-]{1,128}"
    assignee_id_pattern: str = r"[A-Za-z0-9_.:@-]{1,128}"
    notes: tuple[str, ...] = ()

    def public(self) -> dict[str, Any]:
        return {
            "unassign": self.unassign,
            "modes": list(self.modes),
            "contact_kinds": list(self.contact_kinds),
            "assignee_kinds": list(self.assignee_kinds),
        }


@dataclass(frozen=True, slots=True)
class RetryDefaults:
    max_attempts: int = 4
    deadline_s: float = 10.0
    backoff_base_s: float = 0.2
    backoff_max_s: float = 5.0
    queued_backoff_s: float = 30.0
    give_up_after_s: float = 1800.0


@dataclass(frozen=True, slots=True)
class RateLimitDefaults:
    rate: float = 10.0
    burst: int = 10
    scope: Literal["account", "path"] = "account"
    max_wait_s: float = 2.0


@dataclass(frozen=True, slots=True)
class ProviderDefaults:
    base_url: str
    timeout_s: float = 5.0
    rate_limit: RateLimitDefaults = field(default_factory=RateLimitDefaults)
    retry: RetryDefaults = field(default_factory=RetryDefaults)


class Upstream(Protocol):
    """The gateway's side of an operation, handed to an adapter."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Make one exchange. Raises only ``UpstreamTimeout`` or ``UpstreamConnectError``;
        any HTTP status comes back as a response for the adapter to read."""
        ...

    async def lookup(self, kind: str, key: str, load: Callable[[], Awaitable[T]]) -> T:
        """Return ``load()``'s value, cached under (provider, kind, key).

        Concurrent identical lookups share one ``load``. ``ContactNotFound`` and
        ``AssigneeNotFound`` raised by ``load`` are cached briefly too.
        ``kind`` must be a constant of the adapter (it is a metric label)."""
        ...


class Adapter(Protocol):
    """A provider adapter. Constructed once per configured provider.

    Implementers must: declare ``type``, ``capabilities`` and ``defaults``;
    name the credential headers in :meth:`auth_headers`; implement ``assign``
    and ``unassign`` with pure request builders and response readers around
    ``upstream.send``; raise only ``gateway.errors`` types, choosing the
    retryable ones (``UpstreamServerError``, ``UpstreamRateLimited``,
    ``UpstreamQueued``) from what the provider documents. ``unassign`` on a
    provider without it is never called: the gateway checks capabilities.
    """

    type: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    defaults: ClassVar[ProviderDefaults]

    def __init__(self, name: str, api_key: str) -> None: ...

    def auth_headers(self) -> Mapping[str, str]:
        """The headers that carry this provider's credential, and nothing else."""
        ...

    def rate_feedback(self, response: UpstreamResponse) -> float | None:
        """Seconds the provider asks us to hold off (429 Retry-After, remaining 0), or None."""
        ...

    async def assign(self, upstream: Upstream, command: AssignCommand) -> Outcome: ...

    async def unassign(self, upstream: Upstream, command: UnassignCommand) -> Outcome: ...


_DOT_SEGMENTS = frozenset({"", ".", ".."})
_CI_HEADERS = (CIMultiDictProxy, CIMultiDict)


def encode_segment(value: str) -> str:
    """Percent-encode one path segment so it can never change the path's shape.

    Everything outside RFC 3986 unreserved characters is encoded (``+`` as
    ``%2B``, ``/`` as ``%2F``); empty and dot-only segments and control
    characters are refused outright, since servers and URL libraries
    normalize them into other paths.
    """
    if value in _DOT_SEGMENTS:
        raise InvalidRequest("identifier cannot be used in a path")
    if _KEPT.fullmatch(value):
        return value  # nothing to encode (most segments): quote() would return it as is
    if _CONTROL.search(value):
        raise InvalidRequest("identifier cannot be used in a path")
    # ":" and "@" are legal in a segment (RFC 3986 pchar) and keep Aelyst's
    # "email:a@b.c" readable; "+" is not kept, since some servers read it as a space.
    return quote(value, safe=":@")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: What ``quote(value, safe=":@")`` leaves as it is: RFC 3986 unreserved, ":" and "@".
_KEPT = re.compile(r"[A-Za-z0-9_.~:@-]+")


def encode_path(*segments: str) -> str:
    """Join literal path parts and encoded identifiers: ``encode_path("contact", x)``."""
    # Plain segments (literal parts, most identifiers) skip the call: see encode_segment.
    return "/" + "/".join([s if s not in _DOT_SEGMENTS and _KEPT.fullmatch(s)
                           else encode_segment(s) for s in segments])


def header(headers: Mapping[str, str], name: str) -> str | None:
    """One header's value, matching its name case-insensitively.

    The gateway hands adapters aiohttp's case-insensitive headers, but tests
    and fakes use plain dicts, so the match must not rely on either.
    """
    if isinstance(headers, _CI_HEADERS):
        return headers.get(name)  # aiohttp's own: case-insensitive already, one call
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def retry_after_s(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or HTTP-date, RFC 9110 10.2.3).

    None when absent, negative or unreadable: a bad header must not become a
    wait. A date in the past is 0.
    """
    raw = header(headers, "Retry-After")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return _http_date_delay(raw.strip(), now)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _http_date_delay(raw: str, now: Callable[[], float]) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now())


def standard_rate_feedback(response: UpstreamResponse, window_s: float = 1.0) -> float | None:
    """The common rate signals: a 429's ``Retry-After``, or ``X-RateLimit-Remaining: 0``
    (then ``window_s``). Adapters whose provider documents these can return this."""
    if response.status == 429:
        wait = retry_after_s(response.headers)
        if wait is not None:
            return wait
    if (header(response.headers, "X-RateLimit-Remaining") or "").strip() == "0":
        return window_s
    return None
