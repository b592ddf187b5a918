# -*- test-case-name: tests.test_xmltext -*-
"""
Tests for L{rosteradmin.xmltext}.
"""

from __future__ import annotations

import pytest

from rosteradmin.xmltext import carriesInXML


@pytest.mark.parametrize("text", ["", "Bob", "tab\there", "line\nbreak\r", "émoji 🎉", "\ufffd", "\U0010ffff"])
def test_carried(text: str) -> None:
    """
    Text, whitespace and every character XML allows pass.
    """
    assert carriesInXML(text)


@pytest.mark.parametrize("text", ["\x00", "bell\x07", "\x0b", "\x1f", "lone \ud800", "\udfff",
                                  "\ufffe", "\uffff"])
def test_refused(text: str) -> None:
    """
    Control characters, lone surrogates and the two non-characters XML
    forbids are refused.
    """
    assert not carriesInXML(text)
