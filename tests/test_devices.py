"""
Tests for what each device of a user is pushed (L{rosteradmin.devices}):
every interested resource, an iq id per push, pushes that coalesce instead
of queueing, failed pushes sent again, and devices whose view may be stale
(given up, or online across a restart) brought up to date.  Each test runs
the real component stream over a StringTransport (see
L{tests.helpers.ComponentOnWire}).
"""

from __future__ import annotations

from collections import Counter

from twisted.words.xish import domish

from rosteradmin.devices import MAX_FAILURES, REPLAY_GRACE, RETRY_DELAY
from rosteradmin.presence import NS_SESSION_NOTICE
from rosteradmin.state import SyncState
from tests.helpers import COMPONENT, DOMAIN, PERMISSIONS_2, ComponentOnWire, WebApp
from tests.test_component import ALICE_ROSTER, StoringServer, envelope, innerIQ, rosterGet

PHONE, LAPTOP, TABLET = (f"alice@{DOMAIN}/{r}" for r in ("phone", "laptop", "tablet"))


def isPush(stanza: domish.Element) -> bool:
    wrapper = stanza.firstChildElement()
    return stanza.name == "iq" and wrapper is not None and wrapper.name == "privileged_iq"


def pushed(sent: list[domish.Element]) -> list[tuple[str, str, str]]:
    """
    The (device, contact, subscription) of each push among C{sent}.
    """
    found = []
    for stanza in sent:
        if isPush(stanza):
            inner = stanza.firstChildElement().firstChildElement()
            found.append((inner["to"], inner.query.item["jid"], inner.query.item["subscription"]))
    return found


def pushIDs(sent: list[domish.Element]) -> list[str]:
    return [s.firstChildElement().firstChildElement()["id"] for s in sent if isPush(s)]


