"""
docs/configuration.md matches the options.
"""

from __future__ import annotations

from pathlib import Path

from rosteradmin.reference import configurationReference
from rosteradmin.options import Options


def test_configurationDocMatchesOptions() -> None:
    """
    The committed reference is what the options generate now; regenerate
    it with `python -m rosteradmin.reference > docs/configuration.md`.
    """
    committed = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    assert committed == configurationReference()


def test_everyOptionIsDocumented() -> None:
    """
    Each command-line option appears in the reference.
    """
    text = configurationReference()
    names = [p[0] for p in Options.optParameters] + [f[0] for f in Options.optFlags]
    assert [n for n in names if f"`--{n}`" not in text] == []
