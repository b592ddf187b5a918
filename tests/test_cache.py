"""
Tests for the roster cache: lookups, counting, replacement.
"""

from __future__ import annotations

from rosteradmin.cache import RosterCache
from rosteradmin.roster import EMPTY_ROSTER, Contact, Roster

BOB = Roster([Contact("bob@example.org", "Bob", ())])
CAROL = Roster([Contact("carol@example.org", None, ("Work",))])


def test_emptyCache() -> None:
    """
    A new cache holds nothing and has counted nothing.
    """
    cache = RosterCache()
    assert (len(cache), list(cache), "alice" in cache) == (0, [], False)
    assert (cache.hits, cache.misses) == (0, 0)


def test_missCounted() -> None:
    """
    Getting an unknown user returns None and counts a miss.
    """
    cache = RosterCache()
    assert cache.get("alice") is None
    assert cache.get("alice") is None
    assert (cache.hits, cache.misses) == (0, 2)


def test_putThenGet() -> None:
    """
    A stored roster is returned as the same object, counting a hit.
    """
    cache = RosterCache()
    assert cache.put("alice", BOB) is None
    assert cache.get("alice") is BOB
    assert (cache.hits, cache.misses) == (1, 0)
    assert ("alice" in cache, len(cache), list(cache)) == (True, 1, ["alice"])


def test_emptyRosterIsAHit() -> None:
    """
    A cached empty roster is a hit, not taken for a missing entry.
    """
    cache = RosterCache()
    cache.put("alice", EMPTY_ROSTER)
    assert cache.get("alice") is EMPTY_ROSTER
    assert (cache.hits, cache.misses) == (1, 0)
    assert "alice" in cache


def test_peekDoesNotCount() -> None:
    """
    Peeking returns the roster, or None, without counting hits or misses.
    """
    cache = RosterCache()
    cache.put("alice", BOB)
    assert cache.peek("alice") is BOB
    assert cache.peek("bob") is None
    assert (cache.hits, cache.misses) == (0, 0)


def test_putReturnsReplaced() -> None:
    """
    Putting a roster replaces the user's entry and returns the previous one.
    """
    cache = RosterCache()
    cache.put("alice", BOB)
    assert cache.put("alice", CAROL) is BOB
    assert cache.put("alice", CAROL) is CAROL
    assert cache.peek("alice") is CAROL
    assert len(cache) == 1


def test_usersKeptApart() -> None:
    """
    Each user has their own entry; putting one leaves the others alone.
    """
    cache = RosterCache()
    cache.put("alice", BOB)
    cache.put("dave", CAROL)
    assert cache.peek("alice") is BOB and cache.peek("dave") is CAROL
    assert sorted(cache) == ["alice", "dave"] and len(cache) == 2


def test_usernamesAreExactKeys() -> None:
    """
    The cache does no normalisation: callers pass nodeprepped usernames.
    """
    cache = RosterCache()
    cache.put("alice", BOB)
    assert cache.peek("Alice") is None and "Alice" not in cache


def test_boundEvictsOfflineLeastRecentlyUsed() -> None:
    """
    Past the contact bound, the least recently used rosters of offline
    users go; an online user's roster and the one just stored stay.
    """
    online = {"bob"}
    cache = RosterCache(maxContacts=4, pinned=lambda u: u in online)
    two = Roster([Contact("x@example.org", None, ()), Contact("y@example.org", None, ())])
    for user in ["alice", "bob", "carol"]:
        cache.put(user, two)
    assert list(cache) == ["bob", "carol"] and cache.contacts == 4 and cache.evictions == 1
    cache.get("carol")
    cache.put("dave", two)
    assert sorted(cache) == ["bob", "dave"] and cache.evictions == 2


def test_everyoneOnlineStaysOverTheBound() -> None:
    """
    When every cached user is online, nothing is dropped (their clients
    hold those rosters), even over the bound.
    """
    cache = RosterCache(maxContacts=1, pinned=lambda u: True)
    one = Roster([Contact("x@example.org", None, ())])
    for user in ["a", "b", "c"]:
        cache.put(user, one)
    assert len(cache) == 3 and cache.evictions == 0
