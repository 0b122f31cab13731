"""The Redis script path alone, this tree's against another commit's, side by side.

    .venv/bin/python -m bench.redis_ab --ref 9e30af0 [--rounds 3] [--calls 20000]

Loads ``gateway/redis_conn.py`` as of ``--ref`` (``git show``) next to this
tree's, starts a redis-server pinned to core 1, pins itself to core 0, and
times the same script (a SET and a GET of a 200-byte value) through each, at 1
and at 64 concurrent callers, alternating the two round by round. Prints the
median CPU time of this process per call and the calls per second: the part of
a Redis-mode request's cost that is the gateway's own client, without HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import uvloop

from bench.procs import free_port
from gateway import redis_conn

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])"


def module_at(ref: str, workdir: Path) -> ModuleType:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:gateway/redis_conn.py"],
                            check=True, capture_output=True, timeout=30).stdout
    path = workdir / "redis_conn_at_ref.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("redis_conn_at_ref", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def one_run(mod: ModuleType, url: str, callers: int, calls: int) -> tuple[float, float]:
    client = mod.connect(url)
    script = mod.Script(client, SCRIPT)
    try:
        await script(keys=["warm"], args=["x"])
        each = calls // callers

        async def caller(i: int) -> None:
            for _ in range(each):
                await script(keys=[f"k{i}"], args=["v" * 200])

        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(caller(i) for i in range(callers))), 120)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        return cpu / (each * callers) * 1e6, each * callers / wall
    finally:
        await mod.close(client)


async def compare(systems: dict[str, ModuleType], url: str, rounds: int,
                  calls: int) -> None:
    for callers in (1, 64):
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in systems}
        for _ in range(rounds):
            for name, mod in systems.items():
                runs[name].append(await one_run(mod, url, callers,
                                                calls if callers > 1 else calls // 4))
        for name, got in runs.items():
            cpu = statistics.median(g[0] for g in got)
            rate = statistics.median(g[1] for g in got)
            print(f"{callers:3d} callers  {name:>12}: {cpu:7.1f} us CPU per call, "
                  f"{rate:8.0f} calls/s")


def _wait_ready(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", required=True, help="the commit to compare with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=20_000)
    args = p.parse_args()
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed (make bench installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        systems = {args.ref: module_at(args.ref, Path(tmp)), "this tree": redis_conn}
        port = free_port()
        server = subprocess.Popen(
            ["taskset", "-c", "1", exe, "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_ready(port)
            os.sched_setaffinity(0, {0})
            uvloop.run(compare(systems, f"redis://127.0.0.1:{port}/0", args.rounds,
                               args.calls))
        finally:
            server.kill()
            server.wait(5)


if __name__ == "__main__":
    main()
