"""
The contracts between rosteradmin's parts.

The backend knows neither XMPP nor HTTP; the XMPP and HTTP edges know the
backend only through these interfaces, and never each other.  Wiring happens
in L{rosteradmin.tap}.  The values the interfaces pass live beside them or
in L{rosteradmin.roster}, never in a part that implements them, so that no
part's module imports another's to name a type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from rosteradmin.roster import Roster, RosterDiff, StoredRoster
    from rosteradmin.snapshot import BackendSnapshot, UserReading

# Interface methods take no self (zope.interface); the mypy_zope plugin
# checks each @implementer class against these signatures, and the
# annotated Attributes give the types the edges see.


class IServerObserver(Interface):
    """
    Told what the component stream says of the server's users and of our
    access to their rosters.  The backend is one; the XMPP side is given
    it by the composition root (L{rosteradmin.tap.wireParts}) once it
    exists, as the backend is given the XMPP side's L{IRosterSync} first.
    """

    def warm(username: str) -> None:
        """
        A user's first resource came online: load its roster in the
        background, before the client asks.
        """

    def catchUp(username: str) -> None:
        """
        A user was online before this connection: refresh its roster in the
        background, so that a change made meanwhile is stored and pushed.
        """

    def writesRestored() -> None:
        """
        The server takes roster writes (again): a new connection granted
        roster access, or the server's API answers again.  Write what could
        not be written.
        """

    def userWritable(username: str) -> None:
        """
        This user's writes may be tried again (they were parked, while the
        server took everyone else's): write its roster if it could not be.
        """


@dataclass
class RefreshSummary:
    """
    The outcome of a refresh.

    @ivar updated: Users whose roster was fetched and applied.
    @ivar failures: Why each failed user failed, by username as given.
    """

    updated: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return len(self.failures)


class IRosterBackend(IServerObserver):
    """
    The rosters: cached, fetched from the web app, written into the server.
    """

    def getRoster(username: str) -> Deferred[Roster]:
        """
        The roster of a user: cached, or fetched (and synced into the server)
        on a miss.

        @return: Deferred firing with a L{rosteradmin.roster.Roster}, or
            failing with L{rosteradmin.errors.FetchFailed}.
        """

    def rosterStored(username: str) -> Deferred[None]:
        """
        The server waits to load the user's roster for a login: fire once
        it stores the web app's roster (at once when it is known to).

        @return: Deferred firing with C{None}, or failing with
            L{rosteradmin.errors.FetchFailed}.
        """

    def refresh(usernames: list[str], verify: bool = False) -> Deferred[RefreshSummary]:
        """
        Re-fetch, diff, cache, sync and push the rosters of these users.

        @param verify: Read each server roster even when it is known to be
            current, and repair what changed behind our back.

        @return: Deferred firing with a L{RefreshSummary}.
        """

    def putBack(username: str, resource: str, jids: frozenset[str]) -> None:
        """
        A roster set naming these bare JIDs, sent by this resource (a full
        JID), was refused: push it the web app's items for them (a removal
        for those it does not list), so that a client which showed the
        edit as done shows the roster again.
        """

    def clientsMayDiffer(username: str, version: str) -> bool:
        """
        Whether a client holding the user's current roster version may
        show something else (it changed its view and was refused, or the
        server changed the roster behind us): answer it in full.
        """

    def canSync() -> bool:
        """
        Whether the server takes roster writes now (L{IRosterSync.canSync}).
        """

    def verifyServer(username: str) -> Deferred[None]:
        """
        Read back the server roster of a cached user and repair, with
        pushes, what differs from the cache; no web-app fetch.
        """

    def answered(username: str, resource: str, roster: Roster) -> None:
        """
        A client (C{resource}, a full JID) was just answered C{roster}, in
        full or as current: it holds it, and wants pushes from now on.  If
        the server stores exactly that roster, let it answer the user's
        next queries itself (L{IRosterSync.promiseCurrent}).
        """

    def snapshot() -> BackendSnapshot:
        """
        What C{/healthz} and C{/metrics} show of the rosters (the cache,
        the fetches, the writes, the state, why work is stuck or memory
        saturated), read at once: the edges see these figures, not the
        parts that keep them.
        """

    def readUser(username: str, deadline: float) -> Deferred[UserReading]:
        """
        One user's rosters, read now: the web app's (fetched) and the
        server's (read back), neither cached nor written, with what is
        held of the user at that moment (its cache entry, what the state,
        the promises and the sync keep of it): the edges see these
        values, not the parts that keep them.

        @param deadline: Seconds to wait for the rosters: past them, the
            reading says they were not read, with what is held then.
        @return: Deferred firing with a L{rosteradmin.snapshot.UserReading}
            (a failed fetch or read is in it, not a failure).
        """


class IRosterSync(Interface):
    """
    Writes rosters into the XMPP server (XEP-0356) and pushes changes to
    the users' online clients.
    """

    def canSync() -> bool:
        """
        Whether the server granted roster access (and we are connected).
        """

    def observe(observer: IServerObserver) -> None:
        """
        Say whom to tell when the server takes writes (again): the backend,
        which is given this sync at construction, so it is told after.
        """

    syncRefusal: str | None = Attribute(
        "Why the server, though connected and granting roster access, cannot "
        "take our roster writes (a misconfiguration), or None"
    )

    unreachable: str | None = Attribute(
        "Why the server takes no roster writes for now without refusing them "
        "(ejabberd's HTTP API down while ejabberd restarts), or None: the writes "
        "wait and are made once it answers, as they wait for a dropped stream "
        "(which the connection's own state tells)"
    )

    def readStored(username: str, urgent: bool) -> Deferred[StoredRoster]:
        """
        The roster the server stores for a user.

        @param urgent: A client waits for it.

        @return: Deferred firing with a L{rosteradmin.roster.StoredRoster},
            or failing with L{rosteradmin.errors.SyncFailed} or
            L{rosteradmin.errors.NotConnected}.
        """

    def write(username: str, diff: RosterDiff, urgent: bool) -> Deferred[None]:
        """
        Apply a L{rosteradmin.roster.RosterDiff} to the server's roster.

        @param urgent: A client waits for it (it goes before background
            writes, such as a bulk refresh's).
        @return: Deferred firing when all items were written, or failing
            with L{rosteradmin.errors.SyncFailed}.
        """

    parked: dict[str, str] = Attribute("Users whose writes are held back after coinciding with stream losses, with why.")

    def stuck() -> str | None:
        """
        Why privileged requests make no progress, or None.
        """

    def hurry(username: str) -> None:
        """
        A client now waits for this user's roster: make its waiting
        background reads and writes urgent.
        """

    def push(username: str, before: Roster | None, after: Roster, rewrite: frozenset[str]) -> int:
        """
        The user's roster is now C{after}: bring each of the user's
        interested clients to it (fire and forget), each push with the
        version of the roster once it is applied, and push the contacts of
        C{rewrite} (bare JIDs) again, unchanged, with C{both}.  Called after
        every load or refresh, changed or not: a client whose view is not
        known yet is taken to hold C{before} (C{None}: C{after}).

        @return: The number of pushes sent or queued.
        """

    def answered(username: str, resource: str, roster: Roster) -> None:
        """
        A client (C{resource}, a full JID) was answered C{roster}: it
        holds it, and wants pushes from now on.
        """

    def putBack(username: str, resource: str, jids: frozenset[str], roster: Roster) -> None:
        """
        This client's roster set naming these contacts was refused, and it
        may show its edit: push it the roster's items for them.

        @param roster: The user's roster (the cache's), for a sync that
            does not know what each client holds.
        """

    def promiseCurrent(username: str, version: str) -> Deferred[bool] | None:
        """
        Tell the server that the roster it stores for the user is the one
        of C{version}, so that it may answer the user's queries itself,
        with that version, until the stored roster changes (decided by
        L{rosteradmin.promises.Promises}).

        @return: Fires (never fails) with whether the server took it;
            C{None} where nothing was sent (a server that cannot, or no
            connection).
        """

    def revokeCurrent(username: str | None) -> Deferred[bool]:
        """
        Our answers for the user (C{None}: for every user) may no longer
        match what the server stores: the server must delegate the
        queries again.

        @return: Fires (never fails) with C{True} once the server has
            taken it, or at once when there is nothing to revoke; with
            C{False} when it could not be sent or was not answered.
        """


class IOnlineUsers(Interface):
    """
    Who is online on the server: the users whose rosters stay cached and
    whose server rosters the online check reads back.  From the presences
    the server shares (XEP-0356), or from ejabberd's session list.
    """

    online: dict[str, set[str]] = Attribute("Online full JIDs by username.")

    def isOnline(username: str) -> bool:
        """
        Whether a user has a session online.
        """


class IRoomKicker(Interface):
    """
    Kicks an occupant out of a chat room (XEP-0045).
    """

    def kick(room: str, nick: str, reason: str | None) -> Deferred[None]:
        """
        @return: Deferred firing when the room confirmed the kick, or failing
            with L{rosteradmin.errors.KickFailed} or
            L{rosteradmin.errors.NotConnected}.
        """


class IConnectionStatus(Interface):
    """
    The state of the component's connection to the XMPP server.
    """

    connected: bool = Attribute("C{True} while the component stream is up.")
    lastError: str | None = Attribute("The last stream error or connection failure, or C{None}.")
