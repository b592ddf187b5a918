# -*- test-case-name: tests.test_privilege,tests.test_component -*-
"""
Who is online, from the presences the server shares with us (XEP-0356
C{presence} permission, C{managed_entity}): the users whose rosters stay
cached, and the users whose roster to load before their clients ask; and
which sessions want roster pushes (L{rosteradmin.devices}), from those
presences and from the notices of contrib's mod_rosteradmin_roster about
sessions it answered itself.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler
from zope.interface import implementer

from rosteradmin.devices import DeviceViews
from rosteradmin.interfaces import IOnlineUsers, IServerObserver
from rosteradmin.stanzas import IQRequest, findChild, markHandled, parseJID, sendRequest

NS_DELAY = "urn:xmpp:delay"

#: contrib/prosody/mod_rosteradmin_roster.lua's notices, sent from a user's
#: session to us: it answered the session's roster get itself
#: (C{<answered ver='...'/>}), or a session that asked for its roster ended
#: without presence (C{<ended/>}); and its list of the sessions that asked
#: for their roster and sent no presence (C{<sessions/>}), which no
#: presence replay tells us of after a reconnection.
NS_SESSION_NOTICE = "urn:x-rosteradmin:session:0"


@implementer(IOnlineUsers)
class PresenceTracker(XMPPHandler):
    """
    Tracks users' online resources and reports a user's first one.

    @ivar online: Online full JIDs by username.
    @ivar observer: Told of users coming online (set by
        L{rosteradmin.tap.wireParts}).
    """

    observer: IServerObserver

    log = Logger()

    def __init__(self, domain: str, devices: DeviceViews, timeout: float = 10.0) -> None:
        """
        @param domain: The only domain whose users' presences are tracked.
        @param devices: Told of each resource coming and going.
        @param timeout: Seconds to wait for the server's list of sessions.
        """
        super().__init__()
        self.domain = domain
        self.devices = devices
        self.timeout = timeout
        self.online: dict[str, set[str]] = {}

    def connectionMade(self) -> None:
        # Current presences arrive in the handshake's read.
        self.xmlstream.addObserver("/presence", self._onPresence, priority=-1)
        self.xmlstream.addObserver(f"/message/*[@xmlns='{NS_SESSION_NOTICE}']", self._onSessionNotice)

    def connectionInitialized(self) -> None:
        self.devices.connectionInitialized()
        request = IQRequest(self.domain, "get", f"<sessions xmlns='{NS_SESSION_NOTICE}'/>", self.timeout)
        d = sendRequest(self.parent, True, request)
        d.addCallbacks(self._onSessions, self._ebSessions)

    def _onSessions(self, result: domish.Element) -> None:
        """
        The server's sessions that asked for their roster without sending
        presence: each is followed as if it had just asked.
        """
        listed = findChild(result, "sessions", (NS_SESSION_NOTICE,))
        for session in listed.elements(NS_SESSION_NOTICE, "session") if listed is not None else ():
            sender = self._session(session.getAttribute("jid"))
            if sender is not None:
                self.devices.answeredByServer(*sender, session.getAttribute("ver", ""))

    def _ebSessions(self, failure: Failure) -> None:
        # A server without contrib's mod_rosteradmin_roster: such sessions
        # are known only once they ask again, or send presence.
        self.log.debug("no list of the sessions that asked for their roster: {why}", why=failure.getErrorMessage())

    def connectionLost(self, reason: Failure) -> None:
        # The server sends current presences again after every reconnect.
        self.online = {}
        self.devices.connectionLost()

    def _session(self, value: str | None) -> tuple[str, str] | None:
        """
        The username and full JID of a session of one of the domain's
        users, else C{None}.
        """
        sender = parseJID(value)
        if sender is None or sender.host != self.domain or not sender.user or not sender.resource:
            return None
        return sender.user, sender.full()

    def _onSessionNotice(self, message: domish.Element) -> None:
        """
        A notice of contrib's mod_rosteradmin_roster about a user's
        session: it answered the session's roster get (the session wants
        pushes, though it may send no presence), or the session ended.
        Only the user's own server can send it from the user's full JID.
        """
        sender = self._session(message.getAttribute("from"))
        if sender is None:
            return
        markHandled(message)
        notice = findChild(message, "answered", (NS_SESSION_NOTICE,))
        if notice is not None:
            self.devices.answeredByServer(*sender, notice.getAttribute("ver", ""))
        elif findChild(message, "ended", (NS_SESSION_NOTICE,)) is not None:
            self.devices.unavailable(*sender)

    def isOnline(self, username: str) -> bool:
        """
        Whether a user has a resource online.
        """
        return username in self.online

    def _onPresence(self, presence: domish.Element) -> None:
        """
        Track users' online resources.  A user's first resource coming
        online warms its roster (L{IServerObserver.warm}), except for the
        presences the server replays when we connect (L{isReplayed}): those
        clients hold a roster already, and a silent warm would write the web
        app's current roster into the server and the cache without pushing
        it to them, so that the next refresh finds nothing to push; such a
        user is caught up instead (L{IServerObserver.catchUp}).
        """
        if presence.handled:
            return
        sender = self._session(presence.getAttribute("from"))
        if sender is None:
            return
        markHandled(presence)
        username, full = sender
        kind = presence.getAttribute("type")
        if kind is None:
            resources = self.online.setdefault(username, set())
            first = not resources
            resources.add(full)
            self.devices.available(username, full)
            if first and self.isReplayed(presence):
                self.observer.catchUp(username)
            elif first:
                self.observer.warm(username)
        elif kind == "unavailable":
            resources = self.online.get(username, set())
            resources.discard(full)
            if not resources:
                self.online.pop(username, None)
            self.devices.unavailable(username, full)

    def isReplayed(self, presence: domish.Element) -> bool:
        """
        Whether a presence is the server replaying one sent before we
        connected, rather than forwarding one as it is sent.

        Prosody keeps each session's current presence stamped with a
        XEP-0203 C{<delay from='example.org'/>} (C{mod_presence}), and
        C{mod_privilege} sends that copy to a component that authenticates
        (C{advertise_presences}, XEP-0356 §7); presences it forwards as
        they happen carry no delay.
        """
        delay = findChild(presence, "delay", (NS_DELAY,))
        return delay is not None and delay.getAttribute("from") == self.domain
