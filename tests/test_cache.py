"""
Tests for the roster cache: lookups, counting, replacement.
"""

from __future__ import annotations

from rosteradmin.cache import USER_CHARGE, RosterCache
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


def test_usersWithoutContactsCountAgainstTheBound() -> None:
    """
    A cached user costs memory even with no contacts (a refresh of names
    the web app answers C{{}} for): each roster is charged its contacts
    plus USER_CHARGE, so empty rosters are evicted too, least recently
    used first.
    """
    cache = RosterCache(maxContacts=10 * USER_CHARGE)
    for n in range(25):
        cache.put(f"nobody{n}", EMPTY_ROSTER)
    assert len(cache) == 10 and cache.evictions == 15
    assert list(cache) == [f"nobody{n}" for n in range(15, 25)]
    assert (cache.contacts, cache.charge) == (0, 10 * USER_CHARGE)


def test_chargeIsContactsPlusUsers() -> None:
    """
    The charge follows puts, replacements and evictions: contacts plus
    USER_CHARGE per cached user.
    """
    cache = RosterCache(maxContacts=2 + 2 * USER_CHARGE)
    cache.put("alice", BOB)
    cache.put("dave", CAROL)
    assert (cache.contacts, cache.charge) == (2, 2 + 2 * USER_CHARGE)
    cache.put("alice", EMPTY_ROSTER)
    assert (cache.contacts, cache.charge) == (1, 1 + 2 * USER_CHARGE)
    cache.put("erin", BOB)
    assert sorted(cache) == ["alice", "erin"] and (cache.contacts, cache.charge) == (1, 1 + 2 * USER_CHARGE)


def test_evictionsAreTold() -> None:
    """
    Each roster dropped for the bound is told to onEvict, and only those:
    the backend forgets what it kept of those users.
    """
    cache = RosterCache(maxContacts=2 * USER_CHARGE)
    evicted: list[str] = []
    cache.onEvict = evicted.append
    for user in ["a", "b", "c", "d"]:
        cache.put(user, EMPTY_ROSTER)
    cache.put("d", EMPTY_ROSTER)
    assert evicted == ["a", "b"] and sorted(cache) == ["c", "d"]


def test_overBoundOnlyWithOnlineUsers() -> None:
    """
    The cache says why it is over its bound when online users' rosters
    keep it there; within the bound it says nothing.
    """
    online = {"a", "b"}
    cache = RosterCache(maxContacts=USER_CHARGE, pinned=lambda u: u in online)
    cache.put("a", EMPTY_ROSTER)
    assert cache.overBound() is None
    cache.put("b", EMPTY_ROSTER)
    cache.put("c", EMPTY_ROSTER)
    why = cache.overBound()
    assert sorted(cache) == ["a", "b", "c"] and why is not None
    assert "over its bound" in why and "online users" in why and f"{3 * USER_CHARGE:,}" in why
    online.clear()
    cache.put("d", EMPTY_ROSTER)
    assert list(cache) == ["d"] and cache.overBound() is None
