# -*- test-case-name: tests.test_cache -*-
"""
The roster cache: the last good roster of each user, held in memory, within
a bound.

The web app is the source of truth; the cache holds what it said last, so a
user's roster can be served at once, and served stale while the web app is
down.  Entries are replaced only by a complete, validated roster, never
removed by a failed fetch.

The cache is a derivative: what the server holds is known from the state,
and the web app can always be asked again.  So it is bounded by the memory
it holds, counted in contacts (C{--cache-max-contacts}): each cached roster
is charged its contacts plus L{USER_CHARGE} for the user itself, so that
users with no contacts (a refresh of names the web app answers C{{}} for)
cost what they take.  Past the bound, the rosters of users with no online
client go first, least recently used first.  An online user's roster
stays, over the bound if need be: it is what that user's clients hold, the
base of the pushes they get.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterator

from rosteradmin.roster import Roster

#: What one cached user costs beyond its contacts, in contacts.  Measured
#: with tracemalloc (C{python -m bench.cachecost}): a user with an empty
#: roster takes 270 to 380 bytes (its entry, its username, and what the
#: backend keeps of it while cached), a contact 85 to 220 (50 or 10 per
#: user, before and after its roster is first served); in RSS, about 500
#: bytes a user (C{python -m bench.unknownnames}) against about 300 a
#: contact with 10 per user (docs/benchmarks.md, scenario 8).  So a user
#: costs 1.7 to 3.1 contacts: charged the most.
USER_CHARGE = 3


class RosterCache:
    """
    Rosters by username, least recently used first.  No I/O, no clock.

    @ivar maxContacts: The bound on L{charge}, or C{None} for none.
    @ivar contacts: The contacts of all cached rosters now.
    @ivar charge: What the cached rosters count against the bound: their
        contacts, plus L{USER_CHARGE} for each user.
    @ivar evictions: Rosters dropped to stay within the bound.
    @ivar onEvict: Told the username of each roster dropped to stay within
        the bound (its owner forgets what it kept of that user).
    """

    def __init__(self, maxContacts: int | None = None,
                 pinned: Callable[[str], bool] = lambda username: False) -> None:
        """
        @param pinned: Whether a user's roster must stay (an online user).
        """
        self.maxContacts = maxContacts
        self.pinned = pinned
        self.onEvict: Callable[[str], object] = lambda username: None
        self._rosters: OrderedDict[str, Roster] = OrderedDict()
        self.contacts = 0
        self.charge = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._rosters)

    def __contains__(self, username: str) -> bool:
        return username in self._rosters

    def __iter__(self) -> Iterator[str]:
        return iter(self._rosters)

    def get(self, username: str) -> Roster | None:
        """
        The cached roster of a user, counting a hit or a miss; a hit makes
        it the most recently used.
        """
        roster = self._rosters.get(username)
        if roster is None:
            self.misses += 1
        else:
            self.hits += 1
            self._rosters.move_to_end(username)
        return roster

    def peek(self, username: str) -> Roster | None:
        """
        The cached roster of a user, without counting or reordering.
        """
        return self._rosters.get(username)

    def put(self, username: str, roster: Roster) -> Roster | None:
        """
        Store a user's roster as the most recently used, then drop the
        least recently used rosters of offline users while over the bound.

        @return: The roster it replaces, if any.
        """
        previous = self._rosters.pop(username, None)
        if previous is not None:
            self.contacts -= len(previous)
            self.charge -= len(previous) + USER_CHARGE
        self._rosters[username] = roster
        self.contacts += len(roster)
        self.charge += len(roster) + USER_CHARGE
        self._evict(keep=username)
        return previous

    def overBound(self) -> str | None:
        """
        Why the cache holds more than its bound, or C{None}: what is left
        over it is online users' rosters, which stay (and the one stored
        last).
        """
        if self.maxContacts is None or self.charge <= self.maxContacts:
            return None
        return (f"the roster cache is over its bound: {self.charge:,} contacts (plus {USER_CHARGE} per user) "
                f"for --cache-max-contacts {self.maxContacts:,}, held by online users' rosters, which stay")

    def _evict(self, keep: str) -> None:
        if self.maxContacts is None or self.charge <= self.maxContacts:
            return
        # Each pinned roster met is moved to the recent end, so a pass
        # visits every entry at most once.
        for _ in range(len(self._rosters)):
            if self.charge <= self.maxContacts:
                return
            username, roster = next(iter(self._rosters.items()))
            if username == keep or self.pinned(username):
                self._rosters.move_to_end(username)
                continue
            del self._rosters[username]
            self.contacts -= len(roster)
            self.charge -= len(roster) + USER_CHARGE
            self.evictions += 1
            self.onEvict(username)
