"""The gateway's hot modules compiled to C with mypyc, used only when built from these sources.

``make run``, ``make test`` and ``make bench`` build them first (``make native``:
two to four minutes on two cores; a no-op when the build is current), into
``build/native/``, out of the source tree: a compiled module never sits beside its
``.py``, where Python would import it in its place however old it was. Each
package that holds one of :data:`MODULES` (``gateway``, ``gateway.ratelimit``, the
three providers) calls :func:`activate` from its ``__init__``, which puts the
build's directory for that package first on the package's path, but only if the
build's manifest names the same digest of the modules' sources (and the same
interpreter) as the files here now. Otherwise, or with ``GATEWAY_NATIVE=0``, or
where no build exists (an installed wheel without ``GATEWAY_NATIVE_DIR``; the
container image builds one, deploy/Dockerfile), the same modules
run as plain Python: edited code is never shadowed by a stale build, and the
gateway logs which it runs at startup (:func:`describe`).

Why: ``mypy --strict`` already holds these modules to exact types, and mypyc
turns them into C that calls their own functions and reads their own attributes
without the interpreter's dispatch. The gateway's own work on a request is then
cheaper, while aiohttp, pydantic and the event loop cost what they did (README,
"Compiled modules").

What compiled code asks of the sources (each place says so where it stands):
no async generators (the ``cleanup_ctx`` setups live in modules left out), no
``__dict__`` tricks on compiled classes, no attributes set on compiled functions,
no interpreted subclass of a compiled class, and nothing that re-raises after a
suspension: a compiled coroutine re-raises from the thread's exception state,
which a suspension can change, so a bare ``raise`` after an ``await`` in an
``except`` clause, a ``finally`` that awaits, or an ``async with`` whose exit
awaits can send on an exception the task handled earlier instead of the one
raised. ``tests/unit/test_native.py`` walks the compiled modules for those three.

Left out: modules with pydantic models (``models``, ``config``, the providers'
``models``: mypyc does not compile their metaclass; a compiled module may use
them, as the providers' ``wire`` does), ``app`` (it holds the
``cleanup_ctx`` setups, async generators), ``errors`` (class attributes set as
tuples), and what is not on a request's path. A compiled class is native only
without a class decorator other than ``dataclass`` (or ``final``, ``trait``,
``mypyc_attr``), and a compiled ``dataclass`` builds through the interpreted
``__init__`` that ``dataclasses`` generates unless it writes its own
(:mod:`gateway.values`).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # where the gateway and providers packages are

#: The compiled modules. Each package that holds one puts the build on its path
#: (``_native.activate(__path__, __name__)`` in its ``__init__``).
MODULES: tuple[str, ...] = (
    "gateway.auth", "gateway.capabilities", "gateway.deadline", "gateway.executor",
    "gateway.expiring", "gateway.handlers", "gateway.http", "gateway.identifiers",
    "gateway.idempotency",
    "gateway.ids", "gateway.lifecycle", "gateway.logs", "gateway.metrics",
    "gateway.operations", "gateway.opstore_redis", "gateway.redis_conn",
    "gateway.redis_keys", "gateway.registry", "gateway.retry", "gateway.runtime",
    "gateway.service", "gateway.spi", "gateway.upstream", "gateway.worker",
    "gateway.ratelimit.gcra", "gateway.ratelimit.limiter", "gateway.ratelimit.memory",
    "gateway.ratelimit.redis_backend", "gateway.ratelimit.shared", "gateway.ratelimit.wiring",
    "providers.aelyst.adapter", "providers.teli.adapter", "providers.vambe.adapter",
    "providers.aelyst.wire", "providers.teli.wire", "providers.vambe.wire",
)

#: ``GATEWAY_NATIVE=0`` runs every module as plain Python even when a build is current.
SWITCH = "GATEWAY_NATIVE"
MANIFEST = "manifest.txt"


def default_dir() -> Path:
    """Where ``build`` writes and the package looks: ``build/native`` beside the package,
    or ``GATEWAY_NATIVE_DIR``."""
    return Path(os.environ.get("GATEWAY_NATIVE_DIR") or ROOT / "build" / "native")


def source_path(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def digest() -> str:
    """The SHA-256 of the compiled modules' sources and of the interpreter's version: a
    build is used only by the sources and the interpreter it was made from."""
    h = hashlib.sha256(sys.version.encode())
    for module in MODULES:
        h.update(b"\0" + module.encode() + b"\0")
        h.update(source_path(module).read_bytes())
    return h.hexdigest()


#: What this process runs: "native" or "python: <why>" (set by :func:`activate`).
state = "python: not activated"


def activate(path: list[str], package: str) -> str:
    """Put the build first on ``path``, the ``__path__`` of ``package`` (dotted), when
    the build is current. Decided once, by the first package to ask."""
    global state
    if state == "python: not activated":
        state = _check(default_dir())
    if state == "native":
        path.insert(0, str(default_dir().joinpath(*package.split("."))))
    return state


def _check(directory: Path) -> str:
    if os.environ.get(SWITCH, "1") == "0":
        return f"python: {SWITCH}=0"
    return _built(directory) or "native"


def _built(directory: Path) -> str | None:
    """None when ``directory`` holds a build of these sources; else why not."""
    try:
        built = (directory / MANIFEST).read_text().split()
    except OSError:
        built = []
    if not built:
        return "python: no build (make native)"
    if built[0] != digest():
        return "python: the build is older than the sources (make native)"
    return None


def describe() -> str:
    """One line for the startup log: which modules run compiled."""
    if state != "native":
        return f"modules run as {state}"
    compiled = sum(1 for m in MODULES
                   if not (importlib.import_module(m).__file__ or ".py").endswith(".py"))
    return f"{compiled} of {len(MODULES)} modules run compiled (mypyc)"


def build(directory: Path) -> None:
    """Compile :data:`MODULES` into ``directory``, replacing what is there at once.

    The build goes to a new directory that then takes the old one's name: a gateway
    running from the old build keeps its files (rewriting a loaded library in place
    can crash the process that maps it)."""
    import sysconfig

    from mypyc.build import mypycify  # build-time only: mypy ships mypyc
    from setuptools import setup  # type: ignore[import-untyped]

    if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        raise SystemExit("the Python headers are missing (Debian: apt-get install "
                         "python3-dev): the gateway runs as plain Python")

    fresh = directory.with_name(f"{directory.name}.new-{os.getpid()}")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    before = digest()
    cwd = os.getcwd()
    os.chdir(ROOT)  # mypyc names modules by their paths relative to here
    try:
        paths = [str(source_path(m).relative_to(ROOT)) for m in MODULES]
        setup(name="gateway-native", packages=[],
              ext_modules=mypycify(paths, opt_level="3", group_name="gateway.native",
                                   target_dir=str(fresh / "c")),
              script_args=["-q", "build_ext", "--build-lib", str(fresh),
                           "--build-temp", str(fresh / "tmp")])
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    finally:
        os.chdir(cwd)
    if digest() != before:
        shutil.rmtree(fresh, ignore_errors=True)
        raise SystemExit("the sources changed during the build; run it again")
    shutil.rmtree(fresh / "c")
    shutil.rmtree(fresh / "tmp")
    (fresh / MANIFEST).write_text(before + "\n" + "\n".join(MODULES) + "\n")
    old = directory.with_name(f"{directory.name}.old-{os.getpid()}")
    if directory.exists():
        directory.rename(old)
    fresh.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str]) -> None:
    """``build [DIRECTORY]``: compile, unless the build there is already of these sources."""
    if argv[:1] != ["build"]:
        raise SystemExit("usage: gateway._native.main(['build', DIRECTORY?])")
    directory = Path(argv[1]).resolve() if len(argv) > 1 else default_dir()
    if _built(directory) is None:
        print(f"the compiled modules in {directory} are of these sources")
        return
    build(directory)
    print(f"compiled {len(MODULES)} modules into {directory}")
