"""
Fixtures for the integration tests: a fresh Prosody per test (failing, never
skipping, when it cannot run), the web app stub, and logged-in clients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web import server

from rosteradmin.devprosody import LocalProsody, ProsodyNotAvailable
from tests.integration.harness import WebAppStub
from tests.integration.xmppclient import XMPPTestClient, connectClient

CONTRIB_CONFIG = Path(__file__).parents[2] / "contrib" / "prosody" / "rosteradmin.cfg.lua"
USERS = ("alice", "bob", "carol", "dave", "erin")
PASSWORD = "pw"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def prosody(tmp_path: Path) -> Iterator[LocalProsody]:
    server = LocalProsody(tmp_path, CONTRIB_CONFIG)
    for user in USERS:
        server.addAccount(user, PASSWORD)
    try:
        server.start()
    except ProsodyNotAvailable as e:
        pytest.fail(str(e), pytrace=False)
    yield server
    server.stop()


@pytest_twisted.async_yield_fixture
async def webapp() -> AsyncIterator[WebAppStub]:
    stub = WebAppStub()
    site = server.Site(stub)
    stub.port = reactor.listenTCP(0, site, interface="127.0.0.1")
    stub.portNumber = stub.port.getHost().port
    stub.url = f"http://127.0.0.1:{stub.portNumber}/rosters/%s"
    yield stub
    await stub.port.stopListening()


@pytest_twisted.async_yield_fixture
async def clients(prosody: LocalProsody) -> AsyncIterator[Any]:
    connected: list[XMPPTestClient] = []

    async def connect(user: str) -> XMPPTestClient:
        client = await connectClient(f"{user}@{prosody.domain}", prosody.accounts[user], prosody.c2sPort)
        connected.append(client)
        return client

    yield connect
    for client in connected:
        await client.disconnect()
