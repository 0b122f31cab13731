"""Adapters and sandboxes by provider ``type``.

The registry is a plain dict filled from the ``gateway.adapters`` and
``gateway.sandboxes`` entry points, so ``gateway/`` never names a concrete
provider. Tests may build their own dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from gateway.spi import Adapter

AdapterClass = type[Adapter]
SandboxFactory = Callable[..., Any]


@cache
def adapters() -> Mapping[str, AdapterClass]:
    """Every installed adapter class, keyed by its ``type``."""
    found: dict[str, AdapterClass] = {}
    for ep in entry_points(group="gateway.adapters"):
        cls = ep.load()
        if getattr(cls, "type", None) != ep.name:
            raise RuntimeError(f"adapter entry point {ep.name!r} loads a class of another type")
        found[ep.name] = cls
    return found


@cache
def sandboxes() -> Mapping[str, SandboxFactory]:
    """Every installed sandbox app factory, keyed by provider ``type``."""
    return {ep.name: ep.load() for ep in entry_points(group="gateway.sandboxes")}
