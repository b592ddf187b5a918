"""
Stalls of the reactor of the process that imports this module first, when
C{BENCH_STALL_LOG} names a file.

A C{LoopingCall} ticks every L{TICK} seconds on the reactor; each tick's
lateness (how long after it was due it ran) is how long the reactor could
not run anything else: an HTTP request, a stanza, a timer.  One line per
tick later than L{LOGGED}: C{<wall time> <lateness seconds> <where>}, where
C{<where>} is where the reactor thread was most often while the tick was
overdue (a watchdog thread looks at its stack every L{TICK} / 2 seconds
meanwhile): its three innermost rosteradmin functions, innermost first,
else its innermost function.

L{bench.run.Setup} imports it in rosteradmin's process when a scenario
asks (C{stallLog}); the cost is one tick per 10 ms and a thread that wakes
as often.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter

#: Seconds between ticks.
TICK = 0.01

#: Lateness from which a tick is logged, in seconds.
LOGGED = 0.02

_path = os.environ.get("BENCH_STALL_LOG")


def _innermost(frame: object) -> str:
    """
    The innermost functions of C{rosteradmin} on a stack (at most three,
    innermost first, joined by C{<}), else the innermost function.
    """
    found: list[str] = []
    outer = None
    while frame is not None and len(found) < 3:
        code = frame.f_code  # type: ignore[attr-defined]
        name = f"{os.path.basename(code.co_filename)}:{code.co_name}"
        if "/rosteradmin/" in code.co_filename:
            found.append(name)
        outer = outer or name
        frame = frame.f_back  # type: ignore[attr-defined]
    return "<".join(found) or outer or "-"


def _install(path: str) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    out = open(path, "a", buffering=1)
    mainThread = threading.get_ident()
    due = [time.monotonic() + TICK]
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def tick() -> None:
        now = time.monotonic()
        lateness = now - due[0]
        with lock:
            where = seen.most_common(1)[0][0] if seen else "-"
            seen.clear()
            due[0] = now + TICK
        if lateness >= LOGGED:
            out.write(f"{time.time():.3f} {lateness:.4f} {where}\n")

    def watch() -> None:
        while True:
            time.sleep(TICK / 2)
            frame = sys._current_frames().get(mainThread)
            with lock:
                if time.monotonic() - due[0] >= LOGGED:
                    seen[_innermost(frame)] += 1

    def start() -> None:
        due[0] = time.monotonic() + TICK
        LoopingCall(tick).start(TICK, now=False)
        threading.Thread(target=watch, name="stall-watchdog", daemon=True).start()

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]


if _path:
    _install(_path)


def stalls(path: str | os.PathLike[str], since: float, until: float) -> list[tuple[float, float, str]]:
    """
    The logged stalls whose tick ran between two wall times: (time,
    lateness, where).
    """
    result = []
    try:
        with open(path) as f:
            for line in f:
                at, lateness, where = line.split(maxsplit=2)
                if since <= float(at) <= until:
                    result.append((float(at), float(lateness), where.strip()))
    except FileNotFoundError:
        pass
    return result
