"""
Tests for L{rosteradmin.ejabberdsessions}: who is online, from ejabberd's
session list (mod_admin_extra's C{connected_users_vhost}), read through
the API stand-in of L{tests.test_ejabberdapi}.
"""

from __future__ import annotations

from twisted.logger import capturedLogs
from zope.interface import implementer

from rosteradmin.ejabberdapi import EjabberdAPISync
from rosteradmin.ejabberdsessions import POLL_INTERVAL, EjabberdSessions, parseSessions
from rosteradmin.interfaces import IServerObserver
from rosteradmin.options import Options
from rosteradmin.presence import PresenceTracker
from rosteradmin.tap import makeService
from tests.helpers import DOMAIN, ComponentOnWire, makeConfig
from tests.test_ejabberdapi import API, FakeAPI, apiSync, result


@implementer(IServerObserver)
class Told:
    """
    Records what the sessions tell the backend.
    """

    def __init__(self) -> None:
        self.told: list[tuple[str, str]] = []

    def warm(self, username: str) -> None:
        self.told.append(("warm", username))

    def catchUp(self, username: str) -> None:
        self.told.append(("catchUp", username))

    def writesRestored(self) -> None:
        pass

    def userWritable(self, username: str) -> None:
        pass


def sessionsOn(api: FakeAPI) -> tuple[EjabberdSessions, Told, EjabberdAPISync]:
    sync, clock = apiSync(api)
    sessions = EjabberdSessions(sync.poster, DOMAIN, clock)
    told = Told()
    sessions.observer = told
    return sessions, told, sync


def test_parseKeepsTheDomainsFullJIDs() -> None:
    """
    Sessions are full JIDs of the domain's users, grouped by username;
    other domains, bare JIDs and anything that is no JID are skipped.
    """
    assert parseSessions(["alice@example.org/phone", "alice@example.org/laptop", "bob@example.org/x",
                          "eve@elsewhere.org/x", "carol@example.org", "example.org/x", 7, "@@"], DOMAIN) == {
        "alice": {"alice@example.org/phone", "alice@example.org/laptop"}, "bob": {"bob@example.org/x"}}


def test_firstReadCatchesUpThenNewcomersAreWarmed() -> None:
    """
    The users of the first read were online before this start: each is
    caught up.  A later read warms only the users it names first, and
    drops those gone.
    """
    api = FakeAPI()
    api.sessions = ["alice@example.org/phone", "bob@example.org/x"]
    sessions, told, _ = sessionsOn(api)
    with capturedLogs():
        sessions.startService()
    sessions.api.http.flush()
    assert told.told == [("catchUp", "alice"), ("catchUp", "bob")]
    assert sessions.online == {"alice": {"alice@example.org/phone"}, "bob": {"bob@example.org/x"}}
    assert sessions.isOnline("alice") and not sessions.isOnline("carol")
    api.sessions = ["alice@example.org/phone", "carol@example.org/y"]
    sessions.clock.advance(POLL_INTERVAL)
    sessions.api.http.flush()
    assert told.told[2:] == [("warm", "carol")]
    assert set(sessions.online) == {"alice", "carol"}
    assert [command for command, _ in api.calls] == ["connected_users_vhost"] * 2
    assert api.calls[0][1] == {"host": DOMAIN}
    sessions.stopService()


def test_refusedReadKeepsTheLastList() -> None:
    """
    While the API refuses the session list, the users last read stay
    online, the problem is kept (and logged once), and writes stay on;
    the next answer clears it.
    """
    api = FakeAPI()
    api.sessions = ["alice@example.org/phone"]
    sessions, told, sync = sessionsOn(api)
    result(sessions.poll())
    sessions.api.http.flush()
    api.refuse = (403, "You are not authorized to call this command.")
    with capturedLogs() as events:
        for _ in range(2):
            sessions.poll()
            sessions.api.http.flush()
    assert sessions.online == {"alice": {"alice@example.org/phone"}}
    assert "HTTP 403: You are not authorized" in (sessions.problem or "")
    assert len([e for e in events if e["log_level"].name == "error"]) == 1
    assert sync.canSync() and sync.syncRefusal is None
    api.refuse = None
    with capturedLogs():
        sessions.poll()
        sessions.api.http.flush()
    assert sessions.problem is None and told.told == [("catchUp", "alice")]


def test_compositionRootPinsAndChecksTheListedUsers() -> None:
    """
    With ejabberd's API, the online users (the cache's pinned ones, the
    online check's) are the session list's, which tells the backend;
    otherwise the presence tracker's.
    """
    wire = ComponentOnWire(config=makeConfig(roster_sync="ejabberd-api", ejabberd_api_url=API))
    online = wire.parts.online
    assert isinstance(online, EjabberdSessions) and online.observer is wire.backend
    online.online = {"alice": {"alice@example.org/phone"}}
    assert wire.backend.cache.pinned("alice") and not wire.backend.cache.pinned("bob")
    assert isinstance(ComponentOnWire().parts.online, PresenceTracker)


def test_serviceTreeReadsTheSessions() -> None:
    """
    In the service twistd runs with ejabberd's API, the session list is a
    named service started after the component; without it, there is none.
    """
    argv = ["--jid", "roster.example.org", "--secret", "s", "--domain", DOMAIN, "--roster-url", "http://app/%s",
            "--no-kick", "--http", "tcp:0:interface=127.0.0.1"]
    options = Options()
    options.parseOptions(argv + ["--roster-sync", "ejabberd-api", "--ejabberd-api-url", API])
    names = [s.name for s in makeService(options)]
    assert names.index("component") + 1 == names.index("sessions")
    options = Options()
    options.parseOptions(argv)
    assert "sessions" not in [s.name for s in makeService(options)]
