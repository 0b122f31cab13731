"""The compiled modules (gateway/_native.py): used when built from these sources, never stale."""

from __future__ import annotations

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
