# -*- test-case-name: tests.test_xmltext -*-
"""
Which strings an XML stream can carry.

XML 1.0 forbids most control characters and U+FFFE/U+FFFF, and UTF-8
cannot encode the lone surrogates that JSON's C{\\uXXXX} escapes let in.
One such character in a stanza makes the server close the component's
whole stream, so text from the web app or an HTTP caller is checked before
it is put into a stanza.
"""

from __future__ import annotations

import re

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def carriesInXML(text: str) -> bool:
    """
    Whether C{text} can be the character data or an attribute value of an
    XML 1.0 stanza.
    """
    return _NOT_XML.search(text) is None
