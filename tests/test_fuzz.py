"""
Property-based tests: whatever the web app or the server sends, the result
is a valid roster or a clean rejection, and every delegated request gets
exactly one answer.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, globalLogPublisher
from twisted.words.xish.domish import escapeToXml

from rosteradmin.errors import InvalidRoster
from rosteradmin.roster import Roster, contactJID, parseRoster
from tests.helpers import COMPONENT, DOMAIN, ComponentOnWire, WebApp

OWNER = "alice@example.org"

jsonValues = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4),
    max_leaves=20,
)
nodes = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12)
jids = st.builds(lambda n, d: f"{n}@{d}", nodes, st.sampled_from(["example.org", "example.com", "xn--bcher-kva.ch"]))
names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cn")), max_size=30)
validEntries = st.fixed_dictionaries({}, optional={"name": names, "groups": st.lists(names.filter(bool), max_size=3)})


@given(jsonValues)
@settings(max_examples=300)
def test_anyJSONIsRosterOrRejection(value: Any) -> None:
    """
    Any JSON document parses into a roster or raises InvalidRoster, nothing else.
    """
    try:
        roster = parseRoster(json.dumps(value).encode(), OWNER)
    except InvalidRoster:
        return
    assert isinstance(roster, Roster) and isinstance(value, dict)


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_anyBytesAreRosterOrRejection(body: bytes) -> None:
    """
    Any bytes parse into a roster or raise InvalidRoster.
    """
    try:
        parseRoster(body, OWNER)
    except InvalidRoster:
        pass


@given(st.dictionaries(jids.filter(lambda j: j != OWNER), validEntries, max_size=10))
@settings(max_examples=200)
def test_validRostersRoundTrip(data: dict[str, Any]) -> None:
    """
    Every valid web app roster parses, with each contact's name and groups.
    """
    roster = parseRoster(json.dumps(data).encode(), OWNER)
    byJID = roster.byJID()
    assert set(byJID) == set(data)
    for jid, entry in data.items():
        assert byJID[jid].name == (entry.get("name") or None)
        assert list(byJID[jid].groups) == list(dict.fromkeys(entry.get("groups", [])))


#: Parts of contact keys: characters stringprep maps, folds, drops, reads
#: as dots or checks for direction, and any others.
keyParts = st.text(
    st.sampled_from(list("aZ9.-_@/ \u3002\uff0e\uff61\u00ad\u0301\u00df\u0130\u05d0\u0627\u2808\uff21\u2168"))
    | st.characters(blacklist_categories=("Cs",)),
    max_size=12,
)


@given(keyParts, keyParts)
@settings(max_examples=500)
def test_acceptedContactJIDsAreStable(node: str, domain: str) -> None:
    """
    A contact key is refused with InvalidRoster, or normalised to a user's
    JID that normalises to itself, with or without a final dot: the JID we
    write is the JID we read back.
    """
    try:
        jid = contactJID(f"{node}@{domain}")
    except InvalidRoster:
        return
    assert "@" in jid and not jid.startswith("@") and not jid.endswith(".")
    assert contactJID(jid) == jid
    assert contactJID(jid + ".") == jid


# Characters XML can carry: anything else breaks the stream before us.
attributeValues = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cn")), max_size=30)
innerIQs = st.builds(
    lambda kind, sender, to, child, ver: (
        f"<iq xmlns='jabber:client' type='{escapeToXml(kind, True)}' from='{escapeToXml(sender, True)}'"
        + (f" to='{escapeToXml(to, True)}'" if to is not None else "")
        + f" id='c'>{child.format(ver=escapeToXml(ver, True))}</iq>"
    ),
    st.sampled_from(["get", "set", "result", "error", "bogus"]) | attributeValues,
    st.sampled_from(["alice@example.org/r", "bob@example.org/r", "eve@evil.example/x", DOMAIN]) | attributeValues,
    st.none() | st.sampled_from(["alice@example.org", "bob@example.org", "alice@example.org/r"]) | attributeValues,
    st.sampled_from([
        "<query xmlns='jabber:iq:roster' ver='{ver}'/>",
        "<query xmlns='jabber:iq:roster'><item jid='{ver}'/></query>",
        "<query xmlns='jabber:iq:other'/>",
        "",
        "<a/><b/>",
    ]),
    attributeValues,
)
envelopes = st.builds(
    lambda version, inners, wrapper: wrapper.format(
        version=version, inner="".join(inners)),
    st.sampled_from([1, 2, 3]),
    st.lists(innerIQs, min_size=0, max_size=2),
    st.sampled_from([
        "<delegation xmlns='urn:xmpp:delegation:{version}'><forwarded xmlns='urn:xmpp:forward:0'>{inner}"
        "</forwarded></delegation>",
        "<delegation xmlns='urn:xmpp:delegation:{version}'>{inner}</delegation>",
        "<delegation xmlns='urn:xmpp:delegation:{version}'><forwarded xmlns='urn:other'>{inner}</forwarded>"
        "</delegation>",
    ]),
)


@given(st.lists(envelopes, min_size=1, max_size=3))
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_everyEnvelopeAnsweredOnce(payloads: list[str]) -> None:
    """
    Any delegation envelope from the server gets exactly one answer on its
    id (mod_delegation waits forever otherwise), and no bug is logged.
    """
    failures: list[Any] = []

    def observe(event: Any) -> None:
        if event.get("log_level") == LogLevel.critical or "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        wire = ComponentOnWire(WebApp({"alice": {"bob@example.org": {}}}))
        wire.handshake()
        for index, payload in enumerate(payloads):
            wire.receive(f"<iq type='set' from='{DOMAIN}' to='{COMPONENT}' id='e{index}'>{payload}</iq>")
        replies = [s for s in wire.sent() if s.name == "iq"]
    finally:
        globalLogPublisher.removeObserver(observe)
    envelopeReplies = [r for r in replies if r.getAttribute("to") == DOMAIN]
    assert sorted(r["id"] for r in envelopeReplies) == [f"e{i}" for i in range(len(payloads))]
    assert all(r["type"] in ("result", "error") for r in envelopeReplies)
    assert failures == []
