"""The metrics bar of ``make bench`` read from side-by-side pairs (bench.report)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.load import Run
from bench.report import METRICS_AB, _instructions_section, bars, metrics_ab


def _run(system: str, phase: str, round_: int, rps: float, connections: int = 64) -> Run:
    return Run(system=system, phase=phase, round=round_, connections=connections,
               duration_s=2.0, requests=int(rps * 2), rps=rps, p50_ms=1.0, p90_ms=1.0,
               p99_ms=1.0, p999_ms=1.0, mean_ms=1.0, max_ms=1.0, errors={}, cpu_s=None,
               cpu_us_per_req=None, core_util=None, core_other_util=None,
               extra_cpu_us_per_req={})


def _pairs(*pairs: tuple[float, float]) -> list[Run]:
    runs = []
    for n, (on, off) in enumerate(pairs, start=1):
        runs += [_run("gateway", METRICS_AB, n, on),
                 _run("gateway-metrics-off", METRICS_AB, n, off)]
    return runs


def test_cost_is_the_median_over_pairs_with_its_quartiles() -> None:
    # Costs per pair: 1 - on/off = 0.10, 0.02, -0.05, 0.04, 0.00.
    ab = metrics_ab(_pairs((900, 1000), (980, 1000), (1050, 1000), (960, 1000),
                           (1000, 1000)), 64)
    assert ab is not None
    assert ab["pairs"] == 5
    assert ab["median"] == pytest.approx(0.02)
    assert ab["q1"] == pytest.approx(0.0)
    assert ab["q3"] == pytest.approx(0.04)
    assert ab["costs"] == pytest.approx([-0.05, 0.0, 0.02, 0.04, 0.10])


def test_a_pair_with_one_half_missing_and_other_phases_do_not_count() -> None:
    runs = _pairs((900, 1000), (990, 1000))
    runs.append(_run("gateway", METRICS_AB, 3, 500))  # its metrics-off half never ran
    runs += [_run("gateway", "main", 1, 100), _run("gateway-metrics-off", "main", 1, 1000)]
    runs.append(_run("gateway", METRICS_AB, 1, 10, connections=1))  # another conn count
    ab = metrics_ab(runs, 64)
    assert ab is not None
    assert ab["pairs"] == 2
    assert ab["median"] == pytest.approx((0.10 + 0.01) / 2)


def test_no_pairs_is_none() -> None:
    assert metrics_ab([_run("gateway", "main", 1, 100)], 64) is None


def _args() -> argparse.Namespace:
    return argparse.Namespace(connections=[64], slow_connections=256, slow_delay_ms=20.0)


def _metrics_bar(runs: list[Run]) -> dict[str, object]:
    found = [b for b in bars(runs, {}, _args()) if "on/off throughput" in str(b["bar"])]
    assert len(found) == 1
    return found[0]


def test_the_bar_reads_the_pairs_and_keeps_the_rounds_figure_in_its_detail() -> None:
    # The rounds alone say 20% (a noisy host); the pairs say 1%.
    runs = [_run("gateway", "main", 1, 800), _run("gateway-metrics-off", "main", 1, 1000)]
    runs += _pairs((990, 1000), (1000, 1010), (980, 990))
    bar = _metrics_bar(runs)
    assert "3 side-by-side pairs" in str(bar["bar"])
    assert bar["value"] == pytest.approx(0.0101, abs=1e-3)
    assert bar["result"] == "pass"
    assert "from the rounds alone 20.0%" in str(bar["detail"])


def test_without_pairs_the_bar_reads_the_rounds() -> None:
    bar = _metrics_bar([_run("gateway", "main", 1, 800),
                        _run("gateway-metrics-off", "main", 1, 1000)])
    assert bar["bar"] == "metrics cost (1 - on/off throughput, 64 conns)"
    assert bar["value"] == pytest.approx(0.20)
    assert bar["result"] == "falls short"


def test_the_throughput_bar_says_where_the_floor_stands() -> None:
    runs = [_run("passthrough", "main", 1, 1000), _run("gateway", "main", 1, 450),
            _run("floor", "main", 1, 600)]
    found = [b for b in bars(runs, {}, _args()) if str(b["bar"]).startswith("in-process thr")]
    assert found[0]["value"] == pytest.approx(0.45)
    assert "the floor 600 req/s, 0.60 the passthrough's" in str(found[0]["detail"])
    without = [b for b in bars(runs[:2], {}, _args())
               if str(b["bar"]).startswith("in-process thr")]
    assert "floor" not in str(without[0]["detail"])


def test_instruction_counts_show_what_the_idle_background_took_off() -> None:
    ins = {"requests": 1000, "connections": 1,
           "per_request": {"passthrough": 500_000.0, "gateway": 800_000.0},
           "raw_per_request": {"passthrough": 500_100.0, "gateway": 810_000.0},
           "idle_per_s": {"passthrough": 5.0, "gateway": 500_000.0}}
    rows = [line for line in _instructions_section(ins) if line.startswith("| gateway ")]
    assert rows == ["| gateway | 800,000 | 1.60 | 810,000 | 500,000 |"]


def test_the_cpu_bar_is_also_read_in_instructions_at_the_top_connection_count() -> None:
    loaded = {"requests": 3000, "connections": 64,
              "per_request": {"passthrough": 640_000.0, "floor": 720_000.0,
                              "gateway": 830_000.0}}
    ins = {"requests": 1000, "connections": 1,
           "per_request": {"passthrough": 590_000.0, "gateway": 720_000.0}, "loaded": loaded}
    found = {str(b["bar"]): b for b in bars([], {"instructions": ins}, _args())
             if "instructions per request / passthrough" in str(b["bar"])}
    one = found["in-process instructions per request / passthrough (callgrind, 1 conn)"]
    top = found["in-process instructions per request / passthrough (callgrind, 64 conns)"]
    assert one["result"] == "pass" and one["value"] == pytest.approx(720 / 590)
    assert top["result"] == "falls short" and top["value"] == pytest.approx(830 / 640)
    assert "the floor, only what the contract asks done inline" in str(top["detail"])
    rows = [line for line in _instructions_section(ins) if line.startswith("| gateway |")]
    assert rows[-1] == "| gateway | 830,000 | 1.30 | 720,000 |"
    # Not counted: the bar says why, under its own name.
    skipped = [b for b in bars([], {"instructions": {"skipped": "valgrind is not installed"}},
                               _args()) if "64 conns" in str(b["bar"])
               and "instructions" in str(b["bar"])]
    assert skipped[0]["result"] == "not measured"
    assert skipped[0]["note"] == "valgrind is not installed"


def test_the_report_says_how_fast_the_host_was() -> None:
    from bench.report import host_speed_lines

    assert host_speed_lines(None) == []
    fast = host_speed_lines({"start": 0.19, "end": 0.21}, 110.0)[0]
    assert "0.19 s before the runs and 0.21 s after them" in fast and "a fast host" in fast
    # The passthrough's own CPU time decides: the loop can read fast on a slow host.
    slow = host_speed_lines({"start": 0.21, "end": 0.24}, 561.0)[0]
    assert "561 us of CPU per request" in slow and "about 5.3 times slower" in slow
    assert "instruction counts do not" in slow
    assert "about 3.0 times slower" in host_speed_lines({"start": 0.45, "end": 0.57})[0]


def test_cache_misses_are_shown_beside_the_loaded_count() -> None:
    loaded = {"requests": 3000, "connections": 64, "caches": "--I1=32768,8,64",
              "per_request": {"passthrough": 640_000.0, "gateway": 760_000.0},
              "misses": {"passthrough": {"L1i": 10_000.0, "L1d": 12_000.0, "L2": 2_000.0},
                         "gateway": {"L1i": 17_000.0, "L1d": 15_000.0, "L2": 2_400.0}}}
    ins = {"requests": 1000, "connections": 1,
           "per_request": {"passthrough": 590_000.0, "gateway": 720_000.0}, "loaded": loaded}
    lines = _instructions_section(ins)
    assert "| system | L1i misses | / passthrough | L1d misses | / passthrough | L2 misses " \
           "| / passthrough |" in lines
    assert lines[-1] == "| gateway | 17,000 | 1.70 | 15,000 | 1.25 | 2,400 | 1.20 |"
    assert any("`--I1=32768,8,64`" in line for line in lines)
    # Counted without the simulation: no table.
    del loaded["misses"]
    assert not any("L1i misses" in line for line in _instructions_section(ins))


def test_a_dump_gives_its_events_and_the_misses_by_level(tmp_path: Path) -> None:
    from bench.instructions import dumped_events, dumped_total, misses_of

    (tmp_path / "callgrind.out.7.1").write_text(
        "events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\nsummary: 900 5 6 70 8 9 1 2 3\n")
    events = dumped_events(tmp_path, 7)
    assert events["Ir"] == 900 and events["I1mr"] == 70
    assert dumped_total(tmp_path, 7) == 900
    assert misses_of(events) == {"L1i": 70, "L1d": 17, "L2": 6}
    # Without the simulation: instructions only, no misses.
    (tmp_path / "callgrind.out.8").write_text("events: Ir\ntotals: 1234\n")
    assert dumped_total(tmp_path, 8) == 1234 and misses_of(dumped_events(tmp_path, 8)) == {}
    with pytest.raises(RuntimeError):
        dumped_events(tmp_path, 9)


def test_a_system_that_keeps_operations_is_filled_before_it_is_counted(tmp_path: Path) -> None:
    from bench.instructions import FILL_CONNECTIONS, FILL_REQUESTS, Harness
    from bench.procs import Procs
    from gateway.operations import MEMORY_FINALS

    # As many as the gateway keeps in process: past them, every request evicts one.
    assert FILL_REQUESTS == MEMORY_FINALS
    h = Harness(Procs(tmp_path, cores=None), requests=1000, warmup=300, connections=1)
    for system in ("gateway", "gateway-metrics-off", "floor"):
        assert h.warmups(system) == [(FILL_REQUESTS, FILL_CONNECTIONS), (300, 1)]
    # Nothing to fill: the passthrough keeps nothing, Redis mode keeps its records in Redis.
    for system in ("passthrough", "gateway-redis"):
        assert h.warmups(system) == [(300, 1)]
    loaded = Harness(Procs(tmp_path, cores=None), requests=3000, warmup=1000, connections=64)
    assert loaded.warmups("gateway") == [(FILL_REQUESTS, 64), (1000, 64)]
    unfilled = Harness(Procs(tmp_path, cores=None), requests=1000, warmup=300, connections=1,
                       fill=False)
    assert unfilled.warmups("gateway") == [(300, 1)]


def test_the_report_says_the_counts_were_filled() -> None:
    ins = {"requests": 1000, "connections": 1, "fill": 10_000,
           "per_request": {"passthrough": 590_000.0, "gateway": 720_000.0}}
    text = "\n".join(_instructions_section(ins))
    assert "first sent 10,000 assigns" in text
    ins["fill"] = 0
    assert "first sent" not in "\n".join(_instructions_section(ins))


def test_the_measured_core_s_steal_is_read_apart_from_its_busy_time() -> None:
    from bench.load import CLK_TCK, core_times_s

    stat = ("cpu  126626 0 15886 249262 958 0 6465 8892 0 0\n"
            "cpu0 45066 0 4769 145887 144 0 3614 4949 0 0\n"
            "cpu1 81559 0 11117 103375 814 0 2850 3943 0 0\n")
    busy, steal = core_times_s("0", stat)
    # user + nice + system + irq + softirq + steal; idle and iowait are not busy.
    assert busy == pytest.approx((45066 + 4769 + 3614 + 4949) / CLK_TCK)
    assert steal == pytest.approx(4949 / CLK_TCK)
    # A kernel that reports no steal column.
    assert core_times_s("1", "cpu1 10 0 5 100 0 0 1\n") == (16 / CLK_TCK, 0.0)
    with pytest.raises(ValueError):
        core_times_s("7", stat)


def test_the_progress_line_and_the_noise_note_say_how_much_was_steal() -> None:
    from dataclasses import asdict, replace

    from bench.report import _steal_part, progress_line

    run = replace(_run("gateway", "main", 1, 2000.0), core_other_util=0.54,
                  core_steal_util=0.40)
    assert progress_line(run).endswith(" other 54% (steal 40%)")
    assert progress_line(replace(run, core_steal_util=0.0)).endswith(" other 54%")
    quiet = replace(run, core_steal_util=0.10)
    runs = [asdict(run), asdict(quiet)]
    assert _steal_part(runs) == " (of which the hypervisor's steal: a median 25%, up to 40%)"
    # Results written before steal was read: nothing said.
    old = [{k: v for k, v in r.items() if k != "core_steal_util"} for r in runs]
    assert _steal_part(old) == ""
