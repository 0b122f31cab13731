"""``make bench``: the gateway against a bare aiohttp passthrough, side by side.

On a 2-core machine it starts, each pinned:

- core 1: a fake Aelyst upstream (raw asyncio, :mod:`bench.upstream`), a second
  one answering after 20 ms, ``redis-server``, and ``wrk``;
- core 0 (the systems under test): the bare passthrough (:mod:`bench.passthrough`,
  the physical limit of this stack), the gateway in-process, the gateway on
  Redis, and the gateway in-process with ``GATEWAY_METRICS=off``;

then, after a warm-up, drives them with wrk posting the canonical assign
request, interleaving the systems (and the phases: closed loop at each connection
count, slow upstream, paced slow upstream) round by round, and writes
``bench/RESULTS.md`` and ``bench/results.json``.

    .venv/bin/python -m bench.run [--rounds 3] [--duration 5] [--connections 1,16,64]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata as md
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from bench import report
from bench.load import CLIENT_KEY, Run, Target, wrk
from bench.procs import Proc, Procs, exit_on_sigterm, free_port, http, wait_http_ok, wait_port

ROOT = Path(__file__).resolve().parent.parent
#: The environment variable the harness sets to switch the gateway's metrics off.
METRICS_KNOB = ("GATEWAY_METRICS", "off")
#: The phase of the metrics A/B: the gateway with metrics on and off in alternating pairs.
METRICS_AB = report.METRICS_AB
BODY = b'{"tenant":"bench","contact":{"id":"3"},"assignee":{"id":"17"},"mode":"replace"}'


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- configuration -----------------------------------------------------------------------


def gateway_config(port: int, fast: int, slow: int, redis_url: str | None) -> dict[str, Any]:
    """A gateway whose limiter is on but never refuses: client and provider buckets of
    a million requests per second, every request still spending both."""
    huge = {"rate": 1_000_000, "burst": 1_000_000}
    provider = {"type": "aelyst", "api_key": "bench-token", "timeout_s": 5,
                "rate_limit": {**huge, "scope": "account", "max_wait_s": 0}}
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "redis_url": redis_url,
        "shutdown_grace_s": 1,
        "clients": [{"name": "bench", "key_sha256": hashlib.sha256(CLIENT_KEY.encode()).hexdigest(),
                     "tenants": ["bench", "bench-slow"], "rate_limit": huge}],
        "tenants": {"bench": {"provider": "fast", "default_region": "US"},
                    "bench-slow": {"provider": "slow", "default_region": "US"}},
        "providers": {"fast": {**provider, "base_url": f"http://127.0.0.1:{fast}/v1"},
                      "slow": {**provider, "base_url": f"http://127.0.0.1:{slow}/v1"}},
    }


# -- the systems -------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Procs) -> None:
        self.args, self.procs = args, procs
        self.py = sys.executable
        self.fast = self.slow = 0
        self.redis: Proc | None = None
        self.redis_port: int | None = None
        self.targets: dict[str, Target] = {}  # fast upstream
        self.slow_targets: dict[str, Target] = {}  # 20 ms upstream
        self.not_measured: dict[str, str] = {}

    def start(self) -> None:
        self.fast, self.slow = free_port(), free_port()
        for name, port, delay in (("upstream", self.fast, 0.0),
                                  ("upstream-slow", self.slow, self.args.slow_delay_ms)):
            p = self.procs.start(name, [self.py, "-m", "bench.upstream", "--port", str(port),
                                        "--delay-ms", f"{delay:g}"], sut=False)
            wait_port(port, p)
        self.targets["direct"] = Target("direct", f"http://127.0.0.1:{self.fast}/v1/assign")
        self.slow_targets["direct"] = Target("direct", f"http://127.0.0.1:{self.slow}/v1/assign",
                                             tenant="bench-slow")
        for key, upstream, table in (("passthrough", self.fast, self.targets),
                                     ("passthrough-slow", self.slow, self.slow_targets)):
            port = free_port()
            p = self.procs.start(key, [self.py, "-m", "bench.passthrough", "--port", str(port),
                                       "--upstream", f"http://127.0.0.1:{upstream}"], sut=True)
            wait_port(port, p)
            tenant = "bench-slow" if table is self.slow_targets else "bench"
            table["passthrough"] = Target("passthrough", f"http://127.0.0.1:{port}/v1/assign",
                                          tenant=tenant, pid=p.pid)
        if not self.args.skip_floor:
            # The floor (bench.floor) under the same load: what the contract alone costs
            # in the bars' own terms, throughput and CPU time. Fast upstream only.
            port = free_port()
            p = self.procs.start("floor", [self.py, "-m", "bench.floor", "--port", str(port),
                                           "--upstream", f"http://127.0.0.1:{self.fast}"],
                                 sut=True)
            wait_port(port, p)
            self.targets["floor"] = Target("floor", f"http://127.0.0.1:{port}/v1/assign",
                                           pid=p.pid)
        self._start_gateway("gateway", None, {})
        if not self.args.skip_redis:
            self._start_redis()
        if not self.args.skip_metrics_off:
            self._start_gateway("gateway-metrics-off", None, dict([METRICS_KNOB]))

    def _start_redis(self) -> None:
        if shutil.which("redis-server") is None:
            self.not_measured["gateway-redis"] = "redis-server is not installed"
            return
        port = self.redis_port = free_port()
        self.redis = self.procs.start("redis", [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--protected-mode", "no"], sut=False)
        wait_port(port, self.redis)
        self._start_gateway("gateway-redis", f"redis://127.0.0.1:{port}/0", {})

    def _start_gateway(self, name: str, redis_url: str | None, env: dict[str, str]) -> None:
        """Start, wait for /readyz, check one assign; retried: gateway/ may be mid-edit."""
        last = ""
        for attempt in range(1, self.args.start_attempts + 1):
            port = free_port()
            cfg = self.procs.workdir / f"{name}.yaml"
            cfg.write_text(yaml.safe_dump(gateway_config(port, self.fast, self.slow, redis_url)))
            p = self.procs.start(name, [self.py, "-m", "gateway.cli", "serve", "--config",
                                        str(cfg)], sut=True, env=env)
            try:
                wait_http_ok(f"http://127.0.0.1:{port}/readyz", p)
                for tenant in ("bench", "bench-slow"):
                    check_assign(f"http://127.0.0.1:{port}/v1/assign", tenant)
            except RuntimeError as e:
                last = str(e)
                log(f"{name} failed to start (attempt {attempt}): {last.splitlines()[0]}")
                self.procs.stop(p)
                if attempt < self.args.start_attempts:
                    time.sleep(self.args.start_retry_s)
                continue
            url = f"http://127.0.0.1:{port}/v1/assign"
            extra = {"redis": self.redis.pid} if redis_url and self.redis else {}
            rport = self.redis_port if redis_url else None
            self.targets[name] = Target(name, url, pid=p.pid, extra_pids=extra,
                                        redis_port=rport)
            self.slow_targets[name] = Target(name, url, tenant="bench-slow", pid=p.pid,
                                             extra_pids=extra, redis_port=rport)
            log(f"{name} ready on {port} (pid {p.pid})")
            return
        self.not_measured[name] = f"the gateway did not start: {last[-800:]}"

    def check_metrics_knob(self) -> None:
        """Drop the metrics-off run when the gateway ignores the knob: it would measure
        the gateway with metrics on twice."""
        t = self.targets.get("gateway-metrics-off")
        if t is None:
            return
        base = t.url.removesuffix("/v1/assign")
        status, body = http("GET", base + "/metrics")
        counted = status == 200 and any(
            line.startswith("gateway_requests_total{") and 'route="/v1/assign"' in line
            and float(line.rsplit(" ", 1)[1]) > 0
            for line in body.decode(errors="replace").splitlines())
        if counted:
            name, value = METRICS_KNOB
            self.not_measured["gateway-metrics-off"] = (
                f"the gateway ignores {name}={value}: with it set, /metrics still counts "
                "the benchmark's requests in gateway_requests_total")
            del self.targets["gateway-metrics-off"]
            self.slow_targets.pop("gateway-metrics-off", None)


def check_assign(url: str, tenant: str) -> None:
    body = BODY.replace(b'"bench"', json.dumps(tenant).encode())
    try:
        status, answer = http("POST", url, body, {
            "Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"})
    except OSError as e:
        raise RuntimeError(f"POST {url}: {type(e).__name__}") from None
    if status != 200 or b'"assigned"' not in answer:
        raise RuntimeError(f"POST {url} ({tenant}): {status} {answer[:300]!r}")


# -- the measurement ---------------------------------------------------------------------


def rotate(names: Sequence[str], k: int) -> list[str]:
    k %= max(1, len(names))
    return [*names[k:], *names[:k]]


def measure(b: Bench, args: argparse.Namespace, cores: tuple[str, str] | None,
            progress: Callable[[Run], None]) -> list[Run]:
    sut_core = cores[0] if cores else None
    runs: list[Run] = []

    def go(t: Target, c: int, phase: str, r: int, dur: float, think: float = 0.0) -> Run:
        run = wrk(t, connections=c, duration_s=dur, phase=phase, round_=r,
                  procs=b.procs, sut_core=sut_core,
                  think_ms=think)
        if phase != "warmup":
            runs.append(run)
        progress(run)
        return run

    top = max(args.connections)
    for t in b.targets.values():
        go(t, top, "warmup", 0, args.warmup)
    for t in b.slow_targets.values():
        go(t, args.slow_connections, "warmup", 0, max(1.0, args.warmup / 2))
    b.check_metrics_knob()
    names = list(b.targets)
    # The gateway with metrics off goes through the slow phases too, although no bar
    # reads it there: the metrics pairs below compare two processes, which should have
    # the same history (when only the metrics-on one had served the 256 slow
    # connections, every pair of two runs came out positive, medians 5.5% and 6.7%,
    # while their main rounds gave 1.4% and -1.2%; README, "Performance").
    slow = list(b.slow_targets)
    think = 0.0
    # Every phase in every round, so a spell of load from elsewhere on the machine
    # falls on all phases and systems alike rather than on one phase.
    for r in range(1, args.rounds + 1):
        for c in args.connections:
            for name in rotate(names, r - 1):
                go(b.targets[name], c, "main", r, args.duration)
        for name in rotate(slow, r - 1):
            go(b.slow_targets[name], args.slow_connections, "slow", r, args.duration)
        if r == 1:
            think = paced_think_ms(args, runs)
        for name in rotate(slow, r - 1):
            go(b.slow_targets[name], args.slow_connections, "slow-paced", r, args.duration,
               think)
    # The metrics bar asks for a 5% difference in throughput, and back-to-back runs of
    # one system on this host differ by more than that: a difference that small needs
    # pairs run side by side, many of them, the order swapped every pair.
    if "gateway-metrics-off" in b.targets:
        pair = ["gateway", "gateway-metrics-off"]
        for n in range(1, args.metrics_pairs + 1):
            for name in pair if n % 2 else pair[::-1]:
                go(b.targets[name], top, METRICS_AB, n, args.metrics_pair_s)
    return runs


def paced_think_ms(args: argparse.Namespace, runs: list[Run]) -> float:
    """Think time giving about ``--paced-rps`` at ``--slow-connections``: by default a
    quarter of the in-process gateway's saturated throughput, so no system is CPU-bound
    (a request costs more CPU at low load, where there is no batching, than saturated)."""
    rate = args.paced_rps
    if not rate:
        top = max(args.connections)
        seen = sorted(r.rps for r in runs
                      if r.system == "gateway" and r.phase == "main" and r.connections == top)
        rate = 0.25 * seen[len(seen) // 2] if seen else 200.0
    args.paced_rps_used = rate
    return max(0.0, float(args.slow_connections / rate * 1000 - args.slow_delay_ms))


# -- metadata ----------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "implementation": platform.python_implementation()}
    for dist in ("aiohttp", "uvloop", "orjson", "redis", "pydantic", "prometheus-client",
                 "assignment-gateway"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    for tool, argv in (("redis-server", ["redis-server", "--version"]), ("wrk", ["wrk", "-v"])):
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
            out[tool] = (res.stdout or res.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            out[tool] = "not found"
    out["kernel"] = platform.release()
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    out["cpu"] = f"{cpu.group(1) if cpu else '?'} x{os.cpu_count()}"
    return out


def source_state() -> dict[str, str]:
    """Which code was measured: the commit HEAD names (read from .git, no git command)
    and a digest of gateway/ and providers/ as they were on disk, since the working
    tree may hold uncommitted changes."""
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("gateway/**/*.py"), *ROOT.glob("providers/**/*.py")]):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    head = "unknown"
    try:
        ref = (ROOT / ".git/HEAD").read_text().strip()
        if ref.startswith("ref: "):
            name = ref[5:]
            loose = ROOT / ".git" / name
            if loose.exists():
                head = loose.read_text().strip()
            else:
                packed = (ROOT / ".git/packed-refs").read_text()
                m = re.search(rf"^([0-9a-f]{{40}}) {re.escape(name)}$", packed, re.M)
                head = m.group(1) if m else "unknown"
        else:
            head = ref
    except OSError:
        pass
    return {"head": head, "source_sha256": digest.hexdigest()[:16]}


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of warm-up per system")
    p.add_argument("--connections", default="1,16,64",
                   type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--slow-connections", type=int, default=256)
    p.add_argument("--slow-delay-ms", type=float, default=20.0)
    p.add_argument("--paced-rps", type=float, default=0.0,
                   help="offered load of the paced slow run (0: a quarter of the gateway's "
                        "saturated throughput)")
    p.add_argument("--skip-redis", action="store_true")
    p.add_argument("--skip-metrics-off", action="store_true")
    p.add_argument("--skip-floor", action="store_true",
                   help="do not run the floor (bench.floor) under wrk")
    p.add_argument("--metrics-pairs", type=int, default=10,
                   help="on/off pairs of the metrics A/B (after the rounds; 0: none)")
    p.add_argument("--metrics-pair-s", type=float, default=2.0,
                   help="seconds per run of the metrics A/B")
    p.add_argument("--instructions", type=int, default=1000, metavar="N",
                   help="requests counted under callgrind per system (0: skip; see "
                        "bench.instructions)")
    p.add_argument("--instructions-loaded", type=int, default=3000, metavar="N",
                   help="requests counted under callgrind per system at the top connection "
                        "count, where the CPU bar is read (0: skip)")
    p.add_argument("--cache-sim", action=argparse.BooleanOptionalAction, default=True,
                   help="simulate the caches in the count at the top connection count, and "
                        "report the misses per request (default: on)")
    p.add_argument("--fill", action=argparse.BooleanOptionalAction, default=True,
                   help="before each count, fill the store of a system that keeps finished "
                        "operations, so that the count sees its steady state (default: on; "
                        "see bench.instructions)")
    p.add_argument("--start-attempts", type=int, default=4)
    p.add_argument("--start-retry-s", type=float, default=15.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    p.add_argument("--nice", type=int, default=None,
                   help="niceness of every process the harness starts (default: -10 as root, "
                        "else 0): on a shared machine, other work takes less of the "
                        "measured core")
    return p.parse_args(argv)


def count_instructions(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Instructions per request under callgrind: the CPU comparison host noise cannot
    move (bench.instructions)."""
    from bench import instructions  # it imports this module's gateway_config

    if args.instructions <= 0:
        return {"skipped": "--instructions 0"}
    if not instructions.available():
        return {"skipped": "valgrind is not installed"}
    # The floor (bench.floor): what the contract alone costs on this stack, so the
    # report can say how much of the gateway's distance to the bar any design must keep.
    systems = ["passthrough", "floor", "gateway"] + ([] if args.skip_redis else ["gateway-redis"])
    systems += [] if args.skip_metrics_off else ["gateway-metrics-off"]
    log(f"counting instructions per request under callgrind ({args.instructions} requests "
        "per system, 1 connection)")
    counts = instructions.count_systems(workdir / "instructions", systems,
                                        requests=args.instructions, fill=args.fill)
    # per_request: net of the idle background (bench.instructions explains why).
    fill = instructions.FILL_REQUESTS if args.fill else 0
    out: dict[str, Any] = {"requests": args.instructions, "connections": 1, "fill": fill,
                           "per_request": {s: c.net for s, c in counts.items()},
                           "raw_per_request": {s: c.raw for s, c in counts.items()},
                           "idle_per_s": {s: c.idle_per_s for s, c in counts.items()}}
    if args.instructions_loaded > 0:
        # At the connection count where the CPU bar is read: under load the event loop
        # serves ready requests together and in-flight state grows (a burst's shared
        # contact lock, queues), so a count at one connection can miss costs that only
        # concurrency makes (the contact lock's were 4% of the gateway's, invisible at 1).
        top = max(args.connections)
        log(f"counting instructions per request under callgrind ({args.instructions_loaded} "
            f"requests per system, {top} connections)")
        # With the caches simulated: where other tenants crowd the caches, CPU time
        # follows the misses more than the instructions (README, "Why a slow host moves
        # the CPU ratio"); the simulation adds about half to these runs' time.
        loaded = instructions.count_systems(
            workdir / "instructions-loaded", ["passthrough", "floor", "gateway"],
            requests=args.instructions_loaded, warmup=1000, connections=top,
            cache_sim=args.cache_sim, fill=args.fill)
        out["loaded"] = {"requests": args.instructions_loaded, "connections": top,
                         "fill": fill,
                         "per_request": {s: c.net for s, c in loaded.items()},
                         "raw_per_request": {s: c.raw for s, c in loaded.items()},
                         "idle_per_s": {s: c.idle_per_s for s, c in loaded.items()}}
        if args.cache_sim:
            out["loaded"]["misses"] = {s: c.misses for s, c in loaded.items()}
            out["loaded"]["caches"] = " ".join(instructions.CACHES)
    return out


