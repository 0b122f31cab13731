"""Every Redis key the gateway writes, in one place.

Keys that one Lua script touches together share a hash tag (``{...}``) so the
scripts also work on Redis Cluster. Every key either expires by itself or is
deleted by the code that made it.
"""

from __future__ import annotations

PREFIX = "agw:"


def bucket(provider: str, scope_key: str) -> str:
    """A provider token bucket (one per account, or per method and hashed path).

    One key holds the bucket's state, a provider's pause included
    (gateway.ratelimit): one key per script call, expiring when the bucket is full.
    """
    return f"{PREFIX}rl:{{{provider}:{scope_key}}}"


def client_bucket(client: str) -> str:
    """A client's own token bucket (``clients[].rate_limit``)."""
    return f"{PREFIX}rlc:{{{client}}}"


def retry_budget(provider: str) -> str:
    return f"{PREFIX}rb:{{{provider}}}"


def operation(op_id: str) -> str:
    return f"{PREFIX}op:{{ops}}:{op_id}"


def operations_due() -> str:
    """Sorted set of queued operation ids by the time they are next due."""
    return f"{PREFIX}op:{{ops}}:due"


def operation_lease(op_id: str) -> str:
    return f"{PREFIX}op:{{ops}}:lease:{op_id}"


def contact_latest(tenant: str, contact: str) -> str:
    """The newest operation id accepted for a tenant's contact (per-contact ordering)."""
    return f"{PREFIX}op:{{ops}}:latest:{tenant}:{contact}"


def contact_withdrawn(tenant: str, contact: str, op_id: str) -> str:
    """An operation of a contact that withdrew while a newer one stood: the pointer it
    replaced. Expires an hour after it was written. ``op_id`` "" gives the prefix."""
    return f"{PREFIX}op:{{ops}}:withdrawn:{tenant}:{contact}:{op_id}"


def contact_pending(tenant: str, contact: str) -> str:
    """Accepted operations of a contact not saved yet (a sorted set by expiry)."""
    return f"{PREFIX}op:{{ops}}:pending:{tenant}:{contact}"


def contact_lock(tenant: str, contact: str) -> str:
    """Who is attempting on a tenant's contact (a sorted set by expiry); expires by itself."""
    return f"{PREFIX}op:{{ops}}:lock:{tenant}:{contact}"


def idempotency(client: str, key_hash: str) -> str:
    return f"{PREFIX}idem:{{{client}}}:{key_hash}"
