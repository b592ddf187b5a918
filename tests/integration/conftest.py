# -*- test-case-name: tests.integration.test_harness -*-
"""
Fixtures for the integration tests: a fresh Prosody per test, the web app
stub, rosteradmin running against both, and logged-in clients.  Each cleans up after itself (pytest-twisted
does not check for a dirty reactor): no listening port, connection or
Prosody process outlives its test.

When Prosody cannot run, the tests fail, never skip: a green run must have
run the real server.  C{ROSTERADMIN_PROSODY=13} runs them on Debian 13's
Prosody 13 instead of the host's 0.12 (L{tests.integration.harness}), less
L{HOST_ONLY}.  C{ROSTERADMIN_EJABBERD=24.12} (or C{26.07}) runs the same
tests on Debian 13's ejabberd instead, with C{--roster-sync ejabberd-api}
(L{tests.integration.servers}), less L{PROSODY_ONLY}, plus its own tests
(L{EJABBERD24}), which the Prosody runs leave out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.integration.debianroot import debian13Root
from tests.integration.ejabberd import LocalEjabberd
from tests.integration.harness import (
    PASSWORD, PROSODY, USERS, ClientFactory, ProsodyServer, WebAppStub, XMPPTestClient, connectClient, listenWebApp,
    startedOrFail,
)
from tests.integration.servers import EJABBERD, clearRosters, serverArgs
from tests.integration.service import RunningService

#: Tests left out when C{ROSTERADMIN_PROSODY=13} selects Debian 13's
#: Prosody: they run no Prosody of ours, or only the host's.
HOST_ONLY = frozenset({
    # ejabberd, not Prosody: the first run covers it
    "tests/integration/test_ejabberd.py",
    # `python -m rosteradmin_demo.demo` starts the host's Prosody itself
    "tests/integration/test_demo.py",
    # the hint to apt-get install the host's Prosody (test_prosody13.py
    # checks Prosody 13's: build the root)
    "tests/integration/test_harness.py::test_missingProsodyExplainsSetup",
})

#: The tests of Debian 13's ejabberd alone, from a Debian 13 root:
#: C{ROSTERADMIN_EJABBERD=24.12} (trixie's) or C{26.07} (trixie-backports',
#: whose root C{ROSTERADMIN_DEBIAN13_ROOT} names) runs them with the rest
#: (scripts/test.sh's third and fourth runs), and the Prosody runs leave
#: them out.
EJABBERD24 = frozenset({"tests/integration/test_ejabberd24.py", "tests/integration/test_ejabberdfailover.py",
                        "tests/integration/test_ejabberdcluster.py", "tests/integration/test_ejabberdexample.py"})

#: The contrib configuration and module the ejabberd runs use, as operators are told to install them.
CONTRIB_EJABBERD = Path(__file__).resolve().parents[2] / "contrib" / "ejabberd" / "rosteradmin.yml"
SUBSCRIPTIONS_MODULE = CONTRIB_EJABBERD.parent / "mod_rosteradmin_subscriptions"

_NOT_YET = "not run on ejabberd yet: it reads Prosody itself (its files, its log) or starts rosteradmin its own way"

#: The integration tests (a file, or one test of it) that the ejabberd runs
#: leave out, and why: what ejabberd cannot do, what only Prosody has, and
#: the files not brought over yet.  The one place the suite's server
#: differences are written; docs/servers.md lists every entry
#: (tests/test_docs.py checks that), and an ejabberd run prints them.
PROSODY_ONLY: dict[str, str] = {
    "tests/integration/test_ejabberd.py":
        "the host's ejabberd 23.01 in the privileged mode, which the first run covers",
    "tests/integration/test_demo.py": "the demo starts the host's Prosody itself",
    "tests/integration/test_prosody13.py": "Prosody 13's root and configuration",
    "tests/integration/test_converse.py": "Converse.js over Prosody's WebSocket (ejabberd's is not configured)",
    "tests/integration/test_rosters.py::test_presenceWarmsCache":
        "no presence reaches rosteradmin on ejabberd (no mod_privilege): it fetches a roster at the roster get, "
        "and learns who is online from the API's session list",
    "tests/integration/test_rosters.py::test_firstGetAfterTheLoginLoadIsProsodys":
        "contrib's mod_rosteradmin_roster (Prosody) loads, writes and promises the roster at login; ejabberd "
        "delegates every roster get",
    "tests/integration/test_rosters.py::test_everyPushCarriesItsVersion":
        "ejabberd pushes its own writes with its own roster versions, and rosteradmin answers with its own: a client "
        "asking with a push's version gets the whole roster again (correct, not minimal)",
    "tests/integration/test_faults.py::test_componentReconnectPushesMissedChanges":
        "writes go through ejabberd's API, not the component's stream: a refresh while only the component is "
        "disconnected is stored and pushed at once, nothing waits for the reconnection",
    "tests/integration/test_http.py::test_kickFromRealRoom[alice]":
        "ejabberd does not let its MUC admin kick a room's owner: 403 (test_ejabberd24.py's test_kickRefusalsMapped)",
    **{f"tests/integration/test_convergence.py::{name}":
       "not run on ejabberd yet: it pre-fills 1,000 users' stored rosters in Prosody's files and reads them back"
       for name in ("test_killDuringBulkRefreshResumes", "test_killDuringBulkSyncResumes",
                    "test_killMidWriteThenRevertConverges")},
    "tests/integration/test_convergence.py::test_firstLoginUnsynced":
        "what stock Prosody without a roster load at login routes for a user no sync reached",
    "tests/integration/test_firstlogin.py":
        "contrib's mod_rosteradmin_roster (Prosody) holds a login until the roster is stored; ejabberd has no such "
        "module, so a first login's presence sent before the roster get is not measured there",
    **{f"tests/integration/test_devices.py::{name}":
       "rosteradmin follows what each device holds to push it (its own pushes, through mod_privilege); on "
       "ejabberd, ejabberd pushes its own writes (its put-backs: test_ejabberd24.py's test_refusedSetsPutBack)"
       for name in ("test_deviceThatAskedBeforePresenceIsPushed", "test_putBackFloodLeavesABoundedQueue",
                    "test_sessionWithoutPresenceFollowedAcrossARestart")},
    **{f"tests/integration/test_blastradius.py::{name}": _NOT_YET for name in (
        "test_rosterTooLargeForOneAnswer", "test_largeSyncDoesNotHoldUpOtherLogins",
        "test_concurrentRefreshesCoalesce", "test_streamDropDuringBulkSync",
    )},
    **{f"tests/integration/{name}": _NOT_YET for name in (
        "test_bulkroster.py", "test_ctl.py",
        "test_currentversions.py",
        "test_grouporder.py", "test_harness.py", "test_inspect.py", "test_jids.py",
        "test_repair.py", "test_schemathesis.py", "test_slowclients.py", "test_soak.py",
        "test_standby.py", "test_statefile.py", "test_trust.py", "test_twistd.py",
        "test_events.py", "test_leadership.py", "test_failover.py", "test_twohostsunit.py",
    )},
    "tests/integration/test_refreshpresence.py":
        "contrib's mod_rosteradmin_roster sends presence after rosteradmin's writes on Prosody; on ejabberd its own "
        "API writes do (test_ejabberd24.py's test_pairRefreshPresence)",
}


def _listed(item: pytest.Item, names: frozenset[str]) -> bool:
    return item.nodeid.split("[")[0] in names or item.nodeid.split("::")[0] in names


def _reason(item: pytest.Item) -> str | None:
    """
    Why an ejabberd run leaves this test out, if it does.
    """
    return (PROSODY_ONLY.get(item.nodeid) or PROSODY_ONLY.get(item.nodeid.split("[")[0])
            or PROSODY_ONLY.get(item.nodeid.split("::")[0]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """
    Mark every test under C{tests/integration} C{integration}, so that
    C{-m "not integration"} runs the fast suite alone; on Prosody 13,
    deselect L{HOST_ONLY}; on ejabberd, deselect L{PROSODY_ONLY}, on
    Prosody L{EJABBERD24} (reported as deselected, not skipped).
    """
    for item in items:
        if "integration" in item.nodeid.split("/")[:-1]:
            item.add_marker(pytest.mark.integration)
    if EJABBERD:
        left = [item for item in items if _reason(item) is not None]
        config.stash[_LEFT_OUT] = [(item.nodeid, _reason(item) or "") for item in left]
    else:
        left = [item for item in items
                if _listed(item, EJABBERD24) or (PROSODY == "13" and _listed(item, HOST_ONLY))]
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = [item for item in items if item not in left]


_LEFT_OUT = pytest.StashKey[list[tuple[str, str]]]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """
    On ejabberd, say which integration tests were left out and why, one
    line per reason.
    """
    left = [(nodeid, why) for nodeid, why in config.stash.get(_LEFT_OUT, []) if "/integration/" in nodeid]
    if not left:
        return
    terminalreporter.section(f"left out on ejabberd {EJABBERD} (conftest.PROSODY_ONLY)")
    for why in sorted({why for _, why in left}):
        count = sum(1 for _, reason in left if reason == why)
        terminalreporter.write_line(f"{count:4d}  {why}")


@pytest.fixture
def prosody(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProsodyServer | None]:
    """
    A started Prosody with the accounts alice, bob, carol, dave and erin
    (password C{pw}), stopped after the test.  A test parametrised
    indirectly with a tuple of module names gets it without those contrib
    modules (C{@pytest.mark.parametrize("prosody", [("rosteradmin_roster",)],
    indirect=True)}); with a string, with those global options
    (C{['rosteradmin_answer_rosters = false']}).  On ejabberd, C{None}:
    no Prosody runs, and L{xmppServer} is the module's ejabberd.
    """
    if EJABBERD:
        yield None
        return
    param = getattr(request, "param", ())
    server = (ProsodyServer(tmp_path, settings=param) if isinstance(param, str)
              else ProsodyServer(tmp_path, without=param))
    startedOrFail(server)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ejabberd() -> Iterator[LocalEjabberd | None]:
    """
    On ejabberd runs, a started ejabberd shared by a test module (it takes
    seconds to start): the accounts alice, bob, carol, dave and erin
    (password C{pw}), contrib's configuration and subscription module,
    installed as operators are told.  On Prosody runs, C{None}.
    """
    if not EJABBERD:
        yield None
        return
    server = LocalEjabberd({user: PASSWORD for user in USERS}, root=debian13Root(), include=CONTRIB_EJABBERD,
                           contribModules=(SUBSCRIPTIONS_MODULE,))
    startedOrFail(server)
    yield server
    server.stop()


@pytest_twisted.async_yield_fixture
async def webapp() -> AsyncIterator[WebAppStub]:
    """
    The web app stub listening on loopback, its roster URL template in
    C{url}.
    """
    stub = WebAppStub()
    stub.port, stub.url = listenWebApp(stub)
    stub.portNumber = stub.port.getHost().port
    yield stub
    await stub.port.stopListening()


@pytest_twisted.async_fixture
async def xmppServer(prosody: ProsodyServer | None, ejabberd: LocalEjabberd | None) -> ProsodyServer | LocalEjabberd:
    """
    The XMPP server that C{service} and C{clients} use: the test's Prosody;
    on ejabberd runs, the module's ejabberd, every user's stored roster
    emptied first (each test starts as on a fresh server).  A test module
    may override it.
    """
    if prosody is not None:
        return prosody
    assert ejabberd is not None
    if not ejabberd.running:  # a test that restarts it failed half-way
        startedOrFail(ejabberd)
    await clearRosters(ejabberd, list(USERS))
    return ejabberd


@pytest_twisted.async_yield_fixture
async def clients(xmppServer: Any) -> AsyncIterator[ClientFactory]:
    """
    Log users in on C{xmppServer}: C{await clients("alice")} is a session
    of alice@example.org, logged out after the test.
    """
    connected: list[XMPPTestClient] = []

    async def connect(user: str) -> XMPPTestClient:
        client = await connectClient(f"{user}@{xmppServer.domain}", xmppServer.accounts[user],
                                     xmppServer.c2sPort)
        connected.append(client)
        return client

    yield connect
    await defer.gatherResults([client.disconnect() for client in connected])


@pytest.fixture
def rosters() -> dict[str, dict[str, Any]]:
    """
    The web app's rosters when the service starts; a test module overrides
    this fixture with its own.
    """
    return {}


@pytest.fixture
def serviceArgs() -> list[str]:
    """
    Extra command-line options for the service; a test module may override it.
    """
    return []


@pytest_twisted.async_yield_fixture
async def service(xmppServer: Any, webapp: WebAppStub, rosters: dict[str, dict[str, Any]],
                  serviceArgs: list[str]) -> AsyncIterator[RunningService]:
    """
    rosteradmin, started through the twistd code path against
    C{xmppServer} (with the options that server needs) and the test's web
    app (serving C{rosters}), stopped after the test.
    """
    webapp.rosters.update(rosters)
    running = RunningService(xmppServer, webapp.url, serverArgs(xmppServer) + serviceArgs)
    await running.start()
    yield running
    await running.stop()
