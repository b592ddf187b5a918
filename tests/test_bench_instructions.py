"""
bench/instructions.py: Prosody run under callgrind, and the totals read
from its dumps.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import instructions
from bench.instructions import CountedProsody, interpreter, totalInstructions

#: The shape of a dump callgrind_control -d makes: a header whose summary
#: may say 0, the counts, and the totals last.
DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 14601
cmd:  lua5.4 /usr/bin/prosody --config prosody.cfg.lua -F
part: 1
positions: line
events: Ir
summary: 0
fl=(1) lvm.c
fn=(1) luaV_execute
15 979124478
totals: 5355304306
"""


def test_totalsOfADump(tmp_path: Path) -> None:
    """
    The count is the totals line, not the header's summary.
    """
    dump = tmp_path / "callgrind.out.1"
    dump.write_text(DUMP)
    assert totalInstructions(dump) == 5355304306


def test_dumpWithoutTotals(tmp_path: Path) -> None:
    """
    A dump cut short (valgrind killed while writing it) says so, rather
    than counting 0.
    """
    dump = tmp_path / "callgrind.out.1"
    dump.write_text(DUMP.replace("totals: 5355304306\n", ""))
    with pytest.raises(RuntimeError, match="no callgrind totals"):
        totalInstructions(dump)


def script(path: Path, first: bytes) -> Path:
    """
    A script at C{path} whose #! line is C{first}.
    """
    path.write_bytes(first + b"\nprint('prosody')\n")
    return path


def test_prosodyRunsUnderCallgrindNotCounting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Prosody's own command line runs under callgrind, with counting off
    until the storm switches it on, and the output where the setup said;
    the Lua its #! line names through env runs under valgrind, which
    would not follow env's exec.
    """
    prosody = script(tmp_path / "prosody-script", b"#!/usr/bin/env lua5.4")
    monkeypatch.setattr(instructions.shutil, "which",
                        lambda name: {"valgrind": "/usr/bin/valgrind", "lua5.4": "/usr/bin/lua5.4"}.get(name))
    monkeypatch.setattr(instructions.LocalProsody, "command",
                        lambda self: [str(prosody), "--config", str(self.configPath), "-F"])
    counted = CountedProsody(tmp_path / "prosody", tmp_path / "include.cfg.lua", output=tmp_path / "cg.out")
    assert counted.command() == [
        "/usr/bin/valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp_path / 'cg.out'}",
        "/usr/bin/lua5.4", str(prosody), "--config", str(tmp_path / "prosody" / "prosody.cfg.lua"), "-F"]


def test_interpreterOfAScript(tmp_path: Path) -> None:
    """
    A #! line with its interpreter's path and arguments is taken as it is;
    a program that is no script runs as it is.
    """
    assert interpreter(script(tmp_path / "a", b"#!/usr/bin/lua5.4 -W")) == ["/usr/bin/lua5.4", "-W"]
    (tmp_path / "b").write_bytes(b"\x7fELF\x02\x01")
    assert interpreter(tmp_path / "b") == []


def test_interpreterThroughEnvMissing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A script whose interpreter env cannot find says which one.
    """
    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="runs with lua5.4, which is not installed"):
        interpreter(script(tmp_path / "a", b"#!/usr/bin/env lua5.4"))


def test_withoutValgrind(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Without valgrind, D2i stops at once saying what to install.
    """
    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install valgrind"):
        instructions.valgrind()


class FakeProcess:
    pid = 4242


def test_dumpsAreNumbered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Each dump callgrind_control asks for is read from the next numbered
    file beside the output, the storm's count being the total of its own.
    """
    commands: list[list[str]] = []

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, stdout="PID 4242: lua5.4 /usr/bin/prosody\n  OK.\n", stderr="")

    monkeypatch.setattr(instructions.subprocess, "run", run)
    counted = CountedProsody(tmp_path / "prosody", tmp_path / "include.cfg.lua", output=tmp_path / "cg.out")
    counted._process = FakeProcess()  # type: ignore[assignment]
    (tmp_path / "cg.out.1").write_text(DUMP)
    (tmp_path / "cg.out.2").write_text(DUMP.replace("5355304306", "12"))
    counted.counting(True)
    assert (counted.dump(), counted.dump()) == (5355304306, 12)
    assert commands == [["callgrind_control", "-i", "on", "4242"], ["callgrind_control", "-d", "4242"],
                        ["callgrind_control", "-d", "4242"]]


def test_callgrindNotFound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    callgrind_control exits with 0 when no callgrind runs as that process
    (Prosody started without valgrind, or gone): that is an error, not a
    count of nothing.
    """
    monkeypatch.setattr(instructions.subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(
        command, 0, stdout="Error: Callgrind task with PID/name '4242' not detected.\n", stderr=""))
    counted = CountedProsody(tmp_path / "prosody", tmp_path / "include.cfg.lua", output=tmp_path / "cg.out")
    counted._process = FakeProcess()  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="not detected"):
        counted.counting(True)
