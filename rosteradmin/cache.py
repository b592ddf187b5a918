# -*- test-case-name: tests.test_cache -*-
"""
The roster cache: the last good roster of each user, held in memory.

The web app is the source of truth; the cache holds what it said last, so a
user's roster can be served at once, and served stale while the web app is
down.  Entries are replaced only by a complete, validated roster, never
removed by a failed fetch.
"""

from __future__ import annotations

from typing import Iterator

from rosteradmin.roster import Roster


class RosterCache:
    """
    Rosters by username.  Pure: no I/O, no clock.
    """

    def __init__(self) -> None:
        self._rosters: dict[str, Roster] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rosters)

    def __contains__(self, username: str) -> bool:
        return username in self._rosters

    def __iter__(self) -> Iterator[str]:
        return iter(self._rosters)

    def get(self, username: str) -> Roster | None:
        """
        The cached roster of a user, counting a hit or a miss.
        """
        roster = self._rosters.get(username)
        if roster is None:
            self.misses += 1
        else:
            self.hits += 1
        return roster

    def peek(self, username: str) -> Roster | None:
        """
        The cached roster of a user, without counting.
        """
        return self._rosters.get(username)

    def put(self, username: str, roster: Roster) -> Roster | None:
        """
        Store a user's roster.

        @return: The roster it replaces, if any.
        """
        previous = self._rosters.get(username)
        self._rosters[username] = roster
        return previous
