# -*- test-case-name: tests.test_ejabberdapi -*-
"""
Writing rosters into ejabberd through its HTTP API (mod_http_api), for
servers where XEP-0356 cannot do it.

ejabberd 24.12 with mod_privilege drops the component's plain replies, sends
its privileged roster iqs back to it while C{jabber:iq:roster} is delegated
(ejabberd issue #1737), and stores privileged roster sets with subscription
C{none}.  Without mod_privilege, delegation works, and mod_admin_extra's
commands do what we need over HTTP: C{get_roster} to diff against,
C{add_rosteritem} with C{both} and C{delete_rosteritem}.  Both writes go
through ejabberd's own roster code, which pushes the change to the user's
online clients and sends the presence the new subscription calls for, so
nothing is pushed from here (docs/protocol.md, measured on 24.12).  It
pushes an unchanged item too: a client's refused roster set is put back
by writing its contacts again (L{PutBacks}).

Requests have the bounds of privileged ones (L{PrioritySlots}, urgent
first, a few per user, background paced by latency) and a deadline each.
A refusal of the API as a whole (permissions, no such command) turns
writes off and is the L{syncRefusal} that C{/healthz} and refreshes
report.  An API that cannot be reached (ejabberd restarting) turns them
off too, but refuses nothing: the writes wait, as they wait for a dropped
stream, and the users are written once it answers (L{unreachable}, which
C{/healthz} shows, a refresh does not report).  Either way the API is
probed again until it answers: every L{PROBE_INTERVAL} seconds, and at
once when the component's stream comes up (L{APIAvailability}), which
after a restart of ejabberd is when its API is back too, or a moment
later (L{PROBE_AFTER_CONNECT}).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import treq
from twisted.application.service import Service
from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseFailed
from zope.interface import implementer

from rosteradmin.errors import NotConnected, SyncFailed
from rosteradmin.fetcher import ReplyTooLarge, preview, readCapped
from rosteradmin.interfaces import IRosterSync, IServerObserver
from rosteradmin.pacing import LatencyPacer
from rosteradmin.roster import Contact, Roster, RosterDiff, StoredRoster
from rosteradmin.slots import MAX_SYNC_IN_FLIGHT, PER_USER_IN_FLIGHT, RESERVED_FOR_CLIENTS, PrioritySlots
from rosteradmin.stanzas import parseJID

#: Failures that mean the API cannot be reached at all.
UNREACHABLE = (netError.ConnectError, netError.DNSLookupError)

#: The account the probe reads the roster of: any name does (an unknown
#: user's roster is empty), it only shows that C{get_roster} is allowed.
PROBE_USER = "rosteradmin-probe"

#: Seconds between probes while the API refuses or cannot be reached.
PROBE_INTERVAL = 30.0

#: Seconds to the probe after the one made when the component's stream
#: comes up, doubling up to L{PROBE_INTERVAL} while the API does not
#: answer: a restarting ejabberd may take the component's handshake a
#: moment before its HTTP listener takes connections.
PROBE_AFTER_CONNECT = 1.0

#: Largest API reply read: a roster of 100,000 contacts fits.
MAX_REPLY_BYTES = 64 * 1024 * 1024

#: Most contacts of one user waiting to be put back (L{PutBacks}): far
#: more than a client edits at once, far fewer than a flood of made-up ones.
MAX_PUT_BACK = 1000

#: Subscription requests pending, in C{get_roster}'s C{pending}: none.
NOT_PENDING = ("none", "undefined", "")


class _APIRefused(Exception):
    """
    The API refuses every call of this kind, whatever the user: a
    misconfiguration, not a problem of one roster.
    """


def parseAPIRoster(reply: object) -> StoredRoster:
    """
    Read C{get_roster}'s answer: a JSON array of objects with C{jid},
    C{nick}, C{subscription}, C{pending} and C{groups}.

    @raise SyncFailed: It is not such an array.
    """
    if not isinstance(reply, list):
        raise SyncFailed(f"get_roster answered {preview(json.dumps(reply).encode())}, not a list of contacts")
    contacts: list[Contact] = []
    notBoth: set[str] = set()
    for item in reply:
        jid = parseJID(item.get("jid")) if isinstance(item, dict) and isinstance(item.get("jid"), str) else None
        if jid is None:
            continue
        bare = jid.userhost()
        groups = item.get("groups")
        names = tuple(dict.fromkeys(g for g in groups if isinstance(g, str) and g)) if isinstance(groups, list) else ()
        nick = item.get("nick")
        contacts.append(Contact(bare, nick if isinstance(nick, str) and nick else None, names))
        if item.get("subscription") != "both" or item.get("pending", "none") not in NOT_PENDING:
            notBoth.add(bare)
    return StoredRoster(Roster(contacts), frozenset(notBoth))


class CommandPoster:
    """
    Posts commands to C{mod_http_api}, each within the deadline, and reads
    what the reply means: the one client and credential of the roster
    writes (L{EjabberdAPISync}) and of the session list
    (L{rosteradmin.ejabberdsessions}).

    @ivar observeLatency: Told each answered call's latency, in seconds.
    """

    def __init__(self, url: str, clock: IReactorTime, http: Any, timeout: float,
                 headers: dict[str, list[str]]) -> None:
        """
        @param url: The API's base URL; a command is posted to
            C{<url>/<command>}.
        @param headers: Sent with every call (JSON, the credential).
        """
        self.url = url
        self.clock = clock
        self.http = http
        self.timeout = timeout
        self.headers = headers
        self.observeLatency: Callable[[float], None] = lambda seconds: None

    def post(self, command: str, arguments: dict[str, Any]) -> Deferred[Any]:
        """
        Post one command.

        @return: Deferred firing with the decoded JSON answer; failing with
            L{_APIRefused} (the API refuses such calls), L{SyncFailed} (this
            one failed), L{TimeoutError} (the deadline) or the connection's
            failure.
        """
        d = ensureDeferred(self._post(command, arguments))
        # Cancelled by the deadline, treq fails with ResponseFailed: say it
        # was the deadline.
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=lambda result, timeout: Failure(TimeoutError(timeout)))
        return d

    def ask(self, command: str, arguments: dict[str, Any]) -> Deferred[Any]:
        """
        Post a command that writes nothing (such as the session list):
        whatever its failure, it fails with L{SyncFailed} naming the
        command and why, which says nothing of the roster commands.
        """
        def failed(failure: Failure) -> None:
            if failure.check(TimeoutError, CancelledError):
                raise SyncFailed(f"ejabberd's HTTP API call {command} had no answer within {self.timeout:g}s")
            raise SyncFailed(f"ejabberd's HTTP API call {command} failed: {failure.getErrorMessage()}")

        return self.post(command, arguments).addErrback(failed)

    async def _post(self, command: str, arguments: dict[str, Any]) -> Any:
        sent = self.clock.seconds()
        data = json.dumps(arguments).encode("utf-8")
        try:
            response = await self.http.post(f"{self.url}/{command}", data=data, headers=self.headers)
        except ResponseFailed as e:
            if any(reason.check(CancelledError, netError.ConnectionAborted) for reason in e.reasons):
                raise  # our deadline
            # A kept-alive connection ejabberd had just closed: Twisted's
            # pool retries no POST, and every command is idempotent, so
            # once more on a new connection.
            response = await self.http.post(f"{self.url}/{command}", data=data, headers=self.headers)
        body = await readCapped(response, MAX_REPLY_BYTES)
        self.observeLatency(self.clock.seconds() - sent)
        code = response.code
        if code in (401, 403) or (code == 404 and _errorCode(body) == 40):
            raise _APIRefused(f"HTTP {code}: {_message(body)}")
        if code != 200:
            raise SyncFailed(f"HTTP {code}: {_message(body)}")
        try:
            answer = json.loads(body)
        except ValueError:
            raise SyncFailed(f"HTTP 200 with a body that is not JSON: {preview(body)}") from None
        # Commands with a result code answer 0 for done, 1 for not done.
        if answer == 1:
            raise SyncFailed("ejabberd answered 1: not done (see ejabberd's log)")
        return answer


class PutBacks:
    """
    The refused roster sets to put back, one pass of writes per user at a
    time: what a client sends while a pass is written merges into the
    next, so a client flooding refused sets queues at most
    L{MAX_PUT_BACK} contacts, not writes for every item of every set.
    """

    def __init__(self, write: Callable[[str, frozenset[str], Roster], Deferred[None]]) -> None:
        """
        @param write: Writes one pass (never fails).
        """
        self.write = write
        self._writing: set[str] = set()
        self._next: dict[str, tuple[frozenset[str], Roster]] = {}

    def add(self, username: str, jids: frozenset[str], roster: Roster) -> None:
        """
        Put these contacts back as C{roster} has them: now, or after the
        user's pass under way, with the latest roster given.
        """
        if username not in self._writing:
            self._start(username, frozenset(sorted(jids)[:MAX_PUT_BACK]), roster)
            return
        waiting, _ = self._next.get(username, (frozenset(), roster))
        room = max(MAX_PUT_BACK - len(waiting), 0)
        self._next[username] = (waiting | frozenset(sorted(jids - waiting)[:room]), roster)

    def _start(self, username: str, jids: frozenset[str], roster: Roster) -> None:
        self._writing.add(username)
        self.write(username, jids, roster).addBoth(self._done, username)

    def _done(self, result: object, username: str) -> None:
        self._writing.discard(username)
        waiting = self._next.pop(username, None)
        if waiting is not None:
            self._start(username, *waiting)


class APIAvailability:
    """
    Whether ejabberd's API takes calls, as the calls found: answering,
    refusing them as a whole (a misconfiguration), or unreachable (down:
    writes wait); and the probes that see when that changes, every
    L{PROBE_INTERVAL} seconds while it does not answer, and at once when
    the component's stream comes up (L{streamConnected}), then
    L{PROBE_AFTER_CONNECT} seconds later, doubling up to L{PROBE_INTERVAL}.

    @ivar refusal: Why the API refuses our calls, or C{None}.
    @ivar unreachable: Why it cannot be reached, or C{None}.
    @ivar restored: Told when the API answers first, and again after it
        refused or could not be reached.
    """

    log = Logger()

    def __init__(self, url: str, clock: IReactorTime, probe: Callable[[], Deferred[Any]]) -> None:
        """
        @param probe: Makes one call that writes nothing, told to this as
            any other (L{answered}, L{refuse}, L{away}).
        """
        self.url = url
        self.clock = clock
        self.probe = probe
        self.restored: Callable[[], None] = lambda: None
        self.refusal: str | None = None
        self.unreachable: str | None = None
        self.running = False
        self._answering = False
        self._probeCall: IDelayedCall | None = None
        self._probeDelay = PROBE_INTERVAL

    def start(self) -> None:
        """
        Probe now, so that a misconfiguration shows in C{/healthz} before
        the first login.
        """
        self.running = True
        self._probeDelay = PROBE_INTERVAL
        self.probeNow()

    def stop(self) -> None:
        self.running = False
        self._cancelProbe()

    def takesCalls(self) -> bool:
        return self.refusal is None and self.unreachable is None

    def streamConnected(self) -> None:
        """
        The component's stream is up (again): ejabberd may just have
        restarted, so an API that refused or could not be reached is probed
        now, not at the next probe, and the users whose writes waited are
        written as soon as the component is back, as on Prosody.  Its HTTP
        listener may come up a moment after the component's port: while the
        API does not answer, the next probes come after
        L{PROBE_AFTER_CONNECT} seconds, doubling up to L{PROBE_INTERVAL}.
        """
        if self.running and not self.takesCalls():
            self._cancelProbe()
            self._probeDelay = PROBE_AFTER_CONNECT
            self.probeNow()

    def answered(self) -> None:
        """
        A call was answered: writes are on.  The short probes after a
        handshake end too, so the next outage, with the stream up, is
        probed every L{PROBE_INTERVAL} seconds.
        """
        self._probeDelay = PROBE_INTERVAL
        if not self._answering or not self.takesCalls():
            again = not self.takesCalls()
            self._answering, self.refusal, self.unreachable = True, None, None
            self.log.info("ejabberd's HTTP API at {url} answers{again}: roster writes are on", url=self.url,
                          again=" again" if again else "")
            self.restored()

    def refuse(self, reason: str) -> None:
        """
        Turn writes off until the API answers a probe.
        """
        if self.refusal != reason:
            self.log.error("{reason}; roster writes are off until it answers", reason=reason)
        self.refusal, self.unreachable = reason, None
        self._probeLater()

    def away(self, reason: str) -> str:
        """
        Turn writes off until the API answers a probe, keeping them
        pending: the API is down, not refusing.

        @return: C{reason}.
        """
        if self.unreachable != reason:
            self.log.warn("{reason}; roster writes wait until it answers", reason=reason)
        self.refusal, self.unreachable = None, reason
        self._probeLater()
        return reason

    def probeNow(self) -> Deferred[None]:
        """
        See whether the API answers; while it does not, again later.
        """
        self._probeCall = None

        def failed(failure: Failure) -> None:
            failure.trap(SyncFailed, NotConnected)
            if not self.takesCalls():
                self._probeLater()

        return self.probe().addCallbacks(lambda answer: None, failed)

    def _probeLater(self) -> None:
        if self.running and (self._probeCall is None or not self._probeCall.active()):
            self._probeCall = self.clock.callLater(self._probeDelay, self.probeNow)
            self._probeDelay = min(self._probeDelay * 2, PROBE_INTERVAL)

    def _cancelProbe(self) -> None:
        if self._probeCall is not None and self._probeCall.active():
            self._probeCall.cancel()
        self._probeCall = None


@implementer(IRosterSync)
class EjabberdAPISync(Service):
    """
    Reads and writes users' stored rosters with ejabberd's C{mod_http_api}.

    A service: started, it probes the API; stopped, it stops probing and
    closes its connections.

    @ivar parked: Always empty: no stream carries these writes, so none can
        coincide with its losses.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        domain: str,
        clock: IReactorTime,
        http: Any = treq,
        timeout: float = 10.0,
        authorization: str | None = None,
        latencyTarget: float = 0.05,
        pool: HTTPConnectionPool | None = None,
    ) -> None:
        """
        @param url: The API's base URL (C{http://127.0.0.1:5281/api}); a
            command is posted to C{<url>/<command>}.
        @param domain: The user domain whose rosters are written.
        @param clock: Time for deadlines, latencies and probes.
        @param http: A treq-like client.
        @param timeout: Seconds one API call may take.
        @param authorization: The C{Authorization} header to send, if the
            API's permissions want a credential.
        @param latencyTarget: The reply latency background writes may push
            the server to (see L{rosteradmin.pacing}).
        @param pool: The connection pool under C{http}, closed by L{stopService}.
        """
        self.url = url.rstrip("/")
        self.domain = domain
        self.clock = clock
        self.timeout = timeout
        self.headers = {"Content-Type": ["application/json"], "Accept": ["application/json"]}
        if authorization is not None:
            self.headers["Authorization"] = [authorization]
        self.observer: IServerObserver | None = None
        self.pool = pool
        self.parked: dict[str, str] = {}
        self.availability = APIAvailability(self.url, clock, self._probe)
        self.availability.restored = self._restored
        self._toldNoPush = False
        self._slots = PrioritySlots(MAX_SYNC_IN_FLIGHT, reserved=RESERVED_FOR_CLIENTS, perKey=PER_USER_IN_FLIGHT,
                                    now=clock.seconds)
        self.pacer = LatencyPacer(self._slots, clock, latencyTarget)
        self.poster = CommandPoster(self.url, clock, http, timeout, self.headers)
        self.poster.observeLatency = self.pacer.observe
        self._putBacks = PutBacks(self._putBack)

    def observe(self, observer: IServerObserver) -> None:
        """
        Say whom to tell when the API takes writes: when it first answers,
        and when it answers again after refusing (the backend, which then
        resumes and writes what it could not write meanwhile).  Told after
        construction, as L{rosteradmin.privilege.PrivilegeHandler.observe}
        is: the backend is built with this as its L{IRosterSync}.
        """
        self.observer = observer

    def _restored(self) -> None:
        if self.observer is not None:
            self.observer.writesRestored()

    def startService(self) -> None:
        """
        Probe the API now (L{APIAvailability.start}).
        """
        super().startService()
        self.availability.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop probing and close the kept-alive connections.
        """
        super().stopService()
        self.availability.stop()
        return succeed(None) if self.pool is None else self.pool.closeCachedConnections()

    def canSync(self) -> bool:
        """
        Whether the API takes our calls: it does not depend on the
        component's stream.
        """
        return self.availability.takesCalls()

    @property
    def syncRefusal(self) -> str | None:
        return self.availability.refusal

    @property
    def unreachable(self) -> str | None:
        return self.availability.unreachable

    def readStored(self, username: str, urgent: bool = True) -> Deferred[StoredRoster]:
        """
        The roster ejabberd stores for a user (C{get_roster}).
        """
        d = self._slots.run(username, urgent, self._call, "get_roster", {"user": username, "host": self.domain})
        return d.addCallback(parseAPIRoster)

    def write(self, username: str, diff: RosterDiff, urgent: bool = True) -> Deferred[None]:
        """
        One C{add_rosteritem} (subscription C{both}) per changed contact
        and one C{delete_rosteritem} per removed one; at most
        L{PER_USER_IN_FLIGHT} of one user's at once.

        @raise SyncFailed: Some were refused or not answered.
        """
        calls = [self._slots.run(username, urgent, self._call, *self._addItem(username, contact))
                 for contact in diff.changed]
        calls += [self._slots.run(username, urgent, self._call, *self._deleteItem(username, jid))
                  for jid in diff.removed]
        return DeferredList(calls, consumeErrors=True).addCallback(self._checkWrites, username)

    def _addItem(self, username: str, contact: Contact) -> tuple[str, dict[str, Any]]:
        # Version 1 of add_rosteritem (ejabberd 24.02 and later) takes the
        # groups as a list; version 0 splits one string at ";".
        user, _, host = contact.jid.rpartition("@")
        return "add_rosteritem/v1", {"localuser": username, "localhost": self.domain, "user": user, "host": host,
                                     "nick": contact.name or "", "groups": list(contact.groups), "subs": "both"}

    def _deleteItem(self, username: str, jid: str) -> tuple[str, dict[str, Any]]:
        # Deleting an item ejabberd does not hold answers success.  A
        # domain-only JID has no user part.
        user, _, host = jid.rpartition("@")
        return "delete_rosteritem", {"localuser": username, "localhost": self.domain, "user": user, "host": host}

    @staticmethod
    def _checkWrites(results: list[tuple[bool, object]], username: str) -> None:
        """
        @raise NotConnected: Some writes were not made because the API
            cannot be reached: they wait for it (the server refused nothing).
        @raise SyncFailed: Some were refused or not answered.
        """
        failed = [cast(Failure, r) for ok, r in results if not ok]
        away = [f for f in failed if f.check(NotConnected)]
        if away:
            raise NotConnected(f"{len(away)} of {len(results)} roster writes for {username!r} wait: "
                               f"{away[0].getErrorMessage()}")
        if failed:
            raise SyncFailed(f"{len(failed)} of {len(results)} roster writes for {username!r} failed: "
                             f"{failed[0].getErrorMessage()}")

    def stuck(self) -> str | None:
        """
        Why API calls make no progress (each has a deadline, so a queue
        that has not moved for twice that is wedged), or C{None}.
        """
        stalled = self._slots.stalled(2 * self.timeout + 1)
        return f"ejabberd HTTP API calls: {stalled}" if stalled is not None else None

    def hurry(self, username: str) -> None:
        self._slots.promote(username)

    def push(self, username: str, before: Roster | None, after: Roster,
             rewrite: frozenset[str] = frozenset()) -> int:
        """
        Nothing to send: ejabberd pushed each change to the user's online
        clients when it was written (C{mod_roster}'s
        C{set_item_and_notify_clients}), with its own roster version.
        """
        if not self._toldNoPush:
            self._toldNoPush = True
            self.log.info("roster changes are pushed by ejabberd itself, as each API write is stored")
        return 0

    def answered(self, username: str, resource: str, roster: Roster) -> None:
        """
        Nothing to follow: ejabberd pushes to its clients itself.
        """

    def putBack(self, username: str, resource: str, jids: frozenset[str], roster: Roster) -> None:
        """
        Write the roster's items for these contacts again, and delete
        those it does not list (L{PutBacks}): ejabberd pushes every item
        written through the API to all the user's clients, unchanged or not
        (C{set_item_and_notify_clients}), so the refusing client shows them
        again (the others are pushed what they show already).
        """
        self._putBacks.add(username, jids, roster)

    def _putBack(self, username: str, jids: frozenset[str], roster: Roster) -> Deferred[None]:
        """
        One pass of a user's put-backs: background writes, counted per
        user as any others.
        """
        contacts = roster.byJID()
        calls = [self._slots.run(username, False, self._call, *(
            self._addItem(username, contacts[jid]) if jid in contacts else self._deleteItem(username, jid)))
            for jid in sorted(jids)]
        d = DeferredList(calls, consumeErrors=True).addCallback(self._checkWrites, username)
        return d.addErrback(lambda failure: self.log.warn("putting back {user}'s refused roster edit failed: {why}",
                                                           user=username, why=failure.getErrorMessage()))

    def promiseCurrent(self, username: str, version: str) -> None:
        """
        Nothing to promise: ejabberd's C{mod_roster} keeps its own versions
        and answers no query of ours.
        """

    def revokeCurrent(self, username: str | None) -> Deferred[bool]:
        """
        Nothing was promised (L{promiseCurrent}).
        """
        return succeed(True)

    def _call(self, command: str, arguments: dict[str, Any]) -> Deferred[Any]:
        """
        Post one command, within the deadline.

        @return: Deferred firing with the decoded JSON answer, or failing
            with L{SyncFailed} (which names the command and why).
        """
        d = self.poster.post(command, arguments)
        return d.addCallbacks(self._answered, self._failed, errbackArgs=(command, arguments))

    def _answered(self, answer: Any) -> Any:
        self.availability.answered()
        return answer

    def _failed(self, failure: Failure, command: str, arguments: dict[str, Any]) -> None:
        """
        Turn a failed call into L{SyncFailed}; a refusal of the API as a
        whole turns writes off first.  An API that cannot be reached turns
        them off too, and fails the call with L{NotConnected}: the write
        waits for it, as a privileged write waits for a dropped stream.
        """
        what = (f"ejabberd's HTTP API call {command.split('/')[0]} for "
                f"{arguments.get('localuser', arguments.get('user'))!r}")
        if failure.check(_APIRefused):
            self.availability.refuse(f"ejabberd's HTTP API at {self.url} refuses {command.split('/')[0]} "
                                     f"({failure.getErrorMessage()}): see api_permissions and mod_admin_extra in "
                                     "contrib/ejabberd/rosteradmin.yml")
        elif failure.check(*UNREACHABLE):
            raise NotConnected(self.availability.away(
                f"ejabberd's HTTP API at {self.url} cannot be reached: {failure.getErrorMessage()}"))
        elif failure.check(TimeoutError, CancelledError):
            raise SyncFailed(f"{what} had no answer within {self.timeout:g}s")
        elif failure.check(ResponseFailed):
            raise SyncFailed(f"{what} failed: the connection broke before the answer, twice")
        elif failure.check(SyncFailed, ReplyTooLarge):
            raise SyncFailed(f"{what} failed: {failure.getErrorMessage()}")
        else:
            # A bug, or a failure treq does not document: still this
            # user's write failing, as the backend expects.
            self.log.failure("{what} failed", failure, what=what)
            raise SyncFailed(f"{what} failed: {failure.getErrorMessage()}")
        assert self.availability.refusal is not None
        raise SyncFailed(self.availability.refusal)

    def _probe(self) -> Deferred[Any]:
        """
        Read a roster to see whether the API answers.
        """
        return self._slots.run(PROBE_USER, False, self._call, "get_roster", {"user": PROBE_USER, "host": self.domain})


def _errorCode(body: bytes) -> object:
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer.get("code") if isinstance(answer, dict) else None


def _message(body: bytes) -> str:
    """
    The C{message} of mod_http_api's error object, or the start of the body.
    """
    try:
        answer = json.loads(body)
    except ValueError:
        return preview(body)
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        return str(answer["message"])
    return answer if isinstance(answer, str) else preview(body)

