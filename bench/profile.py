"""Where the gateway spends its CPU under load: py-spy on the gateway while wrk drives it.

    .venv/bin/pip install py-spy      # a tool for this, not a dependency of the project
    .venv/bin/python -m bench.profile [--redis] [--seconds 20] [--connections 64]
    .venv/bin/python -m bench.profile --gc [--repeat 6] [--slow --connections 256]
        # no py-spy: the gateway's GC pauses, and whether its cost grows run after run

Starts the fake upstream (and redis-server with ``--redis``) and one gateway,
pinned as in :mod:`bench.run`, warms up, then samples the gateway with
``py-spy record --format raw`` during a wrk run. Prints the functions with the
most samples on top of the stack (self) and anywhere on it (inclusive), and
keeps the collapsed stacks (``--out``, for a flame graph tool).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from bench.load import Target, rss_mb, wrk
from bench.procs import Proc, Procs, exit_on_sigterm, free_port, wait_http_ok, wait_port
from bench.run import ROOT, check_assign, gateway_config, pinning


def _frame(frame: str, lines: bool) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)".
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for prefix in (str(ROOT) + "/", "/usr/lib/python3.11/", "/usr/local/lib/python3.11/"):
        where = where.replace(prefix, "")
    where = where.split("site-packages/")[-1].split("python3.11/")[-1]
    if not lines:
        where = where.rsplit(":", 1)[0]
    return f"{name} ({where})"


def summarize(collapsed: Path, top: int, lines: bool = False) -> str:
    """Self and inclusive shares by function (by line with ``lines``), and self by file."""
    self_: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [_frame(f, lines) for f in stack.split(";")]
        self_[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        files[frames[-1].rpartition("(")[2].rstrip(")").split(":")[0]] += n
    total = max(total, 1)
    out = [f"{total} samples. Self time of the event loop's C code (uvloop, sockets) shows "
           "as Runner.run.", "", f"Top {top} by self time (the function on top of the stack):"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in self_.most_common(top)]
    out += ["", f"Top {top} by inclusive time (anywhere on the stack):"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in incl.most_common(top)]
    out += ["", "Self time by file:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in files.most_common(top)]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis", action="store_true", help="the gateway in Redis mode")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--slow", action="store_true", help="against the 20 ms upstream")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", type=Path, default=None, help="where to keep the collapsed stacks")
    p.add_argument("--lines", action="store_true", help="by line, not by function")
    p.add_argument("--nonblocking", action="store_true",
                   help="sample without pausing the gateway (less overhead, torn stacks)")
    p.add_argument("--gc", action="store_true",
                   help="no py-spy: record the gateway's garbage-collector pauses instead "
                        "(bench.gcwatch) next to wrk's latencies")
    p.add_argument("--repeat", type=int, default=1,
                   help="with --gc: this many wrk runs in a row (does the cost grow?)")
    p.add_argument("--nice", type=int, default=-10 if os.geteuid() == 0 else 0)
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not args.gc and not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    exit_on_sigterm()
    cores = pinning()
    if cores is not None:
        os.sched_setaffinity(0, {int(cores[1])})
    workdir = Path(tempfile.mkdtemp(prefix="gateway-profile-"))
    procs = Procs(workdir, cores, nice=args.nice)
    try:
        gw, target = _start(args, procs, workdir)
        sut_core = cores[0] if cores else None
        warm = wrk(target, connections=args.connections, duration_s=3, phase="warmup",
                   round_=0, procs=procs, sut_core=sut_core)
        print(f"warm-up: {warm.rps:.0f} req/s, {warm.cpu_us_per_req or 0:.0f} us CPU/req")
        if args.gc:
            for i in range(1, args.repeat + 1):
                run = wrk(target, connections=args.connections, duration_s=args.seconds,
                          phase="gc", round_=i, procs=procs, sut_core=sut_core)
                print(f"run {i}: {run.rps:.0f} req/s, {run.cpu_us_per_req or 0:.0f} us CPU/req, "
                      f"p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, max {run.max_ms:.1f} "
                      f"ms, RSS {rss_mb(gw.pid):.0f} MB", flush=True)
            procs.stop(gw)
            print("the gateway's collections since it started (warm-up included):\n"
                  f"{(workdir / 'gc.json').read_text()}")
            return 0
        return _spy(args, spy, gw, target, procs, sut_core)
    finally:
        procs.stop_all()
        if args.gc or args.out is not None:  # else the collapsed stacks live there
            shutil.rmtree(workdir, ignore_errors=True)


def _start(args: argparse.Namespace, procs: Procs, workdir: Path) -> tuple[Proc, Target]:
    up, slow = free_port(), free_port()
    for port, delay in ((up, "0"), (slow, "20")):
        wait_port(port, procs.start(f"upstream-{port}", [
            sys.executable, "-m", "bench.upstream", "--port", str(port), "--delay-ms", delay],
            sut=False))
    redis_url = None
    if args.redis:
        rport = free_port()
        r = procs.start("redis", ["redis-server", "--port", str(rport), "--bind",
                                  "127.0.0.1", "--save", "", "--appendonly", "no"], sut=False)
        wait_port(rport, r)
        redis_url = f"redis://127.0.0.1:{rport}/0"
    port = free_port()
    cfg = workdir / "gateway.yaml"
    cfg.write_text(yaml.safe_dump(gateway_config(port, up, slow, redis_url)))
    module = "bench.gcwatch" if args.gc else "gateway.cli"
    gw = procs.start("gateway", [sys.executable, "-m", module, "serve", "--config", str(cfg)],
                     sut=True, env={"GCWATCH_OUT": str(workdir / "gc.json")})
    wait_http_ok(f"http://127.0.0.1:{port}/readyz", gw)
    url = f"http://127.0.0.1:{port}/v1/assign"
    tenant = "bench-slow" if args.slow else "bench"
    check_assign(url, tenant)
    return gw, Target("gateway", url, tenant=tenant, pid=gw.pid)


def _spy(args: argparse.Namespace, spy: str, gw: Proc, target: Target, procs: Procs,
         sut_core: str | None) -> int:
    collapsed = args.out or procs.workdir / "collapsed.txt"
    spy_proc = subprocess.Popen(
        [spy, "record", "--pid", str(gw.pid), "--rate", str(args.rate), "--duration",
         f"{args.seconds + 1:.0f}", "--format", "raw", "--output", str(collapsed),
         *(["--nonblocking"] if args.nonblocking else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    run = wrk(target, connections=args.connections, duration_s=args.seconds,
              phase="profile", round_=1, procs=procs, sut_core=sut_core)
    _, err = spy_proc.communicate(timeout=args.seconds + 30)
    if spy_proc.returncode != 0:
        print(f"py-spy failed: {err.decode(errors='replace')[-800:]}", file=sys.stderr)
        return 1
    print(f"under py-spy: {run.rps:.0f} req/s, {run.cpu_us_per_req or 0:.0f} us CPU/req, "
          f"core busy {run.core_util or 0:.0%}, other load {run.core_other_util or 0:.0%}")
    print(summarize(collapsed, args.top, args.lines))
    print(f"\ncollapsed stacks: {collapsed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
