# -*- test-case-name: tests.test_devices,tests.test_component -*-
"""
Roster pushes on the wire (RFC 6121 §2.1.6): each a XEP-0356
C{<privileged_iq>} from the user's bare JID to one resource, with an iq id
of its own.  What to push, and to whom, is L{rosteradmin.devices}' job.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.words.xish import domish

from rosteradmin.interfaces import IConnectionStatus
from rosteradmin.permissions import NS_PRIVILEGE_2, PermissionTracker
from rosteradmin.roster import NS_ROSTER, RosterStep
from rosteradmin.stanzas import NS_CLIENT, iqXML


class PushSender:
    """
    Sends roster pushes where the server lets us.

    @ivar pushes: Pushes sent, over the process' life.
    """

    log = Logger()

    def __init__(self, status: IConnectionStatus, permissions: PermissionTracker) -> None:
        """
        @param status: Whether we are connected.
        @param permissions: Whether the server grants the C{iq} permission
            pushes need.
        """
        self.status = status
        self.permissions = permissions
        self.pushes = 0
        self._send: Callable[[str, str], Deferred[domish.Element]] | None = None
        # Prosody's mod_privilege refuses a privileged iq whose id is that
        # of one still unanswered: every push gets its own.
        self._ids = itertools.count()
        self._idPrefix = f"push-{secrets.token_hex(4)}"
        self._toldCannotPush = False

    def sendThrough(self, send: Callable[[str, str], Deferred[domish.Element]]) -> None:
        """
        Say how pushes are sent: a privileged iq set with this payload for
        a user, within the bound of privileged requests (given by the
        composition root, L{rosteradmin.tap.wireParts}).
        """
        self._send = send

    def ready(self) -> bool:
        """
        Whether pushes can be sent now (said once per connection when the
        server grants no C{iq} permission).
        """
        if self._send is None or not self.status.connected:
            return False
        permissions = self.permissions.permissions
        if permissions.canPush:
            return True
        if not self._toldCannotPush:
            self._toldCannotPush = True
            self.log.warn(
                "roster changes of online users are not pushed: the server grants no iq permission "
                "for jabber:iq:roster ({version}; urn:xmpp:privilege:1 has none); clients see the "
                "changes at their next roster get", version=permissions.namespace)
        return False

    def connectionLost(self) -> None:
        """
        The stream is gone; the next one may grant what this one did not.
        """
        self._toldCannotPush = False

    def push(self, username: str, resource: str, step: RosterStep) -> Deferred[domish.Element]:
        """
        Push one step to one resource of the user (L{ready} first).
        """
        assert self._send is not None
        self.pushes += 1
        push = iqXML("set", f"{self._idPrefix}-{next(self._ids)}", resource,
                     f"<query xmlns='{NS_ROSTER}' ver='{step.version}'>{step.item}</query>", namespace=NS_CLIENT)
        return self._send(username, f"<privileged_iq xmlns='{NS_PRIVILEGE_2}'>{push}</privileged_iq>")
