"""From wrk runs to the bars of the issue, ``results.json`` and ``RESULTS.md``.

Every figure is a median over the rounds. A ratio (gateway / passthrough) is the
median of the per-round ratios: the systems of one round ran minutes apart at
most, so a round's pair shares the machine's load of that moment.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Iterable
from typing import Any

from bench.load import Run

#: The phase in which the gateway runs with metrics on and off in alternating pairs.
METRICS_AB = "metrics-ab"
SYSTEMS = ("direct", "passthrough", "floor", "gateway", "gateway-redis", "gateway-metrics-off")
DESCRIBE = {
    "direct": "wrk straight at the fake upstream: no proxy at all",
    "passthrough": "bare aiohttp passthrough, one shared session, no parsing (the limit)",
    "floor": "the least work the v1 contract asks per assign, inline on the passthrough's "
             "stack with the gateway's own pieces (bench/floor.py): a yardstick, not a "
             "gateway",
    "gateway": "the gateway, in-process state (redis_url: null)",
    "gateway-redis": "the gateway, Redis state (limiter, operations, locks in Redis)",
    "gateway-metrics-off": "the gateway, in-process, with GATEWAY_METRICS=off",
}


def _median(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def progress_line(r: Run) -> str:
    cpu = "" if r.cpu_us_per_req is None else f" cpu {r.cpu_us_per_req:.0f} us/req"
    util = "" if r.core_util is None else f" core {r.core_util:.0%}"
    other = "" if r.core_other_util is None else f" other {r.core_other_util:.0%}"
    if r.core_other_util is not None and r.core_steal_util:
        other += f" (steal {r.core_steal_util:.0%})"
    think = f" think {r.think_ms:.0f} ms" if r.think_ms else ""
    return (f"{r.phase} r{r.round} c{r.connections}{think} {r.system}: {r.rps:.0f} req/s "
            f"p50 {r.p50_ms:.2f} ms p99 {r.p99_ms:.2f} ms{cpu}{util}{other}"
            f"{' ERRORS ' + str(r.errors) if r.failed else ''}")


# -- aggregation -------------------------------------------------------------------------


def summarize(runs: list[Run]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """phase -> system -> connections -> medians (and the rps spread)."""
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.phase, r.system, r.connections), []).append(r)
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for (phase, system, c), rs in sorted(groups.items()):
        out.setdefault(phase, {}).setdefault(system, {})[str(c)] = {
            "rounds": len(rs),
            "rps": _median(r.rps for r in rs),
            "rps_min": min(r.rps for r in rs), "rps_max": max(r.rps for r in rs),
            "p50_ms": _median(r.p50_ms for r in rs), "p90_ms": _median(r.p90_ms for r in rs),
            "p99_ms": _median(r.p99_ms for r in rs), "p999_ms": _median(r.p999_ms for r in rs),
            "cpu_us_per_req": _median(r.cpu_us_per_req for r in rs),
            # What one dedicated core would sustain: requests per second of the SUT's CPU.
            "rps_per_cpu": _median(1e6 / r.cpu_us_per_req for r in rs if r.cpu_us_per_req),
            "core_util": _median(r.core_util for r in rs),
            "core_other_util": _median(r.core_other_util for r in rs),
            "redis_cpu_us_per_req": _median(r.extra_cpu_us_per_req.get("redis") for r in rs),
            "redis_cmds_per_req": {
                k: _median(r.redis_cmds_per_req.get(k, 0.0) for r in rs)
                for k in sorted({k for r in rs for k in r.redis_cmds_per_req})},
            "errors": sum(r.failed for r in rs), "requests": sum(r.requests for r in rs),
            "listen_drops": sum(r.listen_drops for r in rs),
            "think_ms": rs[0].think_ms,
        }
    return out


def per_round(runs: list[Run], phase: str, c: int, a: str, b: str,
              f: Callable[[Run, Run], float | None]) -> float | None:
    """The median over rounds of f(run of a, run of b), pairing runs of one round."""
    by = {(r.system, r.round): r for r in runs if r.phase == phase and r.connections == c}
    rounds = sorted({r.round for r in runs if r.phase == phase})
    return _median(f(by[(a, n)], by[(b, n)]) for n in rounds if (a, n) in by and (b, n) in by)


def metrics_ab(runs: list[Run], c: int) -> dict[str, Any] | None:
    """The metrics cost from the A/B pairs: per pair 1 - on/off throughput, then the
    median and quartiles over the pairs (None without pairs)."""
    by = {(r.system, r.round): r for r in runs if r.phase == METRICS_AB and r.connections == c}
    costs = sorted(1 - by[("gateway", n)].rps / by[("gateway-metrics-off", n)].rps
                   for n in sorted({n for _, n in by})
                   if ("gateway", n) in by and ("gateway-metrics-off", n) in by)
    if not costs:
        return None
    q = statistics.quantiles(costs, n=4, method="inclusive") if len(costs) > 1 else costs * 3
    return {"pairs": len(costs), "median": statistics.median(costs), "q1": q[0], "q3": q[2],
            "costs": costs}


def _ratio_rps(x: Run, y: Run) -> float:
    return x.rps / y.rps


def _ratio_cpu(x: Run, y: Run) -> float | None:
    if x.cpu_us_per_req is None or y.cpu_us_per_req is None:
        return None
    return x.cpu_us_per_req / y.cpu_us_per_req


def _added(field: str) -> Callable[[Run, Run], float]:
    return lambda x, y: float(getattr(x, field)) - float(getattr(y, field))


def _bar(name: str, value: float | None, target: str, ok: Callable[[float], bool],
         unit: str, why_missing: str = "", aim: str = "", fmt: str = "{:.2f}",
         detail: str = "") -> dict[str, Any]:
    if value is None:
        return {"bar": name, "value": None, "target": target, "result": "not measured",
                "note": why_missing, "unit": unit}
    return {"bar": name, "value": value, "shown": fmt.format(value) + unit, "target": target,
            "aim": aim, "result": "pass" if ok(value) else "falls short", "unit": unit,
            "detail": detail}


def _details(runs: list[Run], args: argparse.Namespace) -> dict[str, str]:
    """The figures behind each bar, in words, for RESULTS.md."""
    sm = summarize(runs)
    top, slow_c = str(max(args.connections)), str(args.slow_connections)

    def v(phase: str, system: str, c: str, key: str, fmt: str = "{:.0f}") -> str:
        return _f(sm.get(phase, {}).get(system, {}).get(c, {}).get(key), fmt)

    def add(phase: str, system: str, c: int, key: str) -> str:
        return _f(per_round(runs, phase, c, system, "direct", _added(key)), "{:+.2f}")

    def floor(f: Callable[[Run, Run], float | None], what: str, key: str,
              unit: str = "") -> str:
        ratio = per_round(runs, "main", int(top), "floor", "passthrough", f)
        if ratio is None:
            return ""
        return (f"; {what.format(v('main', 'floor', top, key))}, {ratio:.2f}{unit} the "
                "passthrough's (the least the contract asks, bench/floor.py)")

    offered = args.slow_connections / args.slow_delay_ms * 1000
    return {
        "tput": f"gateway {v('main', 'gateway', top, 'rps')} req/s, passthrough "
                f"{v('main', 'passthrough', top, 'rps')} req/s" + floor(
                    _ratio_rps, "the floor {} req/s", "rps"),
        "cpu": f"gateway {v('main', 'gateway', top, 'cpu_us_per_req')} us of CPU per "
               f"request, passthrough {v('main', 'passthrough', top, 'cpu_us_per_req')} us"
               + floor(_ratio_cpu, "the floor {} us", "cpu_us_per_req", "x"),
        "redis": f"gateway-redis {v('main', 'gateway-redis', top, 'rps')} req/s, "
                 f"{v('main', 'gateway-redis', top, 'cpu_us_per_req')} us of CPU per request "
                 f"(+ {v('main', 'gateway-redis', top, 'redis_cpu_us_per_req')} us in Redis)",
        "p50": f"gateway p50 {v('main', 'gateway', '1', 'p50_ms', '{:.3f}')} ms, direct "
               f"{v('main', 'direct', '1', 'p50_ms', '{:.3f}')} ms; the passthrough alone "
               f"adds {add('main', 'passthrough', 1, 'p50_ms')} ms",
        "p99": f"gateway p99 {v('main', 'gateway', '1', 'p99_ms', '{:.3f}')} ms, direct "
               f"{v('main', 'direct', '1', 'p99_ms', '{:.3f}')} ms; the passthrough alone "
               f"adds {add('main', 'passthrough', 1, 'p99_ms')} ms",
        "metrics": f"metrics on {v('main', 'gateway', top, 'rps')} req/s, off "
                   f"{v('main', 'gateway-metrics-off', top, 'rps')} req/s",
        "slow": f"gateway p99 {v('slow', 'gateway', slow_c, 'p99_ms')} ms, direct "
                f"{v('slow', 'direct', slow_c, 'p99_ms')} ms. The passthrough adds "
                f"{add('slow', 'passthrough', args.slow_connections, 'p99_ms')} ms as well: "
                f"{slow_c} connections offer {offered:.0f} req/s, more than one core proxies "
                f"in Python (passthrough {v('slow', 'passthrough', slow_c, 'rps')} req/s, "
                f"gateway {v('slow', 'gateway', slow_c, 'rps')} req/s), so each system queues "
                "for its CPU. At a paced load no system is CPU-bound; there the gateway adds "
                f"{add('slow-paced', 'gateway', args.slow_connections, 'p99_ms')} ms at p99 and "
                f"the passthrough "
                f"{add('slow-paced', 'passthrough', args.slow_connections, 'p99_ms')} ms. "
                f"Handshakes dropped at a full listen queue during the gateway's runs: "
                f"{v('slow', 'gateway', slow_c, 'listen_drops')} (passthrough's: "
                f"{v('slow', 'passthrough', slow_c, 'listen_drops')})",
    }


def bars(runs: list[Run], meta: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    top, slow_c = max(args.connections), args.slow_connections
    missing: dict[str, str] = meta.get("not_measured", {})
    off = missing.get("gateway-metrics-off", "no gateway-metrics-off runs")
    metrics_cost = per_round(runs, "main", top, "gateway", "gateway-metrics-off",
                             lambda on, off_: 1 - on.rps / off_.rps)
    d = _details(runs, args)
    metrics_name = f"metrics cost (1 - on/off throughput, {top} conns)"
    ab = metrics_ab(runs, top)
    if ab is not None:
        # The pairs resolve what the rounds cannot (see bench.run.measure); the rounds'
        # figure stays in the detail.
        rounds = "n/a" if metrics_cost is None else f"{metrics_cost:.1%}"
        metrics_name = (f"metrics cost (1 - on/off throughput, {top} conns, median of "
                        f"{ab['pairs']} side-by-side pairs)")
        d["metrics"] = (f"quartiles {ab['q1']:.1%} to {ab['q3']:.1%} over the pairs; "
                        f"from the rounds alone {rounds} ({d['metrics']})")
        metrics_cost = ab["median"]
    return [
        _bar(f"in-process throughput / passthrough ({top} conns)",
             per_round(runs, "main", top, "gateway", "passthrough", _ratio_rps),
             ">= 0.80", lambda v: v >= 0.80, "", aim="0.90", detail=d["tput"]),
        _bar(f"in-process CPU per request / passthrough ({top} conns)",
             per_round(runs, "main", top, "gateway", "passthrough", _ratio_cpu),
             "<= 1.25", lambda v: v <= 1.25, "x", detail=d["cpu"]),
        _bar(f"Redis-mode throughput / passthrough ({top} conns)",
             per_round(runs, "main", top, "gateway-redis", "passthrough", _ratio_rps),
             ">= 0.65", lambda v: v >= 0.65, "",
             why_missing=missing.get("gateway-redis", ""), detail=d["redis"]),
        _instructions_bar(meta.get("instructions", {})),
        _instructions_bar(meta.get("instructions", {}).get("loaded", {
            "connections": top, "skipped": (meta.get("instructions", {}).get("skipped")
                                            or "--instructions-loaded 0")})),
        _bar("added p50 latency over direct, 1 conn",
             per_round(runs, "main", 1, "gateway", "direct", _added("p50_ms")),
             "<= 0.6 ms", lambda v: v <= 0.6, " ms", fmt="{:.3f}", detail=d["p50"]),
        _bar("added p99 latency over direct, 1 conn",
             per_round(runs, "main", 1, "gateway", "direct", _added("p99_ms")),
             "<= 1.5 ms", lambda v: v <= 1.5, " ms", fmt="{:.3f}", detail=d["p99"]),
        _bar(metrics_name, metrics_cost,
             "<= 5%", lambda v: v <= 0.05, "", why_missing=off, fmt="{:.1%}",
             detail=d["metrics"]),
        _instructions_metrics_bar(meta.get("instructions", {})),
        _bar(f"{args.slow_delay_ms:g} ms upstream, {slow_c} conns: gateway p99 - direct p99",
             per_round(runs, "slow", slow_c, "gateway", "direct", _added("p99_ms")),
             "<= 2 ms", lambda v: v <= 2.0, " ms", detail=d["slow"]),
    ]


def _instructions_bar(ins: dict[str, Any]) -> dict[str, Any]:
    """The CPU bar read a second way: instructions per request under callgrind, which
    other tenants of the host cannot move (CPU time per request swings by 2x here)."""
    conns = ins.get("connections", 1)
    name = (f"in-process instructions per request / passthrough (callgrind, {conns} "
            f"conn{'s' if conns != 1 else ''})")
    per = ins.get("per_request", {})
    gw, pt = per.get("gateway"), per.get("passthrough")
    ratio = gw / pt if gw and pt else None
    detail = ""
    if ratio is not None:
        detail = f"gateway {gw:,.0f} instructions per request, passthrough {pt:,.0f}"
        if per.get("gateway-redis"):
            detail += f", gateway-redis {per['gateway-redis']:,.0f} (Redis's own not counted)"
        if per.get("floor"):
            detail += (f"; the floor, only what the contract asks done inline "
                       f"(bench/floor.py), {per['floor']:,.0f} ({per['floor'] / pt:.2f}x)")
    return _bar(name, ratio, "<= 1.25", lambda v: v <= 1.25, "x",
                why_missing=ins.get("skipped", "no counts"), detail=detail)


def _instructions_metrics_bar(ins: dict[str, Any]) -> dict[str, Any]:
    """The metrics bar read the same repeatable way: throughput goes as one over the
    instructions per request, so the cost is 1 - off / on."""
    per = ins.get("per_request", {})
    on, off = per.get("gateway"), per.get("gateway-metrics-off")
    cost = 1 - off / on if on and off else None
    detail = "" if cost is None else (f"metrics on {on:,.0f} instructions per request, "
                                      f"off {off:,.0f}")
    return _bar("metrics cost (1 - off/on instructions per request, callgrind, 1 conn)",
                cost, "<= 5%", lambda v: v <= 0.05, "", fmt="{:.1%}",
                why_missing=ins.get("skipped", "no metrics-off count"), detail=detail)


def build(meta: dict[str, Any], runs: list[Run], args: argparse.Namespace) -> dict[str, Any]:
    top, slow_c = max(args.connections), args.slow_connections
    ratios: dict[str, dict[str, float | None]] = {}
    for c in args.connections:
        ratios[str(c)] = {
            "gateway_rps": per_round(runs, "main", c, "gateway", "passthrough", _ratio_rps),
            "gateway_redis_rps": per_round(runs, "main", c, "gateway-redis", "passthrough",
                                           _ratio_rps),
            "gateway_metrics_off_rps": per_round(runs, "main", c, "gateway-metrics-off",
                                                 "passthrough", _ratio_rps),
            "floor_rps": per_round(runs, "main", c, "floor", "passthrough", _ratio_rps),
            "floor_cpu": per_round(runs, "main", c, "floor", "passthrough", _ratio_cpu),
            "gateway_cpu": per_round(runs, "main", c, "gateway", "passthrough", _ratio_cpu),
            "gateway_redis_cpu": per_round(runs, "main", c, "gateway-redis", "passthrough",
                                           _ratio_cpu),
        }
    added: dict[str, dict[str, float | None]] = {}
    for phase, c in (("main", 1), ("slow", slow_c), ("slow-paced", slow_c)):
        row = added.setdefault(f"{phase}/{c}", {})
        for s in SYSTEMS[1:]:
            row[s + "_p50_ms"] = per_round(runs, phase, c, s, "direct", _added("p50_ms"))
            row[s + "_p99_ms"] = per_round(runs, phase, c, s, "direct", _added("p99_ms"))
    return {
        "meta": meta, "bars": bars(runs, meta, args), "summary": summarize(runs),
        "ratios_vs_passthrough": ratios, "added_latency_vs_direct": added,
        "metrics_ab": metrics_ab(runs, top),
        "top_connections": top, "runs": [r.to_json() for r in runs],
    }


# -- output ------------------------------------------------------------------------------


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def bars_text(results: dict[str, Any]) -> str:
    lines = ["", "Bars (one run; medians over rounds):"]
    for b in results["bars"]:
        shown = b.get("shown", "n/a")
        lines.append(f"  {b['result'].upper():13} {b['bar']}: {shown} (target {b['target']})")
    return "\n".join(lines)


def _system_table(summary: dict[str, Any], phase: str, show_cpu: bool = True) -> list[str]:
    rows = ["| system | conns | req/s (median) | req/s min-max | p50 ms | p99 ms | "
            "CPU us/req | req per CPU-s | SUT core busy | other load on SUT core | errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in SYSTEMS:
        for c, v in sorted(summary.get(phase, {}).get(s, {}).items(), key=lambda kv: int(kv[0])):
            cpu = _f(v["cpu_us_per_req"], "{:.0f}") if show_cpu else "-"
            if v.get("redis_cpu_us_per_req") is not None:
                cpu += f" (+redis {v['redis_cpu_us_per_req']:.0f})"
            sut = v["core_util"] is not None  # direct: no system under test
            rows.append(
                f"| {s} | {c} | {v['rps']:.0f} | {v['rps_min']:.0f}-{v['rps_max']:.0f} | "
                f"{v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {cpu if sut else '-'} | "
                f"{_f(v['rps_per_cpu'], '{:.0f}') if show_cpu and sut else '-'} | "
                f"{_f(v['core_util'], '{:.0%}') if sut else '-'} | "
                f"{_f(v['core_other_util'], '{:.0%}') if sut else '-'} | {v['errors']} |")
    return rows


def _drift(runs: list[dict[str, Any]], top: int) -> list[str]:
    """Round by round at the top connection count: does a system get dearer as it serves?"""
    out = [f"Round by round at {top} connections (CPU us/req; resident memory after the run):",
           ""]
    for name in SYSTEMS[1:]:
        rs = sorted((r for r in runs if r["phase"] == "main" and r["system"] == name
                     and r["connections"] == top), key=lambda r: r["round"])
        if rs:
            steps = ", ".join(f"r{r['round']} {_f(r['cpu_us_per_req'], '{:.0f}')} us "
                              f"{_f(r.get('rss_mb'), '{:.0f}')} MB" for r in rs)
            out.append(f"- {name}: {steps}")
    out.append("")
    return out


def _slow_notes(slow: dict[str, Any], conns: int, delay_ms: float) -> list[str]:
    """Whether each system was held by its CPU or by a connection cap (Little's law)."""
    out = []
    for name in SYSTEMS[1:]:
        v = slow.get(name, {}).get(str(conns))
        if not v:
            continue
        inflight = v["rps"] * delay_ms / 1000
        util = v["core_util"] or 0.0
        why = ("CPU-bound (its core saturated): the latency is queueing for that core, "
               "not a pool cap" if util >= 0.85 else
               "not CPU-bound: something else (a connection cap?) holds it")
        drops = v.get("listen_drops", 0)
        dropped = (f" The kernel dropped {drops} handshakes at a full listen queue during "
                   f"its {v['rounds']} runs: connections it accepted too late, each costing "
                   "its client a SYN retransmit (1 s, then 3 s, ...), which is the far tail."
                   if drops else " No handshake was dropped at its listen queue.")
        out.append(f"- {name}: {v['rps']:.0f} req/s x {delay_ms:g} ms = about "
                   f"{inflight:.0f} requests at the upstream at a time of {conns} possible; "
                   f"core {util:.0%} busy: {why}.{dropped}")
    return out


def _instructions_section(ins: dict[str, Any]) -> list[str]:
    out = ["### Instructions per request (callgrind)", ""]
    per = ins.get("per_request")
    if not per:
        return [*out, f"Not counted: {ins.get('skipped', 'no counts')}."]
    out += [f"Each system alone under `valgrind --tool=callgrind`, {ins['requests']} assigns "
            f"over {ins['connections']} connection after a warm-up, counted from the first "
            "to the last (`bench/instructions.py`). The same code gives the same count to "
            "about 0.3% whatever else the host does, so this is the CPU comparison to trust "
            "when the CPU-time columns above swing between rounds; an instruction is not a "
            "nanosecond (memory stalls are not counted), so the two readings differ.", "",
            "Each count is net of the system's idle background: what it does by the clock "
            "rather than per request (the gateway's worker polls every 0.1 s; in Redis "
            "mode it also pings Redis), counted for a while before the requests and taken "
            "off at that rate. Under callgrind a request takes about 50 times as long as "
            "natively, so that work would otherwise be counted about 50 times over. The "
            "count before that is shown beside it.", "",
            *_fill_lines(ins.get("fill")),
            "*floor* (`bench/floor.py`) is not a gateway but a yardstick: one handler that "
            "does, inline on the passthrough's stack, only what every assign must do by the "
            "contract (request id, key hash, client and provider buckets with `RateLimit-*` "
            "headers, the pydantic body model, the Aelyst request, one bounded exchange, "
            "the JSON result, four metrics, one access line, the operation kept), and none of "
            "idempotency, per-contact ordering, retries, queued work or reload. Any design "
            "on this stack costs at least that.", "",
            "| system | instructions per request | / passthrough | before the idle background "
            "is taken off | idle, per second |", "| --- | ---: | ---: | ---: | ---: |"]
    base = per.get("passthrough")
    raw, idle = ins.get("raw_per_request", {}), ins.get("idle_per_s", {})
    for name, n in per.items():
        before = f"{raw[name]:,.0f}" if name in raw else "-"
        rate = f"{idle[name]:,.0f}" if name in idle else "-"
        out.append(f"| {name} | {n:,.0f} | {_f(n / base if base else None)} | {before} "
                   f"| {rate} |")
    loaded = ins.get("loaded")
    if loaded:
        c = loaded["connections"]
        out += ["", f"The same at {c} connections ({loaded['requests']} assigns after 1,000 "
                "of warm-up), where the CPU bar is read: the driver keeps every connection "
                "busy, and under callgrind the system is always behind, so the event loop "
                "serves the ready requests together and whatever grows with the requests "
                "in flight is counted.", "",
                "| system | instructions per request | / passthrough | at 1 connection |",
                "| --- | ---: | ---: | ---: |"]
        lbase = loaded["per_request"].get("passthrough")
        for name, n in loaded["per_request"].items():
            one = per.get(name)
            out.append(f"| {name} | {n:,.0f} | {_f(n / lbase if lbase else None)} | "
                       f"{'-' if one is None else f'{one:,.0f}'} |")
        out += _misses_section(loaded)
    return out


def _steal_part(runs: list[dict[str, Any]]) -> str:
    """How much of the measured core's other load was the hypervisor's steal, over
    ``runs`` (those whose other load the noise note reads)."""
    steals: list[float] = [r["core_steal_util"] for r in runs
                           if r.get("core_steal_util") is not None]
    if not steals:
        return ""
    return (f" (of which the hypervisor's steal: a median {_median(steals):.0%}, up to "
            f"{max(steals):.0%})")


def _fill_lines(fill: int | None) -> list[str]:
    """What the counts' fill did (bench.instructions), when they had one."""
    if not fill:
        return []
    return [f"The systems that keep finished operations in process (the floor and the "
            f"in-process gateway, up to {fill:,} each) were first sent {fill:,} assigns, "
            "so each count sees a full store, as a serving gateway has within seconds: "
            "every request evicts the oldest record, and no kept record is left for the "
            "collector's young generation to walk.", ""]


def _misses_section(loaded: dict[str, Any]) -> list[str]:
    """The cache misses per request of the count at the top connection count."""
    misses: dict[str, dict[str, float]] = loaded.get("misses") or {}
    if not any(misses.values()):
        return []
    levels = list(next(m for m in misses.values() if m))
    base = misses.get("passthrough", {})
    out = ["", f"Cache misses per request in the same runs, with callgrind simulating this "
           f"host's caches per core (`{loaded.get('caches', '')}`): an instruction count "
           "predicts CPU time where a system has the caches to itself; where other "
           "tenants crowd them, a miss costs many instructions' time, and the CPU ratio "
           "moves toward the misses' ratio (README, \"Why a slow host moves the CPU "
           "ratio\").", "",
           "| system | " + " | ".join(f"{lv} misses | / passthrough" for lv in levels) + " |",
           "| --- | " + " | ".join("---: | ---:" for _ in levels) + " |"]
    for name, m in misses.items():
        if not m:
            continue
        cells = [f"{m[lv]:,.0f} | {_f(m[lv] / base[lv] if base.get(lv) else None)}"
                 for lv in levels]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


#: Iterations of the host-speed loop (bench.run.host_loop_s).
HOST_LOOP = 10_000_000
#: The host-speed loop's time (best of 3) on this machine's fast days, when the
#: passthrough spends about 106 us of CPU per request at 64 connections: the same loop
#: at module level (global variables, slower) took 0.32 s on those days, and the
#: function's loop takes 0.57 to 0.63 of the module's on this machine. On its slow
#: days it read 0.8 to 1.6 times that while the passthrough ran four to six times
#: slower (the slowdown is in the caches, README, "Why a slow host moves the CPU
#: ratio"), so the passthrough's CPU decides when it was measured.
FAST_HOST_LOOP_S = 0.19


#: The passthrough's CPU per request at 64 connections on a fast day (the 06:05 run of
#: 2026-11-29): the most direct reading of the measured core's speed.
FAST_PASSTHROUGH_CPU_US = 106.0


def host_speed_lines(loop_s: dict[str, float] | None,
                     passthrough_cpu_us: float | None = None) -> list[str]:
    """How fast the host was: CPU times and their ratios move with it, instruction
    counts do not (the machine is shared, and its speed changes from hour to hour).
    The passthrough's own CPU per request says it for the measured core; the loop,
    timed on the harness's core, misses a slowdown that is in the caches and memory
    rather than the clock (it read 1.2x while the passthrough ran 5x slower)."""
    if not loop_s and passthrough_cpu_us is None:
        return []
    parts = []
    slow = 1.0
    if passthrough_cpu_us is not None:
        slow = passthrough_cpu_us / FAST_PASSTHROUGH_CPU_US
        parts.append(f"the passthrough spent {passthrough_cpu_us:.0f} us of CPU per request at "
                     f"its top connection count ({FAST_PASSTHROUGH_CPU_US:.0f} us on a fast day)")
    if loop_s:
        start, end = loop_s["start"], loop_s["end"]
        if passthrough_cpu_us is None:
            slow = max(start, end) / FAST_HOST_LOOP_S
        parts.append(f"{HOST_LOOP:,} iterations of an empty Python loop took {start:.2f} s "
                     f"before the runs and {end:.2f} s after them (best of 3; "
                     f"{FAST_HOST_LOOP_S:.2f} s on a fast day)")
    verdict = ("a fast host" if slow < 1.3 else
               f"a host about {slow:.1f} times slower than a fast one: CPU times and the "
               "ratios between them move with the host (a Python handler's more than the "
               "passthrough's mostly-C work); the instruction counts do not")
    return [f"Host speed: {'; '.join(parts)}: {verdict}.", ""]


def markdown(results: dict[str, Any]) -> str:
    meta, summary = results["meta"], results["summary"]
    s = meta["settings"]
    short = [b for b in results["bars"] if b["result"] != "pass"]
    out = [
        "# Benchmark: the gateway next to a bare aiohttp passthrough",
        "",
        f"One run of `make bench`, {meta['date']} (UTC), {meta['elapsed_s']} s.",
        "",
        f"Command: `make bench`, which ran `{meta['command']}`",
        "",
        "Written by `bench/run.py`; every number below comes from this one run "
        "(raw per-round figures in `bench/results.json`).",
        "",
        *host_speed_lines(meta.get("host_loop_s"), summary.get("main", {}).get(
            "passthrough", {}).get(str(max(s["connections"])), {}).get("cpu_us_per_req")),
        "## The bars",
        "",
        "| bar | measured | target | result |",
        "| --- | ---: | --- | --- |",
    ]
    for b in results["bars"]:
        target = b["target"] + (f" (aim {b['aim']})" if b.get("aim") else "")
        result = {"pass": "pass", "falls short": "**falls short**",
                  "not measured": "**not measured**"}[b["result"]]
        out.append(f"| {b['bar']} | {b.get('shown', 'n/a')} | {target} | {result} |")
    out.append("")
    if short:
        out.append("Said plainly:")
        out.append("")
        for b in short:
            if b["result"] == "not measured":
                out.append(f"- **{b['bar']}** was not measured: {b.get('note') or 'no data'}.")
            else:
                out.append(f"- **{b['bar']}** falls short: {b['shown']} against {b['target']} "
                           f"({b.get('detail', '')}).")
        out.append("")
    else:
        out += ["Every bar is met.", ""]
    met = [b for b in results["bars"] if b["result"] == "pass"]
    if met and short:
        out += ["Met:", ""] + [f"- {b['bar']}: {b['shown']} ({b.get('detail', '')})."
                                for b in met] + [""]
    out += ["## Throughput and latency", "",
            f"Closed loop (each connection sends its next request when the last is answered), "
            f"{s['duration']:g} s per run, {s['rounds']} rounds; medians over rounds. "
            "CPU us/req: utime + stime of the system under test (/proc) over the run, divided "
            "by the requests it answered. *SUT core busy*: its CPU time over wall time (100% "
            "is saturated). *req per CPU-s*: requests per second of its CPU, what one "
            "dedicated core would sustain. *Other load*: the rest of that core's busy time "
            "(other processes on the machine, interrupts, and the hypervisor's steal, when "
            "it ran another guest while this one had work): the run's noise.", ""]
    measured = [r for r in results["runs"] if r["phase"] == "main"
                and r["system"] != "direct" and r["core_other_util"] is not None]
    others = [r["core_other_util"] for r in measured]
    noise = _median(others)
    if noise is not None and noise > 0.10:
        out += [f"**Noise:** other work took a median {noise:.0%} (up to {max(others):.0%}) "
                f"of the measured core during these runs{_steal_part(measured)}, so "
                "every req/s figure is lower than on a quiet machine and the ratios are "
                "noisier; CPU per request and req per CPU-s are the steadier figures.", ""]
    out += _system_table(summary, "main")
    out += ["", *_drift(results["runs"], results["top_connections"])]
    ab = results.get("metrics_ab")
    if ab:
        pairs = ", ".join(f"{c:+.1%}" for c in ab["costs"])
        out += ["", f"Metrics A/B ({ab['pairs']} pairs at {results['top_connections']} conns, "
                f"1 - on/off throughput per pair, sorted): {pairs}; median "
                f"{ab['median']:.1%}."]
    redis_top = summary.get("main", {}).get("gateway-redis", {}).get(
        str(results["top_connections"]), {}).get("redis_cmds_per_req")
    if redis_top:
        total = sum(redis_top.values())
        parts = ", ".join(f"{k} {v:.2f}" for k, v in
                          sorted(redis_top.items(), key=lambda kv: -kv[1]))
        out += ["", f"Redis commands per request in Redis mode ({results['top_connections']} "
                f"conns, INFO commandstats, commands run inside scripts included): "
                f"{total:.1f} ({parts})."]
    out += ["", "### Ratios to the passthrough (median of per-round ratios)", "",
            "| conns | gateway req/s | gateway-redis req/s | gateway-metrics-off req/s | "
            "floor req/s | gateway CPU/req | gateway-redis CPU/req | floor CPU/req |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c, r in results["ratios_vs_passthrough"].items():
        out.append(f"| {c} | {_f(r['gateway_rps'])} | {_f(r['gateway_redis_rps'])} | "
                   f"{_f(r['gateway_metrics_off_rps'])} | {_f(r.get('floor_rps'))} | "
                   f"{_f(r['gateway_cpu'])} | {_f(r['gateway_redis_cpu'])} | "
                   f"{_f(r.get('floor_cpu'))} |")
    out += ["", *_instructions_section(meta.get("instructions", {}))]
    out += ["", "### Added latency over a direct call, one connection (ms)", "",
            "| system | p50 | p99 |", "| --- | ---: | ---: |"]
    a1 = results["added_latency_vs_direct"]["main/1"]
    for sname in SYSTEMS[1:]:
        if a1.get(sname + "_p50_ms") is not None:
            out.append(f"| {sname} | {_f(a1[sname + '_p50_ms'], '{:+.3f}')} | "
                       f"{_f(a1[sname + '_p99_ms'], '{:+.3f}')} |")
    slow_c = s["slow_connections"]
    paced = meta.get("paced_rps")
    out += ["", f"## Slow upstream: {s['slow_delay_ms']:g} ms per answer, {slow_c} connections",
            "",
            "Closed loop: every connection always has a request out, so the offered load is "
            f"{slow_c} / {s['slow_delay_ms']:g} ms = {slow_c / s['slow_delay_ms'] * 1000:.0f} "
            "req/s. A pool cap shows as throughput stuck at cap / delay; a CPU-bound system "
            "shows as latency of about connections / throughput.", ""]
    out += _system_table(summary, "slow")
    out += ["", *_slow_notes(summary.get("slow", {}), slow_c, s["slow_delay_ms"])]
    think = summary.get("slow-paced", {}).get("direct", {}).get(str(slow_c), {}).get("think_ms")
    out += ["", f"Paced: the same {slow_c} connections, each waiting a random think time "
            f"(mean {_f(think, '{:.0f}')} ms) "
            f"before each request, for about {_f(paced, '{:.0f}')} req/s offered (a quarter of "
            "the in-process gateway's saturated throughput unless `--paced-rps` is given): "
            "the systems have CPU to spare, so p99 shows what concurrency itself costs "
            "(and, where *other load* is high, the machine's noise).", ""]
    out += _system_table(summary, "slow-paced")
    out += ["", "| run | system | p50 - direct (ms) | p99 - direct (ms) |",
            "| --- | --- | ---: | ---: |"]
    for key in (f"slow/{slow_c}", f"slow-paced/{slow_c}"):
        a = results["added_latency_vs_direct"].get(key, {})
        for sname in SYSTEMS[1:]:
            if a.get(sname + "_p50_ms") is not None:
                out.append(f"| {key.split('/')[0]} | {sname} | "
                           f"{_f(a[sname + '_p50_ms'], '{:+.2f}')} | "
                           f"{_f(a[sname + '_p99_ms'], '{:+.2f}')} |")
    out += ["", "## Setup", ""]
    for sname in SYSTEMS:
        out.append(f"- **{sname}**: {DESCRIBE[sname]}.")
    cores = meta.get("cores")
    out += [
        "",
        f"- Pinning: systems under test on core {cores[0]}; the fake upstreams, redis-server, "
        f"wrk and the harness on core {cores[1]} (`taskset`)." if cores else
        "- Pinning: none (fewer than 2 cores).",
        "- Fake upstream: raw asyncio protocol on uvloop answering every POST with Aelyst's "
        "documented success body `{\"contactId\": <id>}` (keep-alive, Content-Length). "
        "The gateway calls it as an `aelyst` provider: contact by id, assignee by id, no "
        "look-ups.",
        "- Request: `POST /v1/assign` `{\"tenant\":\"bench\",\"contact\":{\"id\":\"<n>\"},"
        "\"assignee\":{\"id\":\"17\"},\"mode\":\"replace\"}` with a client key; the contact id "
        "cycles over 4096 values per wrk thread, so no two requests in flight share a contact "
        "(the gateway orders work per contact by design; one contact for every connection "
        "would measure that lock). direct and passthrough get the same body and headers.",
        "- Limiter on but never refusing: the client and the provider (scope account) each "
        "have a bucket of 1,000,000 req/s, burst 1,000,000; every request spends both.",
        "- The gateway runs as `gateway serve --config <generated>`, its own logging "
        "unchanged (one access line per request to its log file).",
        f"- wrk: 1 thread, `--timeout 10s`, script `bench/assign.lua`; warm-up "
        f"{s['warmup']:g} s per system before the rounds; systems interleaved round by "
        "round (every phase in every round), their order rotated each round.",
        f"- Metrics off: the harness sets `{meta['metrics_knob']}` in the environment of "
        "one gateway; a run counts only if that gateway's `/metrics` then does not count "
        "the requests in `gateway_requests_total`. After the rounds, the metrics A/B: "
        f"{s.get('metrics_pairs', 0)} pairs of {s.get('metrics_pair_s', 0):g} s runs at the "
        "top connection count, on then off, the order swapped every pair; the bar is the "
        "median over pairs of 1 - on/off throughput (`--metrics-pairs`, "
        "`--metrics-pair-s`).",
        f"- Machine load: load average {' '.join(meta['loadavg_start'])} at the start, "
        f"{' '.join(meta['loadavg_end'])} at the end. The machine is shared with other "
        "work; the *other load* column says how much of it reached the measured core.",
        "- A/B of two commits without the host's noise: `.venv/bin/python -m "
        "bench.instructions --ref <commit>` counts both gateways' instructions per request.",
        "- Hot spots: `.venv/bin/python -m bench.profile [--redis]` runs the same gateway "
        "under wrk with py-spy (`pip install py-spy`) and prints where its CPU goes.",
        f"- Niceness of every process the harness starts: {s['nice']} (`--nice`).",
        f"- Source: HEAD {meta['source']['head'][:12]}, gateway/ + providers/ digest "
        f"{meta['source']['source_sha256']} (the working tree as measured).",
        "",
        "Versions:",
        "",
    ]
    for k, v in meta["versions"].items():
        out.append(f"- {k}: {v}")
    if meta.get("not_measured"):
        out += ["", "Not measured:", ""]
        for k, v in meta["not_measured"].items():
            out.append(f"- {k}: {v.splitlines()[0]}")
    out.append("")
    return "\n".join(out)


SOAK_START, SOAK_END = "<!-- soak:start -->", "<!-- soak:end -->"


def keep_soak(new: str, old: str) -> str:
    """``new`` with the soak section of ``old`` (``make soak`` writes it; a benchmark
    run must not erase it) appended, when ``old`` has one."""
    start, end = old.find(SOAK_START), old.find(SOAK_END)
    if start < 0 or end < start or SOAK_START in new:
        return new
    return new.rstrip("\n") + "\n\n" + old[start:end + len(SOAK_END)] + "\n"
