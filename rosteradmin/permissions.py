# -*- test-case-name: tests.test_component,tests.test_api -*-
"""
XEP-0356 Privileged Entity: what the server lets us do with its users'
rosters.

The server announces our permissions in a C{<message><privilege/>}
right after the handshake (Prosody: C{urn:xmpp:privilege:2}, ejabberd up to
24.07: C{:1}).  With C{roster} access we read and write users' stored
rosters; with C{presence} access (C{managed_entity}) we see their presences,
which tells us who is online; with C{iq} access for C{jabber:iq:roster}
(C{:2} only) we push roster changes to their clients ourselves, because
Prosody pushes nothing while the roster namespace is delegated.

A server that delegates our own privileged roster iqs back to us (ejabberd,
see L{rosteradmin.delegation}) cannot store what we write: privileged sync
is then off until the next connection.
"""

from __future__ import annotations

from typing import NamedTuple

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from rosteradmin.delegation import OWN_REQUEST_DELEGATED
from rosteradmin.interfaces import IConnectionStatus, IServerObserver
from rosteradmin.roster import NS_ROSTER
from rosteradmin.stanzas import findChild, markHandled

NS_PRIVILEGE_1 = "urn:xmpp:privilege:1"
NS_PRIVILEGE_2 = "urn:xmpp:privilege:2"
PRIVILEGE_NAMESPACES = (NS_PRIVILEGE_2, NS_PRIVILEGE_1)


class Permissions(NamedTuple):
    """
    What the server granted (XEP-0356 §4).
    """

    namespace: str
    roster: str
    presence: str
    iqNamespaces: frozenset[str]

    @property
    def canReadAndWriteRosters(self) -> bool:
        return self.roster == "both"

    @property
    def canPush(self) -> bool:
        # <privileged_iq> exists in privilege:2 only.
        return self.namespace == NS_PRIVILEGE_2 and NS_ROSTER in self.iqNamespaces

    @property
    def seesPresence(self) -> bool:
        return self.presence in ("managed_entity", "roster")


NO_PERMISSIONS = Permissions(NS_PRIVILEGE_2, "none", "none", frozenset())


def parsePermissions(privilege: domish.Element) -> Permissions:
    """
    Read the C{<perm/>} elements of a privilege advertisement.
    """
    granted: dict[str, str] = {}
    iqNamespaces: set[str] = set()
    for perm in privilege.elements():
        if perm.name != "perm":
            continue
        access = perm.getAttribute("access", "")
        granted[access] = perm.getAttribute("type", "none")
        if access == "iq":
            iqNamespaces.update(
                ns["ns"] for ns in perm.elements()
                if ns.name == "namespace" and ns.getAttribute("type") in ("set", "both") and ns.getAttribute("ns")
            )
    return Permissions(
        privilege.uri, granted.get("roster", "none"), granted.get("presence", "none"), frozenset(iqNamespaces)
    )


class PermissionTracker(XMPPHandler):
    """
    Knows what the server granted on this connection, and whether it can
    take our roster writes.

    @ivar permissions: The last advertisement's, from the domain only.
    @ivar advertised: The server advertised permissions on this connection.
    @ivar rostersDelegatedBack: The server delegated our own roster iqs
        back to us on this connection: no privileged sync until the next.
    @ivar observer: Told when the server grants roster access (set by
        L{rosteradmin.tap.wireParts}).
    """

    log = Logger()

    observer: IServerObserver

    def __init__(self, domain: str, status: IConnectionStatus) -> None:
        """
        @param domain: The only sender trusted for permissions.
        @param status: Whether we are connected.
        """
        super().__init__()
        self.domain = domain
        self.status = status
        self.permissions = NO_PERMISSIONS
        self.advertised = False
        self.rostersDelegatedBack = False

    def connectionMade(self) -> None:
        # The advertisement arrives in the handshake's read.
        self.xmlstream.addObserver("/message/privilege", self._onAdvertisement)
        self.xmlstream.addObserver(OWN_REQUEST_DELEGATED, self._onOwnRequestDelegated)

    def connectionLost(self, reason: Failure) -> None:
        # The server sends permissions again after every reconnect.
        self.permissions = NO_PERMISSIONS
        self.advertised = False
        self.rostersDelegatedBack = False

    def canSync(self) -> bool:
        """
        Whether the server takes our roster reads and writes now.
        """
        return self.status.connected and self.permissions.canReadAndWriteRosters and not self.rostersDelegatedBack

    @property
    def syncRefusal(self) -> str | None:
        """
        Why the server, though granting roster access, cannot take our
        writes, or C{None}.
        """
        if self.rostersDelegatedBack:
            return ("the server sends rosteradmin's own roster requests back to it "
                    "(ejabberd's mod_delegation): roster writes are off until the next connection")
        if self.advertised and not self.permissions.canReadAndWriteRosters:
            return (f"the server grants roster access {self.permissions.roster!r}, and rosteradmin needs 'both' "
                    f"to write rosters: set roster = \"both\" for it in privileged_entities (Prosody)")
        return None

    def _onOwnRequestDelegated(self, namespace: str | None) -> None:
        """
        The server sent one of our roster iqs back to us instead of to the
        user's roster (the delegation handler logged why): stop syncing, as
        every read and write would fail the same way.
        """
        if namespace == NS_ROSTER:
            self.rostersDelegatedBack = True

    def _onAdvertisement(self, message: domish.Element) -> None:
        privilege = findChild(message, "privilege", PRIVILEGE_NAMESPACES)
        if privilege is None:
            return
        markHandled(message)
        if message.getAttribute("from") != self.domain:
            self.log.warn("ignored privilege advertisement from untrusted {sender}",
                          sender=message.getAttribute("from"))
            return
        self.permissions = parsePermissions(privilege)
        self.advertised = True
        self.log.info(
            "server grants roster={roster} presence={presence} iq={iq} ({version})",
            roster=self.permissions.roster, presence=self.permissions.presence,
            iq=sorted(self.permissions.iqNamespaces), version=self.permissions.namespace,
        )
        if self.canSync():
            self.observer.writesRestored()
