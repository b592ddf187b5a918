# -*- test-case-name: tests.test_stanzalimit,tests.test_bounds -*-
"""
Rosters the server cannot carry, refused for their user alone: an item
larger than one stanza the server takes refuses the whole roster (sent, it
would close the component stream for every user); a roster too large for
one answer is stored, but its clients get an error instead.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rosteradmin.cache import RosterCache
from rosteradmin.errors import RosterRefused
from rosteradmin.roster import Roster, StoredRoster
from rosteradmin.stanzalimit import StanzaLimit

#: Most users whose refusal is kept.
MAX_REFUSED = 10_000


class Refusals:
    """
    Checks fetched rosters against the server's stanza limit, and keeps why
    each refused user's roster was refused.

    @ivar refused: Why the web app's roster of a user cannot be stored in
        the server or sent to its clients, by username, until a roster
        that fits replaces it; past L{MAX_REFUSED} users, the oldest
        uncached ones are forgotten.
    @ivar forgotten: Refused users forgotten past L{MAX_REFUSED}.
    """

    log = Logger()

    def __init__(self, limit: StanzaLimit, cache: RosterCache) -> None:
        self.limit = limit
        self.cache = cache
        self.refused: dict[str, str] = {}
        self.forgotten = 0

    def admit(self, username: str, roster: Roster, storedRead: Deferred[StoredRoster] | None) -> None:
        """
        Check that the server can carry a fetched roster: an item too large
        for one stanza refuses the roster (the previous one stays); a roster
        too large for one answer is stored, and its user remembered.

        @raise RosterRefused: An item cannot be stored.
        """
        refusal = self.limit.itemRefusal(roster)
        if refusal is not None:
            self.refuse(username, refusal)
            if storedRead is not None:
                storedRead.addErrback(lambda failure: None)  # nothing to sync
            self.log.warn("roster of {user} refused: {why}", user=username, why=refusal)
            raise RosterRefused(username, refusal)
        tooLarge = self.limit.answerRefusal(roster)
        if tooLarge is None:
            self.refused.pop(username, None)
        else:
            self.refuse(username, tooLarge)
            self.log.warn("roster of {user} is stored, but cannot be sent to its clients: {why}",
                          user=username, why=tooLarge)

    def refuse(self, username: str, why: str) -> None:
        """
        Remember why a user's roster is refused, within L{MAX_REFUSED}
        users: past it, the oldest refusals of uncached users go (a refresh
        of many names the web app serves oversized rosters for must not
        grow this without end).  Those serve reports only: a user loaded
        again is checked again.  A cached user's refusal stays, as its
        roster does: it keeps the server from being promised that roster.
        """
        self.refused.pop(username, None)
        self.refused[username] = why
        if len(self.refused) <= MAX_REFUSED:
            return
        for other in self.refused:
            if other not in self.cache and other != username:
                del self.refused[other]
                self.forgotten += 1
                return

    def saturation(self) -> str | None:
        """
        Why the refusals kept are at their bound, or C{None}.
        """
        if len(self.refused) >= MAX_REFUSED:
            return (f"refused users: {len(self.refused):,} kept, at the bound of {MAX_REFUSED:,}; "
                    f"{self.forgotten:,} forgotten so far (the web app serves oversized rosters)")
        return None
