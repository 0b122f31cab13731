"""``gateway serve | check-config | hash-key | sandbox``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway import _native, logs
from gateway.app import create_app
from gateway.auth import hash_key
from gateway.config import Config, ConfigError, load_config
from gateway.lifecycle import LIFECYCLE
from gateway.listen import AcceptingSite
from gateway.registry import sandboxes

DEFAULT_CONFIG = "config/sandbox.yaml"
SANDBOX_PORTS = {"teli": 8081, "vambe": 8082, "aelyst": 8083}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: The listen queue (the kernel caps it at net.core.somaxconn).
LISTEN_BACKLOG = 2048
#: The collector's generation-0 threshold while serving (CPython's default is 700).
GC_GEN0_THRESHOLD = 50_000
#: The young generations are collected at least this often (see _collect_young).
GC_YOUNG_EVERY_S = 30.0
#: Seconds, overriding GC_YOUNG_EVERY_S. bench.instructions stretches the period as
#: callgrind stretches time, so that a count carries a collection's cost per request
#: as it is natively, not fifty times over.
GC_YOUNG_ENV = "GATEWAY_GC_YOUNG_EVERY_S"


def young_every_s(environ: Mapping[str, str]) -> float:
    """The young collection's period: ``GATEWAY_GC_YOUNG_EVERY_S`` or the default.

    Raises ValueError, naming the variable, when it is not a positive number."""
    raw = environ.get(GC_YOUNG_ENV)
    if raw is None or not raw.strip():
        return GC_YOUNG_EVERY_S
    try:
        every_s = float(raw)
    except ValueError:
        every_s = math.nan
    if not (math.isfinite(every_s) and every_s > 0):
        raise ValueError(f"{GC_YOUNG_ENV}={raw!r}: a number of seconds above 0 is needed")
    return every_s


def _check_config(path: str) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        print(f"{path}: {len(e.problems)} problem(s)", file=sys.stderr)
        for p in e.problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"{path}: ok ({len(cfg.tenants)} tenants, {len(cfg.providers)} providers, "
          f"{len(cfg.clients)} clients)")
    return 0


def sandbox_targets(cfg: Config) -> list[tuple[str, str, int, str]]:
    """(type, host, port, api_key) for each provider configured on a loopback address."""
    out = []
    for p in cfg.providers.values():
        url = urlsplit(p.base_url)
        if url.hostname in _LOOPBACK and url.port and p.type in sandboxes():
            out.append((p.type, url.hostname or "127.0.0.1", url.port,
                        p.api_key.get_secret_value()))
    return out


async def _start(app: web.Application, host: str, port: int,
                 shutdown_timeout: float = 5.0) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=shutdown_timeout,
                           # aiohttp's default (3630 s) lets an idle or header-dripping
                           # client hold a connection for an hour.
                           keepalive_timeout=75)
    await runner.setup()
    # aiohttp's default backlog (128) overflows under a connection burst: the kernel
    # drops handshakes and each costs its client a SYN retransmit (1 s or more). The
    # site accepts the whole queue per readiness, where libuv takes one per loop turn.
    await AcceptingSite(runner, host, port, backlog=LISTEN_BACKLOG).start()
    return runner


async def _serve(cfg: Config, path: str, with_sandboxes: bool, young_s: float) -> None:
    sandbox_runners = []
    if with_sandboxes:
        for ptype, host, port, key in sandbox_targets(cfg):
            sandbox_runners.append(await _start(sandboxes()[ptype](api_key=key), host, port))
            logging.getLogger("gateway").info("sandbox %s on %s:%d", ptype, host, port)
    app = create_app(cfg, config_path=path)
    if _access_lines_reach_stderr_only():
        logs.write_lines_to(sys.stderr.fileno())  # see gateway.logs.LineWriter
    runner = await _start(app, cfg.listen.host, cfg.listen.port,
                          shutdown_timeout=cfg.shutdown_grace_s)
    tune_gc()
    collector = asyncio.get_running_loop().create_task(_collect_young(young_s))
    logging.getLogger("gateway").info("%s", _native.describe())
    print(f"gateway serving on http://{cfg.listen.host}:{cfg.listen.port}", flush=True)
    lifecycle = app[LIFECYCLE]
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[list[str]]] = set()

    def on_hup() -> None:
        task = loop.create_task(lifecycle.reload("sighup"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await _wait_for_signal()
    # Drain: readyz fails and new requests get 503 at once; in-flight ones finish.
    lifecycle.begin_drain()
    idle = await lifecycle.wait_idle(lifecycle.runtime.config.shutdown_grace_s)
    logging.getLogger("gateway").info("shutting down (%s)", "drained" if idle else "grace over")
    collector.cancel()
    await runner.cleanup()
    for r in reversed(sandbox_runners):
        await r.cleanup()
    logs.write_lines_to(None)  # flushes what is left


async def _collect_young(every_s: float) -> None:
    """Collect the young generations every ``every_s`` seconds.

    With the high threshold of :func:`tune_gc` the count that triggers a
    collection is net (allocations minus frees): at a low request rate it can
    take an hour to reach, and any reference cycle (a request that failed, with
    its traceback and frames) stays allocated that long. Measured: 1.5 to 5 ms
    per collection, against 10 to 15 MiB held otherwise in a soak.
    """
    while True:
        await asyncio.sleep(every_s)
        gc.collect(1)


def _access_lines_reach_stderr_only() -> bool:
    """True when access lines would go nowhere but the root logger's stderr handler
    (the logging that ``main`` sets up): only then may they bypass logging."""
    access = logs.ACCESS_LOG
    root = logging.getLogger()
    handlers = [h for h in root.handlers if type(h) is logging.StreamHandler]
    return (not access.handlers and access.propagate and not access.filters
            and not logging.getLogger("gateway").handlers
            and len(root.handlers) == 1 == len(handlers)
            and getattr(handlers[0], "stream", None) is sys.stderr)


def tune_gc() -> None:
    """Make the cyclic collector cheap under load.

    Every request allocates hundreds of container objects, nearly all freed by
    reference counting; at the default gen-0 threshold (700) the collector runs
    every couple of requests and its older generations keep re-walking the
    long-lived heap (modules, configuration, pydantic schemas). Freezing what
    startup built moves it out of every future collection, and a higher gen-0
    threshold makes collections rarer (each is still small: most young objects
    are already gone). Cycles are still collected, only in larger batches.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve_sandboxes(host: str) -> None:
    runners = []
    for ptype, factory in sorted(sandboxes().items()):
        port = SANDBOX_PORTS.get(ptype, 0)
        runners.append(await _start(factory(), host, port))
        print(f"sandbox {ptype} on http://{host}:{port}", flush=True)
    await _wait_for_signal()
    for r in runners:
        await r.cleanup()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        pass
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as r:
        r.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the gateway")
    serve.add_argument("--config", default=DEFAULT_CONFIG)
    serve.add_argument("--with-sandboxes", action="store_true",
                       help="also serve a sandbox for each provider configured on loopback")
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    hk = sub.add_parser("hash-key", help="print the key_sha256 of a client key")
    hk.add_argument("key")
    sb = sub.add_parser("sandbox", help="serve the provider sandboxes on their own ports")
    sb.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "hash-key":
        print(hash_key(args.key))
        return 0
    if args.command == "sandbox":
        _run(_serve_sandboxes(args.host))
        return 0
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    try:
        young_s = young_every_s(os.environ)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 1
    _run(_serve(cfg, args.config, args.with_sandboxes, young_s))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
