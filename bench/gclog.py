"""
Garbage collection pauses of the process that imports this module first,
when C{BENCH_GC_LOG} names a file: one line per collection of the oldest
generation, and per collection of any generation that pauses more than
5 ms: C{<wall time> <generation> <pause seconds> <objects collected>}.

L{bench.run.Setup} imports it in rosteradmin's process when a scenario
asks (C{gcLog}); the cost is one clock read per collection.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

_path = os.environ.get("BENCH_GC_LOG")
_started: list[float] = []

if _path:
    _out = open(_path, "a", buffering=1)

    def _collected(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _started[:] = [time.perf_counter()]
            return
        pause = time.perf_counter() - (_started[0] if _started else time.perf_counter())
        if info["generation"] == 2 or pause > 0.005:
            _out.write(f"{time.time():.3f} {info['generation']} {pause:.4f} {info['collected']}\n")

    gc.callbacks.append(_collected)


def pauses(path: str | os.PathLike[str], since: float, until: float) -> list[tuple[float, int, float]]:
    """
    The logged collections that ended between two wall times: (end, generation, pause).
    """
    result = []
    try:
        with open(path) as f:
            for line in f:
                end, generation, pause, _ = line.split()
                if since <= float(end) <= until:
                    result.append((float(end), int(generation), float(pause)))
    except FileNotFoundError:
        pass
    return result
