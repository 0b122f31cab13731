"""Value objects made on every request: frozen for the type checker, plain at run time.

A frozen dataclass assigns each field in ``__init__`` through
``object.__setattr__``, a call per field; the gateway builds a dozen such objects
per request (the plan, its command and references, each upstream request and
response, each bucket decision), and that alone was 4.5% of the instructions a
request costs (``python -m bench.instructions --ref``: 1,222,636 -> 1,167,323
instructions per request).

:func:`value_class` makes a slots dataclass with value equality and hashing, and
tells type checkers (PEP 681 ``frozen_default``) that its fields are read-only:
``mypy --strict``, which ``make test`` runs on ``gateway/`` and ``providers/``,
refuses any assignment to one (``tests/unit/test_values.py`` holds it to that).
At run time nothing stops an assignment: code that is not type-checked must not
rely on these objects refusing it. Objects built once per configuration keep
``@dataclass(frozen=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")

#: Every class made by :func:`value_class` (the test of the promise above walks them).
VALUE_CLASSES: list[type[Any]] = []


@dataclass_transform(frozen_default=True)
def value_class(cls: type[T]) -> type[T]:
    made = dataclass(slots=True, unsafe_hash=True)(cls)
    VALUE_CLASSES.append(made)
    return made
