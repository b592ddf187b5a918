"""
The periodic check of online users' server rosters: drift the server
applied behind our back is repaired and pushed without a web-app fetch.
"""

from __future__ import annotations

from treq.testing import StubTreq

from rosteradmin.fullsync import FullSync
from rosteradmin.onlinecheck import OnlineCheck
from rosteradmin.tap import makeAPI
from rosteradmin.web import Drain
from tests.helpers import WebApp
from tests.test_component import StoringServer, connected
from tests.test_putback import pushes, serverReads


def test_driftOfOnlineUserRepairedAndPushed() -> None:
    """
    alice is online; the server changed bob's subscription in her stored
    roster: one interval later her server roster is read back, repaired,
    bob pushed with both, the drift counted, and the web app not asked.
    """
    wire, server = connected(), StoringServer()
    wire.receive("<presence from='alice@example.org/phone'/>")
    wire.answerRequests(server)
    fetches = dict(wire.webApp.requests)
    stored = server.items["alice@example.org"]
    stored["bob@example.org"] = stored["bob@example.org"].replace("subscription='both'", "subscription='to'")
    check = OnlineCheck(wire.backend, lambda: wire.component.privileges.online, wire.clock, 600)
    check.startService()
    wire.clock.advance(599)
    assert serverReads(wire.sent()) == 0
    wire.clock.advance(1)
    sent = wire.answerRequests(server)
    assert serverReads(sent) == 1
    assert "subscription='both'" in stored["bob@example.org"]
    assert ("bob@example.org", "both", "Bob") in pushes(sent)
    assert wire.backend.snapshot().driftRepaired.get("subscription", 0) == 1
    assert wire.webApp.requests == fetches
    assert (check.passes, check.checked) == (1, 1)
    check.stopService()


def test_rightRosterOnlyRead() -> None:
    """
    A server roster that is right is read, not written or pushed.
    """
    wire, server = connected(), StoringServer()
    wire.receive("<presence from='alice@example.org/phone'/>")
    wire.answerRequests(server)
    check = OnlineCheck(wire.backend, lambda: ["alice"], wire.clock, 600)
    d = check.check()
    sent = wire.answerRequests(server)
    assert d is not None and d.called
    assert serverReads(sent) == 1 and pushes(sent) == []
    assert [s for s in sent if s.getAttribute("type") == "set"] == []
    assert sum(wire.backend.snapshot().driftRepaired.values()) == 0


def test_onePassAtATime() -> None:
    """
    While a pass waits for the server, the next interval starts none; with
    nobody online, or no writes possible, nothing is read.
    """
    wire, server = connected(), StoringServer()
    wire.receive("<presence from='alice@example.org/phone'/>")
    wire.answerRequests(server)
    check = OnlineCheck(wire.backend, lambda: ["alice"], wire.clock, 600)
    first = check.check()
    assert first is not None and not first.called
    assert check.check() is None
    wire.answerRequests(server)
    assert first.called and check.passes == 1
    assert OnlineCheck(wire.backend, lambda: [], wire.clock, 600).check() is None

    unprivileged = connected(burst="")
    assert OnlineCheck(unprivileged.backend, lambda: ["alice"], unprivileged.clock, 600).check() is None
    assert serverReads(unprivileged.sent()) == 0


def test_passAnsweredAtOnceAllowsTheNext() -> None:
    """
    A pass that ends within the call (alice's roster is not cached: there
    is nothing to compare) does not block the passes after it.
    """
    wire = connected()
    check = OnlineCheck(wire.backend, lambda: ["alice"], wire.clock, 600)
    first = check.check()
    second = check.check()
    assert first is not None and first.called and second is not None and second.called
    assert check.passes == 2 and serverReads(wire.sent()) == 0


def test_groupOrderOfTheServerIsNoDrift() -> None:
    """
    The server answers a contact's groups in another order (Prosody keeps
    them as a set): nothing is rewritten, pushed or counted as drift.
    """
    webApp = WebApp({"alice": {"bob@example.org": {"name": "Bob", "groups": ["Friends", "Work", "Chess"]}}})
    wire, server = connected(webApp), StoringServer()
    wire.receive("<presence from='alice@example.org/phone'/>")
    wire.answerRequests(server)
    stored = server.items["alice@example.org"]
    assert stored["bob@example.org"].index("Friends") < stored["bob@example.org"].index("Work")
    stored["bob@example.org"] = ("<item xmlns='jabber:iq:roster' jid='bob@example.org' name='Bob' "
                                 "subscription='both'><group>Work</group><group>Chess</group>"
                                 "<group>Friends</group></item>")
    d = wire.backend.verifyServer("alice")
    sent = wire.answerRequests(server)
    assert d.called and serverReads(sent) == 1
    assert [s for s in sent if s.getAttribute("type") == "set"] == []
    assert sum(wire.backend.snapshot().driftRepaired.values()) == 0


def test_checkedUsersInMetrics() -> None:
    """
    /metrics counts the server rosters the online check read back.
    """
    wire, server = connected(), StoringServer()
    wire.receive("<presence from='alice@example.org/phone'/>")
    wire.answerRequests(server)
    check = OnlineCheck(wire.backend, lambda: wire.component.privileges.online, wire.clock, 600)
    http = StubTreq(makeAPI(wire.config, wire.parts, FullSync(wire.backend, None, wire.clock, False, 3600),
                            Drain(), check))
    check.check()
    wire.answerRequests(server)
    d = http.get("http://api.invalid/metrics")
    http.flush()
    body: list[str] = []
    d.addCallback(lambda response: response.text()).addCallback(body.append)
    http.flush()
    assert "rosteradmin_online_checked_total 1.0" in body[0]
