"""The compiled modules (gateway/_native.py): used when built from these sources, never stale."""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gateway
from gateway import _native

ROOT = Path(gateway.__file__).resolve().parent.parent
PURE = os.environ.get(_native.SWITCH) == "0"


def _which(env: dict[str, str]) -> str:
    """Where a fresh interpreter loads gateway.executor and providers.teli.adapter from."""
    code = ("import gateway.executor as e, providers.teli.adapter as t; "
            "from gateway import _native; print(e.__file__, t.__file__, _native.state)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(PURE, reason="GATEWAY_NATIVE=0: this run is the plain-Python one")
def test_the_tests_run_the_compiled_modules() -> None:
    # make test builds them first (make native); without a build this says so.
    assert _native.state == "native", _native.state
    for name in _native.MODULES:
        module = importlib.import_module(name)
        assert module.__file__ is not None and not module.__file__.endswith(".py"), name
    assert _native.describe() == f"{len(_native.MODULES)} of {len(_native.MODULES)} " \
                                 "modules run compiled (mypyc)"


@pytest.mark.skipif(PURE, reason="GATEWAY_NATIVE=0: this run is the plain-Python one")
def test_a_build_of_other_sources_is_not_used(tmp_path: Path) -> None:
    built = _native.default_dir()
    stale = tmp_path / "native"
    shutil.copytree(built, stale, symlinks=True)
    assert _which({"GATEWAY_NATIVE_DIR": str(stale), _native.SWITCH: "1"}).split()[2] \
        == "native"
    manifest = stale / _native.MANIFEST
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(["0" * 64, *lines[1:]]) + "\n")  # as after an edit
    executor, teli, state = _which({"GATEWAY_NATIVE_DIR": str(stale),
                                    _native.SWITCH: "1"}).split(" ", 2)
    assert executor == str(ROOT / "gateway" / "executor.py")
    assert teli == str(ROOT / "providers" / "teli" / "adapter.py")
    assert state == "python: the build is older than the sources (make native)"


def test_the_switch_and_a_missing_build_run_plain_python(tmp_path: Path) -> None:
    executor, _, state = _which({"GATEWAY_NATIVE": "0"}).split(" ", 2)
    assert executor.endswith(".py") and state == "python: GATEWAY_NATIVE=0"
    executor, _, state = _which({"GATEWAY_NATIVE_DIR": str(tmp_path / "none"),
                                    _native.SWITCH: "1"}).split(" ", 2)
    assert executor.endswith(".py") and state == "python: no build (make native)"


def test_the_digest_covers_every_compiled_source_and_the_interpreter(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    before = _native.digest()
    assert _native.digest() == before
    for package in ("gateway", "providers"):
        shutil.copytree(ROOT / package, tmp_path / package)
    monkeypatch.setattr(_native, "ROOT", tmp_path)
    assert _native.digest() == before
    for name in ("gateway.ratelimit.gcra", "gateway.executor", "providers.teli.adapter"):
        path = _native.source_path(name)
        path.write_bytes(path.read_bytes() + b"\n")
        assert _native.digest() != before, name
        before = _native.digest()
    monkeypatch.setattr(sys, "version", sys.version + " other")
    assert _native.digest() != before


#: Context managers whose exit never suspends (``asyncio.timeout`` and a lock's exits
#: await nothing): an ``async with`` over them behaves the same compiled.
NON_SUSPENDING = {"asyncio.timeout", "asyncio.timeout_at", "self._lock"}


def test_compiled_modules_keep_clear_of_what_mypyc_gets_wrong() -> None:
    """Compiled, a coroutine that re-raises after a suspension takes the exception from
    the thread's state, which the suspension may have changed: a bare ``raise`` after an
    ``await`` in an ``except`` clause, a ``finally`` that awaits, and an ``async with``
    whose exit awaits could each send on an exception the task handled earlier (found
    by tests/retry/test_deadlines.py: a hung upstream's timeout left as a
    CancelledError). Explicit ``raise err`` is safe."""
    found = []
    for name in _native.MODULES:
        path = _native.source_path(name)
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Try):
                if any(isinstance(n, ast.Await) for s in node.finalbody for n in ast.walk(s)):
                    found.append(f"{where}: await in finally")
                for h in node.handlers:
                    inside = [n for s in h.body for n in ast.walk(s)]
                    if (any(isinstance(n, ast.Await) for n in inside)
                            and any(isinstance(n, ast.Raise) and n.exc is None
                                    for n in inside)):
                        found.append(f"{path.relative_to(ROOT)}:{h.lineno}: bare raise in "
                                     "an except clause that awaits")
            elif isinstance(node, ast.AsyncWith):
                for item in node.items:
                    cm = item.context_expr
                    what = ast.unparse(cm.func if isinstance(cm, ast.Call) else cm)
                    if what not in NON_SUSPENDING:
                        found.append(f"{where}: async with {what}")
    assert found == []
