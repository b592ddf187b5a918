"""
rosteradmin on a real ejabberd (the Debian package), which speaks the C{:1}
namespaces: C{urn:xmpp:delegation:1} envelopes both ways, the
C{urn:xmpp:privilege:1} advertisement, and the detection of ejabberd
delegating our own privileged roster requests back to us (ejabberd issue
#1737), which turns roster writes off.

One ejabberd serves the whole module (it takes seconds to start); each test
gets its own rosteradmin, hence its own component connection, through the
same code path as twistd.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from rosteradmin.delegation import NS_DELEGATION_1
from rosteradmin.permissions import NS_PRIVILEGE_1
from rosteradmin.roster import NS_ROSTER
from tests.integration.ejabberd import LocalEjabberd
from tests.integration.harness import PASSWORD, ClientFactory, WebAppStub, startedOrFail
from tests.integration.service import RunningService
from tests.integration.test_http import call
from tests.integration.test_rosters import ROSTERS, condition, items

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ejabberd() -> Iterator[LocalEjabberd]:
    """
    A started ejabberd with the accounts alice, bob and carol (password
    C{pw}), shared by the module's tests and stopped after them.  When it
    cannot run, every test fails: a green run must have run it.
    """
    server = LocalEjabberd({user: PASSWORD for user in ("alice", "bob", "carol")})
    startedOrFail(server)
    yield server
    server.stop()


@pytest.fixture
def xmppServer(ejabberd: LocalEjabberd) -> LocalEjabberd:
    """
    The module's ejabberd, for the C{service} and C{clients} fixtures of
    conftest: each test gets its own rosteradmin and client sessions.
    """
    return ejabberd


@pytest.fixture
def rosters() -> dict[str, Any]:
    return ROSTERS


@pytest_twisted.ensureDeferred
async def test_clientGetsWebAppRoster(webapp: WebAppStub, service: RunningService, clients: ClientFactory) -> None:
    """
    Over ejabberd's C{:1} namespaces, alice's client gets the web app's
    roster with names, groups and subscription both, from her own bare JID:
    ejabberd delivered our envelope's inner reply as it was.
    """
    assert service.component.privileges.permissions.namespace == NS_PRIVILEGE_1
    assert service.component.delegation.delegated == {NS_ROSTER: NS_DELEGATION_1}
    alice = await clients("alice")
    result = await alice.rosterGet(ver="")
    assert result["type"] == "result"
    assert items(result) == {
        "bob@example.org": ("Bob", "both", ["Friends", "Work"]),
        "carol@example.org": ("Carol", "both", []),
    }
    assert result.query.getAttribute("ver")
    assert result.getAttribute("from") == "alice@example.org"
    assert result.getAttribute("to") == alice.jid.full()
    assert webapp.requests["alice"] == 1


@pytest_twisted.ensureDeferred
async def test_rosterSetNotAllowed(service: RunningService, clients: ClientFactory) -> None:
    """
    alice's roster set reaches rosteradmin through ejabberd's delegation
    and is refused with not-allowed.
    """
    alice = await clients("alice")
    result = await alice.rosterSet("carol@example.org", name="Caroline")
    assert result["type"] == "error"
    assert condition(result) == "not-allowed"
    assert result.getAttribute("from") == "alice@example.org"


@pytest_twisted.ensureDeferred
async def test_otherUsersRosterForbidden(webapp: WebAppStub, service: RunningService,
                                         clients: ClientFactory) -> None:
    """
    bob asking for alice's roster gets forbidden, and the web app is not
    asked for it.
    """
    bob = await clients("bob")
    result = await bob.rosterGet(to="alice@example.org")
    assert result["type"] == "error"
    assert condition(result) == "forbidden"
    assert webapp.requests["alice"] == 0


@pytest_twisted.ensureDeferred
async def test_ownRequestsDelegatedBackTurnWritesOff(service: RunningService, clients: ClientFactory) -> None:
    """
    alice's first roster get makes rosteradmin read her stored roster with
    privilege; ejabberd delegates that read back to rosteradmin, which
    refuses it and turns roster writes off: a refresh then fails for her
    with the reason, and /healthz shows it.
    """
    code, body = await call(service, "GET", "/healthz")
    assert (code, body["roster_sync_error"]) == (200, None)
    alice = await clients("alice")
    result = await alice.rosterGet(ver="")
    assert result["type"] == "result"  # served from the web app all the same
    await service.waitUntil(lambda: service.component.delegation.ownRequestsReturned > 0, 10,
                            "ejabberd delegating our own roster read back")
    assert not service.component.privileges.canSync()

    code, body = await call(service, "POST", "/roster_admin/refresh", ["alice"])
    assert code == 500
    assert (body["status"], body["updated"], body["errors"]) == ("error", 0, 1)
    assert "sends rosteradmin's own roster requests back" in body["failures"]["alice"]

    code, body = await call(service, "GET", "/healthz")
    assert code == 200 and body["connected"] is True
    assert "sends rosteradmin's own roster requests back" in body["roster_sync_error"]
