"""
Tests for roster values: parsing the web app's JSON, versions, XML, diffs,
usernames, and the cache.
"""

from __future__ import annotations

import json
import sys

import pytest

from rosteradmin.cache import RosterCache
from rosteradmin.errors import InvalidRoster, InvalidUsername
from rosteradmin.roster import Contact, Roster, diffRosters, normaliseUsername, parseRoster
from tests.helpers import parseXML

OWNER = "alice@example.org"
SPEC_EXAMPLE = b'{"marie@example.com": {"name": "Marie"}, "michael@example.com": {"name": "Michael", "groups": ["Work"]}}'


def test_parseSpecExample() -> None:
    """
    The example of SPEC section 2 gives two contacts with names and groups.
    """
    roster = parseRoster(SPEC_EXAMPLE, OWNER)
    assert roster.contacts == (
        Contact("marie@example.com", "Marie", ()),
        Contact("michael@example.com", "Michael", ("Work",)),
    )


def test_parseNormalisesAndDeduplicates() -> None:
    """
    JIDs are normalised, duplicate groups dropped in order, empty names
    treated as absent, and strings interned.
    """
    roster = parseRoster(b'{"Bob@Example.ORG": {"name": "", "groups": ["B", "A", "B"]}}', OWNER)
    [bob] = roster.contacts
    assert bob == Contact("bob@example.org", None, ("B", "A"))
    assert bob.jid is sys.intern("bob@example.org")


@pytest.mark.parametrize("body, why", [
    (b"not json", "not JSON"),
    (b"\xff", "not JSON"),
    (b"[]", "must be a JSON object"),
    (b'"x"', "must be a JSON object"),
    (b'{"not a jid@@": {}}', "not a valid JID"),
    (b'{"bob@example.org/phone": {}}', "not a bare JID"),
    (b'{"alice@example.org": {}}', "roster's owner"),
    (b'{"ALICE@example.org": {}}', "roster's owner"),
    (b'{"bob@example.org": {}, "BOB@example.org": {}}', "listed twice"),
    (b'{"bob@example.org": []}', "value must be an object"),
    (b'{"bob@example.org": {"name": 3}}', "name must be a string"),
    (b'{"bob@example.org": {"groups": "Work"}}', "groups must be an array"),
    (b'{"bob@example.org": {"groups": [1]}}', "group must be a string"),
    (b'{"bob@example.org": {"groups": [""]}}', "empty group name"),
    (b'{"bob@example.org": {"name": "a\\u0001b"}}', "characters XML cannot carry"),
    (b'{"bob@example.org": {"name": "' + b"x" * 2000 + b'"}}', "longer than"),
    (b"[" * 100000 + b"]" * 100000, "not JSON"),
])
def test_parseRejectsWholeReply(body: bytes, why: str) -> None:
    """
    Any invalid entry rejects the whole reply, with a reason.
    """
    with pytest.raises(InvalidRoster, match=why):
        parseRoster(body, OWNER)


def test_versionFollowsContents() -> None:
    """
    Equal rosters have equal versions; any change changes it.
    """
    a = parseRoster(SPEC_EXAMPLE, OWNER)
    b = parseRoster(json.dumps(dict(reversed(list(json.loads(SPEC_EXAMPLE).items())))).encode(), OWNER)
    c = parseRoster(SPEC_EXAMPLE.replace(b"Marie", b"Mary"), OWNER)
    assert a.version == b.version and a == b
    assert a.version != c.version


def test_queryXMLIsCompactEscapedAndCached() -> None:
    """
    The query payload has no whitespace between elements, escapes markup,
    and is built once.
    """
    roster = Roster([Contact("bob@example.org", "Bob's <&>", ("A&B",))])
    xml = roster.queryXML()
    assert "> <" not in xml and "\n" not in xml
    item = parseXML(f"<iq>{xml}</iq>").query.item
    assert (item["name"], str(item.group), item["subscription"]) == ("Bob's <&>", "A&B", "both")
    assert roster.queryXML() is xml


def test_diff() -> None:
    """
    A diff lists added and changed contacts, and removed JIDs; from nothing,
    everything is added.
    """
    old = Roster([Contact("a@x", "A", ()), Contact("b@x", "B", ()), Contact("c@x", None, ())])
    new = Roster([Contact("a@x", "A", ()), Contact("b@x", "Bee", ()), Contact("d@x", None, ())])
    diff = diffRosters(old, new)
    assert diff.changed == (Contact("b@x", "Bee", ()), Contact("d@x", None, ()))
    assert diff.removed == ("c@x",)
    assert not diffRosters(new, new)
    assert diffRosters(None, new).changed == new.contacts


@pytest.mark.parametrize("given, expected", [("Alice", "alice"), ("ÄLICE", "älice")])
def test_normaliseUsername(given: str, expected: str) -> None:
    """
    Usernames are nodeprepped.
    """
    assert normaliseUsername(given) == expected


@pytest.mark.parametrize("given", ["", "a@b", "a/b", "a b", "x" * 1024, "a\u0000"])
def test_invalidUsernames(given: str) -> None:
    """
    Usernames that cannot be JID nodes are refused.
    """
    with pytest.raises(InvalidUsername):
        normaliseUsername(given)


def test_cacheCountsAndReplaces() -> None:
    """
    The cache counts hits and misses, peeks without counting, and returns
    the roster a put replaces.
    """
    cache = RosterCache()
    roster = Roster([Contact("b@x", None, ())])
    assert cache.get("alice") is None
    assert cache.put("alice", roster) is None
    assert cache.get("alice") is roster and cache.peek("alice") is roster
    assert cache.put("alice", Roster([])) is roster
    assert (cache.hits, cache.misses, len(cache), "alice" in cache, list(cache)) == (1, 1, 1, True, ["alice"])


@pytest.mark.parametrize("key", ["a@\u00ad", "a@-", "a@."])
def test_jidsTwistedCannotParse(key: str) -> None:
    """
    Keys on which Twisted's JID parsing raises (nameprep's IndexError
    included, found by fuzzing) are a clean rejection.
    """
    with pytest.raises(InvalidRoster):
        parseRoster(json.dumps({key: {}}).encode(), OWNER)
