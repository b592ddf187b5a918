"""
The contracts between rosteradmin's parts.

The backend knows neither XMPP nor HTTP; the XMPP and HTTP edges know the
backend only through these interfaces, and never each other.  Wiring happens
in L{rosteradmin.tap}.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IRosterBackend(Interface):
    """
    The rosters: cached, fetched from the web app, written into the server.
    """

    cache = Attribute("The L{rosteradmin.cache.RosterCache}.")
    fetcher = Attribute("The L{rosteradmin.fetcher.RosterFetcher}.")

    def getRoster(username):  # type: ignore[no-untyped-def]
        """
        The roster of a user: cached, or fetched (and synced into the server)
        on a miss.

        @return: Deferred firing with a L{rosteradmin.roster.Roster}, or
            failing with L{rosteradmin.errors.FetchFailed}.
        """

    def warm(username):  # type: ignore[no-untyped-def]
        """
        Load a user's roster in the background, before the client asks.
        """

    def refresh(usernames):  # type: ignore[no-untyped-def]
        """
        Re-fetch, diff, cache, sync and push the rosters of these users.

        @return: Deferred firing with a L{rosteradmin.backend.RefreshSummary}.
        """

    limit = Attribute("The L{rosteradmin.stanzalimit.StanzaLimit} of the server.")
    refused = Attribute("Why each refused user's roster cannot be stored or sent, by username.")
    unsynced = Attribute("Users whose cached roster the server may not hold yet.")

    def stuck():  # type: ignore[no-untyped-def]
        """
        Why work on rosters makes no progress, or None.
        """

    def connectionRestored():  # type: ignore[no-untyped-def]
        """
        The XMPP server is reachable again: write what could not be written.
        """


class IRosterSync(Interface):
    """
    Writes rosters into the XMPP server (XEP-0356) and pushes changes to
    the users' online clients.
    """

    def canSync():  # type: ignore[no-untyped-def]
        """
        Whether the server granted roster access (and we are connected).
        """

    syncRefusal = Attribute(
        "Why the server, though connected and granting roster access, cannot "
        "take our roster writes (a misconfiguration), or None"
    )

    def readStored(username, urgent):  # type: ignore[no-untyped-def]
        """
        The roster the server stores for a user.

        @param urgent: A client waits for it.

        @return: Deferred firing with a L{rosteradmin.roster.StoredRoster},
            or failing with L{rosteradmin.errors.SyncFailed} or
            L{rosteradmin.errors.NotConnected}.
        """

    def write(username, diff, urgent):  # type: ignore[no-untyped-def]
        """
        Apply a L{rosteradmin.roster.RosterDiff} to the server's roster.

        @param urgent: A client waits for it (it goes before background
            writes, such as a bulk refresh's).
        @return: Deferred firing when all items were written, or failing
            with L{rosteradmin.errors.SyncFailed}.
        """

    parked = Attribute("Users whose writes are held back after coinciding with stream losses, with why.")

    def stuck():  # type: ignore[no-untyped-def]
        """
        Why privileged requests make no progress, or None.
        """

    def hurry(username):  # type: ignore[no-untyped-def]
        """
        A client now waits for this user's roster: make its waiting
        background reads and writes urgent.
        """

    def push(username, before, after, rewrite):  # type: ignore[no-untyped-def]
        """
        Push to every online client of the user what changed from the
        roster C{before} to C{after} (fire and forget), each push with the
        version of the roster once it is applied, and the contacts of
        C{rewrite} (bare JIDs) again, unchanged, with C{both}.

        @return: The number of pushes sent.
        """


class IRoomKicker(Interface):
    """
    Kicks an occupant out of a chat room (XEP-0045).
    """

    def kick(room, nick, reason):  # type: ignore[no-untyped-def]
        """
        @return: Deferred firing when the room confirmed the kick, or failing
            with L{rosteradmin.errors.KickFailed} or
            L{rosteradmin.errors.NotConnected}.
        """


class IConnectionStatus(Interface):
    """
    The state of the component's connection to the XMPP server.
    """

    connected = Attribute("C{True} while the component stream is up.")
    lastError = Attribute("The last stream error or connection failure, or C{None}.")
