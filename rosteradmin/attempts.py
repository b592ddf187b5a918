# -*- test-case-name: tests.test_events -*-
"""
What users tried to change in their rosters, and were refused, as
events for the web app (L{rosteradmin.events} delivers them): the web
app owns the rosters, so a user's "Add contact" in a chat client is a
request only the web app can grant.

Two kinds (docs/webapp.md, "Events: what users tried"):

  - C{roster.set}: a client's roster set, refused by
    L{rosteradmin.rosterserver}: each item with its C{action}: C{add}
    (the contact is not in the user's roster), C{rename} (it is: its
    name or groups changed), C{remove};
  - C{subscription}: a subscription presence contrib's
    mod_rosteradmin_subscriptions stopped, which it tells us of before it
    refuses it, in our own namespace (L{NS_SUBSCRIPTION})::

        <message from='example.org' to='roster.example.org'>
          <refused xmlns='urn:x-rosteradmin:subscription:0' type='subscribe'
                   direction='outbound' from='alice@example.org/phone' to='dave@example.org'/>
        </message>
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from rosteradmin.roster import NS_ROSTER, Roster
from rosteradmin.stanzas import markHandled, parseJID

#: The namespace of the subscriptions module's notices.
NS_SUBSCRIPTION = "urn:x-rosteradmin:subscription:0"

SUBSCRIPTION_NOTICE = f"/message/refused[@xmlns='{NS_SUBSCRIPTION}']"

#: The subscription presence types the module stops.
SUBSCRIPTION_TYPES = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed"})

#: Most items of one roster set told (RFC 6121 allows one; clients may
#: send more).
MAX_ITEMS = 16

#: Most groups of one item told.
MAX_GROUPS = 16

Record = Callable[[dict[str, Any]], None]


def _setItems(iq: domish.Element, current: Roster | None) -> list[dict[str, Any]]:
    """
    The items of a roster set as the event lists them, valid JIDs only.

    @param current: The user's roster, to tell an add from a rename, or
        C{None} if it is not cached (then every kept item is an C{add}).
    """
    known = current.byJID() if current is not None else {}
    items: list[dict[str, Any]] = []
    query = iq.query
    for item in query.elements(NS_ROSTER, "item") if query is not None else ():
        jid = parseJID(item.getAttribute("jid"))
        if jid is None or len(items) >= MAX_ITEMS:
            continue
        contact = jid.userhost()
        if item.getAttribute("subscription") == "remove":
            items.append({"jid": contact, "action": "remove"})
            continue
        groups = [str(group) for group in item.elements(NS_ROSTER, "group") if str(group)][:MAX_GROUPS]
        items.append({"jid": contact, "action": "rename" if contact in known else "add",
                      "name": item.getAttribute("name") or None, "groups": groups})
    return items


class Attempts(XMPPHandler):
    """
    Turns refused roster sets and the subscriptions module's notices into
    events, handed to C{record}.
    """

    log = Logger()

    def __init__(self, record: Record, domain: str, roster: Callable[[str], Roster | None]) -> None:
        """
        @param record: Keeps an event for the web app
            (L{rosteradmin.events.EventDelivery.record}).
        @param domain: The managed domain: only it sends notices.
        @param roster: A user's roster as cached, or C{None}, to tell an
            add from a rename without a fetch: an online user's stays
            cached, and only online users send roster sets.
        """
        super().__init__()
        self.record = record
        self.domain = domain
        self.roster = roster

    def connectionMade(self) -> None:
        self.xmlstream.addObserver(SUBSCRIPTION_NOTICE, self._onNotice)

    def rosterSetRefused(self, username: str, resource: str, iq: domish.Element) -> None:
        """
        A client of C{username} (its full JID C{resource}) sent the roster
        set C{iq}, refused: tell the web app.
        """
        items = _setItems(iq, self.roster(username))
        if items:
            self.record({"type": "roster.set", "user": username, "resource": resource, "items": items})

    def _onNotice(self, message: domish.Element) -> None:
        """
        The subscriptions module stopped a subscription presence.
        """
        if message.getAttribute("from") != self.domain:
            return
        markHandled(message)
        notice = message.refused
        kind, direction = notice.getAttribute("type"), notice.getAttribute("direction")
        sender, recipient = parseJID(notice.getAttribute("from")), parseJID(notice.getAttribute("to"))
        if kind not in SUBSCRIPTION_TYPES or direction not in ("inbound", "outbound") or sender is None \
                or recipient is None:
            self.log.warn("ignored a malformed subscription notice: {xml}", xml=message.toXml())
            return
        local = sender if direction == "outbound" else recipient
        if local.host != self.domain or not local.user:
            return
        self.record({"type": "subscription", "user": local.user, "direction": direction, "presence": kind,
                     "from": sender.userhost(), "to": recipient.userhost()})
