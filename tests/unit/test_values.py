"""Value classes: read-only to mypy --strict, plain slots dataclasses at run time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
from mypy import api as mypy_api

import gateway.ratelimit.gcra
import gateway.retry
import gateway.service
import gateway.spi  # noqa: F401  (the modules that declare value classes)
from gateway.spi import AssigneeRef, ContactRef
from gateway.values import VALUE_CLASSES

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_refuses_an_assignment_to_any_field_of_any_value_class(tmp_path: Path) -> None:
    assert len(VALUE_CLASSES) >= 10
    lines = []
    for i, cls in enumerate(VALUE_CLASSES):
        first = dataclasses.fields(cls)[0].name
        lines += [f"from {cls.__module__} import {cls.__name__} as C{i}",
                  f"def mutate{i}(v: C{i}) -> None:",
                  f"    v.{first} = v.{first}"]
    snippet = tmp_path / "mutate.py"
    snippet.write_text("\n".join(lines) + "\n")
    out, err, status = mypy_api.run([
        "--strict", "--no-incremental", "--follow-imports=silent", "--python-version",
        "3.11", "--config-file", str(ROOT / "pyproject.toml"), str(snippet)])
    assert status == 1, out + err
    refused = [line for line in out.splitlines() if "is read-only" in line]
    assert len(refused) == len(VALUE_CLASSES), out
    for cls in VALUE_CLASSES:
        assert any(f'"{cls.__name__}"' in line for line in refused), (cls, out)


def test_value_classes_compare_and_hash_by_value_and_have_no_dict() -> None:
    a, b = ContactRef("phone", "+15551234567"), ContactRef("phone", "+15551234567")
    assert a == b and hash(a) == hash(b) and a is not b
    assert a != ContactRef("email", "+15551234567")
    assert {a: 1}[b] == 1
    assert not hasattr(a, "__dict__")  # slots: no stray attribute can be added
    assert a != AssigneeRef("phone", "+15551234567")  # different classes never equal


def test_orjson_writes_a_value_class_as_its_fields() -> None:
    # Operation records rely on it (gateway.operations.plan_to_dict).
    assert orjson.loads(orjson.dumps(ContactRef("id", "42"))) == {"kind": "id", "value": "42"}
