"""Random ids for operations and requests, from the OS's CSPRNG, a page at a time.

``secrets.token_hex`` asks the kernel for its handful of bytes on every call
(one ``getrandom`` syscall per id, two per request). :func:`token_hex` slices
the same kind of bytes out of a 4 KiB page fetched once per few hundred ids.
Every byte is used once. The pool belongs to the event loop's thread: ids are
made there only.
"""

from __future__ import annotations

import os

_PAGE = 4096
_pool = b""
_at = 0


def token_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as ``2 * nbytes`` hex digits (as ``secrets.token_hex``)."""
    global _pool, _at
    end = _at + nbytes
    if end > len(_pool):
        _pool, _at, end = os.urandom(max(_PAGE, nbytes)), 0, nbytes
    out = _pool[_at:end].hex()
    _at = end
    return out


def operation_id() -> str:
    return "op_" + token_hex(12)
