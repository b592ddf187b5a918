"""
CPU time from /proc: of one process, and of the whole machine.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpuSeconds(pid: int) -> float:
    """
    User + system CPU seconds a process has used (from /proc).
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machineBusySeconds() -> float:
    """
    CPU seconds all processes of the machine have used (from /proc/stat):
    shows how much else ran during a measurement.
    """
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / TICKS
