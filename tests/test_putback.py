"""
What the component does beyond refusing a roster set: it pushes the
client the web app's items again (clients such as profanity show a refused
edit as done), and answers the user's current version in full afterwards.
"""

from __future__ import annotations

from twisted.words.xish import domish

from rosteradmin.roster import NS_ROSTER
from tests.helpers import ComponentOnWire
from tests.test_component import StoringServer, connected, envelope, innerIQ, rosterGet


def pushes(sent: list[domish.Element]) -> list[tuple[str, str, str | None]]:
    """
    The (jid, subscription, name) of each roster push among C{sent}.
    """
    found = []
    for stanza in sent:
        wrapper = stanza.firstChildElement()
        if wrapper is not None and wrapper.name == "privileged_iq":
            item = wrapper.firstChildElement().query.item
            found.append((item["jid"], item["subscription"], item.getAttribute("name")))
    return found


def rosterSet(*items: str) -> str:
    return (f"<iq xmlns='jabber:client' type='set' from='alice@example.org/phone' id='s1'>"
            f"<query xmlns='{NS_ROSTER}'>{''.join(items)}</query></iq>")


def serverReads(sent: list[domish.Element]) -> int:
    """
    How many privileged roster gets are among C{sent}.
    """
    return sum(1 for s in sent if s.name == "iq" and s.getAttribute("type") == "get"
               and s.query is not None and s.query.uri == NS_ROSTER)


def onlineAlice() -> tuple[ComponentOnWire, StoringServer]:
    wire, server = connected(), StoringServer()
    wire.receive("<presence from='alice@example.org/phone'/>")
    wire.answerRequests(server)
    return wire, server


def test_refusedRenamePutBack() -> None:
    """
    A refused rename is answered not-allowed, then the web app's item is
    pushed again, name and subscription as they were.
    """
    wire, server = onlineAlice()
    wire.receive(envelope(rosterSet("<item jid='bob@example.org' name='Robert'/>")))
    sent = wire.answerRequests(server)
    [reply] = [s for s in sent if s.name == "iq" and s["type"] == "result" and s.getAttribute("id") == "env1"]
    assert innerIQ(reply).error.firstChildElement().name == "not-allowed"
    assert pushes(sent) == [("bob@example.org", "both", "Bob")]


def test_refusedAddAndRemovePutBack() -> None:
    """
    A refused add is undone with a removal push; a refused removal with a
    push of the item; a second item in the set, and a JID given in
    another case, are handled too.
    """
    wire, server = onlineAlice()
    wire.receive(envelope(rosterSet("<item jid='Mallory@Example.ORG'/>",
                                    "<item jid='carol@example.org' subscription='remove'/>")))
    sent = wire.answerRequests(server)
    assert sorted(pushes(sent)) == [("carol@example.org", "both", "Carol"),
                                    ("mallory@example.org", "remove", None)]


def test_refusedSetOfUncachedUserPushesNothing() -> None:
    """
    A user whose roster we never served holds nothing of ours to put back:
    the set is refused, nothing is fetched or pushed.
    """
    wire = connected()
    wire.receive(envelope(rosterSet("<item jid='bob@example.org' name='Robert'/>")))
    sent = wire.sent()
    assert len(sent) == 1 and innerIQ(sent[0]).error.firstChildElement().name == "not-allowed"
    assert wire.webApp.requests == {}


def itemsAnswered(wire: ComponentOnWire, ver: str, stanzaID: str) -> int | None:
    """
    Ask for alice's roster with C{ver}: the number of items answered, or
    C{None} for an empty ("current") result.
    """
    wire.receive(envelope(rosterGet(sender="alice@example.org/laptop", ver=ver), stanzaID=stanzaID))
    [answer] = [s for s in wire.sent() if s.getAttribute("id") == stanzaID]
    query = innerIQ(answer).query
    return None if query is None else len(list(query.elements()))


def test_refusedSetMakesCurrentVersionAnsweredInFull() -> None:
    """
    After a refused set, a client holding the current version (another
    device, offline during the put-back, which may have kept its edit) is
    answered the whole roster instead of "current"; once the roster
    changes, the doubt is gone.
    """
    wire, server = onlineAlice()
    version = wire.backend.cache.peek("alice").version
    assert itemsAnswered(wire, version, "g1") is None
    wire.receive(envelope(rosterSet("<item jid='carol@example.org' subscription='remove'/>")))
    wire.answerRequests(server)
    assert itemsAnswered(wire, version, "g2") == 2
    assert itemsAnswered(wire, version, "g3") == 2

    wire.webApp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}}
    refresh = wire.backend.refresh(["alice"])
    wire.answerRequests(server)
    assert refresh.called
    assert itemsAnswered(wire, wire.backend.cache.peek("alice").version, "g4") is None
