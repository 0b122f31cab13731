"""Value classes: read-only to mypy --strict, native classes with value equality."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import orjson
import pytest
from mypy import api as mypy_api

import gateway.spi
from gateway.spi import AssigneeRef, ContactRef
from gateway.values import value_classes

ROOT = Path(__file__).resolve().parents[2]
VALUE_CLASSES = value_classes()
COMPILED = not str(gateway.spi.__file__).endswith(".py")  # gateway/_native.py


def test_every_value_class_is_found() -> None:
    names = {cls.__name__ for cls in VALUE_CLASSES}
    assert {"ContactRef", "AssigneeRef", "TenantContext", "AssignCommand", "UnassignCommand",
            "Outcome", "UpstreamRequest", "UpstreamResponse", "ContactEcho", "Plan", "Done",
            "Decision", "Retry"} <= names, names


def test_mypy_refuses_an_assignment_to_any_field_of_any_value_class(tmp_path: Path) -> None:
    lines, where = [], {}
    for i, cls in enumerate(VALUE_CLASSES):
        lines += [f"from {cls.__module__} import {cls.__name__} as C{i}",
                  f"def mutate{i}(v: C{i}) -> None:"]
        for f in dataclasses.fields(cls):
            lines.append(f"    v.{f.name} = v.{f.name}")
            where[len(lines)] = (cls.__name__, f.name)
    snippet = tmp_path / "mutate.py"
    snippet.write_text("\n".join(lines) + "\n")
    out, err, status = mypy_api.run([
        "--strict", "--no-incremental", "--follow-imports=silent", "--python-version",
        "3.11", "--config-file", str(ROOT / "pyproject.toml"), str(snippet)])
    assert status == 1, out + err
    refused = {int(line.split(":")[1]) for line in out.splitlines()
               if "Cannot assign to final attribute" in line}
    assert refused == set(where), (sorted(set(where) - refused), out)


def _init_params(cls: type) -> list[str]:
    """The parameters of ``cls.__init__`` as its source declares them (a compiled
    ``__init__`` has no signature to inspect)."""
    tree = ast.parse((ROOT / (cls.__module__.replace(".", "/") + ".py")).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    return [a.arg for a in item.args.args[1:]]
    raise AssertionError(f"{cls.__name__}: no __init__ in its source")


@pytest.mark.parametrize("cls", VALUE_CLASSES, ids=lambda c: c.__name__)
def test_init_takes_every_field_in_order_and_annotates_each_final(cls: type) -> None:
    # So dataclasses.replace, repr and equality see what the constructor was given.
    assert _init_params(cls) == [f.name for f in dataclasses.fields(cls)]
    hints = cls.__annotations__
    if not COMPILED:  # compiled, the class keeps the types without Final
        assert all(str(hints[f.name]).startswith("Final[") for f in dataclasses.fields(cls))


def test_value_classes_compare_and_hash_by_value() -> None:
    a, b = ContactRef("phone", "+15551234567"), ContactRef("phone", "+15551234567")
    assert a == b and hash(a) == hash(b) and a is not b
    assert a != ContactRef("email", "+15551234567")
    assert {a: 1}[b] == 1
    assert a != AssigneeRef("phone", "+15551234567")  # different classes never equal
    assert dataclasses.replace(a, kind="email") == ContactRef("email", "+15551234567")
    assert repr(a) == "ContactRef(kind='phone', value='+15551234567')"


@pytest.mark.skipif(not COMPILED, reason="plain Python: only mypy holds the fields")
def test_compiled_value_classes_refuse_an_assignment_and_have_no_dict() -> None:
    a = ContactRef("phone", "+15551234567")
    with pytest.raises(AttributeError):
        a.kind = "email"  # type: ignore[misc]
    assert a.kind == "phone"
    assert not hasattr(a, "__dict__")  # a native class: no stray attribute can be added


def test_orjson_writes_a_value_class_as_its_fields() -> None:
    assert orjson.loads(orjson.dumps(ContactRef("id", "42"))) == {"kind": "id", "value": "42"}
