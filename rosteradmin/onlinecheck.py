# -*- test-case-name: tests.test_onlinecheck -*-
"""
The cheap drift check for online users.

The server applies what reaches it behind our back (a subscription presence
on a server without contrib's blocking module, an admin tool) to its stored
rosters, and tells nobody: with C{jabber:iq:roster} delegated, Prosody does
not even push the change to the user's clients, which never asked it for
their roster.  Presence goes wrong at once, for the users who are online.
The reconciliation pass (L{rosteradmin.fullsync}) repairs every user, but
only every few hours and at the cost of a web-app fetch each; so every
C{--online-check-interval} the online users' server rosters are read back
and compared with the cache, repaired where they differ, and the repaired
items pushed.  That costs one privileged read per online user, at
background priority, and nothing of the web app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from rosteradmin.interfaces import IRosterBackend
from rosteradmin.slots import AtMost

#: Users checked at once (L{AtMost}): their reads go through the privileged
#: requests' own bound and pacing; this keeps the rest of a pass from
#: holding locks.
CHECKS_AT_ONCE = 16


class OnlineCheck(Service):
    """
    Runs the check every interval, one pass at a time.

    @ivar passes: Checks completed.
    @ivar checked: Users checked, all passes together.
    """

    log = Logger()

    def __init__(self, backend: IRosterBackend, onlineUsers: Callable[[], Iterable[str]],
                 clock: IReactorTime, interval: float) -> None:
        """
        @param backend: Verifies each online user's server roster, when
            the server takes writes.
        @param onlineUsers: The usernames with an online resource now.
        """
        self.backend = backend
        self.onlineUsers = onlineUsers
        self.clock = clock
        self.interval = interval
        self.passes = 0
        self.checked = 0
        self._loop: LoopingCall | None = None
        self._checking = False
        self._atMost: AtMost[str] = AtMost(CHECKS_AT_ONCE)

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def nextCheck(self) -> float | None:
        """
        Seconds until the next check of the online users' server rosters, or C{None} when none is
        scheduled (the service is not running).
        """
        loop = self._loop
        if loop is None or not loop.running or loop.call is None:
            return None
        return max(0.0, loop.call.getTime() - self.clock.seconds())

    def check(self) -> Deferred[None] | None:
        """
        Check every online user once, unless the previous pass still runs
        (a slow server must not pile passes up) or the server takes no
        writes (nothing could be repaired).

        @return: The pass, or C{None} when none was started.
        """
        if self._checking or not self.backend.canSync():
            return None
        usernames = sorted(self.onlineUsers())
        if not usernames:
            return None
        self._checking = True
        failures: dict[str, Failure] = {}

        def verify(username: str) -> Deferred[None]:
            def failed(failure: Failure) -> None:
                failures[username] = failure

            return self.backend.verifyServer(username).addErrback(failed)

        # The bound before the user's lock: a check waiting for its turn
        # holds no lock, so a refresh of that user does not wait for the
        # whole pass.
        return self._atMost.run(usernames, verify).addCallback(lambda _: self._done(usernames, failures))

    def _done(self, usernames: list[str], failures: dict[str, Failure]) -> None:
        self._checking = False
        self.passes += 1
        self.checked += len(usernames)
        if failures:
            username, failure = next(iter(failures.items()))
            self.log.warn("checked the server rosters of {count} online users; {failed} checks failed, "
                          "{user}'s: {why}", count=len(usernames), failed=len(failures), user=username,
                          why=failure.getErrorMessage())
        else:
            self.log.info("checked the server rosters of {count} online users", count=len(usernames))
