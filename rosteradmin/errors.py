# -*- test-case-name: tests.test_component -*-
"""
Domain errors of rosteradmin.

They say what went wrong in the terms of the product; each edge maps them
once: the XMPP side to stanza errors, the HTTP side to status codes.
"""

from __future__ import annotations


class RosterAdminError(Exception):
    """
    Base class of every error rosteradmin raises on purpose.
    """


class InvalidUsername(RosterAdminError):
    """
    A username is not a valid JID node (nodeprep refused it).
    """


class InvalidRoster(RosterAdminError):
    """
    The web app's reply is not a valid roster; the message says why.
    """


class FetchFailed(RosterAdminError):
    """
    A roster could not be fetched from the web app; the message says why.

    @ivar username: Whose roster it was.
    """

    def __init__(self, username: str, reason: str) -> None:
        super().__init__(f"roster fetch for {username!r} failed: {reason}")
        self.username = username
        self.reason = reason


class UserUnknown(FetchFailed):
    """
    The web app answered 404 for the user's roster: it does not know the
    user.  Unlike other failed fetches, this is the web app's answer and
    not an outage; yet there is no roster to serve, and an empty one would
    hide a user the web app creates later, or a wrong roster URL.
    """


class NotConnected(RosterAdminError):
    """
    The component is not connected to the XMPP server right now.
    """


class SyncFailed(RosterAdminError):
    """
    Writing a roster into the XMPP server (XEP-0356) failed.
    """


class KickFailed(RosterAdminError):
    """
    A room refused or did not answer a kick.

    @ivar condition: The XMPP error condition (C{item-not-found},
        C{not-allowed}, ...) or C{timeout}.
    """

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


class StanzaTooLarge(RosterAdminError):
    """
    A stanza is larger than the XMPP server accepts from the component: sent,
    it would make the server close the stream, cutting every user off.
    """


class RosterRefused(FetchFailed):
    """
    The web app's roster for a user was fetched but cannot be held by the
    server (an item too large for one stanza): the previous roster stays.
    """
