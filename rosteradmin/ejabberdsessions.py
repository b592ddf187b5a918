# -*- test-case-name: tests.test_ejabberdsessions,tests.integration.test_ejabberd24 -*-
"""
Who is online on ejabberd, from its HTTP API, where no presence tells us.

With C{--roster-sync ejabberd-api} ejabberd runs without mod_privilege
(it breaks delegation on 24.12), so the server shares no presence with
the component and L{rosteradmin.presence.PresenceTracker} learns of
nobody.  ejabberd's session table is cluster-wide, and mod_admin_extra's
C{connected_users_vhost} lists it: every full JID with a session on the
domain, on any node.  Read every L{POLL_INTERVAL} seconds, it keeps online
users' rosters cached, lists the users the online check reads back, and,
read first after our start, names the users whose clients hold a roster
from before it (caught up, as replayed presences are on Prosody).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rosteradmin.ejabberdapi import CommandPoster
from rosteradmin.errors import SyncFailed
from rosteradmin.interfaces import IOnlineUsers, IServerObserver
from rosteradmin.stanzas import parseJID

#: Seconds between two reads of the session list: how late a user who
#: logged in is known online (its roster, loaded for its login, is the
#: most recently used one meanwhile, so the cache keeps it anyway).
POLL_INTERVAL = 10.0

#: The command that lists a domain's sessions (mod_admin_extra).
SESSIONS_COMMAND = "connected_users_vhost"


def parseSessions(answer: object, domain: str) -> dict[str, set[str]]:
    """
    Read C{connected_users_vhost}'s answer, a JSON array of full JIDs,
    into online full JIDs by username; anything else in it is skipped.

    @raise SyncFailed: It is not an array.
    """
    if not isinstance(answer, list):
        raise SyncFailed(f"{SESSIONS_COMMAND} answered a {type(answer).__name__}, not a list of sessions")
    online: dict[str, set[str]] = {}
    for value in answer:
        jid = parseJID(value) if isinstance(value, str) else None
        if jid is not None and jid.host == domain and jid.user and jid.resource:
            online.setdefault(jid.user, set()).add(jid.full())
    return online


@implementer(IOnlineUsers)
class EjabberdSessions(Service):
    """
    Reads ejabberd's sessions every interval, one read at a time.

    @ivar online: Online full JIDs by username, as last read.
    @ivar observer: Told of users online before our start (caught up) and
        of users coming online since (warmed); set by
        L{rosteradmin.tap.wireParts}.
    @ivar problem: Why the last read failed, or C{None}.
    """

    log = Logger()

    def __init__(self, api: CommandPoster, domain: str, clock: IReactorTime,
                 interval: float = POLL_INTERVAL) -> None:
        """
        @param api: Posts the command, with the roster writes' client and
            credential.
        """
        self.api = api
        self.domain = domain
        self.clock = clock
        self.interval = interval
        self.online: dict[str, set[str]] = {}
        self.observer: IServerObserver | None = None
        self.problem: str | None = None
        self._read = False
        self._polling = False
        self._loop: LoopingCall | None = None

    def isOnline(self, username: str) -> bool:
        return username in self.online

    def startService(self) -> None:
        """
        Read the sessions now (the users to catch up), then every interval.
        """
        super().startService()
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def poll(self) -> Deferred[None]:
        """
        Read the session list once, unless a read is under way; never
        fails.
        """
        if self._polling:
            return succeed(None)
        self._polling = True
        d = self.api.ask(SESSIONS_COMMAND, {"host": self.domain})
        d.addCallback(self._cbSessions)
        d.addErrback(self._ebSessions)

        def done(result: None) -> None:
            self._polling = False
            return result

        return d.addBoth(done)

    def _cbSessions(self, answer: Any) -> None:
        """
        Take the new list: users it names first are caught up on the
        first read (online before us), warmed on later ones.
        """
        online = parseSessions(answer, self.domain)
        if self.problem is not None:
            self.log.info("ejabberd lists its sessions again: {count} users online", count=len(online))
        self.problem = None
        first, self._read = not self._read, True
        newcomers = sorted(set(online) - set(self.online))
        self.online = online
        if first and newcomers:
            self.log.info("{count} users were online before this start: catching them up", count=len(newcomers))
        for username in newcomers:
            if self.observer is not None:
                (self.observer.catchUp if first else self.observer.warm)(username)

    def _ebSessions(self, failure: Failure) -> None:
        """
        Keep the last list: a user is not offline because the API did not
        answer.
        """
        if not failure.check(SyncFailed):
            # A bug: the next read may do better.
            self.log.failure("reading ejabberd's sessions failed", failure)
            return
        problem = failure.getErrorMessage()
        if problem != self.problem:
            self.log.error("cannot list ejabberd's sessions (online users stay as last known: {count}): {why}; "
                           "see api_permissions in contrib/ejabberd/rosteradmin.yml",
                           count=len(self.online), why=problem)
        self.problem = problem
