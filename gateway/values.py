"""Value objects made on every request: read-only, and native classes when compiled.

The gateway builds a dozen such objects per request (the plan, its command and
references, each upstream request and response, each bucket decision, each
retry decision). Each is declared the same way, as :class:`gateway.spi.ContactRef`
is: ``@dataclass(init=False, unsafe_hash=True)``, its fields annotated ``Final``,
and an ``__init__`` written out that sets each field in order.

- ``Final`` fields: ``mypy --strict``, which ``make test`` runs on ``gateway/`` and
  ``providers/``, refuses any assignment outside ``__init__``, and compiled
  (:mod:`gateway._native`) the attribute has no setter, so an assignment from any
  code raises ``AttributeError``. As plain Python nothing stops one: code that is
  not type-checked must not rely on it.
- ``__init__`` written out: mypyc compiles it to a native constructor, which
  compiled callers call directly. The ``__init__`` that ``dataclass`` generates is
  interpreted code even in a compiled class, a call per object; a ``frozen``
  dataclass's also goes through ``object.__setattr__`` per field.
- ``dataclass`` still gives value equality, hashing, ``repr``, ``fields`` and
  ``replace``; no class decorator of the gateway's own, since mypyc compiles a
  class with any other decorator as an interpreted class, whose attributes are read
  through a dictionary look-up each.

(Before: slots dataclasses that only the type checker held read-only, PEP 681's
``frozen_default``. The change, with the operation and access records writing out
their ``__init__`` too, took 6.7% off the instructions per request:
``python -m bench.instructions --ref``, 857,811 -> 800,232; README, "Native value
classes".)
Objects built once per configuration keep ``@dataclass(frozen=True)``.
:func:`value_classes` finds every class declared this way, for the test that
holds them to it (``tests/unit/test_values.py``).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

#: The modules that declare value classes.
MODULES = ("gateway.spi", "gateway.service", "gateway.retry", "gateway.ratelimit.gcra")


def value_classes() -> list[type[Any]]:
    """Every dataclass in :data:`MODULES` with its ``__init__`` written out (``init=False``).

    Found by that, not by the ``Final`` annotations: a compiled class keeps its fields'
    types, without ``Final``."""
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and obj.__module__ == name
                    and dataclasses.is_dataclass(obj)
                    and not obj.__dataclass_params__.init):  # type: ignore[attr-defined]
                found.append(obj)
    return found
