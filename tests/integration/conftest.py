# -*- test-case-name: tests.integration.test_harness -*-
"""
Fixtures for the integration tests: a fresh Prosody per test, the web app
stub, rosteradmin running against both, and logged-in clients.  Each cleans up after itself (pytest-twisted
does not check for a dirty reactor): no listening port, connection or
Prosody process outlives its test.

When Prosody cannot run, the tests fail, never skip: a green run must have
run the real server.  C{ROSTERADMIN_PROSODY=13} runs them on Debian 13's
Prosody 13 instead of the host's 0.12 (L{tests.integration.harness}), less
L{HOST_ONLY}; C{ROSTERADMIN_EJABBERD=24.12} runs the tests of Debian 13's
ejabberd (L{EJABBERD24}) instead, which the other runs leave out.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.integration.ejabberd import EJABBERD_VERSIONS
from tests.integration.harness import (
    PROSODY, ClientFactory, ProsodyServer, WebAppStub, XMPPTestClient, connectClient, listenWebApp, startedOrFail,
)
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

#: The tests of Debian 13's ejabberd, from a Debian 13 root:
#: C{ROSTERADMIN_EJABBERD=24.12} (trixie's) or C{26.07} (trixie-backports',
#: whose root C{ROSTERADMIN_DEBIAN13_ROOT} names) runs them alone
#: (scripts/test.sh's third and fourth runs), and the Prosody runs leave
#: them out.
EJABBERD24 = frozenset({"tests/integration/test_ejabberd24.py", "tests/integration/test_ejabberdfailover.py",
                        "tests/integration/test_ejabberdcluster.py", "tests/integration/test_ejabberdexample.py"})
EJABBERD = os.environ.get("ROSTERADMIN_EJABBERD") or ""
if EJABBERD not in ("", *EJABBERD_VERSIONS):
    raise RuntimeError(f"ROSTERADMIN_EJABBERD={EJABBERD!r}: use one of {', '.join(EJABBERD_VERSIONS)}"
                       " (Debian 13's ejabberd, from trixie or trixie-backports), or leave it unset")


def _listed(item: pytest.Item, names: frozenset[str]) -> bool:
    return item.nodeid.split("[")[0] in names or item.nodeid.split("::")[0] in names


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """
    Mark every test under C{tests/integration} C{integration}, so that
    C{-m "not integration"} runs the fast suite alone; on Prosody 13,
    deselect L{HOST_ONLY}; deselect L{EJABBERD24} unless
    C{ROSTERADMIN_EJABBERD} names a version, and then everything else
    (reported as deselected, not skipped).
    """
    for item in items:
        if "integration" in item.nodeid.split("/")[:-1]:
            item.add_marker(pytest.mark.integration)
    if EJABBERD:
        left = [item for item in items if not _listed(item, EJABBERD24)]
    else:
        left = [item for item in items
                if _listed(item, EJABBERD24) or (PROSODY == "13" and _listed(item, HOST_ONLY))]
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = [item for item in items if item not in left]


@pytest.fixture
def prosody(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProsodyServer]:
    """
    A started Prosody with the accounts alice, bob, carol, dave and erin
    (password C{pw}), stopped after the test.  A test parametrised
    indirectly with a tuple of module names gets it without those contrib
    modules (C{@pytest.mark.parametrize("prosody", [("rosteradmin_roster",)],
    indirect=True)}); with a string, with those global options
    (C{['rosteradmin_answer_rosters = false']}).
    """
    param = getattr(request, "param", ())
    server = (ProsodyServer(tmp_path, settings=param) if isinstance(param, str)
              else ProsodyServer(tmp_path, without=param))
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


@pytest.fixture
def xmppServer(prosody: ProsodyServer) -> ProsodyServer:
    """
    The XMPP server that C{service} and C{clients} use: the test's Prosody;
    a test module may override it (with ejabberd, say).
    """
    return prosody


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
    C{xmppServer} and the test's web app (serving C{rosters}), stopped
    after the test.
    """
    webapp.rosters.update(rosters)
    running = RunningService(xmppServer, webapp.url, serviceArgs)
    await running.start()
    yield running
    await running.stop()
