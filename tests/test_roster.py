"""
Tests for roster values: parsing the web app's JSON, versions, XML, diffs
and usernames.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep
from twisted.words.xish import domish

from rosteradmin.errors import InvalidRoster, InvalidUsername
from rosteradmin.roster import (
    EMPTY_ROSTER,
    MAX_TEXT_LENGTH,
    NS_ROSTER,
    Contact,
    Roster,
    RosterDiff,
    alignGroups,
    diffRosters,
    contactJID,
    _contactDomain,
    _nodeprep,
    _internGroups,
    holdsVersion,
    normaliseUsername,
    parseRoster,
)
from tests.helpers import parseXML

OWNER = "alice@example.org"
SPEC_EXAMPLE = (
    b'{"marie@example.com": {"name": "Marie"}, '
    b'"michael@example.com": {"name": "Michael", "groups": ["Work"]}}'
)


def parse(data: Any) -> Roster:
    """
    Parse a JSON-able value as the web app's reply for L{OWNER}.
    """
    return parseRoster(json.dumps(data).encode("utf-8"), OWNER)


def queryElement(roster: Roster) -> domish.Element:
    """
    The parsed C{<query/>} payload of a roster.
    """
    iq = parseXML(f"<iq type='result' id='r'>{roster.queryXML()}</iq>")
    return iq.firstChildElement()


# Parsing


def test_parseSpecExample() -> None:
    """
    The example of SPEC section 2 gives two contacts with names and groups.
    """
    roster = parseRoster(SPEC_EXAMPLE, OWNER)
    assert roster.contacts == (
        Contact("marie@example.com", "Marie", ()),
        Contact("michael@example.com", "Michael", ("Work",)),
    )
    assert len(roster) == 2 and list(roster) == list(roster.contacts)


def test_parseEmptyObject() -> None:
    """
    An empty object is a valid, empty roster, equal to the shared empty one.
    """
    roster = parseRoster(b"{}", OWNER)
    assert len(roster) == 0 and roster == EMPTY_ROSTER
    assert roster.version == EMPTY_ROSTER.version


def test_parseOptionalFieldsAbsentOrNull() -> None:
    """
    A contact with no fields, or null ones, has no name and no groups.
    """
    roster = parse({"a@x.org": {}, "b@x.org": {"name": None, "groups": None}})
    assert roster.contacts == (Contact("a@x.org", None, ()), Contact("b@x.org", None, ()))


def test_emptyNameIsNoName() -> None:
    """
    An empty name counts as no name at all.
    """
    [contact] = parse({"bob@example.org": {"name": ""}})
    assert contact.name is None


def test_unknownFieldsIgnored() -> None:
    """
    Fields of a contact other than name and groups are ignored.
    """
    [contact] = parse({"bob@example.org": {"name": "Bob", "subscription": "none", "x": [1]}})
    assert contact == Contact("bob@example.org", "Bob", ())


def test_jidsNormalised() -> None:
    """
    Contact JIDs are stringprepped: node and domain fold to lower case.
    """
    [contact] = parse({"Bob@Example.ORG": {}})
    assert contact.jid == "bob@example.org"


@pytest.mark.parametrize("key", [
    "bob@example.org.", "BOB@EXAMPLE.ORG.", "bob@example\uff0eorg", "b\u00adob@example.org",
])
def test_jidsNormalisedAsProsodyStoresThem(key: str) -> None:
    """
    Keys Prosody's jid.prep stores as C{bob@example.org} (a final dot
    stripped, case folded, a fullwidth dot read as a dot, a soft hyphen
    dropped) are that contact, so a sync diffs them equal to the stored one.
    """
    [contact] = parse({key: {"name": "Bob"}})
    assert contact == Contact("bob@example.org", "Bob", ())
    assert parse({key: {}}).byJID().keys() == parse({"bob@example.org": {}}).byJID().keys()


def test_sameContactTwiceAfterNormalising() -> None:
    """
    A contact listed with and without the final dot is listed twice.
    """
    with pytest.raises(InvalidRoster, match="'bob@example.org.' is listed twice"):
        parseRoster(b'{"bob@example.org": {}, "bob@example.org.": {}}', OWNER)


def test_ownerWithFinalDot() -> None:
    """
    The owner's own JID with a final dot is still the owner.
    """
    with pytest.raises(InvalidRoster, match="'Alice@example.org.' is the roster's owner"):
        parse({"Alice@example.org.": {}})


@pytest.mark.parametrize("key", ["example.org", "roster.example.org", "Example.ORG.", "chat.example.org"])
def test_contactsWithoutLocalpartRefused(key: str) -> None:
    """
    A bare domain (a server, this component) is no user, so it cannot be a
    contact: the whole reply is refused, as for the owner's own JID.
    """
    with pytest.raises(InvalidRoster, match=f"contact {key!r} has no localpart: only users can be contacts"):
        parse({"bob@example.org": {}, key: {"name": "Rooms"}})


@pytest.mark.parametrize("key, why", [
    ("bob@example.org..", "empty label"),
    ("bob@example.org\uff0e", "empty label"),
    ("bob@example..org", "empty label"),
    ("bob@.", "empty domainpart"),
    ("bob@", "empty domainpart"),
    ("\u00ad@example.org", "empty localpart"),
    ("bob@example\u3002org", "Prosody would prepare the domainpart differently"),
    ("bob@example\uff61org", "Prosody would prepare the domainpart differently"),
    ("bob@\u0639\u0631\u0628\u064a.example", "BIDI requirement 2"),
    ("\u0639\u2808\u0639@example.org", "bidi rule of Prosody's Unicode version"),
    ("bob@\U0001f642.example", "domainpart holds a code point unassigned in Unicode 3.2"),
    ("\U0001f642@example.org", "localpart holds a code point unassigned in Unicode 3.2"),
    ("a\u023db@example.org", "localpart holds a code point unassigned in Unicode 3.2"),
    ("bob@a\u10a0b.example", "domainpart holds a code point unassigned in Unicode 3.2"),
    ("bob@a\u1dc0\u0316.example", "domainpart holds a code point unassigned in Unicode 3.2"),
    ("b" * 1024 + "@example.org", "localpart over 1023 octets"),
    ("\u00e9" * 512 + "@example.org", "localpart over 1023 octets"),
    ("bob@" + "a" * 1024, "domainpart over 1023 octets"),
    ("\u3300" * 90 + "@example.org", "localpart over 1023 octets"),
    ("bob@" + "\u3300" * 90, "domainpart over 1023 octets"),
])
def test_jidsProsodyWouldStoreOtherwiseRefused(key: str, why: str) -> None:
    """
    A key Prosody would refuse or store under another JID, or one with
    code points Twisted's stringprep does not prepare as Prosody's does
    (checked against Prosody itself in tests/integration/test_jids.py), is
    refused rather than removed and added again on every sync.
    """
    with pytest.raises(InvalidRoster, match="is not a valid JID: ") as e:
        parse({key: {}})
    assert why in str(e.value)


def test_longestPartsAccepted() -> None:
    """
    A localpart and a domainpart of 1023 octets each, the most Prosody
    takes, are accepted; a final dot is not counted.
    """
    node, domain = "b" * 1023, ".".join(["a" * 63] * 16)[:1023]
    [contact] = parse({f"{node}@{domain}.": {}})
    assert contact.jid == f"{node}@{domain}"


def test_contactJIDsCached() -> None:
    """
    Stringprep runs once per distinct key, and once per distinct domain:
    a second roster with the same contacts, or a new contact at a known
    domain, reuses the earlier work.
    """
    contactJID.cache_clear()
    _contactDomain.cache_clear()
    data = {f"user{i}@cached.example": {} for i in range(100)}
    parse(data)
    assert _contactDomain.cache_info().misses == 1
    assert contactJID.cache_info().misses == 100
    parse(data)
    assert contactJID.cache_info().hits == 100 and contactJID.cache_info().misses == 100
    parse({"new@cached.example": {}})
    assert _contactDomain.cache_info().misses == 1


def test_contactsSortedByJID() -> None:
    """
    Contacts are held sorted by JID, whatever the web app's order.
    """
    roster = parse({"c@x.org": {}, "a@x.org": {}, "b@x.org": {}})
    assert [c.jid for c in roster] == ["a@x.org", "b@x.org", "c@x.org"]


def test_groupsDeduplicatedInOrder() -> None:
    """
    Duplicate groups are dropped, keeping the web app's order of first use.
    """
    [contact] = parse({"bob@example.org": {"groups": ["Work", "Friends", "Work", "Family", "Friends"]}})
    assert contact.groups == ("Work", "Friends", "Family")


def test_textWithAllowedWhitespaceAndUnicode() -> None:
    """
    Names and groups may hold tabs, newlines, markup characters and any
    character XML can carry, astral ones included.
    """
    name = "Zoë \t<b>&'\"\n😀"
    [contact] = parse({"bob@example.org": {"name": name, "groups": ["Ünïcode", "a&b"]}})
    assert contact.name == name and contact.groups == ("Ünïcode", "a&b")


def test_textAtLengthLimit() -> None:
    """
    Names and groups of exactly the maximum length are accepted.
    """
    text = "x" * MAX_TEXT_LENGTH
    [contact] = parse({"bob@example.org": {"name": text, "groups": [text]}})
    assert contact.name == text and contact.groups == (text,)


def test_stringsInterned() -> None:
    """
    Equal JIDs, names and group sets from separate replies are shared
    objects, not copies.
    """
    one = parse({"bob@example.org": {"name": "Bobby", "groups": ["Work", "Home"]}})
    two = parse({"bob@example.org": {"name": "Bobby", "groups": ["Work", "Home"]},
                 "carol@example.org": {"groups": ["Home"]}})
    [a], [b, c] = one.contacts, two.contacts
    assert a.jid is b.jid
    assert a.name is b.name
    assert a.groups is b.groups
    assert c.groups[0] is a.groups[1]


@pytest.mark.parametrize("body, why", [
    (b"not json", "body is not JSON"),
    (b"", "body is not JSON"),
    (b"\xff\xfe", "body is not JSON"),
    (b'{"bob@example.org": {}', "body is not JSON"),
    (b"[" * 100000 + b"]" * 100000, "body is not JSON"),
    (b"[]", "body must be a JSON object, got list"),
    (b'[{"bob@example.org": {}}]', "body must be a JSON object, got list"),
    (b'"x"', "body must be a JSON object, got str"),
    (b"3", "body must be a JSON object, got int"),
    (b"null", "body must be a JSON object, got NoneType"),
    (b'{"": {}}', "contact key '' is not a JID"),
    (b'{"not a jid@@": {}}', "is not a valid JID"),
    (b'{"bob@": {}}', "is not a valid JID"),
    (b'{"bob@exa mple.org": {}}', "is not a valid JID"),
    (b'{"bob@example.org/phone": {}}', "'bob@example.org/phone' is not a bare JID"),
    (b'{"example.org/res": {}}', "is not a bare JID"),
    (b'{"bob@example.org/": {}}', "is not a bare JID"),
    (b'{"@example.org": {}}', "'@example.org' is not a valid JID: empty localpart"),
    (b'{"alice@example.org": {}}', "'alice@example.org' is the roster's owner"),
    (b'{"ALICE@Example.ORG": {}}', "is the roster's owner"),
    (b'{"bob@example.org": {}, "BOB@example.org": {}}', "'BOB@example.org' is listed twice"),
    (b'{"bob@example.org": []}', "value must be an object"),
    (b'{"bob@example.org": "Bob"}', "value must be an object"),
    (b'{"bob@example.org": null}', "value must be an object"),
    (b'{"bob@example.org": {"name": 3}}', "name must be a string, got int"),
    (b'{"bob@example.org": {"name": ["Bob"]}}', "name must be a string, got list"),
    (b'{"bob@example.org": {"name": true}}', "name must be a string, got bool"),
    (b'{"bob@example.org": {"groups": "Work"}}', "groups must be an array"),
    (b'{"bob@example.org": {"groups": {"Work": 1}}}', "groups must be an array"),
    (b'{"bob@example.org": {"groups": [1]}}', "group must be a string, got int"),
    (b'{"bob@example.org": {"groups": [null]}}', "group must be a string, got NoneType"),
    (b'{"bob@example.org": {"groups": [["Work"]]}}', "group must be a string, got list"),
    (b'{"bob@example.org": {"groups": [""]}}', "empty group name"),
    (b'{"bob@example.org": {"name": "a\\u0001b"}}', "name contains characters XML cannot carry"),
    (b'{"bob@example.org": {"name": "a\\u0000b"}}', "name contains characters XML cannot carry"),
    (b'{"bob@example.org": {"name": "a\\u001fb"}}', "name contains characters XML cannot carry"),
    (b'{"bob@example.org": {"name": "a\\uffffb"}}', "name contains characters XML cannot carry"),
    (b'{"bob@example.org": {"name": "a\\ufffeb"}}', "name contains characters XML cannot carry"),
    (b'{"bob@example.org": {"name": "a\\ud800b"}}', "name contains characters XML cannot carry"),
    (b'{"bob@example.org": {"name": "\\udfff"}}', "name contains characters XML cannot carry"),
    (b'{"bob@example.org": {"groups": ["W\\u0007"]}}', "group contains characters XML cannot carry"),
    (b'{"bob@example.org": {"name": "\xed\xa0\x80"}}', "name contains characters XML cannot carry"),
    (b'{"bob@example.org": {"groups": ["\\udc00"]}}', "group contains characters XML cannot carry"),
    (b'{"bob@example.org": {"name": "' + b"x" * (MAX_TEXT_LENGTH + 1) + b'"}}', "name is longer than 1024"),
    (b'{"bob@example.org": {"groups": ["' + b"x" * (MAX_TEXT_LENGTH + 1) + b'"]}}', "group is longer than 1024"),
])
def test_parseRejectsWholeReply(body: bytes, why: str) -> None:
    """
    Any invalid entry rejects the whole reply with InvalidRoster saying why.
    """
    with pytest.raises(InvalidRoster) as e:
        parseRoster(body, OWNER)
    assert why in str(e.value)


def test_oneBadEntryRejectsTheRest() -> None:
    """
    A reply with many good contacts and one bad one is rejected as a whole.
    """
    data: dict[str, Any] = {f"u{i}@example.org": {"name": f"U{i}"} for i in range(50)}
    data["u25@example.org"] = {"name": 25}
    with pytest.raises(InvalidRoster, match="'u25@example.org': name must be a string"):
        parse(data)


@pytest.mark.parametrize("key", ["a@\u00ad", "a@-", "a@.", "\ud800@example.org"])
def test_jidsTwistedCannotParse(key: str) -> None:
    """
    Keys on which Twisted's JID parsing raises (nameprep's IndexError
    included, found by fuzzing) are a clean rejection.
    """
    with pytest.raises(InvalidRoster, match="is not a valid JID"):
        parse({key: {}})


def test_rejectedContactsNeverReachXML() -> None:
    """
    Everything that parses serialises to UTF-8: characters XML cannot carry
    are refused at parsing, not found when the stanza is sent.
    """
    for name in ["\ud800", "ok\udfffok", "\x0b"]:
        with pytest.raises(InvalidRoster):
            parse({"bob@example.org": {"name": name}})
    roster = parse({"bob@example.org": {"name": "\U0001f600 fine"}})
    roster.queryXML().encode("utf-8")


# Versions


def test_versionStableAcrossOrderAndDuplicates() -> None:
    """
    The same contents give the same version, whatever the order of contacts
    in the reply and however groups were repeated.
    """
    a = parseRoster(SPEC_EXAMPLE, OWNER)
    b = parse({
        "michael@example.com": {"groups": ["Work", "Work"], "name": "Michael"},
        "marie@example.com": {"name": "Marie", "groups": []},
    })
    assert a == b and hash(a) == hash(b)
    assert a.version == b.version


def test_versionIsAFixedDigest() -> None:
    """
    The version is a short hex digest that does not depend on the process
    (no salted hashing), so it survives a restart of the service.
    """
    roster = parseRoster(SPEC_EXAMPLE, OWNER)
    assert re.fullmatch(r"[0-9a-f]{16}", roster.version)
    assert roster.version == Roster(list(roster.contacts)).version
    assert EMPTY_ROSTER.version == Roster([]).version


BASE = {"marie@example.com": {"name": "Marie"}, "michael@example.com": {"name": "Michael", "groups": ["Work"]}}


@pytest.mark.parametrize("changed", [
    {**BASE, "marie@example.com": {"name": "Mary"}},
    {**BASE, "marie@example.com": {}},
    {**BASE, "marie@example.com": {"name": "Marie", "groups": ["Friends"]}},
    {**BASE, "michael@example.com": {"name": "Michael", "groups": ["Work", "Home"]}},
    {**BASE, "michael@example.com": {"name": "Michael", "groups": ["work"]}},
    {"marie@example.net": {"name": "Marie"}, "michael@example.com": BASE["michael@example.com"]},
    {**BASE, "zoe@example.com": {}},
    {"michael@example.com": BASE["michael@example.com"]},
])
def test_versionChangesWithContents(changed: dict[str, Any]) -> None:
    """
    Any change of a JID, name or group gives a new version.
    """
    before, after = parse(BASE), parse(changed)
    assert after != before
    assert after.version != before.version


def test_versionDistinguishesNameFromGroup() -> None:
    """
    A name and a group of the same text do not collide.
    """
    assert Roster([Contact("b@x.org", "W", ())]).version != Roster([Contact("b@x.org", None, ("W",))]).version


# XML


def test_queryXMLHasNoWhitespace() -> None:
    """
    The query payload carries no text between elements, which
    mod_delegation would drop the reply for.
    """
    roster = parseRoster(SPEC_EXAMPLE, OWNER)
    xml = roster.queryXML()
    assert not re.search(r">\s+<", xml)
    assert "\n" not in xml
    query = queryElement(roster)
    items = list(query.children)
    assert len(items) == 2 and all(isinstance(item, domish.Element) for item in items)
    assert all(isinstance(child, domish.Element) for item in items for child in item.children)


def test_queryXMLContents() -> None:
    """
    The query carries the roster namespace, the version and one item per
    contact with subscription both, its name and its groups.
    """
    roster = parseRoster(SPEC_EXAMPLE, OWNER)
    query = queryElement(roster)
    assert (query.name, query.uri, query["ver"]) == ("query", NS_ROSTER, roster.version)
    items = list(query.elements(NS_ROSTER, "item"))
    assert [(i["jid"], i.getAttribute("name"), i["subscription"]) for i in items] == [
        ("marie@example.com", "Marie", "both"),
        ("michael@example.com", "Michael", "both"),
    ]
    assert list(items[0].elements()) == []
    assert [str(g) for g in items[1].elements(NS_ROSTER, "group")] == ["Work"]


def test_queryXMLItemWithoutName() -> None:
    """
    A contact without a name has no name attribute.
    """
    query = queryElement(Roster([Contact("bob@example.org", None, ())]))
    [item] = query.elements()
    assert not item.hasAttribute("name")


def test_queryXMLOfEmptyRoster() -> None:
    """
    An empty roster is an empty query with a version.
    """
    xml = EMPTY_ROSTER.queryXML()
    assert xml == f"<query xmlns='{NS_ROSTER}' ver='{EMPTY_ROSTER.version}'></query>"


@pytest.mark.parametrize("name", ["Bob's", 'say "hi"', "a & b", "<b>bold</b>", "'\"&<>", "&amp;"])
def test_queryXMLEscapesNames(name: str) -> None:
    """
    Quotes, ampersands and angle brackets in names and groups survive a
    round trip through an XML parser.
    """
    roster = Roster([Contact("bob@example.org", name, (name, "plain"))])
    xml = roster.queryXML()
    assert "'" not in name or "&apos;" in xml
    assert "&" not in name or "&amp;" in xml
    [item] = queryElement(roster).elements()
    assert item["name"] == name
    assert [str(g) for g in item.elements()] == [name, "plain"]


def test_queryXMLBuiltOnce() -> None:
    """
    The payload is serialised once and reused.
    """
    roster = parseRoster(SPEC_EXAMPLE, OWNER)
    assert roster.queryXML() is roster.queryXML()


def test_contactRemoveItem() -> None:
    """
    A removal item carries the JID and subscription remove only.
    """
    item = parseXML(Contact("bob@example.org", "Bob", ("Work",)).toXML("remove"), NS_ROSTER)
    assert (item["jid"], item["subscription"], item.hasAttribute("name"), list(item.elements())) == (
        "bob@example.org", "remove", False, [])


def test_byJID() -> None:
    """
    byJID maps each bare JID to its contact.
    """
    roster = parseRoster(SPEC_EXAMPLE, OWNER)
    assert roster.byJID() == {
        "marie@example.com": Contact("marie@example.com", "Marie", ()),
        "michael@example.com": Contact("michael@example.com", "Michael", ("Work",)),
    }


def test_rosterEquality() -> None:
    """
    Rosters are equal by contents only, and never equal to other types.
    """
    a = Roster([Contact("b@x.org", None, ())])
    assert a == Roster([Contact("b@x.org", None, ())])
    assert a != Roster([Contact("b@x.org", "B", ())])
    assert a != a.contacts
    assert "1 contacts" in repr(a) and a.version in repr(a)


# Diffs


def test_diffAddedChangedRemoved() -> None:
    """
    A diff lists added and changed contacts, in JID order, and removed JIDs.
    """
    old = Roster([Contact("a@x", "A", ()), Contact("b@x", "B", ()), Contact("c@x", None, ()), Contact("e@x", None, ("G",))])
    new = Roster([Contact("a@x", "A", ()), Contact("b@x", "Bee", ()), Contact("d@x", None, ()), Contact("e@x", None, ("H",))])
    diff = diffRosters(old, new)
    assert diff == RosterDiff(
        changed=(Contact("b@x", "Bee", ()), Contact("d@x", None, ()), Contact("e@x", None, ("H",))),
        removed=("c@x",),
    )
    assert bool(diff) and len(diff) == 4


def test_diffOfEqualRostersIsEmpty() -> None:
    """
    Equal rosters have an empty, falsy diff.
    """
    roster = parseRoster(SPEC_EXAMPLE, OWNER)
    diff = diffRosters(roster, parseRoster(SPEC_EXAMPLE, OWNER))
    assert diff == RosterDiff((), ()) and not diff and len(diff) == 0


def test_diffFromNothing() -> None:
    """
    From no roster at all, every contact is added and nothing removed.
    """
    new = parseRoster(SPEC_EXAMPLE, OWNER)
    assert diffRosters(None, new) == RosterDiff(new.contacts, ())
    assert not diffRosters(None, EMPTY_ROSTER)


def test_diffToEmpty() -> None:
    """
    Emptying a roster removes every contact, in JID order.
    """
    old = parse({"c@x.org": {}, "a@x.org": {"name": "A"}})
    assert diffRosters(old, EMPTY_ROSTER) == RosterDiff((), ("a@x.org", "c@x.org"))


# Usernames


@pytest.mark.parametrize("given, expected", [
    ("alice", "alice"),
    ("Alice", "alice"),
    ("ALICE", "alice"),
    ("ÄLICE", "älice"),
    ("Straße", "strasse"),
    ("john.doe-1_x", "john.doe-1_x"),
    ("x" * 1023, "x" * 1023),
])
def test_normaliseUsername(given: str, expected: str) -> None:
    """
    Usernames are nodeprepped: case folded, otherwise kept.
    """
    assert normaliseUsername(given) == expected


def test_asciiNodeprepIsTwisteds() -> None:
    """
    The ASCII fast path of nodeprep gives what Twisted's nodeprep gives,
    or refuses what it refuses, for every ASCII character alone, among
    others and repeated.
    """
    def prepared(prepare: Any, text: str) -> str | None:
        try:
            return str(prepare(text))
        except UnicodeError:
            return None

    for character in map(chr, range(128)):
        for text in (character, f"aZ{character}9", character * 3):
            assert prepared(_nodeprep, text) == prepared(nodeprep.prepare, text), repr(text)


@pytest.mark.parametrize("given", [
    "", "a@b", "a/b", "a:b", "a'b", 'a"b', "a&b", "a<b", "a>b", "a b",
    "x" * 1024, "é" * 512, "a\u0000", "\ud800", None, 3, b"alice",
])
def test_invalidUsernames(given: Any) -> None:
    """
    Usernames that cannot be JID nodes (or are not strings at all) are
    refused with InvalidUsername.
    """
    with pytest.raises(InvalidUsername, match="invalid username"):
        normaliseUsername(given)


def test_alignGroups() -> None:
    """
    A stored contact's groups take the wanted order when they are the same
    groups; other groups, and contacts not wanted, stay as stored.
    """
    held = Roster([Contact("bob@example.org", "Bob", ("Work", "Friends")),
                   Contact("carol@example.org", None, ("Work",)),
                   Contact("dave@example.org", None, ("B", "A"))])
    wanted = Roster([Contact("bob@example.org", "Bob", ("Friends", "Work")),
                     Contact("carol@example.org", None, ("Home", "Work"))])
    aligned = alignGroups(held, wanted).byJID()
    assert aligned["bob@example.org"] == wanted.byJID()["bob@example.org"]
    assert aligned["carol@example.org"].groups == ("Work",)
    assert aligned["dave@example.org"].groups == ("B", "A")
    assert alignGroups(wanted, wanted) is wanted


# Groups are a set


def orderedVersion(roster: Roster) -> str:
    """
    The version as it was computed while group order counted (each
    contact's fields digested as held): what state files written before
    record.
    """
    total = sum(int.from_bytes(hashlib.blake2b(repr(tuple(c)).encode("utf-8"), digest_size=16).digest(), "big")
                for c in roster.contacts) % (1 << 128)
    return hashlib.blake2b(total.to_bytes(16, "big"), digest_size=8).hexdigest()


def test_groupOrderChangesNoVersionAndNoDiff() -> None:
    """
    The web app listing a contact's groups in another order gives an equal
    roster, with the same version, and no diff; the order it gave is kept
    for serialising.
    """
    a = parse({"bob@example.org": {"name": "Bob", "groups": ["Work", "Friends"]}})
    b = parse({"bob@example.org": {"name": "Bob", "groups": ["Friends", "Work"]}})
    assert a.contacts != b.contacts and [c.groups for c in b] == [("Friends", "Work")]
    assert a.version == b.version and a == b and hash(a) == hash(b)
    assert not diffRosters(a, b) and not diffRosters(b, a)
    c = parse({"bob@example.org": {"name": "Bob", "groups": ["Friends", "Home"]}})
    assert a.version != c.version and a != c and diffRosters(a, c).changed == c.contacts


def test_versionsWithoutOrderedGroupsUnchanged() -> None:
    """
    Where no contact has two groups out of sorted order, the version is
    the one computed while group order counted: state files and clients
    keep those versions across the upgrade.
    """
    roster = parse({"bob@example.org": {"name": "Bob", "groups": ["Friends", "Work"]},
                    "carol@example.org": {"groups": ["Chess"]}, "dave@example.org": {}})
    assert roster.version == orderedVersion(roster)
    reordered = parse({"bob@example.org": {"name": "Bob", "groups": ["Work", "Friends"]}})
    assert reordered.version != orderedVersion(reordered)


def test_holdsVersionRecordedWithGroupOrder() -> None:
    """
    A stored roster holds a version recorded while group order counted
    when, with its groups in the web app's order, it digests to it; a
    stored roster that differs otherwise does not.
    """
    written = parse({"bob@example.org": {"name": "Bob", "groups": ["Work", "Friends"]}})
    recorded = orderedVersion(written)
    stored = Roster([Contact("bob@example.org", "Bob", ("Friends", "Work"))])
    assert recorded != stored.version
    assert holdsVersion(stored, written, recorded)
    assert holdsVersion(stored, written, written.version)
    renamed = parse({"bob@example.org": {"name": "Bobby", "groups": ["Work", "Friends"]}})
    assert holdsVersion(stored, renamed, recorded)  # the web app changed, not the server
    drifted = Roster([Contact("bob@example.org", "Bob", ("Friends",))])
    assert not holdsVersion(drifted, written, recorded) and not holdsVersion(drifted, written, written.version)


def test_groupInterningIsBounded() -> None:
    """
    Equal group lists share one tuple, but the tuples kept for sharing are
    bounded: a web app's (or a refresh's) distinct group lists do not grow
    it without end.
    """
    maxsize = _internGroups.cache_info().maxsize
    assert maxsize is not None
    for n in range(maxsize + 100):
        parse({"bob@example.org": {"groups": [f"g{n}", "x"]}})
    assert _internGroups.cache_info().currsize == maxsize
    [first] = parse({"bob@example.org": {"groups": ["same", "x"]}})
    [second] = parse({"bob@example.org": {"groups": ["same", "x"]}})
    assert first.groups is second.groups
