"""Client keys: Bearer tokens checked against configured SHA-256 hashes.

Only hashes are configured, so the file never holds a key. Every configured
hash is compared with ``hmac.compare_digest`` on every request, so the time
taken says nothing about which client (if any) nearly matched.
"""

from __future__ import annotations

import hashlib
import hmac

from gateway.config import ClientSpec
from gateway.errors import Forbidden, Unauthorized

_MAX_KEY = 512


def hash_key(key: str) -> str:
    """The hex SHA-256 that ``clients[].key_sha256`` expects for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ClientAuth:
    def __init__(self, clients: tuple[ClientSpec, ...]) -> None:
        self._clients = [(bytes.fromhex(c.key_sha256), c) for c in clients]

    def authenticate(self, authorization: str | None) -> ClientSpec:
        if not authorization:
            raise Unauthorized("send Authorization: Bearer <client key>")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or len(key) > _MAX_KEY:
            raise Unauthorized("send Authorization: Bearer <client key>")
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found: ClientSpec | None = None
        for expected, client in self._clients:
            if hmac.compare_digest(digest, expected) and found is None:
                found = client
        if found is None:
            raise Unauthorized("unknown client key")
        return found


def check_tenant(client: ClientSpec, tenant: str) -> None:
    if tenant not in client.tenants:
        raise Forbidden("this client key may not use this tenant")
