"""
bench/deployed.py: the shape of a login storm's get latencies.
"""

from __future__ import annotations

from bench.deployed import stormShape


def test_twoModes() -> None:
    """
    Gets of two modes, 60 fast and 40 caught in a wave: the share of the
    slow mode and the mean show the wave, whose size the p50 alone hides.
    """
    shape = stormShape([0.010] * 60 + [0.300] * 40)
    assert shape == {"p25": 10.0, "p75": 300.0, "mean": 126.0, "gets over 4 x p10 (%)": 40.0}


def test_oneMode() -> None:
    """
    Gets all within four times the fastest tenth: none is counted slow.
    """
    shape = stormShape([0.010, 0.012, 0.020, 0.039] * 25)
    assert shape["gets over 4 x p10 (%)"] == 0.0
    assert round(shape["mean"], 6) == 20.25


def test_noGets() -> None:
    """
    A storm without a single answered get has no shape to report.
    """
    assert stormShape([]) == {}
