"""One wrk run against one system, with the system's CPU time over the run."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import CLK_TCK, Procs, cpu_seconds

SCRIPT = Path(__file__).with_name("assign.lua")
CLIENT_KEY = "bench-key"


@dataclass
class Target:
    """A system as wrk sees it: where to post, and whose CPU to count."""

    name: str
    url: str
    tenant: str = "bench"
    pid: int | None = None  # the system under test; None for the direct call
    extra_pids: dict[str, int] = field(default_factory=dict)  # e.g. redis: counted apart
    redis_port: int | None = None  # count the Redis commands each request costs


@dataclass
class Run:
    system: str
    phase: str
    round: int
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int]
    cpu_s: float | None  # the system under test's utime + stime over the run
    cpu_us_per_req: float | None
    core_util: float | None  # cpu_s / wall time: 1.0 means the pinned core was saturated
    # Busy time of the system-under-test's core not spent by it (other processes on
    # the machine, interrupts): the run's noise, as a fraction of wall time.
    core_other_util: float | None
    extra_cpu_us_per_req: dict[str, float]
    think_ms: float = 0.0
    # Of core_other_util, the hypervisor's steal (another guest ran on the host's CPU).
    core_steal_util: float | None = None
    redis_cmds_per_req: dict[str, float] = field(default_factory=dict)
    # TCP handshakes the kernel dropped because a listen queue was full (machine-wide
    # counter, so other work on the machine may add to it): a server that accepts too
    # slowly or with too small a backlog; each drop costs the client 1 s or more.
    listen_drops: int = 0
    rss_mb: float | None = None  # the system under test's resident memory after the run

    @property
    def failed(self) -> int:
        """Socket errors and answers other than 200 ("status", wrk's >= 400, is in non200)."""
        return sum(v for k, v in self.errors.items() if k != "status")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def redis_calls(port: int) -> dict[str, int]:
    """Commands Redis has run since start, by name (INFO commandstats)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def listen_drops() -> int:
    """TcpExt ListenDrops since boot (/proc/net/netstat)."""
    lines = [ln.split() for ln in Path("/proc/net/netstat").read_text().splitlines()
             if ln.startswith("TcpExt:")]
    if len(lines) < 2:
        return 0
    values = dict(zip(lines[0][1:], lines[1][1:], strict=False))
    return int(values.get("ListenDrops", 0))


def core_times_s(core: str, stat: str | None = None) -> tuple[float, float]:
    """Seconds of one CPU since boot, from ``/proc/stat`` (or ``stat``): busy (user nice
    system irq softirq steal) and, of those, steal (the hypervisor ran another guest
    while this one had work: on a shared VM, the part of the noise no process here made)."""
    text = Path("/proc/stat").read_text() if stat is None else stat
    for line in text.splitlines():
        if line.startswith(f"cpu{core} "):
            v = [int(x) for x in line.split()[1:]]
            steal = v[7] if len(v) > 7 else 0
            return (v[0] + v[1] + v[2] + v[5] + v[6] + steal) / CLK_TCK, steal / CLK_TCK
    raise ValueError(f"no cpu{core} in /proc/stat")


def wrk(target: Target, *, connections: int, duration_s: float, phase: str, round_: int,
        procs: Procs, sut_core: str | None, think_ms: float = 0.0,
        timeout_s: float = 10.0) -> Run:
    """One wrk run, started (pinned, reniced) by ``procs`` beside the load generators."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s",
           f"--timeout={timeout_s:g}s", "-s", str(SCRIPT), target.url]
    env = {"BENCH_TENANT": target.tenant, "BENCH_KEY": CLIENT_KEY,
           "BENCH_THINK_MS": f"{think_ms:g}"}
    pids = {"sut": target.pid} if target.pid is not None else {}
    pids.update(target.extra_pids)
    calls0 = redis_calls(target.redis_port) if target.redis_port else {}
    times0 = core_times_s(sut_core) if sut_core is not None else None
    drops0 = listen_drops()
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.monotonic()
    proc = procs.popen(cmd, sut=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        raw_out, raw_err = proc.communicate(timeout=duration_s + timeout_s + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"wrk did not finish ({target.name})") from None
    wall = time.monotonic() - t0
    stdout, stderr = raw_out.decode(errors="replace"), raw_err.decode(errors="replace")
    after = {k: cpu_seconds(p) for k, p in pids.items()}
    times1 = core_times_s(sut_core) if sut_core is not None else None
    busy = steal = None
    if times0 is not None and times1 is not None:
        busy, steal = times1[0] - times0[0], times1[1] - times0[1]
    calls1 = redis_calls(target.redis_port) if target.redis_port else {}
    drops = listen_drops() - drops0
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stdout[-500:]} {stderr[-500:]}")
    data = json.loads(line.removeprefix("BENCHJSON "))
    requests = int(data["requests"])
    lat = data["latency_us"]
    measured = data["duration_us"] / 1e6
    cpu = {k: after[k] - before[k] for k in pids}
    per_req = {k: (v / requests * 1e6 if requests else float("nan")) for k, v in cpu.items()}
    sut_cpu = cpu.get("sut")
    return Run(
        system=target.name, phase=phase, round=round_, connections=connections,
        duration_s=measured, requests=requests, rps=requests / measured,
        p50_ms=lat["p50"] / 1000, p90_ms=lat["p90"] / 1000, p99_ms=lat["p99"] / 1000,
        p999_ms=lat["p999"] / 1000, mean_ms=lat["mean"] / 1000, max_ms=lat["max"] / 1000,
        errors={k: int(v) for k, v in data["errors"].items()},
        cpu_s=sut_cpu, cpu_us_per_req=per_req.get("sut"),
        core_util=None if sut_cpu is None else sut_cpu / wall,
        core_other_util=None if busy is None else max(0.0, busy - (sut_cpu or 0.0)) / wall,
        core_steal_util=None if steal is None else steal / wall,
        extra_cpu_us_per_req={k: v for k, v in per_req.items() if k != "sut"},
        think_ms=think_ms,
        listen_drops=drops,
        rss_mb=None if target.pid is None else round(rss_mb(target.pid), 1),
        redis_cmds_per_req={
            k: (v - calls0.get(k, 0) - (1 if k == "info" else 0)) / requests
            for k, v in sorted(calls1.items())
            if requests and v - calls0.get(k, 0) - (1 if k == "info" else 0) > 0},
    )
