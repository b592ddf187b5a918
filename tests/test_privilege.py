"""
Tests for the roster pushes' versions: the steps from the roster a client
holds to the new one, each with the version of the roster it leaves; and
for which presences tell the backend that a user came online.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from zope.interface import implementer

from rosteradmin import roster as rostermodule
from rosteradmin.component import ConnectionMonitor
from rosteradmin.interfaces import IServerObserver
from rosteradmin.presence import PresenceTracker
from rosteradmin.roster import EMPTY_ROSTER, Contact, Roster, diffRosters, diffSteps
from tests.helpers import parseXML, standalonePrivileges


def applied(old: Roster, items: list[str]) -> Roster:
    """
    The roster a client holds after applying roster push items in order, as
    RFC 6121 §2.1.6 says (an item replaces the one of its JID; remove
    deletes it).
    """
    held = old.byJID()
    for xml in items:
        item = parseXML(xml, "jabber:iq:roster")
        if item["subscription"] == "remove":
            del held[item["jid"]]
        else:
            groups = tuple(str(g) for g in item.elements() if g.name == "group")
            held[item["jid"]] = Contact(item["jid"], item.getAttribute("name"), groups)
    return Roster(held.values())


def test_eachStepCarriesTheVersionOfTheRosterItLeaves() -> None:
    """
    Every step's version is the version of the intermediate roster, and the
    last one the new roster's.
    """
    old = Roster([Contact("a@x", "A", ()), Contact("b@x", "B", ("G",)), Contact("c@x", None, ())])
    new = Roster([Contact("a@x", "A", ()), Contact("b@x", "Bee", ("G", "H")), Contact("d@x", None, ())])
    steps = diffSteps(old, new)
    assert [parseXML(s.item, "jabber:iq:roster")["jid"] for s in steps] == ["b@x", "d@x", "c@x"]
    for count, step in enumerate(steps, 1):
        assert step.version == applied(old, [s.item for s in steps[:count]]).version
    assert steps[-1].version == new.version
    assert len({s.version for s in steps} | {old.version}) == 4


def test_noStepsBetweenEqualRosters() -> None:
    """
    Equal rosters need no push.
    """
    roster = Roster([Contact("a@x", "A", ())])
    assert diffSteps(roster, Roster([Contact("a@x", "A", ())])) == ()


def test_stepsHashEachContactAboutOnce(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Replacing a large roster hashes each contact a bounded number of times,
    not the whole roster once per pushed item.
    """
    old = Roster(Contact(f"u{i}@x", None, ()) for i in range(2000))
    new = Roster(Contact(f"v{i}@x", None, ()) for i in range(2000))
    calls = 0
    digest = rostermodule._contactDigest

    def counting(contact: Contact) -> int:
        nonlocal calls
        calls += 1
        return digest(contact)

    monkeypatch.setattr(rostermodule, "_contactDigest", counting)
    steps = diffSteps(old, new)
    assert len(steps) == 4000 and steps[-1].version == new.version
    assert calls <= 3 * 4000


contacts = st.builds(
    Contact,
    st.sampled_from([f"{n}@example.org" for n in "abcdefgh"]),
    st.none() | st.sampled_from(["A", "B", "Ç"]),
    st.lists(st.sampled_from(["G", "H"]), max_size=2, unique=True).map(tuple),
)
rosters = st.lists(contacts, max_size=8).map(lambda cs: Roster({c.jid: c for c in cs}.values()))


@given(rosters, rosters)
@settings(max_examples=200)
def test_stepVersionsMatchAppliedRosters(old: Roster, new: Roster) -> None:
    """
    For any two rosters, applying the steps in order gives, after each one,
    a roster whose version is that step's, ending with the new roster.
    """
    steps = diffSteps(old, new)
    assert len(steps) == len(diffRosters(old, new))
    items: list[Any] = []
    for step in steps:
        items.append(step.item)
        assert applied(old, items).version == step.version
    assert applied(old, items) == new
    assert (steps[-1].version if steps else old.version) == new.version


