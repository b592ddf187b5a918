# -*- test-case-name: tests.test_api,tests.integration.test_http -*-
"""
Kicking an occupant out of a chat room (XEP-0045 §8.2).

The component sends the admin request (C{role='none'}) from its own JID.
Prosody refuses it from a non-occupant even when the component is a server
admin, and accepts it once the component has joined the room (as a server
admin it is then a moderator).  So: try the kick; if refused, join the room
under the configured nick, kick again, and leave (rooms otherwise keep a
ghost occupant across server restarts: docs/protocol.md).  Kicks in the same room
are serialised so that one kick's leave cannot undo another's join.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.xmlstream import TimeoutError as IQTimeoutError
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler
from zope.interface import implementer

from rosteradmin.errors import KickFailed
from rosteradmin.interfaces import IConnectionStatus, IRoomKicker
from rosteradmin.slots import KeyedLock
from rosteradmin.stanzas import IQRequest, NS_STANZAS, attr, markHandled, parseJID, sendRequest

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"

#: Conditions that mean "not allowed as we are": joining may help.
REFUSALS = ("not-allowed", "forbidden")


@implementer(IRoomKicker)
class RoomKicker(XMPPHandler):
    """
    Kicks occupants, joining rooms when the server wants an occupant to.
    """

    log = Logger()

    def __init__(self, componentJID: str, status: IConnectionStatus, clock: IReactorTime,
                 timeout: float, nick: str, stayInRooms: bool = False) -> None:
        super().__init__()
        self.componentJID = componentJID
        self.status = status
        self.clock = clock
        self.timeout = timeout
        self.nick = nick
        self.stayInRooms = stayInRooms
        self.joined: set[str] = set()
        self._roomLocks: KeyedLock[str] = KeyedLock()
        self._joins: dict[str, Deferred[None]] = {}

    def connectionMade(self) -> None:
        self.xmlstream.addObserver("/presence", self._onPresence)

    def connectionLost(self, reason: Failure) -> None:
        # Room presence does not survive the stream.
        self.joined = set()

    def kick(self, room: str, nick: str, reason: str | None) -> Deferred[None]:
        """
        Kick C{nick} out of C{room}.

        @raise KickFailed: The room refused (with its condition), or did not
            answer in time (C{timeout}).
        @raise NotConnected: The component is not connected.
        """
        return self._roomLocks.run(room, self._kick, room, nick, reason)

    def _kick(self, room: str, nick: str, reason: str | None) -> Deferred[None]:
        d = self._sendKick(room, nick, reason)

        def joinAndRetry(failure: Failure) -> Failure | Deferred[None]:
            failure.trap(KickFailed)
            error = failure.value
            if not isinstance(error, KickFailed) or error.condition not in REFUSALS or room in self.joined:
                return failure
            self.log.info("kick in {room} refused to a non-occupant; joining as {nick}", room=room, nick=self.nick)
            joined = self._join(room)
            joined.addCallback(lambda _: self._sendKick(room, nick, reason))
            joined.addBoth(self._leaveAfterwards, room)
            return joined

        d.addErrback(joinAndRetry)
        return d

    def _sendKick(self, room: str, nick: str, reason: str | None) -> Deferred[None]:
        reasonXML = f"<reason>{domish.escapeToXml(reason)}</reason>" if reason else ""
        payload = (f"<query xmlns='{NS_MUC_ADMIN}'><item nick='{attr(nick)}' role='none'>"
                   f"{reasonXML}</item></query>")
        d = sendRequest(self.parent, self.status.connected, IQRequest(room, "set", payload, self.timeout))
        return d.addCallbacks(lambda _: None, self._ebKick)

    @staticmethod
    def _ebKick(failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, StanzaError):
            raise KickFailed(error.condition, error.text or "")
        if failure.check(IQTimeoutError, DeferredTimeoutError):
            raise KickFailed("timeout", "the room did not answer in time")
        return failure

    def _join(self, room: str) -> Deferred[None]:
        """
        Enter the room; fires when the room confirms our presence (status
        110), fails with the room's error condition.
        """
        occupant = f"{room}/{self.nick}"
        d: Deferred[None] = Deferred()
        self._joins[occupant] = d
        self.send(f"<presence from='{attr(self.componentJID)}' to='{attr(occupant)}'>"
                  f"<x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>")
        d.addTimeout(self.timeout, self.clock)
        d.addErrback(_joinTimedOut)
        d.addBoth(self._joinDone, occupant)
        d.addCallback(lambda _: self.joined.add(room))
        return d

    def _joinDone(self, result: object, occupant: str) -> object:
        self._joins.pop(occupant, None)
        return result

    def _leaveAfterwards(self, result: object, room: str) -> object:
        if room in self.joined and not self.stayInRooms and self.status.connected:
            self.joined.discard(room)
            self.send(f"<presence type='unavailable' from='{attr(self.componentJID)}' "
                      f"to='{attr(room)}/{attr(self.nick)}'/>")
        return result

    def _onPresence(self, presence: domish.Element) -> None:
        """
        Our own presence in a room we are joining: confirmation or error.
        """
        sender = parseJID(presence.getAttribute("from"))
        if sender is None:
            return
        d = self._joins.get(sender.full())
        if d is None:
            return
        markHandled(presence)
        if presence.getAttribute("type") == "error":
            condition = next(
                (c.name for c in (presence.error.elements() if presence.error else ()) if c.uri == NS_STANZAS),
                "undefined-condition",
            )
            d.errback(KickFailed(condition, "the room refused our join"))
        elif presence.getAttribute("type") is None and _isSelfPresence(presence):
            d.callback(None)


def _isSelfPresence(presence: domish.Element) -> bool:
    for x in presence.elements():
        if x.name == "x" and x.uri == NS_MUC_USER:
            return any(s.name == "status" and s.getAttribute("code") == "110" for s in x.elements())
    return False


def _joinTimedOut(failure: Failure) -> None:
    failure.trap(DeferredTimeoutError)
    raise KickFailed("timeout", "joining the room timed out")
