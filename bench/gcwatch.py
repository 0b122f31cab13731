"""Run ``gateway`` with its garbage-collector pauses recorded (a diagnostic).

    GCWATCH_OUT=/tmp/gc.json python -m bench.gcwatch serve --config FILE

Same arguments as ``gateway``; on exit (SIGTERM included: the gateway drains
and returns) writes, per generation, how many collections ran, their total and
longest pause, and the process's peak RSS. The gateway's code is not touched:
this only adds a ``gc.callbacks`` hook before calling its ``main``.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

_started: list[float] = [0.0]
_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}


def _hook(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _pauses[int(info["generation"])].append(time.perf_counter() - _started[0])


def summary() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for gen, pauses in _pauses.items():
        ordered = sorted(pauses)
        out[f"gen{gen}"] = {
            "collections": len(pauses), "total_ms": round(sum(pauses) * 1000, 1),
            "max_ms": round(max(pauses, default=0.0) * 1000, 2),
            "p50_ms": round(ordered[len(ordered) // 2] * 1000, 3) if ordered else 0.0,
        }
    out["tracked_objects"] = len(gc.get_objects())
    out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _dump() -> None:
    target = os.environ.get("GCWATCH_OUT")
    text = json.dumps(summary(), indent=1)
    if target:
        Path(target).write_text(text + "\n")
    else:
        print(text, file=sys.stderr)


def main() -> int:
    gc.callbacks.append(_hook)
    atexit.register(_dump)
    from gateway.cli import main as gateway_main

    return gateway_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