def test_versionOfEmptyRosterIsFixed() -> None:
    """
    Removing every contact leads to the empty roster's version.
    """
    old = Roster([Contact("a@x", None, ()), Contact("b@x", None, ())])
    assert diffSteps(old, EMPTY_ROSTER)[-1].version == EMPTY_ROSTER.version


#: The presence Prosody keeps for a session, as mod_privilege replays it to
#: a component that connects (mod_presence stamps the stored copy).
REPLAYED = ("<presence from='alice@example.org/phone' to='roster.example.org' xml:lang='en'>"
            "<delay xmlns='urn:xmpp:delay' from='example.org' stamp='2025-12-02T00:47:52Z'/></presence>")
#: A presence mod_privilege forwards as the client sends it.
LIVE = "<presence from='alice@example.org/phone' to='roster.example.org' xml:lang='en'/>"


@implementer(IServerObserver)
class _Observer:
    """
    Records the users the privilege handler reports online.
    """

    def __init__(self, warm: Callable[[str], None], catchUp: Callable[[str], None]) -> None:
        self.warm = warm
        self.catchUp = catchUp

    def writesRestored(self) -> None:
        pass

    def userWritable(self, username: str) -> None:
        pass


def presenceHandler() -> tuple[PresenceTracker, list[str], list[str]]:
    """
    A presence tracker, and the users it said came online and were online.
    """
    cameOnline: list[str] = []
    wasOnline: list[str] = []
    handler = standalonePrivileges(ConnectionMonitor(Clock(), 30.0)).presence
    handler.observer = _Observer(cameOnline.append, wasOnline.append)
    return handler, cameOnline, wasOnline


def test_livePresenceWarms() -> None:
    """
    A user's first resource coming online is tracked and reported as a
    user who came online.
    """
    handler, cameOnline, wasOnline = presenceHandler()
    handler._onPresence(parseXML(LIVE))
    assert handler.online == {"alice": {"alice@example.org/phone"}}
    assert (cameOnline, wasOnline) == (["alice"], [])


def test_replayedPresenceIsOnlineWithoutWarming() -> None:
    """
    A presence the server replays on connecting (delayed by the server) is
    tracked, and reported as a user who was online already, not as one who
    came online.
    """
    handler, cameOnline, wasOnline = presenceHandler()
    handler._onPresence(parseXML(REPLAYED))
    assert handler.online == {"alice": {"alice@example.org/phone"}}
    assert (cameOnline, wasOnline) == ([], ["alice"])


def test_delayFromAnotherSenderIsLive() -> None:
    """
    A delay a client put in its own presence does not make it a replay.
    """
    handler, cameOnline, wasOnline = presenceHandler()
    handler._onPresence(parseXML(REPLAYED.replace("from='example.org'", "from='alice@example.org/phone'")))
    assert (cameOnline, wasOnline) == (["alice"], [])


def test_onlyTheFirstResourceIsReported() -> None:
    """
    A second resource of a user already online, replayed or live, reports
    nothing; the user stays online until the last resource leaves.
    """
    handler, cameOnline, wasOnline = presenceHandler()
    handler._onPresence(parseXML(REPLAYED))
    handler._onPresence(parseXML(LIVE.replace("/phone", "/laptop")))
    handler._onPresence(parseXML(REPLAYED.replace("/phone", "/tablet")))
    assert handler.online["alice"] == {f"alice@example.org/{r}" for r in ("phone", "laptop", "tablet")}
    assert (cameOnline, wasOnline) == ([], ["alice"])
    for resource in ("phone", "laptop"):
        handler._onPresence(parseXML(f"<presence from='alice@example.org/{resource}' type='unavailable'/>"))
    assert handler.online == {"alice": {"alice@example.org/tablet"}}
    handler._onPresence(parseXML("<presence from='alice@example.org/tablet' type='unavailable'/>"))
    assert handler.online == {}
