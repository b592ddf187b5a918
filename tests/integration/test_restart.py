# -*- test-case-name: tests.integration.test_restart -*-
"""
rosteradmin restarts while the server (Prosody or ejabberd) and its
clients stay up: a refresh after the restart reaches every online client.

On connecting, the new rosteradmin gets the current presence of every
session from C{mod_privilege} (on ejabberd, reads the API's session
list), and learns who is online.  It must not take
those users for newly logged in: loading their rosters silently (without a
push) stores the web app's roster in the server and the cache, so the
refresh that follows finds nothing to push, and the clients never see the
change.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from tests.integration.harness import PASSWORD, USERS, XMPPTestClient
from tests.integration.servers import onlineUsers, serverArgs, storedRoster, waitOnlineExactly
from tests.integration.service import RunningService
from tests.integration.test_http import call
from tests.integration.test_rosters import items

pytestmark = pytest.mark.integration

#: Accounts added to the fixture's five, for ten users online.
EXTRA_USERS = ("frank", "grace", "heidi", "ivan", "judy")
ONLINE = USERS + EXTRA_USERS


def held(initial: Any, pushes: list[Any]) -> dict[str, str | None]:
    """
    The roster a client holds (contact JID to name): its roster get's
    result with the pushes applied in order (RFC 6121 §2.1.6).
    """
    roster = {jid: name for jid, (name, _, _) in items(initial).items()}
    for push in pushes:
        item = push.query.item
        if item["subscription"] == "remove":
            roster.pop(item["jid"], None)
        else:
            roster[item["jid"]] = item.getAttribute("name")
    return roster


def webAppRoster(webapp: Any, user: str) -> dict[str, str | None]:
    """
    The roster the web app serves a user (contact JID to name).
    """
    return {jid: spec.get("name") for jid, spec in webapp.rosters[user].items()}


Sessions = dict[str, tuple[XMPPTestClient, Any]]


def change(webapp: Any, sessions: Sessions, contact: str) -> dict[str, int]:
    """
    Give every user's roster in the web app one more contact.

    @return: How many pushes each client had got before the change.
    """
    for user in ONLINE:
        webapp.rosters[user] = {**webapp.rosters[user], contact: {"name": contact.split("@")[0].title()}}
    return {user: len(client.pushes) for user, (client, _) in sessions.items()}


async def refreshAndCheck(service: RunningService, webapp: Any, sessions: Sessions, contact: str,
                          pushedBefore: dict[str, int]) -> None:
    """
    Refresh every user, then check that each client got a push with
    C{contact} from its own account since the change, and holds the web
    app's roster.
    """
    code, body = await call(service, "POST", "/roster_admin/refresh", list(ONLINE))
    assert (code, body["updated"], body["failures"]) == (200, len(ONLINE), {})

    def current() -> list[str]:
        return [user for user, (client, initial) in sessions.items()
                if held(initial, client.pushes) == webAppRoster(webapp, user)]

    try:
        await RunningService.waitUntil(lambda: len(current()) == len(ONLINE), 5, "every client current")
    except AssertionError:
        pass  # the assertions below say how many clients are behind
    pushed = {user: [p.query.item["jid"] for p in client.pushes[pushedBefore[user]:]]
              for user, (client, _) in sessions.items()}
    print(f"\nrefresh adding {contact}: pushes per user {pushed}")
    received = [user for user, jids in pushed.items() if contact in jids]
    assert len(received) == len(ONLINE), f"{len(received)} of {len(ONLINE)} clients got the push of {contact}"
    assert sorted(current()) == sorted(ONLINE)
    for user, (client, _) in sessions.items():
        assert all(p.getAttribute("from") in (None, f"{user}@example.org") for p in client.pushes)


@pytest.mark.parametrize("keepState", ["", "file", "postgresql"], ids=["no-state", "state-file", "state-postgresql"])
@pytest.mark.parametrize("changedWhile", ["stopped", "restarted"])
@pytest_twisted.ensureDeferred
async def test_refreshAfterRestartReachesEveryOnlineClient(request: pytest.FixtureRequest, xmppServer: Any, webapp: Any,
                                                            clients: Any, changedWhile: str, keepState: str,
                                                            tmp_path: Any) -> None:
    """
    Ten users online, each with the web app's roster; rosteradmin stops and
    a new one starts against the same server (and state file or
    PostgreSQL database, if any); every roster changes (while it is
    stopped, or once it runs again) and a refresh of all ten pushes the
    change to all ten clients, and so does a second change and refresh.
    """
    args = serverArgs(xmppServer)
    if keepState == "file":
        args += ["--state", str(tmp_path / "rosteradmin-state.sqlite")]
    elif keepState == "postgresql":
        args += ["--state", request.getfixturevalue("postgresql").newDatabase()]
    for user in EXTRA_USERS:
        xmppServer.addAccount(user, PASSWORD)
    for index, user in enumerate(ONLINE):
        contact = ONLINE[(index + 1) % len(ONLINE)]
        webapp.rosters[user] = {f"{contact}@example.org": {"name": contact.title()}}

    first = RunningService(xmppServer, webapp.url, args)
    await first.start()
    try:
        sessions: Sessions = {}
        for user in ONLINE:
            client = await clients(user)
            initial = await client.rosterGet(ver="")
            assert initial["type"] == "result" and held(initial, []) == webAppRoster(webapp, user)
            client.sendPresence()
            sessions[user] = (client, initial)
        await waitOnlineExactly(first, set(ONLINE))
    finally:
        await first.stop()

    # Changed while stopped, the new rosteradmin's first fetch already sees
    # the change: it used to store it unpushed (0 of 10 clients got it).
    if changedWhile == "stopped":
        pushedBefore = change(webapp, sessions, "zed@example.org")
    second = RunningService(xmppServer, webapp.url, args)
    await second.start()
    try:
        # mod_privilege replays every session's presence right after the
        # handshake (ejabberd's session list is read at start): the new
        # rosteradmin knows all ten are online.
        await waitOnlineExactly(second, set(ONLINE))
        assert {user: {c.jid.full()} for user, (c, _) in sessions.items()} == onlineUsers(second)
        if changedWhile == "restarted":
            pushedBefore = change(webapp, sessions, "zed@example.org")
        await refreshAndCheck(second, webapp, sessions, "zed@example.org", pushedBefore)

        pushedBefore = change(webapp, sessions, "yves@example.org")
        await refreshAndCheck(second, webapp, sessions, "yves@example.org", pushedBefore)
        for user in ONLINE:
            assert "zed@example.org" in await storedRoster(xmppServer, user)
            assert "yves@example.org" in await storedRoster(xmppServer, user)
    finally:
        await second.stop()
