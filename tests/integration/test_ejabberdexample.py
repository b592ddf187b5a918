"""
contrib/ejabberd/ejabberd.yml.example, the complete ejabberd.yml an operator
starts from (Debian 13's stock file with what rosteradmin needs), run on
Debian 13's ejabberd 24.12 as it ships: only its ports are moved to free
ones and its listeners to loopback.  Clients log in as the stock file wants
(STARTTLS required, with the root's self-signed certificate).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.interfaces import ISSLTransport
from twisted.web.client import HTTPConnectionPool

from rosteradmin_demo.devprosody import freePort
from tests.integration.debianroot import debian13Root
from tests.integration.ejabberd import LocalEjabberd
from tests.integration.harness import (
    PASSWORD, WebAppStub, XMPPTestClient, availableFrom, connectClient, startedOrFail,
)
from tests.integration.service import KICK_AUTHORIZATION, RunningService
from tests.integration.test_ejabberd24 import NS_MUC_USER, startService, storedRoster
from tests.integration.test_http import call
from tests.integration.test_rosters import items

pytestmark = pytest.mark.integration

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "ejabberd"
EXAMPLE = CONTRIB / "ejabberd.yml.example"
SUBSCRIPTIONS_MODULE = CONTRIB / "mod_rosteradmin_subscriptions"
#: The example's ports: the stock listeners', then rosteradmin's component and API ports.
EXAMPLE_PORTS = (5222, 5223, 5269, 5443, 5280, 5478, 1883, 5347, 5281)
ROOM = "room@conference.example.org"


def forTest(text: str, ports: dict[int, int]) -> str:
    """
    The example with each of its ports replaced (each must appear exactly
    once) and every listener on 127.0.0.1: nothing else changes.
    """
    for port, free in ports.items():
        pattern = re.compile(rf"^(\s+port: ){port}$", re.MULTILINE)
        text, found = pattern.subn(rf"\g<1>{free}", text)
        assert found == 1, f"port {port} appears {found} times in {EXAMPLE}"
    return text.replace('ip: "::"', 'ip: "127.0.0.1"')


class ExampleEjabberd(LocalEjabberd):
    """
    The root's ejabberd running the example file.
    """

    secret = "change-me"

    def __init__(self, accounts: dict[str, str]) -> None:
        super().__init__(accounts, root=debian13Root(), include=EXAMPLE, contribModules=(SUBSCRIPTIONS_MODULE,))
        self.ports = {port: freePort() for port in EXAMPLE_PORTS}
        self.ports.update({5222: self.c2sPort, 5347: self.componentPort, 5281: self.apiPort})

    def _writeConfig(self) -> None:
        super()._writeConfig()
        assert self.directory is not None
        (self.directory / "ejabberd.yml").write_text(forTest(EXAMPLE.read_text(), self.ports))


@pytest.fixture(scope="module")
def example() -> Iterator[ExampleEjabberd]:
    server = startedOrFail(ExampleEjabberd({user: PASSWORD for user in ("alice", "bob")}))
    yield server
    server.stop()


@pytest.fixture
def rosters() -> dict[str, Any]:
    return {"alice": {"bob@example.org": {"name": "Bob", "groups": ["Friends"]}},
            "bob": {"alice@example.org": {"name": "Alice"}}}


@pytest_twisted.async_yield_fixture
async def service(example: ExampleEjabberd, webapp: WebAppStub,
                  rosters: dict[str, Any]) -> AsyncIterator[RunningService]:
    running = await startService(example, webapp, rosters,
                                 ["--roster-sync", "ejabberd-api", "--ejabberd-api-url", example.apiURL])
    yield running
    await running.stop()


@pytest_twisted.async_yield_fixture
async def tlsClients(example: ExampleEjabberd) -> AsyncIterator[Any]:
    connected: list[XMPPTestClient] = []

    async def login(user: str) -> XMPPTestClient:
        client = await connectClient(f"{user}@{example.domain}", PASSWORD, example.c2sPort, tls=True)
        connected.append(client)
        return client

    yield login
    for client in connected:
        await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_exampleServesRostersAndKicks(example: ExampleEjabberd, service: RunningService,
                                            tlsClients: Any) -> None:
    """
    On the example file: the roster is delegated (/healthz "ok",
    C{delegated} true); alice's client, over STARTTLS, gets the web app's
    roster with C{both}, stored in ejabberd; bob's presence reaches her;
    POST /muc_kick kicks her from bob's room with C{307}.
    """
    code, body = await call(service, "GET", "/healthz")
    assert (code, body["status"], body["delegation"], body["delegated"]) == (200, "ok", "expected", True)
    alice = await tlsClients("alice")
    assert ISSLTransport.providedBy(alice.xs.transport)  # the stock c2s listener requires STARTTLS
    result = await alice.rosterGet(ver="")
    assert items(result) == {"bob@example.org": ("Bob", "both", ["Friends"])}
    assert await storedRoster(example, "alice") == {"bob@example.org": ("Bob", "both", ["Friends"])}
    alice.sendPresence()
    bob = await tlsClients("bob")
    await bob.rosterGet()
    bob.sendPresence()
    await alice.waitForPresence(availableFrom("bob@example.org"))

    assert (await bob.joinRoom(ROOM, "Bob")).getAttribute("type") is None
    assert (await alice.joinRoom(ROOM, "Alice")).getAttribute("type") is None
    code, body = await call(service, "POST", "/muc_kick", {"nickname": "Alice", "muc": ROOM, "reason": "spam"},
                            headers={"Authorization": KICK_AUTHORIZATION})
    assert code == 200
    kicked = await alice.waitForPresence(
        lambda p: p.getAttribute("from") == f"{ROOM}/Alice" and p.getAttribute("type") == "unavailable")
    x = next(e for e in kicked.elements() if e.name == "x" and e.uri == NS_MUC_USER)
    assert "307" in [s.getAttribute("code") for s in x.elements() if s.name == "status"]


async def apiStatus(example: ExampleEjabberd, command: str, arguments: dict[str, Any]) -> tuple[int, Any]:
    response = await treq.post(f"{example.apiURL}/{command}", json=arguments,
                               pool=HTTPConnectionPool(reactor, persistent=False))
    return response.code, json.loads(await response.text())


@pytest_twisted.ensureDeferred
async def test_whatEjabberdctlAndTheAPIStillDo(example: ExampleEjabberd) -> None:
    """
    Under the example's api_permissions, ejabberdctl still does everything
    an operator does (register, passwords, rosters, sessions, modules,
    unregister); from loopback the HTTP API answers rosteradmin's roster
    commands and the stock public ones, and refuses the rest (register).
    """
    print()
    for command in (("register", "frank", "example.org", "pw"), ("change_password", "frank", "example.org", "pw2"),
                    ("check_password", "frank", "example.org", "pw2"), ("registered_users", "example.org"),
                    ("get_roster", "alice", "example.org"), ("connected_users",), ("modules_installed",),
                    ("unregister", "frank", "example.org"), ("status",)):
        output = example.ctl(*command)  # raises unless it succeeds
        print(f"ejabberdctl {' '.join(command)} -> {output.splitlines()}")
    outcomes = {}
    for command, arguments in (("get_roster", {"user": "alice", "host": "example.org"}),
                               ("connected_users_vhost", {"host": "example.org"}),
                               ("status", {}),
                               ("register", {"user": "mallory", "host": "example.org", "password": "x"}),
                               ("registered_users", {"host": "example.org"}),
                               ("modules_installed", {}), ("connected_users", {})):
        outcomes[command] = await apiStatus(example, command, arguments)
        print(f"API {command} from loopback -> {outcomes[command]}")
    assert {command: code for command, (code, _) in outcomes.items()} == {
        "get_roster": 200, "connected_users_vhost": 200, "status": 200, "register": 403, "registered_users": 403,
        "modules_installed": 403, "connected_users": 403}
    assert "mallory" not in example.ctl("registered_users", "example.org").split()
