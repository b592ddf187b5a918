"""
CPU time and memory from /proc: of one process, and the whole machine's CPU.
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


def residentMegabytes(pid: int) -> float:
    """
    A process's resident memory (VmRSS), in MB: Prosody's grows with what its
    Lua heap holds, such as the rosters it caches.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for process {pid}")


def machineBusySeconds() -> float:
    """
    CPU seconds all processes of the machine have used (from /proc/stat):
    shows how much else ran during a measurement.
    """
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / TICKS