def host_loop_s() -> float:
    """Seconds for report.HOST_LOOP iterations of an empty Python loop, best of 3: how
    fast the host is right now (on the harness's core, the one the SUT is not on)."""
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(report.HOST_LOOP):
            pass
        best = min(best, time.perf_counter() - t)
    return best


def pinning() -> tuple[str, str] | None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        log("fewer than 2 cores (or no taskset): nothing is pinned")
        return None
    return str(cpus[0]), str(cpus[1])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk; `make bench` does it)", file=sys.stderr)
        return 2
    exit_on_sigterm()
    cores = pinning()
    if cores is not None:
        os.sched_setaffinity(0, {int(cores[1])})  # the harness stays off the measured core
    command = " ".join([sys.executable.replace(str(ROOT) + "/", ""), "-m bench.run",
                        *(argv if argv is not None else sys.argv[1:])])
    if args.nice is None:
        args.nice = -10 if os.geteuid() == 0 else 0
    started = dt.datetime.now(dt.UTC)
    meta: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"), "command": command.strip(),
        "versions": versions(), "source": source_state(), "cores": cores,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "metrics_knob": "=".join(METRICS_KNOB),
    }
    loop_start = host_loop_s()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs = Procs(workdir, cores, nice=args.nice)
    log(f"work directory {workdir}")
    try:
        b = Bench(args, procs)
        b.start()
        for name, why in b.not_measured.items():
            log(f"{name}: not measured: {why.splitlines()[0]}")
        runs = measure(b, args, cores, lambda r: log(report.progress_line(r)))
        procs.stop_all()  # the callgrind runs below start their own processes
        meta["instructions"] = count_instructions(args, workdir)
        meta["not_measured"] = b.not_measured
        meta["paced_rps"] = getattr(args, "paced_rps_used", None)
        meta["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        meta["host_loop_s"] = {"start": loop_start, "end": host_loop_s()}
        meta["elapsed_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds())
        results = report.build(meta, runs, args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        path = args.out / "RESULTS.md"
        old = path.read_text() if path.exists() else ""
        path.write_text(report.keep_soak(report.markdown(results), old))
        log(f"wrote {args.out / 'RESULTS.md'} and {args.out / 'results.json'}")
        print(report.bars_text(results))
    finally:
        procs.stop_all()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
