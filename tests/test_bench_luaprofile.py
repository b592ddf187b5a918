"""
bench/luaprofile.py: the configuration that loads Prosody's profiler, and
the summary's sums.
"""

from __future__ import annotations

from pathlib import Path

from bench.luaprofile import BENCH, PROFILE_HOST, cumulative, profiledConfig


def test_cumulativeCountsAFrameOncePerStack(tmp_path: Path) -> None:
    """
    A recursive frame is counted once per stack, so no function exceeds
    the total; every frame of a stack gets the stack's time.
    """
    folded = tmp_path / "p.folded"
    folded.write_text("main;f;g;f 300\nmain;h 100\n")
    assert cumulative(folded) == {"main": 400, "f": 300, "g": 300, "h": 100}


def test_profiledConfigLoadsTheProfilerOnAHostOfItsOwn(tmp_path: Path) -> None:
    """
    The profiler loads on a host no user is on, from the bench's
    directory, after the configuration it profiles.
    """
    base = tmp_path / "base.cfg.lua"
    output = tmp_path / "out.A.folded"
    text = profiledConfig(tmp_path, base, output).read_text()
    assert f'"{BENCH}"' in text and (BENCH / "mod_benchprofile.lua").exists()
    assert text.index(f'Include "{base}"') < text.index(f'VirtualHost "{PROFILE_HOST}"')
    assert f'benchprofile_file = "{output}"' in text
