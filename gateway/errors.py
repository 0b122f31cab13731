"""The gateway's one exception tree.

Every failure a client can see is a :class:`GatewayError`; the HTTP layer maps
it to ``application/problem+json`` in exactly one middleware. Adapters raise
only from this tree; aiohttp and Redis exceptions are translated at one
boundary each (``gateway.upstream`` and the Redis helpers).

::

    GatewayError                         code / status / title
    ├── RequestError                     the client's request cannot be served as sent
    │   ├── InvalidRequest               invalid_request 400 (``errors``: field + message)
    │   ├── Unauthorized                 unauthorized 401
    │   ├── Forbidden                    forbidden 403
    │   ├── UnknownTenant                unknown_tenant 404
    │   ├── NotFound                     not_found 404 (unknown route or operation)
    │   ├── MethodNotAllowed             method_not_allowed 405
    │   ├── IdempotencyConflict          idempotency_conflict 409
    │   ├── RequestInProgress            request_in_progress 409
    │   ├── PayloadTooLarge              payload_too_large 413
    │   ├── UnsupportedMediaType         unsupported_media_type 415
    │   ├── UnsupportedOperation         unsupported_operation 422
    │   ├── UntranslatableIdentifier     untranslatable_identifier 422
    │   ├── RateLimited                  rate_limited 429 (``retry_after``)
    │   └── ShuttingDown                 shutting_down 503 (``retry_after``)
    ├── StoreUnavailable                 store_unavailable 503: Redis down, cannot queue durably
    └── ProviderError                    raised by adapters; ``provider`` set by the gateway
        ├── ContactNotFound              contact_not_found 404
        ├── AssigneeNotFound             assignee_not_found 404
        ├── AmbiguousContact             ambiguous_contact 409
        ├── UpstreamRejected             upstream_rejected 502
        ├── UpstreamAuthFailed           upstream_auth_failed 502
        └── UpstreamUnavailable          upstream_unavailable 503   retryable
            ├── UpstreamServerError      a 5xx answer
            ├── UpstreamRateLimited      a 429 answer (``retry_after`` when sent)
            ├── UpstreamQueued           Aelyst's 449 "in queue, try again in a few minutes"
            ├── UpstreamConnectError     refused, reset, DNS: the request may not have left
            ├── UpstreamMalformed        an answer that is not what the provider documents
            └── UpstreamTimeout          upstream_timeout 504

``retryable`` says whether repeating the same request may succeed; ``reason``
names the retry reason used in metrics (``449``, ``429``, ``5xx``, ``timeout``,
``connect``). Error texts are the gateway's own: a raw upstream body, a secret
or a client key is never put into one.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """Base of every error a client can see."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    retryable: ClassVar[bool] = False
    reason: ClassVar[str | None] = None

    def __init__(
        self,
        detail: str = "",
        *,
        provider: str | None = None,
        retry_after: float | None = None,
        errors: list[dict[str, str]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.provider = provider
        self.retry_after = retry_after
        self.errors = errors
        self.extra = extra or {}

    def problem(self) -> dict[str, Any]:
        """The ``application/problem+json`` body for this error."""
        body: dict[str, Any] = {
            "type": f"https://gateway.local/errors/{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        if self.provider is not None:
            body["provider"] = self.provider
        if self.errors:
            body["errors"] = self.errors
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        body.update(self.extra)
        return body


class RequestError(GatewayError):
    """The request cannot be served as sent; repeating it changes nothing."""


class InvalidRequest(RequestError):
    code, status, title = "invalid_request", 400, "Invalid request"


class Unauthorized(RequestError):
    code, status, title = "unauthorized", 401, "Unauthorized"


class Forbidden(RequestError):
    code, status, title = "forbidden", 403, "Forbidden"


class UnknownTenant(RequestError):
    code, status, title = "unknown_tenant", 404, "Unknown tenant"


class NotFound(RequestError):
    code, status, title = "not_found", 404, "Not found"


class MethodNotAllowed(RequestError):
    code, status, title = "method_not_allowed", 405, "Method not allowed"

    def __init__(self, detail: str = "", *, allow: str = "") -> None:
        super().__init__(detail)
        self.allow = allow  # the route's methods, for the Allow header (RFC 9110 15.5.6)


class IdempotencyConflict(RequestError):
    code, status, title = "idempotency_conflict", 409, "Idempotency key reused with another body"


class RequestInProgress(RequestError):
    code, status, title = "request_in_progress", 409, "A request with this key is in progress"


class PayloadTooLarge(RequestError):
    code, status, title = "payload_too_large", 413, "Payload too large"


class UnsupportedMediaType(RequestError):
    code, status, title = "unsupported_media_type", 415, "Unsupported media type"


class UnsupportedOperation(RequestError):
    code, status, title = "unsupported_operation", 422, "Unsupported operation"


class UntranslatableIdentifier(RequestError):
    code, status, title = "untranslatable_identifier", 422, "Untranslatable identifier"


class RateLimited(RequestError):
    code, status, title = "rate_limited", 429, "Rate limited"


class ShuttingDown(RequestError):
    code, status, title = "shutting_down", 503, "Shutting down"


class StoreUnavailable(GatewayError):
    """Redis is not answering: the gateway cannot promise ordering or durability,
    so it refuses (fail closed) rather than run without them."""

    code, status, title = "store_unavailable", 503, "Operations store unavailable"
    retryable = True


class ProviderError(GatewayError):
    """Raised by adapters for what the provider answered (or failed to)."""


class ContactNotFound(ProviderError):
    code, status, title = "contact_not_found", 404, "Contact not found"


class AssigneeNotFound(ProviderError):
    code, status, title = "assignee_not_found", 404, "Assignee not found"


class AmbiguousContact(ProviderError):
    code, status, title = "ambiguous_contact", 409, "Ambiguous contact"


class UpstreamRejected(ProviderError):
    code, status, title = "upstream_rejected", 502, "Upstream rejected the request"


class UpstreamAuthFailed(ProviderError):
    code, status, title = "upstream_auth_failed", 502, "Upstream refused the gateway's credentials"


class UpstreamUnavailable(ProviderError):
    code, status, title = "upstream_unavailable", 503, "Upstream unavailable"
    retryable = True
    reason: ClassVar[str | None] = "5xx"


class UpstreamServerError(UpstreamUnavailable):
    reason = "5xx"


class UpstreamRateLimited(UpstreamUnavailable):
    reason = "429"


class UpstreamQueued(UpstreamUnavailable):
    reason = "449"


class UpstreamConnectError(UpstreamUnavailable):
    reason = "connect"


class UpstreamMalformed(UpstreamUnavailable):
    """A 2xx answer that is not what the provider documents (HTML, broken JSON).

    Not retried: the provider may have acted on the request already.
    """

    retryable = False
    reason = None


class UpstreamTimeout(UpstreamUnavailable):
    code, status, title = "upstream_timeout", 504, "Upstream timed out"
    reason = "timeout"


#: Every canonical code, for closed-set metric labels and the OpenAPI document.
ALL_ERRORS: tuple[type[GatewayError], ...] = (
    InvalidRequest, Unauthorized, Forbidden, UnknownTenant, NotFound, MethodNotAllowed,
    IdempotencyConflict, RequestInProgress, PayloadTooLarge, UnsupportedMediaType,
    UnsupportedOperation, UntranslatableIdentifier, RateLimited, ShuttingDown, StoreUnavailable,
    ContactNotFound, AssigneeNotFound, AmbiguousContact, UpstreamRejected,
    UpstreamAuthFailed, UpstreamUnavailable, UpstreamTimeout,
)
ERROR_CODES: frozenset[str] = frozenset(e.code for e in ALL_ERRORS) | {"internal_error"}
