"""
A lightweight XMPP client for load: raw stanzas over asyncio, thousands of
connections in one process.  It logs in (SASL PLAIN, plain TCP on
loopback), binds a resource, sends roster gets and times them, and answers
roster pushes.  For native probes it also times pings to the server and
message round trips to a client that echoes them.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
import xml.etree.ElementTree as ET
from typing import Any

STREAM_HEADER = ("<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
                 "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
NS_STREAM = "{http://etherx.jabber.org/streams}"
NS_ROSTER = "jabber:iq:roster"

_ids = itertools.count()


class LoadClient:
    """
    One XMPP session.

    @ivar pushes: Roster pushes received.
    @ivar echo: Send every message received back to its sender, with its
        id (the far end of L{messageRoundTrip}).
    """

    def __init__(self, username: str, domain: str, echo: bool = False) -> None:
        self.username = username
        self.domain = domain
        self.pushes = 0
        #: The bind iq's round trip, once logged in: where the server's
        #: wait for rosteradmin's roster lands (bench.logincost).
        self.bindSeconds = 0.0
        self.echo = echo
        self._pending: dict[str, asyncio.Future[ET.Element]] = {}
        self._stanzas: asyncio.Queue[ET.Element] = asyncio.Queue()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def login(self, port: int, password: str) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", port)
        self._startStream()
        self._readTask = asyncio.ensure_future(self._read())
        await self._next("features")
        token = base64.b64encode(f"\0{self.username}\0{password}".encode()).decode()
        self._send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        result = await self._next(None)
        if not result.tag.endswith("success"):
            raise RuntimeError(f"{self.username}: authentication failed: {ET.tostring(result)[:200]!r}")
        self._startStream()
        await self._next("features")
        self._task = asyncio.ensure_future(self._dispatch())
        began = time.perf_counter()
        await self.iq("set", "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>load</resource></bind>")
        self.bindSeconds = time.perf_counter() - began

    def _startStream(self) -> None:
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self._root: ET.Element | None = None
        self._send(STREAM_HEADER.format(domain=self.domain))

    async def _read(self) -> None:
        assert self._reader is not None
        while data := await self._reader.read(65536):
            self._parser.feed(data)
            for event, element in self._parser.read_events():
                if event == "start":
                    if self._depth == 0:
                        self._root = element
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth == 1 and self._root is not None:
                        # Drop handled stanzas from the stream's tree.
                        self._root.remove(element)
                        self._stanzas.put_nowait(element)

    async def _next(self, name: str | None) -> ET.Element:
        while True:
            element = await asyncio.wait_for(self._stanzas.get(), 30)
            if name is None or element.tag == NS_STREAM + name:
                return element

    async def _dispatch(self) -> None:
        while True:
            element = await self._stanzas.get()
            if element.tag.endswith("}message"):
                self._messageReceived(element)
                continue
            if not element.tag.endswith("}iq"):
                continue
            kind, stanzaID = element.get("type"), element.get("id", "")
            if kind in ("result", "error"):
                future = self._pending.pop(stanzaID, None)
                if future is not None and not future.done():
                    future.set_result(element)
            elif kind == "set" and element.find(f"{{{NS_ROSTER}}}query") is not None:
                self.pushes += 1
                self._send(f"<iq type='result' id='{stanzaID}'/>")

    def _messageReceived(self, message: ET.Element) -> None:
        stanzaID, sender = message.get("id", ""), message.get("from")
        future = self._pending.pop(stanzaID, None)
        if future is not None:
            if not future.done():
                future.set_result(message)
        elif self.echo and sender:
            self._send(f"<message to='{sender}' id='{stanzaID}' type='chat'><body>echo</body></message>")

    def _send(self, data: str) -> None:
        assert self._writer is not None
        self._writer.write(data.encode())

    async def iq(self, kind: str, payload: str, timeout: float = 60, to: str | None = None) -> ET.Element:
        stanzaID = f"l{next(_ids)}"
        future: asyncio.Future[ET.Element] = asyncio.get_running_loop().create_future()
        self._pending[stanzaID] = future
        toAttr = f" to='{to}'" if to is not None else ""
        self._send(f"<iq type='{kind}' id='{stanzaID}'{toAttr}>{payload}</iq>")
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(stanzaID, None)

    async def ping(self, timeout: float = 60) -> float:
        """
        One XEP-0199 ping to the server (answered by Prosody's mod_ping);
        its latency in seconds.
        """
        started = time.perf_counter()
        reply = await self.iq("get", "<ping xmlns='urn:xmpp:ping'/>", timeout, to=self.domain)
        if reply.get("type") != "result":
            raise RuntimeError(f"{self.username}: ping failed: {ET.tostring(reply)[:300]!r}")
        return time.perf_counter() - started

    async def messageRoundTrip(self, to: str, timeout: float = 60) -> float:
        """
        Send a message to the full JID C{to}, whose client echoes it
        (C{echo}), and wait for the echo: two trips through the server's
        client connections and routing, no component involved.  Its latency
        in seconds.
        """
        stanzaID = f"m{next(_ids)}"
        future: asyncio.Future[ET.Element] = asyncio.get_running_loop().create_future()
        self._pending[stanzaID] = future
        started = time.perf_counter()
        self._send(f"<message to='{to}' id='{stanzaID}' type='chat'><body>probe</body></message>")
        try:
            await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(stanzaID, None)
        return time.perf_counter() - started

    async def rosterGet(self, ver: str | None = None) -> tuple[float, ET.Element]:
        """
        One roster get; its latency in seconds and the reply.
        """
        verAttr = f" ver='{ver}'" if ver is not None else ""
        started = time.perf_counter()
        reply = await self.iq("get", f"<query xmlns='{NS_ROSTER}'{verAttr}/>")
        if reply.get("type") != "result":
            raise RuntimeError(f"{self.username}: roster get failed: {ET.tostring(reply)[:300]!r}")
        return time.perf_counter() - started, reply

    def sendPresence(self) -> None:
        """
        The initial presence a client sends after its roster get: the
        server broadcasts it to the online contacts, and shares it with
        rosteradmin, which asks the web app for the user's roster then.
        """
        self._send("<presence/>")

    async def close(self) -> None:
        for task in (self._task, getattr(self, "_readTask", None)):
            if task is not None:
                task.cancel()
        if self._writer is not None:
            try:
                self._writer.write(b"</stream:stream>")
                self._writer.close()
            except (ConnectionError, RuntimeError):
                pass


async def connectMany(usernames: list[str], domain: str, port: int, password: str,
                      concurrency: int = 200) -> list[LoadClient]:
    """
    Log many clients in, at most C{concurrency} handshakes at a time.
    """
    limit = asyncio.Semaphore(concurrency)

    async def one(name: str) -> LoadClient:
        async with limit:
            client = LoadClient(name, domain)
            await client.login(port, password)
            return client

    return list(await asyncio.gather(*(one(u) for u in usernames)))


def percentiles(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}