def answer(wire: ComponentOnWire, stanzas: list[domish.Element], server: StoringServer,
           failPushes: bool = False) -> None:
    """
    Answer each of C{stanzas} as the server would, the pushes with an error
    if C{failPushes} (what mod_privilege answers when it cannot deliver).
    """
    for stanza in stanzas:
        if failPushes and isPush(stanza):
            reply = (f"<iq type='error' from='{stanza['to']}' to='{COMPONENT}' id='{stanza['id']}'>"
                     "<error type='cancel'><internal-server-error xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                     "</error></iq>")
        else:
            reply = server(stanza)
        if reply is not None:
            wire.receive(reply)


def aliceOnline(*resources: str, state: SyncState | None = None) -> tuple[ComponentOnWire, StoringServer]:
    wire = ComponentOnWire(WebApp({"alice": dict(ALICE_ROSTER)}), state=state)
    wire.handshake(PERMISSIONS_2)
    server = StoringServer()
    for resource in resources:
        wire.receive(f"<presence from='{resource}'/>")
    wire.answerRequests(server)
    return wire, server


def refreshWith(wire: ComponentOnWire, roster: dict[str, dict[str, object]]) -> None:
    wire.webApp.rosters["alice"] = roster
    wire.backend.refresh(["alice"])


def itemsAnswered(wire: ComponentOnWire, ver: str, resource: str = PHONE) -> int | None:
    """
    The number of items alice's roster get with C{ver} is answered, or
    C{None} for "current".
    """
    wire.receive(envelope(rosterGet(sender=resource, ver=ver), stanzaID="g1"))
    [reply] = [s for s in wire.sent() if s.getAttribute("id") == "g1"]
    query = innerIQ(reply).query
    return None if query is None else len(list(query.elements()))


CHANGED = {"bob@example.org": {"name": "Robert", "groups": ["Friends"]}, "dave@example.org": {}}
RENAME = (f"<iq xmlns='jabber:client' type='set' from='{PHONE}' id='s1'><query xmlns='jabber:iq:roster'>"
          "<item jid='bob@example.org' name='Robert'/><item jid='carol@example.org' name='Caroline'/>"
          "</query></iq>")


def test_everyDeviceGetsEveryPushWithItsOwnID() -> None:
    """
    Three devices, one refresh changing three contacts: each device gets
    all three pushes, and no two pushes share an iq id (Prosody refuses a
    privileged iq whose id is one still unanswered).
    """
    wire, server = aliceOnline(PHONE, LAPTOP, TABLET)
    refreshWith(wire, CHANGED)
    sent = wire.answerRequests(server)
    assert Counter(device for device, _, _ in pushed(sent)) == {PHONE: 3, LAPTOP: 3, TABLET: 3}
    ids = pushIDs(sent)
    assert len(ids) == len(set(ids)) == 9


def test_deviceThatAskedBeforePresenceIsPushed() -> None:
    """
    RFC 6121 §2.1.6: a resource that asked for its roster is interested,
    presence or not (§2.2: clients should ask before sending presence).
    """
    wire, server = aliceOnline()
    wire.receive(envelope(rosterGet(sender=PHONE)))
    wire.answerRequests(server)
    refreshWith(wire, CHANGED)
    assert sorted(pushed(wire.answerRequests(server))) == [
        (PHONE, "bob@example.org", "both"), (PHONE, "carol@example.org", "remove"),
        (PHONE, "dave@example.org", "both")]


def test_pushesToOneDeviceCoalesce() -> None:
    """
    Changes made while a device's pushes are unanswered are not queued
    behind them: the next batch goes from where the first left the device
    to the latest roster.
    """
    wire, server = aliceOnline(PHONE)
    refreshWith(wire, CHANGED)
    first = wire.answerRequests(lambda iq: None if isPush(iq) else server(iq))
    assert len(pushed(first)) == 3
    for n in range(20):
        refreshWith(wire, {"bob@example.org": {"name": f"Bob {n}"}, "dave@example.org": {}})
        wire.answerRequests(lambda iq: None if isPush(iq) else server(iq))
    assert wire.component.privileges.devices.pushes == 3
    answer(wire, first, server)
    second = wire.sent()
    assert pushed(second) == [(PHONE, "bob@example.org", "both")]
    assert second[0].firstChildElement().firstChildElement().query.item["name"] == "Bob 19"
    answer(wire, second, server)
    assert wire.sent() == []
    assert itemsAnswered(wire, wire.backend.cache.peek("alice").version) is None


def test_putBackFloodIsBoundedByTheDevice() -> None:
    """
    A client sending refused roster sets as fast as it can gets at most
    one batch in flight: the rest coalesces into the next, whatever the
    number of sets.
    """
    wire, server = aliceOnline(PHONE, LAPTOP)
    sets = 150
    for n in range(sets):
        wire.receive(envelope(RENAME, stanzaID=f"set{n}"))
        wire.clock.advance(0.05)  # within the user's query rate (20/s), so every set is admitted
    sent = wire.sent()
    assert wire.component.rosterServer.gate.refusedCount == 0
    assert len(pushed(sent)) == 2 and {d for d, _, _ in pushed(sent)} == {PHONE}
    answer(wire, sent, server)
    # Everything after the first batch: one more of the same two contacts.
    rest = wire.answerRequests(server)
    assert sorted(pushed(rest)) == [(PHONE, "bob@example.org", "both"), (PHONE, "carol@example.org", "both")]


def test_refusedSetIsPutBackWithoutAnAnswerOfOurs() -> None:
    """
    A device that came online after its roster was written (no answer or
    change of ours gave it a target) still has a refused set put back:
    toward the roster served now.
    """
    wire, server = aliceOnline()
    refreshWith(wire, CHANGED)
    wire.answerRequests(server)
    wire.receive(f"<presence from='{PHONE}'/>")
    assert pushed(wire.answerRequests(server)) == []
    wire.receive(envelope(RENAME, stanzaID="set"))
    assert sorted(pushed(wire.answerRequests(server))) == [
        (PHONE, "bob@example.org", "both"), (PHONE, "carol@example.org", "remove")]


def test_failedPushesAreSentAgain() -> None:
    """
    A batch the server could not deliver leaves its contacts dirty: they
    are pushed again after a pause, and the device then holds the roster.
    """
    wire, server = aliceOnline(PHONE)
    refreshWith(wire, CHANGED)
    sent = wire.answerRequests(lambda iq: None if isPush(iq) else server(iq))
    answer(wire, sent, server, failPushes=True)
    assert wire.sent() == []
    wire.clock.advance(RETRY_DELAY)
    again = wire.answerRequests(server)
    assert sorted(c for _, c, _ in pushed(again)) == ["bob@example.org", "carol@example.org", "dave@example.org"]
    [device] = wire.component.privileges.devices.views("alice").values()
    assert device.converged(wire.backend.cache.peek("alice"))


def test_deviceThatKeepsFailingIsGivenUpAndAnsweredInFull() -> None:
    """
    A device that never takes its pushes is given up; it may hold the
    latest version without its contents, so that version is answered in
    full.
    """
    wire, server = aliceOnline(PHONE)
    refreshWith(wire, CHANGED)
    for attempt in range(MAX_FAILURES):
        sent = wire.answerRequests(lambda iq: None if isPush(iq) else server(iq))
        answer(wire, sent, server, failPushes=True)
        wire.clock.advance(RETRY_DELAY * 2 ** attempt)
    assert wire.component.privileges.devices.views("alice") == {}
    assert wire.component.privileges.devices.givenUp == 1
    assert itemsAnswered(wire, wire.backend.cache.peek("alice").version, LAPTOP) == len(CHANGED)


def test_deviceLeavingBeforeItsPushesAreAnsweredIsAnsweredInFull() -> None:
    """
    A device that goes offline with pushes unanswered may have applied the
    last and missed another: its next login with that version gets the
    whole roster.
    """
    wire, server = aliceOnline(PHONE)
    refreshWith(wire, CHANGED)
    sent = wire.answerRequests(lambda iq: None if isPush(iq) else server(iq))
    wire.receive(f"<presence type='unavailable' from='{PHONE}'/>")
    answer(wire, sent, server)
    assert itemsAnswered(wire, wire.backend.cache.peek("alice").version) == len(CHANGED)


def test_wholeRosterGivenWhilePushesAreOnTheirWay() -> None:
    """
    A device answered a whole roster while pushes to it were unanswered
    may apply them after the answer: their contacts are pushed again.
    """
    wire, server = aliceOnline(PHONE)
    refreshWith(wire, CHANGED)
    sent = wire.answerRequests(lambda iq: None if isPush(iq) else server(iq))
    wire.receive(envelope(rosterGet(sender=PHONE)))
    wire.sent()
    answer(wire, sent, server)
    again = wire.answerRequests(server)
    assert sorted(c for _, c, _ in pushed(again)) == ["bob@example.org", "carol@example.org", "dave@example.org"]


def test_sessionNoticesOfTheServerModule() -> None:
    """
    contrib's mod_rosteradmin_roster tells us of a session it answered
    itself (it may send no presence): it is pushed; and of its end.
    """
    wire, server = aliceOnline()
    wire.receive(envelope(rosterGet(sender=LAPTOP)))
    wire.answerRequests(server)
    version = wire.backend.cache.peek("alice").version
    wire.receive(f"<message from='{PHONE}' to='{COMPONENT}'><answered xmlns='{NS_SESSION_NOTICE}' ver='{version}'/>"
                 "</message>")
    wire.receive(f"<message from='{LAPTOP}' to='{COMPONENT}'><ended xmlns='{NS_SESSION_NOTICE}'/></message>")
    refreshWith(wire, CHANGED)
    assert {d for d, _, _ in pushed(wire.answerRequests(server))} == {PHONE}


def test_unansweredPushesArePushedAgainAfterARestart() -> None:
    """
    rosteradmin killed while its pushes were on their way: the server is
    current, so the refresh after the restart changes nothing, yet the
    devices still online are pushed every contact of those pushes once the
    server replays their presence.
    """
    state = SyncState()
    wire, server = aliceOnline(PHONE, state=state)
    refreshWith(wire, CHANGED)
    wire.answerRequests(lambda iq: None if isPush(iq) else server(iq))  # pushes never answered: killed

    restarted = ComponentOnWire(WebApp({"alice": CHANGED}), state=state)
    restarted.handshake(PERMISSIONS_2)
    restarted.receive(f"<presence from='{PHONE}'><delay xmlns='urn:xmpp:delay' from='{DOMAIN}'/></presence>")
    sent = restarted.answerRequests(server)
    assert sorted(pushed(sent)) == [(PHONE, "bob@example.org", "both"), (PHONE, "carol@example.org", "remove"),
                                    (PHONE, "dave@example.org", "both")]
    assert state.unpushed("alice") == frozenset()


def test_devicesKeptOverAReconnection() -> None:
    """
    Over a loss of our stream the views of available devices are kept
    until the server replays their presence; pushes cut off by the loss
    are sent again; a device not replayed is given up.
    """
    wire, server = aliceOnline(PHONE, LAPTOP)
    refreshWith(wire, CHANGED)
    wire.answerRequests(lambda iq: None if isPush(iq) else server(iq))
    wire.reconnect(PERMISSIONS_2)
    wire.receive(f"<presence from='{PHONE}'><delay xmlns='urn:xmpp:delay' from='{DOMAIN}'/></presence>")
    sent = wire.answerRequests(server)
    assert {d for d, _, _ in pushed(sent)} == {PHONE} and len(pushed(sent)) == 3
    wire.clock.advance(REPLAY_GRACE)
    assert set(wire.component.privileges.devices.views("alice")) == {PHONE}
    assert itemsAnswered(wire, wire.backend.cache.peek("alice").version, LAPTOP) == len(CHANGED)
