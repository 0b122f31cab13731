"""Instructions per request, counted by valgrind: an A/B that host noise cannot move.

    .venv/bin/python -m bench.instructions [--ref HEAD~1] [--system gateway]
        [--requests 1000] [--warmup 300] [--connections 1] [--repeat 2]
        [--body id|phone|canonical] [--idempotency]

This host's CPU time per request swings by 2x between rounds (other tenants), so a
change worth 2% cannot be seen in wall or CPU time. ``valgrind --tool=callgrind``
counts the instructions the system under test executes, which is repeatable for the
same code and inputs whatever else the machine does. The count is not the time (a
cache miss costs more than an add), but for an interpreter it follows the time
closely enough to rank two versions of the same code.

How: the fake upstream (and redis-server for ``gateway-redis``) run natively; the
system under test runs under callgrind with instrumentation off. After the warm-up
(natively driven, so imports, caches and pools are settled), instrumentation is
switched on (``callgrind_control -i on``), ``--requests`` assigns are sent, and the
totals are dumped (``callgrind_control -d``): instructions per request is the dump's
total over the requests, less the system's idle background.

The idle background: work a system does by the clock, not per request (the
gateway's worker polls for due operations every 0.1 s; in Redis mode it also
pings Redis and watches its health). Under callgrind a request takes about 50
times as long as natively, so that work would be counted about 50 times over
per request: 1% of the count in process, 8% in Redis mode, where natively under
load it is far below 0.1%. So before the requests the system is counted idle for
``IDLE_S`` seconds, and that rate times the requests' own duration is taken off
their total. Both figures are printed; the passthrough and the floor do nothing
by the clock, so theirs are the same.

One such task costs more the more requests ran since it last did: the gateway
collects its young objects every 30 s (``gateway.cli``), walking what the requests
since left alive. Natively that is once per some 50,000 requests; under callgrind
once per 1,000, so a count whose window caught one carried about 7,500
instructions per request of it (1%) and one that did not, none. The harness
stretches that period as callgrind stretches time (``GATEWAY_GC_YOUNG_EVERY_S``,
:data:`SLOWDOWN` times the gateway's 30 s), so the counted requests carry a
collection's cost per request as natively: almost none.

A system that keeps finished operations in process (the gateway in process mode and
the floor keep :data:`~gateway.operations.MEMORY_FINALS`) is first sent that many
assigns (:data:`FILL_REQUESTS`, at :data:`FILL_CONNECTIONS` or more connections, for
speed), so that the count sees the steady state a serving gateway reaches within
seconds: its store full, each request evicting the oldest record. From a fresh store
the count saw another system: no evictions (at one connection the gateway counted
1,600 to 4,000 instructions per request fewer unfilled), but each kept record left in
the collector's young generation, which the gateway then walked once per few
thousand requests (one walk in a 64-connection count: 12.7 million instructions,
4,200 per request, and 150 L2 misses per request). ``--no-fill`` counts from a fresh
store.

``--ref`` runs the same on the ``gateway/`` and ``providers/`` of that commit
(``git archive``) and prints both and the change. Only ``gateway`` and
``gateway-redis`` take ``--ref``; ``passthrough`` is the baseline and ``floor``
(:mod:`bench.floor`) the least work the contract asks. Requests go to loopback
only, each with a timeout; the harness stops every process it started.

``--cache-sim`` also has callgrind simulate this host's caches per core (:data:`CACHES`)
and prints the misses per request beside the instructions, net of the idle
background like them. An instruction count predicts the CPU time on a host whose
caches the system has to itself; where other tenants crowd the caches, a miss costs
far more than an instruction, and the time follows the misses (README, "Why a slow
host moves the CPU ratio").
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from bench.load import CLIENT_KEY
from bench.procs import Procs, exit_on_sigterm, free_port, wait_http_ok, wait_port
from bench.run import BODY, METRICS_KNOB, ROOT, check_assign, gateway_config
from gateway.cli import GC_YOUNG_ENV, GC_YOUNG_EVERY_S
from gateway.operations import MEMORY_FINALS

SYSTEMS = ("gateway", "gateway-redis", "gateway-metrics-off", "passthrough", "floor")
#: Under callgrind the system runs about 50x slower than natively.
SLOWDOWN = 50
REQUEST_TIMEOUT_S = 60.0
#: How long each system is counted idle, for its background rate (see above).
IDLE_S = 10.0
CONTROL_TIMEOUT_S = 120.0
#: The systems that keep finished operations in process, at most MEMORY_FINALS each
#: (gateway.operations; bench.floor keeps as many): filled before a count (see above).
KEEPS_FINALS = frozenset({"gateway", "gateway-metrics-off", "floor"})
#: The fill: as many assigns as those systems keep, sent before the warm-up.
FILL_REQUESTS = MEMORY_FINALS
#: Its connections at least, for speed: at 16, the gateway's fill took about 25 s under
#: valgrind.
FILL_CONNECTIONS = 16
_TOTALS = re.compile(r"^(?:summary|totals):((?:\s+\d+)+)", re.MULTILINE)
_EVENTS = re.compile(r"^events:((?:\s+\w+)+)", re.MULTILINE)
#: ``--cache-sim``: this host's caches per core (lscpu: 64 KiB of L1i, 64 KiB of L1d and
#: 1 MiB of L2 over two cores), for callgrind to simulate. Its own guess from CPUID is
#: wrong in this VM (a 256 MiB direct-mapped last level). The L2 is the last level a
#: core has to itself; past it is the L3 that other tenants share.
CACHES = ("--I1=32768,8,64", "--D1=32768,8,64", "--LL=524288,8,64")
#: The misses reported, as sums of callgrind's events: instruction fetches missing L1i;
#: data reads and writes missing L1d; anything missing the L2.
MISSES = {"L1i": ("I1mr",), "L1d": ("D1mr", "D1mw"), "L2": ("ILmr", "DLmr", "DLmw")}


#: The bodies ``--body`` names: the benchmark's own (``id``, as ``make bench`` posts it),
#: a phone contact, and DESIGN's canonical example (a phone contact, an assignee email).
BODIES = {
    "id": BODY,
    "phone": b'{"tenant":"bench","contact":{"phone":"+1 (555) 123-4567"},'
             b'"assignee":{"id":"17"},"mode":"replace"}',
    "canonical": b'{"tenant":"bench","contact":{"phone":"+15551234567"},'
                 b'"assignee":{"email":"jane@acme.com"},"mode":"replace"}',
}
_KEYS = itertools.count()


async def drive(url: str, requests: int, connections: int, body: bytes = BODY,
                idempotency: bool = False) -> int:
    """Send ``requests`` assigns over ``connections`` keep-alive connections; the
    number answered 200 (anything else is an error of the run). ``idempotency``: each
    with an ``Idempotency-Key`` of its own."""
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=connections)
    ok = 0
    left = requests

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok, left
        while left > 0:
            left -= 1
            sent = {**headers, "Idempotency-Key": f"bench-{next(_KEYS)}"} if idempotency \
                else headers
            async with session.post(url, data=body, headers=sent) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"POST {url}: {resp.status}")
                ok += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    return ok


def control(pid: int, *flags: str) -> None:
    subprocess.run(["callgrind_control", *flags, str(pid)], check=True,
                   timeout=CONTROL_TIMEOUT_S, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


@dataclass(frozen=True)
class Count:
    """One system's count: ``net`` (per request, the idle background taken off) is the
    figure compared; ``raw`` per request and ``idle_per_s`` show what was taken off.
    ``misses`` (with ``--cache-sim``): cache misses per request by level, net like ``net``."""

    net: float
    raw: float
    idle_per_s: float
    misses: dict[str, float] = field(default_factory=dict)


def dumped_events(outdir: Path, pid: int) -> dict[str, int]:
    """The event totals (``Ir``, and the misses with cache simulation) of the last dump
    callgrind wrote for ``pid``."""
    dumps = sorted(outdir.glob(f"callgrind.out.{pid}*"), key=lambda p: p.stat().st_mtime)
    for path in reversed(dumps):
        text = path.read_text(errors="replace")
        totals, events = _TOTALS.search(text), _EVENTS.search(text)
        if totals and events:
            names, values = events.group(1).split(), totals.group(1).split()
            # The format may leave off trailing zeros.
            values += ["0"] * (len(names) - len(values))
            return {n: int(v) for n, v in zip(names, values, strict=False)}
    raise RuntimeError(f"no callgrind dump with totals for pid {pid} in {outdir}")


def dumped_total(outdir: Path, pid: int) -> int:
    """The instruction total of the last dump callgrind wrote for ``pid``."""
    return dumped_events(outdir, pid)["Ir"]


def misses_of(events: dict[str, int]) -> dict[str, int]:
    """The misses by level (:data:`MISSES`); empty without cache simulation."""
    if "I1mr" not in events:
        return {}
    return {level: sum(events[e] for e in names) for level, names in MISSES.items()}


class Harness:
    """Runs the systems under callgrind against one fake upstream (and one Redis)."""

    def __init__(self, procs: Procs, *, requests: int, warmup: int,
                 connections: int, body: bytes = BODY, idempotency: bool = False,
                 cache_sim: bool = False, fill: bool = True) -> None:
        self.procs = procs
        self.cache_sim, self.fill = cache_sim, fill
        self.body, self.idempotency = body, idempotency
        self.requests, self.warmup, self.connections = requests, warmup, connections
        self.py = sys.executable
        self.upstream = free_port()
        self.redis_url: str | None = None

    def start_upstreams(self, redis: bool) -> None:
        p = self.procs.start("upstream", [self.py, "-m", "bench.upstream", "--port",
                                          str(self.upstream)], sut=False)
        wait_port(self.upstream, p)
        if redis:
            port = free_port()
            proc = self.procs.start("redis", [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--protected-mode", "no"], sut=False)
            wait_port(port, proc)
            self.redis_url = f"redis://127.0.0.1:{port}/0"

    def _argv(self, system: str, port: int, name: str) -> list[str]:
        if system in ("passthrough", "floor"):
            return [self.py, "-m", f"bench.{system}", "--port", str(port), "--upstream",
                    f"http://127.0.0.1:{self.upstream}"]
        redis_url = self.redis_url if system == "gateway-redis" else None
        if system == "gateway-redis" and redis_url is None:
            raise RuntimeError("gateway-redis needs start_upstreams(redis=True)")
        cfg = self.procs.workdir / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(gateway_config(port, self.upstream, self.upstream,
                                                     redis_url)))
        return [self.py, "-m", "gateway.cli", "serve", "--config", str(cfg)]

    def warmups(self, system: str) -> list[tuple[int, int]]:
        """The (requests, connections) sent to ``system`` before it is counted: the fill
        (for a system that keeps finished operations), then the warm-up."""
        fill = [(FILL_REQUESTS, max(self.connections, FILL_CONNECTIONS))] \
            if self.fill and system in KEEPS_FINALS else []
        return [*fill, (self.warmup, self.connections)]

    def count(self, system: str, name: str, source: Path = ROOT) -> Count:
        """Instructions per request of ``system`` whose code is under ``source``."""
        port = free_port()
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        outdir = self.procs.workdir / f"cg-{slug}"
        outdir.mkdir(exist_ok=True)
        sim = ["--cache-sim=yes", *CACHES] if self.cache_sim else []
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", *sim,
                f"--callgrind-out-file={outdir}/callgrind.out.%p",
                *self._argv(system, port, slug)]
        # ``python -m`` puts its working directory first on sys.path, before
        # PYTHONPATH: the process starts in ``source`` so that its gateway is the one run.
        env = {"PYTHONPATH": str(source), "PYTHONHASHSEED": "0",
               # The young collection by the clock, stretched as time is (see above).
               GC_YOUNG_ENV: f"{SLOWDOWN * GC_YOUNG_EVERY_S:g}"}
        if system == "gateway-metrics-off":
            env[METRICS_KNOB[0]] = METRICS_KNOB[1]
        proc = self.procs.start(slug, argv, sut=True, env=env,
                                cwd=ROOT if system in ("passthrough", "floor") else source)
        try:
            url = f"http://127.0.0.1:{port}/v1/assign"
            if system in ("passthrough", "floor"):
                wait_port(port, proc, timeout_s=300)
            else:
                wait_http_ok(f"http://127.0.0.1:{port}/readyz", proc, timeout_s=300)
                check_assign(url, "bench")
            for requests, connections in self.warmups(system):
                asyncio.run(drive(url, requests, connections, self.body, self.idempotency))
            control(proc.pid, "-i", "on")
            idle_from = time.monotonic()
            time.sleep(IDLE_S)
            control(proc.pid, "-d")  # a dump zeroes the counters: the next one is the run's
            started = time.monotonic()
            idle = dumped_events(outdir, proc.pid)
            idle_s = started - idle_from
            idle_per_s = idle["Ir"] / idle_s
            answered = asyncio.run(drive(url, self.requests, self.connections, self.body,
                                         self.idempotency))
            control(proc.pid, "-d")
            elapsed = time.monotonic() - started
            control(proc.pid, "-i", "off")
            run = dumped_events(outdir, proc.pid)
            total = run["Ir"]
            idle_misses = misses_of(idle)
            misses = {level: (n - idle_misses[level] / idle_s * elapsed) / answered
                      for level, n in misses_of(run).items()}
            count = Count(net=(total - idle_per_s * elapsed) / answered, raw=total / answered,
                          idle_per_s=idle_per_s, misses=misses)
            shown = "".join(f", {n:,.0f} {level} misses" for level, n in misses.items())
            print(f"  {name}: {count.net:,.0f} instructions per request{shown} "
                  f"({count.raw:,.0f} less {idle_per_s:,.0f} per second idle over "
                  f"{elapsed:.0f} s; {answered} requests under valgrind)", flush=True)
            return count
        finally:
            self.procs.stop(proc, grace_s=30)


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def count_systems(workdir: Path, systems: Sequence[str], *, requests: int = 1000,
                  warmup: int = 300, connections: int = 1,
                  cache_sim: bool = False, fill: bool = True) -> dict[str, Count]:
    """Instructions per request of each system (this tree's code), for bench.run."""
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Procs(workdir, cores=None)
    try:
        h = Harness(procs, requests=requests, warmup=warmup, connections=connections,
                    cache_sim=cache_sim, fill=fill)
        h.start_upstreams(redis="gateway-redis" in systems)
        return {s: h.count(s, s) for s in systems}
    finally:
        procs.stop_all()


def source_at(ref: str, into: Path) -> Path:
    """``gateway/`` and ``providers/`` as of ``ref``, unpacked under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "gateway", "providers"],
                             check=True, capture_output=True, timeout=60).stdout
    into.mkdir(parents=True)
    tar = into.parent / f"{into.name}.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    if (into / "gateway" / "_native.py").exists():
        build_native(into)
    return into


#: Builds the compiled modules of the gateway under a directory (gateway/_native.py).
_BUILD = "import sys; from gateway import _native; _native.main(['build'])"


def build_native(source: Path) -> None:
    """Compile ``source``'s gateway as ``make native`` does, so that a commit is counted
    as it runs (``GATEWAY_NATIVE=0`` in the environment counts plain Python)."""
    subprocess.run([sys.executable, "-c", _BUILD], cwd=source, check=True, timeout=900,
                   env={**os.environ, "PYTHONPATH": str(source)},
                   stdout=subprocess.DEVNULL)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", choices=SYSTEMS, default="gateway")
    p.add_argument("--ref", help="also count the gateway of this commit, and compare")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1, help="runs per version (shows spread)")
    p.add_argument("--body", choices=sorted(BODIES), default="id",
                   help="the assign posted (make bench posts id)")
    p.add_argument("--idempotency", action="store_true",
                   help="each request with an Idempotency-Key of its own")
    p.add_argument("--cache-sim", action="store_true",
                   help="also count cache misses per request (this host's caches, simulated)")
    p.add_argument("--fill", action=argparse.BooleanOptionalAction, default=True,
                   help=f"first send {FILL_REQUESTS:,} assigns to a system that keeps "
                        "finished operations, so that its store is full (default: on)")
    args = p.parse_args(argv)
    if args.system in ("passthrough", "floor") and (args.body != "id" or args.idempotency):
        p.error(f"the {args.system} serves the id body only")
    if args.ref and args.system in ("passthrough", "floor"):
        p.error(f"--ref compares gateway code; the {args.system} has no other version")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not available():
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp:
        procs = Procs(Path(tmp), cores=None)
        try:
            h = Harness(procs, requests=args.requests, warmup=args.warmup,
                        connections=args.connections, body=BODIES[args.body],
                        idempotency=args.idempotency, cache_sim=args.cache_sim,
                        fill=args.fill)
            h.start_upstreams(redis=args.system == "gateway-redis")
            versions = {"this tree": ROOT}
            if args.ref:
                versions = {args.ref: source_at(args.ref, Path(tmp) / "ref"), **versions}
            counts: dict[str, list[float]] = {v: [] for v in versions}
            raws: dict[str, list[float]] = {v: [] for v in versions}
            misses: dict[str, list[dict[str, float]]] = {v: [] for v in versions}
            for r in range(args.repeat):
                for v, source in versions.items():
                    c = h.count(args.system, f"{args.system} ({v}) r{r + 1}", source)
                    counts[v].append(c.net)
                    raws[v].append(c.raw)
                    misses[v].append(c.misses)
            what = f"body {args.body}" + (", Idempotency-Key" if args.idempotency else "")
            print(f"\n{args.system}, {args.connections} connection(s), {args.requests} "
                  f"requests per run, {what}; instructions per request:")
            for v, cs in counts.items():
                spread = f" (runs: {', '.join(f'{c:,.0f}' for c in cs)})" if len(cs) > 1 else ""
                print(f"  {v}: {min(cs):,.0f}{spread} (before the idle background is taken "
                      f"off: {min(raws[v]):,.0f})")
                for run, m in enumerate(misses[v]):
                    if m:
                        print(f"    run {run + 1}, misses per request: "
                              + ", ".join(f"{level} {n:,.0f}" for level, n in m.items()))
            if args.ref:
                a, b = min(counts[args.ref]), min(counts["this tree"])
                print(f"  change: {100 * (b - a) / a:+.1f}%")
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
