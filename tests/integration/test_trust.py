"""
Trust boundaries on a real server: a normal user forging what only the
server may send, and hostile HTTP requests on a real socket.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish

from rosteradmin_demo.devprosody import COMPONENT_JID
from tests.helpers import parseXML
from tests.integration.service import RunningService
from tests.integration.test_faults import call
from tests.integration.test_rosters import condition

FORGED_ENVELOPE = (
    f"<iq type='set' to='{COMPONENT_JID}' id='forged1'>"
    "<delegation xmlns='urn:xmpp:delegation:2'><forwarded xmlns='urn:xmpp:forward:0'>"
    "<iq xmlns='jabber:client' type='get' from='bob@example.org/phone' id='x'>"
    "<query xmlns='jabber:iq:roster'/></iq></forwarded></delegation></iq>"
)
FORGED_PRIVILEGE = (
    f"<message to='{COMPONENT_JID}'><privilege xmlns='urn:xmpp:privilege:2'>"
    "<perm access='roster' type='none'/><perm access='presence' type='none'/></privilege></message>"
)


@pytest.fixture
def rosters() -> dict[str, Any]:
    return {"bob": {"alice@example.org": {"name": "Alice"}}}


@pytest_twisted.ensureDeferred
async def test_forgedEnvelopeFromClientRefused(webapp: Any, service: RunningService, clients: Any) -> None:
    """
    alice sending the component a delegation envelope that claims to carry
    bob's roster get gets forbidden, and bob's roster is never fetched.
    """
    alice = await clients("alice")
    reply = await alice.iq(parseXML(FORGED_ENVELOPE, "jabber:client"))
    assert reply["type"] == "error" and condition(reply) == "forbidden"
    assert reply.firstChildElement().name == "error"
    assert webapp.requests["bob"] == 0


@pytest_twisted.ensureDeferred
async def test_forgedPrivilegeMessageIgnored(service: RunningService, clients: Any) -> None:
    """
    A privilege advertisement from a user changes no permission.
    """
    alice = await clients("alice")
    alice.send(FORGED_PRIVILEGE)
    await alice.rosterGet()  # a round trip through the component
    await RunningService.sleep(0.2)
    assert service.component.privileges.canSync()
    assert service.component.privileges.permissions.seesPresence


@pytest_twisted.ensureDeferred
async def test_forgedResponseCannotAnswerOurRequests(webapp: Any, service: RunningService, clients: Any) -> None:
    """
    A user sending results with guessable ids cannot complete the
    component's pending requests: they carry random ids.  While the push
    of bob's refreshed roster waits for bob's client, alice sends results
    with the ids a counter would give (wokkel matches a result by id
    alone): none completes a request, and bob's answer completes the push.
    """
    alice, bob = await clients("alice"), await clients("bob")
    await bob.rosterGet(ver="")
    bob.sendPresence()
    await RunningService.waitUntil(lambda: "bob" in service.component.privileges.online, 10, "bob online")
    bob.answerPushes = False  # a privileged push is answered when bob's client answers it
    webapp.rosters["bob"] = {"alice@example.org": {"name": "Alice"}, "carol@example.org": {"name": "Carol"}}
    await service.backend.refresh(["bob"])
    [push] = await bob.waitForPushes(1)
    pending = set(service.component._iqDeferreds)
    assert pending, "no request of the component waits for bob's client"
    # Each result that reaches the component while its id is pending
    # completes that request: who sent it, seen before wokkel matches it.
    completions: list[tuple[str, str]] = []

    def onResult(iq: domish.Element) -> None:
        if iq.getAttribute("id") in service.component._iqDeferreds:
            completions.append((iq["id"], iq.getAttribute("from", "")))

    stream = service.component.xmlstream
    for kind in ("result", "error"):
        stream.addObserver(f"/iq[@type='{kind}']", onResult, priority=100)
    try:
        guesses = ["H_1", "H_2", "1", "ra-0",
                   *(f"{prefix}{n}" for prefix in ("H_", "", "ra-", "push-") for n in range(200))]
        for guess in guesses:
            alice.send(f"<iq type='result' to='{COMPONENT_JID}' id='{guess}'/>")
        await alice.rosterGet()  # a round trip through the component, after every guess
        # The server answers for alice's account from its bare JID; alice's
        # client sends from her full JID.
        assert [c for c in completions if c[1] == alice.jid.full()] == []
        assert pending & set(service.component._iqDeferreds), "no request was pending when the guesses came"

        bob.send(xmlstream.toResponse(push, "result"))
        # The version promise sent with the answer may still be on its way.
        await RunningService.waitUntil(lambda: service.component._iqDeferreds == {}, 5,
                                       "every request of the component answered by the server")
    finally:
        for kind in ("result", "error"):
            stream.removeObserver(f"/iq[@type='{kind}']", onResult)
    assert [c for c in completions if c[1] == alice.jid.full()] == []
    assert pending <= {stanzaID for stanzaID, _ in completions}, "a request timed out"


def rawHTTP(port: int, data: bytes, pauses: float = 0.0, timeout: float = 10.0) -> bytes:
    """
    Send raw bytes (optionally a byte at a time with pauses) and read the
    whole reply, in a thread: the service runs in the reactor thread.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if pauses:
            for i in range(len(data)):
                s.sendall(data[i:i + 1])
                asyncio.run(asyncio.sleep(pauses))
        else:
            s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("request_, status", [
    (b"POST /roster_admin/refresh/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
     b"Connection: close\r\n\r\n", b"500"),
    (b"POST /roster_admin/refresh/%FF%FE HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
     b"400"),
    (b"POST /roster_admin/refresh HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n"
     b"Connection: close\r\n\r\n\xff\xfe\xfd\xfc", b"400"),
    (b"POST /roster_admin/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\nConnection: close\r\n\r\n"
     b"[", b"413"),
    (b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"404"),
    (b"BREW /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"405"),
])
@pytest_twisted.ensureDeferred
async def test_hostileHTTP(request_: bytes, status: bytes, service: RunningService) -> None:
    """
    Hostile requests get a clear 4xx/5xx JSON reply and never a traceback.
    """
    reply = await threads.deferToThread(rawHTTP, service.httpPort, request_)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == status, reply[:300]
    assert b"application/json" in head
    assert b"Traceback" not in reply and body.startswith(b"{")


@pytest_twisted.ensureDeferred
async def test_slowLorisDisconnected(service: RunningService) -> None:
    """
    A client that never finishes its request is disconnected by the idle
    timeout, and the service keeps answering others meanwhile.
    """
    site = service.top.getServiceNamed("http").site
    site.timeOut = 1
    reply = threads.deferToThread(rawHTTP, service.httpPort, b"POST /roster_admin/refresh HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 10\r\n\r\n[", 0, 15)
    code, _ = await call(service, "GET", "/healthz")
    assert code == 200
    started = reactor.seconds()
    assert await reply == b""  # closed without a reply
    assert reactor.seconds() - started < 5
