# -*- test-case-name: tests.test_stanzalimit -*-
"""
The largest stanza the XMPP server accepts from the component, and keeping
every stanza we send within it.

Prosody closes the component stream as soon as the unparsed bytes of one
stanza pass C{component_stanza_size_limit} (512 KiB by default; its
C{util/xmppstream.lua} counts them as they arrive).  Everything on that
stream goes down with it: every user's roster gets, pushes and kicks.  A
roster answer holds the whole roster and a privileged set or push one item
with the web app's names and groups, so one user's data could cut every
user off, and after the reconnect the same write would do it again.  So
every stanza is measured before it is sent, and what cannot fit is refused
for its user alone, with a reason.
"""

from __future__ import annotations

from collections import Counter

from rosteradmin.errors import StanzaTooLarge
from rosteradmin.roster import Roster

#: Prosody's default C{component_stanza_size_limit}.
DEFAULT_MAX_STANZA_BYTES = 512 * 1024

#: The smallest limit accepted: below it not even a roster item with a
#: 1,024-character name fits beside its wrapper.
MIN_MAX_STANZA_BYTES = 16 * 1024

#: The most the largest wrapper around one roster item adds: a privileged
#: push (outer iq, C{<privileged_iq>}, an inner iq to a full JID of up to
#: 3,071 bytes, C{<query ver>}).  The same bound serves a roster answer's
#: delegation envelope and inner result, around the C{<query/>}.
WRAPPER_BYTES = 8 * 1024


class StanzaLimit:
    """
    The server's stanza size limit, and what it refused.

    @ivar maxBytes: The largest stanza, in bytes, the server accepts.
    @ivar refused: Stanzas not sent because they were too large, by what
        they were (C{answer}, C{write}, C{push}).
    """

    def __init__(self, maxBytes: int = DEFAULT_MAX_STANZA_BYTES) -> None:
        self.maxBytes = maxBytes
        self.refused: Counter[str] = Counter()

    def encode(self, xml: str, what: str) -> bytes:
        """
        The stanza as the bytes to send, if the server accepts that size.

        @param what: What the stanza is, for L{refused}.
        @raise StanzaTooLarge: It is larger than the server accepts.
        """
        data = xml.encode("utf-8")
        if len(data) > self.maxBytes:
            self.refused[what] += 1
            raise StanzaTooLarge(f"{what} of {len(data)} bytes is over the server's stanza limit "
                                 f"of {self.maxBytes} bytes")
        return data

    def itemRefusal(self, roster: Roster) -> str | None:
        """
        Why the server cannot store C{roster}: one of its items is too large
        for a privileged set or a push, or C{None}.
        """
        budget = self.maxBytes - WRAPPER_BYTES
        for contact in roster:
            size = len(contact.toXML().encode("utf-8"))
            if size > budget:
                return (f"contact {contact.jid!r} is {size} bytes as a roster item (name and "
                        f"{len(contact.groups)} groups); the server accepts stanzas of at most "
                        f"{self.maxBytes} bytes, so it cannot be stored")
        return None

    def answerRefusal(self, roster: Roster) -> str | None:
        """
        Why C{roster} cannot be sent to a client in one answer, or C{None}.
        """
        xml = roster.queryXML()
        if 4 * len(xml) + WRAPPER_BYTES <= self.maxBytes:
            return None  # fits however many bytes each character takes
        size = len(xml.encode("utf-8")) + WRAPPER_BYTES
        if size <= self.maxBytes:
            return None
        return (f"a roster of {len(roster)} contacts needs about {size} bytes in one answer; the server "
                f"accepts stanzas of at most {self.maxBytes} bytes (raise the server's limit, e.g. "
                "Prosody's component_stanza_size_limit, and --max-stanza-bytes with it)")
