# -*- test-case-name: tests.test_roster -*-
"""
Rosters as values: parsing the web app's JSON, comparing, serialising.

A L{Roster} is immutable.  Its contacts are kept as one sorted tuple of small
tuples with interned strings (the same contact JIDs recur in thousands of
rosters), and its C{<query xmlns='jabber:iq:roster'/>} payload is serialised
once, on first use, so answering a cached roster never rebuilds XML.

A roster's XEP-0237 version digests the sum of its contacts' digests, so the
version of a roster one item away is computed from the sum in constant time:
every roster push carries the version of the roster it leaves the client
with (RFC 6121 §2.6.3), however many items a sync pushes.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from encodings.idna import nameprep as idnaNameprep
from functools import lru_cache
from stringprep import in_table_a1
from typing import Any, Iterable, Iterator, NamedTuple
from unicodedata import bidirectional

from twisted.internet.interfaces import IReactorTime
from twisted.words.protocols.jabber.jid import InvalidFormat
from twisted.words.protocols.jabber.xmpp_stringprep import nameprep, nodeprep
from twisted.words.xish.domish import escapeToXml

from rosteradmin.errors import InvalidRoster, InvalidUsername
from rosteradmin.slicing import inSlices
from rosteradmin.xmltext import carriesInXML

NS_ROSTER = "jabber:iq:roster"

#: What Twisted's JID parsing raises for bad input: stringprep also fails
#: with UnicodeError, and nameprep with IndexError on labels it maps to
#: nothing (found by fuzzing).
JID_ERRORS = (InvalidFormat, UnicodeError, IndexError)

#: Longest contact name or group name accepted from the web app.
MAX_TEXT_LENGTH = 1024

#: Contact digests are summed modulo this (128 bits).
_DIGEST_MODULUS = 1 << 128


class Contact(NamedTuple):
    """
    One roster item.  The subscription is always C{both}.

    @ivar jid: The contact's bare JID, normalised as Prosody stores it.
    @ivar name: The display name, or C{None}.
    @ivar groups: The groups, in the web app's order, without duplicates.
        They are a set (RFC 6121 §2.1.2.5; servers store them so): their
        order is kept for serialising only, and no version or comparison
        depends on it (L{diffRosters}).
    """

    jid: str
    name: str | None
    groups: tuple[str, ...]

    def toXML(self, subscription: str = "both") -> str:
        """
        Serialise as a roster C{<item/>}.
        """
        attrs = f"jid='{escapeToXml(self.jid, True)}'"
        if self.name is not None and subscription != "remove":
            attrs += f" name='{escapeToXml(self.name, True)}'"
        attrs += f" subscription='{subscription}'"
        if not self.groups or subscription == "remove":
            return f"<item {attrs}/>"
        groups = "".join(f"<group>{escapeToXml(g)}</group>" for g in self.groups)
        return f"<item {attrs}>{groups}</item>"


class RosterDiff(NamedTuple):
    """
    What changed between two rosters.

    @ivar changed: Contacts added or whose name or groups changed.
    @ivar removed: Bare JIDs of contacts that are gone.
    """

    changed: tuple[Contact, ...]
    removed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed)

    def __len__(self) -> int:
        return len(self.changed) + len(self.removed)


class Roster:
    """
    An immutable roster: the contacts of one user, with a version string.

    @ivar contacts: The contacts, sorted by JID.
    @ivar version: A short digest of the contents, used as the XEP-0237
        roster version: equal rosters have equal versions, whatever the
        order of their contacts and of each contact's groups (see
        L{diffSteps}).
    """

    __slots__ = ("contacts", "version", "_queryXML")

    def __init__(self, contacts: Iterable[Contact], digestSum: int | None = None) -> None:
        """
        @param digestSum: L{_digestSum} of the contacts, if already known: a
            large roster parsed in slices sums their digests slice by slice.
        """
        self.contacts: tuple[Contact, ...] = tuple(sorted(contacts))
        self.version: str = _version(digestSum if digestSum is not None else _digestSum(self.contacts))
        self._queryXML: str | None = None

    def __len__(self) -> int:
        return len(self.contacts)

    def __iter__(self) -> Iterator[Contact]:
        return iter(self.contacts)

    def __eq__(self, other: object) -> bool:
        """
        The same contacts, each with the same groups in any order.
        """
        return isinstance(other, Roster) and (
            self.contacts == other.contacts or (self.version == other.version and not diffRosters(self, other)))

    def __hash__(self) -> int:
        return hash(self.version)

    def __repr__(self) -> str:
        return f"<Roster {len(self)} contacts ver={self.version}>"

    def byJID(self) -> dict[str, Contact]:
        """
        The contacts keyed by bare JID.
        """
        return {c.jid: c for c in self.contacts}

    def queryXML(self) -> str:
        """
        The full C{<query/>} payload of a roster result, serialised once.

        It carries no whitespace: mod_delegation drops replies with text
        nodes between elements (docs/protocol.md).
        """
        if self._queryXML is None:
            items = "".join(c.toXML() for c in self.contacts)
            self._queryXML = (
                f"<query xmlns='{NS_ROSTER}' ver='{self.version}'>{items}</query>"
            )
        return self._queryXML


class StoredRoster(NamedTuple):
    """
    A roster as the server stores it.

    @ivar roster: Its items, as contacts.
    @ivar notBoth: Contacts whose stored subscription is not C{both} (or
        with a pending C{ask}): they must be rewritten even when their name
        and groups match.
    """

    roster: Roster
    notBoth: frozenset[str]


def _contactDigest(contact: Contact) -> int:
    """
    A 128-bit digest of one contact's JID, name and groups, the groups as a
    set: sorted.  One group, or groups listed sorted, digest as they did
    when the order counted (L{holdsVersion}), so most versions stayed the
    same when it stopped counting.
    """
    groups = contact.groups if len(contact.groups) < 2 else tuple(sorted(contact.groups))
    return _digest((contact.jid, contact.name, groups))


def _digest(fields: tuple[str, str | None, tuple[str, ...]]) -> int:
    return int.from_bytes(hashlib.blake2b(repr(fields).encode("utf-8"), digest_size=16).digest(), "big")


def _digestSum(contacts: Iterable[Contact]) -> int:
    """
    The sum of the contacts' digests: it does not depend on their order, and
    adding, changing or removing one contact changes it by one term.
    """
    return sum(map(_contactDigest, contacts)) % _DIGEST_MODULUS


def _version(digestSum: int) -> str:
    """
    The roster version of a digest sum: 16 hex digits, the same in every
    process (clients keep it across restarts of this service).
    """
    return hashlib.blake2b(digestSum.to_bytes(16, "big"), digest_size=8).hexdigest()


def holdsVersion(held: Roster, wanted: Roster, version: str) -> bool:
    """
    Whether C{held} (a server's stored roster) is the roster recorded with
    C{version} when it was written.

    Versions recorded before group order stopped counting digested each
    contact's groups in the web app's order, and a state file keeps them
    across the upgrade: C{held}, with its groups in the order of
    C{wanted} (the web app's roster now), is compared with that digest
    too.  So a roster the server holds as written is never counted as
    drift; the first write after the upgrade records the new version.
    """
    if held.version == version:
        return True
    aligned = alignGroups(held, wanted)
    orderedSum = sum(_digest((c.jid, c.name, c.groups)) for c in aligned.contacts) % _DIGEST_MODULUS
    return _version(orderedSum) == version


def alignGroups(held: Roster, wanted: Roster) -> Roster:
    """
    C{held} (a server's stored roster) with each contact's groups in the
    order C{wanted} gives them, where they are the same groups.  Servers
    keep a contact's groups as a set (Prosody stores a Lua table, read back
    in any order), so the order they answer says nothing: a version
    recorded when the order counted digested the web app's order
    (L{holdsVersion}).
    """
    order = wanted.byJID()
    aligned = []
    reordered = False
    for contact in held.contacts:
        ours = order.get(contact.jid)
        if ours is not None and ours.groups != contact.groups and set(ours.groups) == set(contact.groups):
            contact = contact._replace(groups=ours.groups)
            reordered = True
        aligned.append(contact)
    # Usually nothing moves: no new roster to sort and hash then.
    return Roster(aligned) if reordered else held


EMPTY_ROSTER = Roster(())


def diffRosters(old: Roster | None, new: Roster) -> RosterDiff:
    """
    Compute the changes that turn C{old} into C{new}.

    @param old: The roster held so far; C{None} for nothing.
    """
    if old is None:
        return RosterDiff(new.contacts, ())
    before = old.byJID()
    after = new.byJID()
    changed = tuple(c for c in new.contacts if not _sameContact(before.get(c.jid), c))
    removed = tuple(j for j in sorted(before) if j not in after)
    return RosterDiff(changed, removed)


def _sameContact(old: Contact | None, new: Contact) -> bool:
    """
    Whether C{old} is C{new} as a roster item: the same name and the same
    groups, in any order.
    """
    return old == new or (old is not None and old.name == new.name and len(old.groups) == len(new.groups)
                          and set(old.groups) == set(new.groups))


class RosterStep(NamedTuple):
    """
    One roster push: an item, and the version of the roster once the client
    has applied it and the steps before it.

    @ivar item: The C{<item/>} XML, with C{subscription='both'} or
        C{'remove'}.
    @ivar version: The roster version after this step (RFC 6121 §2.6.3).
    @ivar jid: The contact's bare JID.
    """

    item: str
    version: str
    jid: str


def diffSteps(old: Roster, new: Roster, rewrite: frozenset[str] = frozenset()) -> tuple[RosterStep, ...]:
    """
    The changes that turn C{old} into C{new}, one item at a time, in the
    order of L{diffRosters} (changed, then removed), each with the version
    of the intermediate roster it leaves.

    An intermediate version is that roster's own L{Roster.version}: a client
    that stored it and asks again gets an empty result only if the roster is
    that one again, and the full roster otherwise; the last step's version
    is C{new.version}.  Each step costs constant time, so a sync that pushes
    the whole of a large roster does not hash it once per item.
    """
    diff = diffRosters(old, new)
    before = old.byJID()
    total = _digestSum(old.contacts)
    steps: list[RosterStep] = []
    for contact in diff.changed:
        previous = before.get(contact.jid)
        total += _contactDigest(contact) - (_contactDigest(previous) if previous is not None else 0)
        steps.append(RosterStep(contact.toXML("both"), _version(total % _DIGEST_MODULUS), contact.jid))
    for jid in diff.removed:
        total -= _contactDigest(before[jid])
        steps.append(RosterStep(Contact(jid, None, ()).toXML("remove"), _version(total % _DIGEST_MODULUS), jid))
    changed = {c.jid for c in diff.changed}
    for contact in new.contacts:
        if contact.jid in rewrite and contact.jid not in changed:
            # Unchanged here, but the client was told another subscription
            # (the server applied a subscription presence): say both again.
            steps.append(RosterStep(contact.toXML("both"), new.version, contact.jid))
    return tuple(steps)


#: ASCII that nodeprep keeps as it is, but for upper case, which it maps to
#: lower case: the printable characters but the space and the eight that
#: nodeprep prohibits (RFC 6122, Appendix A.5: " & ' / : < > @).
_ASCII_NODE = re.compile(r"[!#-%(-.0-9;=?A-~]+")


def _nodeprep(text: str) -> str:
    """
    Nodeprep (RFC 6122, Appendix A), in a microsecond where it is one
    C{str.lower}: for the ASCII of L{_ASCII_NODE}, mapping (RFC 3454 B.1,
    B.2) only lowers case, NFKC changes nothing, nothing is prohibited or
    unassigned, and no character is right-to-left.  Twisted's nodeprep
    takes 40 to 280 microseconds a name: a users list of a million names
    took minutes.

    @raise UnicodeError: Nodeprep refuses C{text}.
    """
    if _ASCII_NODE.fullmatch(text):
        return text.lower()
    return nodeprep.prepare(text)


def normaliseUsername(username: str) -> str:
    """
    Apply nodeprep to a username, the node part of a user's JID.

    @raise InvalidUsername: The username cannot be a JID node.
    """
    if not isinstance(username, str) or not username:
        raise InvalidUsername(f"invalid username {username!r}: empty")
    try:
        node = _nodeprep(username)
    except UnicodeError as e:
        raise InvalidUsername(f"invalid username {username!r}: {e}") from None
    if not node or len(node.encode("utf-8")) > 1023:
        raise InvalidUsername(f"invalid username {username!r}: bad length")
    return node


def _text(value: Any, what: str) -> str:
    """
    Check one string field of a web app roster entry.
    """
    if not isinstance(value, str):
        raise InvalidRoster(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidRoster(f"{what} is longer than {MAX_TEXT_LENGTH} characters")
    if not carriesInXML(value):
        raise InvalidRoster(f"{what} contains characters XML cannot carry")
    return value


@lru_cache(maxsize=16384)
def _internGroups(groups: tuple[str, ...]) -> tuple[str, ...]:
    """
    One shared tuple per distinct list of groups: rosters repeat a handful
    of group combinations millions of times.  The first tuple seen is the
    one returned for every equal one after it, as long as it is among the
    most recently used (a web app's distinct combinations are many, and
    the names a refresh is given unbounded).
    """
    return groups


#: The most octets of a localpart or a domainpart (RFC 7622 §3.2, §3.3):
#: Prosody's stringprep refuses a part of 1024 octets or more, before and
#: after preparation (C{util-src/encodings.c}, C{icu_stringprep_prep}).
MAX_JID_PART = 1023


@lru_cache(maxsize=16384)
def contactJID(key: str) -> str:
    """
    Normalise a contact key to the bare JID Prosody stores for it.

    Prosody stores C{jid.prep} of each item we write (mod_privilege), and
    the next sync diffs against what it stored: a JID it would prepare
    differently from us (C{bob@example.org.}) would be removed and added
    again on every sync.  So keys are prepared as C{jid.prep} does, and
    refused where Twisted's stringprep might disagree with Prosody's.

    Only users can be contacts: a key without a localpart (a server, this
    component) is refused, as the owner's own JID is.

    Stringprep dominated the cost of loading a roster, and contacts are
    mostly users of the same service, so the same keys come back roster
    after roster: results are cached (bounded; rejections are not cached).

    @raise InvalidRoster: The key is not a user's bare JID.
    """
    # Even an empty resource ("bob@example.org/") makes it a full JID.
    if "/" in key:
        raise InvalidRoster(f"contact {key!r} is not a bare JID")
    node, at, domain = key.partition("@")
    if not at:
        raise InvalidRoster(f"contact {key!r} has no localpart: only users can be contacts")
    try:
        _checkPart(node, "localpart")
        node = _nodeprep(node)
        # Also what nodeprep maps to nothing (U+00AD): Prosody would store
        # "@example.org".
        if not node:
            raise InvalidFormat("empty localpart")
        _checkPart(node, "localpart")
        _checkBidi(node, "localpart")
        domain = _contactDomain(domain)
    except JID_ERRORS as e:
        raise InvalidRoster(f"contact {key!r} is not a valid JID: {e}") from None
    return sys.intern(f"{node}@{domain}")


@lru_cache(maxsize=1024)
def _contactDomain(domain: str) -> str:
    """
    Prepare a contact's domainpart as Prosody's C{jid.prep} does.

    Most contacts share a few domains, so the domains are cached apart
    from the whole keys.  Twisted's nameprep is stricter than Prosody's
    (STD3 host names); where the two could still differ, the domain is
    refused rather than stored under another name.

    @raise InvalidFormat: The domain is not one Prosody stores as we do.
    @raise UnicodeError: Stringprep refuses the domain.
    """
    # util/jid.lua, prepped_split: one final "." goes before nameprep
    # (RFC 7622 §3.2: it is no part of the name).
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        raise InvalidFormat("empty domainpart")
    _checkPart(domain, "domainpart")
    try:
        prepped = nameprep.prepare(domain)
    except IndexError:  # Twisted's nameprep of an empty label
        raise InvalidFormat("empty label") from None
    if prepped.endswith("."):  # "example.org..": Prosody strips one dot only
        raise InvalidFormat("empty label")
    # Prosody nameprepares the domain as one string, not label by label:
    # its bidi rule spans labels, and U+3002 stays as it is where RFC 3490
    # and Twisted read a dot (util-src/encodings.c, ICU's usprep).
    if idnaNameprep(domain) != prepped:
        raise InvalidFormat("Prosody would prepare the domainpart differently")
    _checkPart(prepped, "domainpart")
    _checkBidi(prepped, "domainpart")
    return sys.intern(prepped)


def _checkPart(part: str, what: str) -> None:
    """
    Refuse a JID part, before or after stringprep, that Prosody would not
    prepare as Twisted does.

    Stringprep is defined on Unicode 3.2 (RFC 3454), and ICU, under
    Prosody, keeps to it: code points 3.2 left unassigned (emoji among
    them) pass unchanged.  Python's stringprep maps case with today's
    Unicode (C{str.lower}) and normalises unassigned code points with
    today's data: U+023D, unassigned in 3.2, becomes U+019A, and Georgian
    U+10A0 becomes U+2D00, which 3.2 did not assign; Prosody keeps both.
    Checking the part before and after preparation refuses both cases.

    @raise InvalidFormat: C{part} is over L{MAX_JID_PART} octets, or holds
        a code point unassigned in Unicode 3.2.
    """
    if len(part.encode("utf-8", "surrogatepass")) > MAX_JID_PART:
        raise InvalidFormat(f"{what} over {MAX_JID_PART} octets")
    # Unicode 3.2 assigned every ASCII code point.
    if not part.isascii() and any(map(in_table_a1, part)):
        raise InvalidFormat(f"{what} holds a code point unassigned in Unicode 3.2")


def _checkBidi(prepared: str, what: str) -> None:
    """
    Apply stringprep's bidi rule (RFC 3454 §6) with today's bidi classes.

    ICU, under Prosody, takes the classes from its own Unicode version, not
    from Unicode 3.2 as Python's stringprep does, and some changed since:
    Braille patterns became left-to-right, so Prosody refuses
    U+0639 U+2808 U+0639 as a localpart, which Twisted accepts.

    @raise InvalidFormat: The part mixes right-to-left and left-to-right
        characters, or holds right-to-left ones but does not both start
        and end with one.
    """
    if prepared.isascii():
        return  # no ASCII character is right-to-left
    classes = [bidirectional(c) for c in prepared]
    rightToLeft = [c in ("R", "AL") for c in classes]
    if any(rightToLeft) and ("L" in classes or not (rightToLeft[0] and rightToLeft[-1])):
        raise InvalidFormat(f"{what} violates the bidi rule of Prosody's Unicode version")


def _parseContact(key: Any, value: Any, owner: str) -> Contact:
    """
    Validate one entry of the web app's roster object.
    """
    if not isinstance(key, str) or not key:
        raise InvalidRoster(f"contact key {key!r} is not a JID")
    bare = contactJID(key)
    if bare == owner:
        raise InvalidRoster(f"contact {key!r} is the roster's owner")
    if not isinstance(value, dict):
        raise InvalidRoster(f"contact {key!r}: value must be an object")
    name = value.get("name")
    if name is not None:
        name = _text(name, f"contact {key!r}: name") or None
    rawGroups = value.get("groups")
    groups: tuple[str, ...] = ()
    if rawGroups is not None:
        if not isinstance(rawGroups, list):
            raise InvalidRoster(f"contact {key!r}: groups must be an array")
        seen: dict[str, None] = {}
        for group in rawGroups:
            group = _text(group, f"contact {key!r}: group")
            if not group:
                raise InvalidRoster(f"contact {key!r}: empty group name")
            seen[sys.intern(group)] = None
        groups = _internGroups(tuple(seen))
    return Contact(
        bare, sys.intern(name) if name is not None else None, groups
    )


def parseRoster(body: bytes, owner: str) -> Roster:
    """
    Validate the web app's reply and build the roster.

    All or nothing: one bad entry rejects the whole reply, so a half-valid
    roster never replaces a good one.

    @param body: The raw HTTP body, UTF-8 JSON.
    @param owner: The bare JID of the roster's owner, which may not be a
        contact of itself.
    @raise InvalidRoster: Why the reply is not a roster.
    """
    contacts: dict[str, Contact] = {}
    for key, value in _rosterObject(body).items():
        _addContact(contacts, key, value, owner)
    return Roster(contacts.values())


async def parseRosterInSlices(body: bytes, owner: str, clock: IReactorTime) -> Roster:
    """
    L{parseRoster}, giving the reactor a turn between slices of contacts
    (L{inSlices}): a roster of 20,000 contacts is a second of work.

    @raise InvalidRoster: Why the reply is not a roster.
    """
    contacts: dict[str, Contact] = {}
    total = 0
    async for part in inSlices(_rosterObject(body).items(), clock):
        for key, value in part:
            total += _contactDigest(_addContact(contacts, key, value, owner))
    # Hashing 20,000 contacts at once would be a slice of 40 ms alone.
    return Roster(contacts.values(), total % _DIGEST_MODULUS)


def _rosterObject(body: bytes) -> dict[Any, Any]:
    """
    The JSON object of the web app's reply.

    @raise InvalidRoster: The body is not a JSON object.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidRoster(f"body is not JSON: {e}") from None
    except RecursionError:
        raise InvalidRoster("body is not JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRoster(f"body must be a JSON object, got {type(data).__name__}")
    return data


def _addContact(contacts: dict[str, Contact], key: Any, value: Any, owner: str) -> Contact:
    """
    Validate one entry of the web app's roster object and add it.

    @return: The contact added.
    @raise InvalidRoster: The entry is not a contact, or names one already
        added.
    """
    contact = _parseContact(key, value, owner)
    if contact.jid in contacts:
        raise InvalidRoster(f"contact {key!r} is listed twice")
    contacts[contact.jid] = contact
    return contact
