# -*- test-case-name: tests.test_component,tests.test_api -*-
"""
Roster pushes (RFC 6121 §2.1.6) to users' online clients, sent for the
user's bare JID as XEP-0356 C{<privileged_iq>}s: Prosody pushes nothing
itself while C{jabber:iq:roster} is delegated.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from rosteradmin.interfaces import IConnectionStatus
from rosteradmin.permissions import NS_PRIVILEGE_2, PermissionTracker
from rosteradmin.presence import PresenceTracker
from rosteradmin.roster import NS_ROSTER, Roster, diffSteps
from rosteradmin.stanzas import NS_CLIENT, iqXML


class RosterPusher:
    """
    Pushes roster changes to every online resource of a user.
    """

    log = Logger()

    def __init__(self, status: IConnectionStatus, permissions: PermissionTracker, presence: PresenceTracker,
                 send: Callable[[str, str], Deferred[domish.Element]]) -> None:
        """
        @param send: Sends a privileged iq set with this payload for a
            user, within the bound of privileged requests.
        """
        self.status = status
        self.permissions = permissions
        self.presence = presence
        self.send = send
        self._toldCannotPush = False

    def connectionLost(self) -> None:
        """
        The stream is gone; the next one may grant what this one did not.
        """
        self._toldCannotPush = False

    def push(self, username: str, before: Roster, after: Roster, rewrite: frozenset[str]) -> int:
        """
        Send each change from C{before} (what the user's clients hold) to
        C{after} to each online resource as a roster push from the user's
        bare JID (XEP-0356 §7, C{<privileged_iq>}).  Every push carries the
        version of the roster once it is applied (RFC 6121 §2.6.3): a client
        that keeps the version of the last push it got, and asks with it
        later, gets an empty result only if its roster is current.

        @param rewrite: Contacts to push again though unchanged: the server
            told the clients another subscription.
        @return: The number of pushes sent or queued.
        """
        resources = self.presence.online.get(username)
        if not resources or not self.status.connected:
            return 0
        permissions = self.permissions.permissions
        if not permissions.canPush:
            if not self._toldCannotPush:
                self._toldCannotPush = True
                self.log.warn(
                    "roster changes of online users are not pushed: the server grants no iq permission "
                    "for jabber:iq:roster ({version}; urn:xmpp:privilege:1 has none); clients see the "
                    "changes at their next roster get", version=permissions.namespace)
            return 0
        steps = diffSteps(before, after, rewrite)
        if not steps:
            return 0
        pushID = secrets.token_hex(4)
        sent = 0
        for resource in sorted(resources):
            for index, step in enumerate(steps):
                push = iqXML("set", f"push-{pushID}-{index}", resource,
                             f"<query xmlns='{NS_ROSTER}' ver='{step.version}'>{step.item}</query>",
                             namespace=NS_CLIENT)
                d = self.send(username, f"<privileged_iq xmlns='{NS_PRIVILEGE_2}'>{push}</privileged_iq>")
                d.addErrback(self._ebPush, resource)
                sent += 1
        self.log.info("pushed {count} roster changes to {resources} resources of {user}",
                      count=len(steps), resources=len(resources), user=username)
        return sent

    def _ebPush(self, failure: Failure, resource: str) -> None:
        self.log.warn("roster push to {resource} failed: {why}", resource=resource, why=failure.getErrorMessage())
