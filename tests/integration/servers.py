# -*- test-case-name: tests.integration.test_rosters -*-
"""
What the integration tests need to know of the XMPP server they run on,
whichever it is: Prosody (0.12 or 13, one per test) or Debian 13's
ejabberd (C{ROSTERADMIN_EJABBERD}, one per test module, with
C{contrib/ejabberd/rosteradmin.yml} and C{--roster-sync ejabberd-api}).

A test reads the server through these helpers, not through one server's
files or API, so that the same test runs on both; what one server cannot
do is listed, with why, in L{tests.integration.conftest.PROSODY_ONLY}.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from rosteradmin.ejabberdsessions import EjabberdSessions
from tests.integration.ejabberd import EJABBERD_VERSIONS, LocalEjabberd
from tests.integration.harness import ProsodyServer
from tests.integration.service import RunningService

__all__ = [
    "EJABBERD", "READABLE_WHILE_STOPPED", "UNREACHABLE_COMPONENT", "Held", "addAccounts", "apiCall", "clearRosters",
    "isOnline",
    "onlineUsers",
    "parseLua", "serverArgs", "serverSettings", "stopKeepingData", "stored", "storedRoster", "storedSnapshot", "waitOnline",
    "waitOnlineExactly",
]

#: The ejabberd the integration tests run on instead of Prosody
#: (C{ROSTERADMIN_EJABBERD}: one of L{EJABBERD_VERSIONS}), or "".
EJABBERD = os.environ.get("ROSTERADMIN_EJABBERD") or ""
if EJABBERD not in ("", *EJABBERD_VERSIONS):
    raise RuntimeError(f"ROSTERADMIN_EJABBERD={EJABBERD!r}: use one of {', '.join(EJABBERD_VERSIONS)}"
                       " (Debian 13's ejabberd, from trixie or trixie-backports), or leave it unset")

#: Whether a test can read the server's stored rosters while it is
#: stopped: Prosody's are files; ejabberd's are in Mnesia, read through its
#: running API.
READABLE_WHILE_STOPPED = not EJABBERD

#: The error condition the server bounces a stanza for a disconnected
#: component with: each words it its own way (both are RFC 6120's).
UNREACHABLE_COMPONENT = "remote-server-not-found" if EJABBERD else "remote-server-timeout"

#: A stored roster: contact JID to name, subscription and sorted groups.
Held = dict[str, tuple[str | None, str, list[str]]]


def serverArgs(server: Any) -> list[str]:
    """
    rosteradmin's options that the server needs: on ejabberd with
    contrib's configuration, rosters written through its HTTP API (it has
    no mod_privilege); on Prosody, and on the host's ejabberd in the
    privileged setup (no API), none.
    """
    if isinstance(server, LocalEjabberd) and server.include is not None:
        return ["--roster-sync", "ejabberd-api", "--ejabberd-api-url", server.apiURL]
    return []


def serverSettings(server: Any) -> str:
    """
    L{serverArgs} as lines of rosteradmin's TOML file, for a test that
    runs C{twistd rosteradmin --config} itself.
    """
    if isinstance(server, LocalEjabberd) and server.include is not None:
        return f'roster_sync = "ejabberd-api"\nejabberd_api_url = "{server.apiURL}"\n'
    return ""


def addAccounts(server: Any, usernames: list[str], password: str) -> None:
    """
    Create these accounts: one by one on Prosody (a file each), all at
    once on ejabberd (each C{ejabberdctl} call starts an Erlang VM of its
    own).  Accounts a module's ejabberd already has are kept.
    """
    if isinstance(server, LocalEjabberd):
        server.addAccounts({username: password for username in usernames})
        return
    for username in usernames:
        server.addAccount(username, password)


async def apiCall(server: LocalEjabberd, command: str, arguments: dict[str, Any]) -> Any:
    """
    Call ejabberd's HTTP API as an admin tool would, behind rosteradmin's
    back (contrib's configuration allows loopback).
    """
    response = await treq.post(f"{server.apiURL}/{command}", json=arguments,
                               pool=HTTPConnectionPool(reactor, persistent=False))
    text = await response.text()
    assert response.code == 200, f"{command}: {response.code} {text}"
    return json.loads(text)


async def storedRoster(server: Any, username: str) -> Held:
    """
    What the server stores for a user ({} when nothing): Prosody's file,
    or ejabberd's C{get_roster}.
    """
    if isinstance(server, LocalEjabberd):
        contacts = await apiCall(server, "get_roster", {"user": username, "host": server.domain})
        return {c["jid"]: (c["nick"] or None, c["subscription"], sorted(c["groups"])) for c in contacts}
    return stored(server, username)


def stopKeepingData(server: Any) -> None:
    """
    Stop the server so that its C{start} brings it back with its accounts
    and stored rosters, as an operator's restart does.
    """
    if isinstance(server, LocalEjabberd):
        server.stop(keep=True)
    else:
        server.stop()


async def storedSnapshot(server: Any, username: str) -> object:
    """
    Something equal between two reads exactly when the server stored
    nothing for the user between them: Prosody's whole file (its roster
    version included, so a rewrite of the same items shows); on ejabberd,
    L{storedRoster}, as its API shows no roster version (a rewrite of the
    same items does not show).
    """
    if isinstance(server, LocalEjabberd):
        return await storedRoster(server, username)
    return server.storedRoster(username)


async def clearRosters(server: LocalEjabberd, usernames: list[str]) -> None:
    """
    Delete every contact ejabberd stores for these users: a test module
    shares one ejabberd, and each test starts from empty rosters, as on
    a fresh Prosody.
    """
    for username in usernames:
        for jid in await storedRoster(server, username):
            user, host = jid.split("@", 1)
            await apiCall(server, "delete_rosteritem", {"localuser": username, "localhost": server.domain,
                                                        "user": user, "host": host})


def isOnline(running: RunningService, username: str) -> bool:
    """
    Whether rosteradmin knows the user is online: from presence on
    Prosody, from ejabberd's session list there.
    """
    sessions = _sessions(running)
    if sessions is not None:
        return sessions.isOnline(username)
    return username in running.component.privileges.online


async def waitOnline(running: RunningService, username: str, timeout: float = 10.0,
                     sessions: int | None = None) -> None:
    """
    Wait until rosteradmin knows the user is online (with exactly
    C{sessions} sessions, if given); on ejabberd, reading the session
    list now rather than at its next poll.
    """
    listed = _sessions(running)
    waited = 0.0
    while True:
        if listed is not None:
            await listed.poll()
        if isOnline(running, username) if sessions is None else \
                len(onlineUsers(running).get(username, ())) == sessions:
            return
        if waited >= timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {username} online")
        await RunningService.sleep(0.1)
        waited += 0.1


def onlineUsers(running: RunningService) -> dict[str, set[str]]:
    """
    Who rosteradmin knows is online: full JIDs by username.
    """
    sessions = _sessions(running)
    return sessions.online if sessions is not None else running.component.privileges.online


async def waitOnlineExactly(running: RunningService, users: set[str], timeout: float = 10.0) -> None:
    """
    Wait until rosteradmin knows exactly these users are online; on
    ejabberd, reading the session list now rather than at its next poll.
    """
    sessions = _sessions(running)
    waited = 0.0
    while True:
        if sessions is not None:
            await sessions.poll()
        if set(onlineUsers(running)) == users:
            return
        if waited >= timeout:
            raise AssertionError(f"timed out after {timeout}s: online {sorted(onlineUsers(running))}, "
                                 f"not {sorted(users)}")
        await RunningService.sleep(0.1)
        waited += 0.1


def _sessions(running: RunningService) -> EjabberdSessions | None:
    """
    ejabberd's session list, if read: a service of the tree, or, with a
    PostgreSQL state, of the leader's term.
    """
    try:
        sessions = running.part("sessions")
    except KeyError:
        return None
    assert isinstance(sessions, EjabberdSessions)
    return sessions


def stored(prosody: ProsodyServer, username: str) -> Held:
    """
    The contacts Prosody stores for a user: JID to name, subscription and
    sorted groups ({} when nothing is stored).
    """
    text = prosody.storedRoster(username)
    if not text:
        return {}
    table = parseLua(text)
    return {jid: (item.get("name"), item.get("subscription", "none"), sorted(item.get("groups", {})))
            for jid, item in table.items() if jid is not False}


# Prosody's internal storage: a Lua table literal (util.serialization).
_LUA_TOKEN = re.compile(r'\s*(?:(\{|\}|\[|\]|=|;|,)|"((?:[^"\\]|\\.)*)"|(-?\d+(?:\.\d+)?)|(true|false|nil)|(return))')


def parseLua(text: str) -> Any:
    """
    The value of a C{return {...};} file of Prosody's internal storage:
    tables become dicts (keys as parsed: strings, numbers, booleans).
    """
    tokens: list[tuple[str, Any]] = []
    position = 0
    while text[position:].strip():
        match = _LUA_TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"unexpected Lua at {position}: {text[position:position + 40]!r}")
        position = match.end()
        punct, string, number, keyword, _ = match.groups()
        if punct is not None:
            tokens.append(("p", punct))
        elif string is not None:
            tokens.append(("v", re.sub(r"\\(.)", r"\1", string)))
        elif number is not None:
            tokens.append(("v", float(number) if "." in number else int(number)))
        elif keyword is not None:
            tokens.append(("v", {"true": True, "false": False, "nil": None}[keyword]))
    index = 0

    def value() -> Any:
        nonlocal index
        kind, token = tokens[index]
        index += 1
        if kind == "v":
            return token
        assert token == "{", token
        table: dict[Any, Any] = {}
        while tokens[index] != ("p", "}"):
            assert tokens[index] == ("p", "["), tokens[index]
            index += 1
            key = value()
            assert tokens[index:index + 2] == [("p", "]"), ("p", "=")], tokens[index:index + 2]
            index += 2
            table[key] = value()
            if tokens[index] in (("p", ";"), ("p", ",")):
                index += 1
        index += 1
        return table

    return value()
