"""
Prosody's instructions per login in the deployed login storm (scenario
D2i): the storm of D2 with Prosody run under valgrind's callgrind, which
counts the machine instructions Prosody executes while the storm runs.

CPU seconds on a shared two-core machine move by half from run to run of
the same code (docs/benchmarks.md, "The storm's two speeds"); an
instruction count moves by less than one per cent, so it tells a few per
cent of work between A and B apart where CPU time cannot.  It counts work,
not waiting: memory stalls and the scheduler do not show in it.

Prosody runs about fifty times slower under callgrind, so the storm is
smaller (L{USERS}) and lets fewer handshakes run at once (L{CONCURRENCY}),
within the clients' timeouts.  Counting is switched on just before the
storm and off after it (C{callgrind_control -i}), so Prosody's start, the
sync and rosteradmin's restart are not counted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.deployed import DeployedSetup, deployedStorm, steady
from rosteradmin_demo.devprosody import LocalProsody

#: Users in the counted storm, and handshakes at a time.
USERS = 200
CONCURRENCY = 20

#: The row the storm's count is printed in, B/A too.
INSTRUCTIONS = "prosody instructions per login (M)"


def valgrind() -> str:
    """
    @return: The path of valgrind.
    @raise RuntimeError: It is not installed.
    """
    path = shutil.which("valgrind")
    if path is None:
        raise RuntimeError("D2i counts Prosody's instructions with valgrind: apt-get install valgrind")
    return path


class CountedProsody(LocalProsody):
    """
    A L{LocalProsody} run under callgrind with counting off, until
    L{counting} switches it on.

    @ivar output: callgrind's output file; each dump is written beside it,
        numbered (C{output.1}, ...).
    """

    def __init__(self, *args: Any, output: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.output = output
        self._dumps = 0

    def command(self) -> list[str]:
        # The prosody script's #! line runs its Lua through env, whose exec
        # valgrind would not follow: run that Lua under valgrind instead.
        prosody = super().command()
        return [valgrind(), "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={self.output}",
                *interpreter(Path(prosody[0])), *prosody]

    def start(self, timeout: float = 300.0) -> None:
        """
        Start as L{LocalProsody} does, waiting longer: under callgrind,
        even with counting off, Prosody takes many times its start-up time.
        """
        super().start(timeout)

    def _control(self, *args: str) -> None:
        assert self._process is not None
        done = subprocess.run(["callgrind_control", *args, str(self._process.pid)], capture_output=True, text=True,
                              timeout=60)
        # It exits with 0 even when it found no callgrind to tell.
        if "OK." not in done.stdout:
            raise RuntimeError(f"callgrind_control {' '.join(args)}: {done.stdout.strip()} {done.stderr.strip()}")

    def counting(self, on: bool) -> None:
        """
        Switch counting on or off.

        @param on: Count from now on (or stop counting).
        """
        self._control("-i", "on" if on else "off")

    def dump(self) -> int:
        """
        Write what was counted since the last dump and return its total.
        """
        self._control("-d")
        self._dumps += 1
        return totalInstructions(Path(f"{self.output}.{self._dumps}"))


def interpreter(script: Path) -> list[str]:
    """
    The command a script's C{#!} line runs it with (C{#!/usr/bin/env lua5.4}:
    C{lua5.4}'s path); nothing for a program that is not a script.
    """
    with script.open("rb") as f:
        line = f.readline()
    if not line.startswith(b"#!"):
        return []
    words = line[2:].decode().split()
    if Path(words[0]).name == "env":
        words = words[1:]
        found = shutil.which(words[0])
        if found is None:
            raise RuntimeError(f"{script} runs with {words[0]}, which is not installed")
        words[0] = found
    return words


def totalInstructions(dump: Path) -> int:
    """
    The instructions a callgrind dump counted: its C{totals:} line, near
    its end (the C{summary:} line of its header may say 0).
    """
    match = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{dump} holds no callgrind totals")
    return int(match.group(1))


async def idle(setup: DeployedSetup, quiet: float = 1.0, timeout: float = 120.0) -> None:
    """
    Wait until Prosody used under a tenth of the CPU over C{quiet} seconds
    (at most C{timeout}): idle, but for its timers.
    """
    if not await steady(lambda: setup.cpu()["prosody"], quiet / 10, quiet, timeout):
        raise RuntimeError(f"D2i: Prosody was still busy {timeout} s after the storm")


async def countedStorm(setup: DeployedSetup, pre: dict[str, Any]) -> dict[str, Any]:
    """
    Scenario D2i on a setup whose Prosody is a L{CountedProsody}, after
    L{bench.deployed.restartedOnState}: D2's storm of L{USERS} users,
    counted until Prosody has done the work the storm gave it (the last
    clients' presences and logouts: a client's close does not wait for
    Prosody).  Only the preconditions and the count are kept: the storm's
    latencies, CPU and memory under callgrind are valgrind's.
    """
    prosody = setup.prosody
    assert isinstance(prosody, CountedProsody)
    prosody.counting(True)
    storm = await deployedStorm(setup, USERS, pre, concurrency=CONCURRENCY)
    await idle(setup)
    prosody.counting(False)
    kept = {key: value for key, value in storm.items()
            if key.startswith("pre: ") or key == "roster gets answered by rosteradmin"}
    return {**kept, INSTRUCTIONS: prosody.dump() / USERS / 1e6}
