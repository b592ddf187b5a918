"""
A TCP relay between rosteradmin and Prosody's component port that counts
the stanzas on the XEP-0114 stream, by direction and kind: what a login
costs on the component stream (C{--tap}, for profiling; the relay's own
hop and parsing cost the load client's CPU, so measured runs go without).

Kinds, from the top-level element and its first child:

  - C{delegated query} / C{delegation answer}: a client's roster query
    forwarded in a XEP-0355 envelope, and rosteradmin's answer;
  - C{privileged roster get} / C{privileged roster set} and their
    C{... result}s: XEP-0356 roster reads and writes (contrib's
    mod_rosteradmin_roster sets included);
  - C{mod_rosteradmin_roster write}: many items in one iq (contrib);
  - C{privileged push}: a roster push sent through C{<privileged_iq>};
  - C{presence}, C{message}, and C{other iq}.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections import Counter

NS_DELEGATION = "{urn:xmpp:delegation:2}"
NS_PRIVILEGE = "{urn:xmpp:privilege:2}"
NS_ROSTER = "{jabber:iq:roster}"
NS_BULK = "{urn:x-rosteradmin:roster:0}"


class StreamTap:
    """
    Listen on C{port} (0: a free one) and relay each connection to
    C{127.0.0.1:target}.

    @ivar counts: Stanzas seen, by (direction, kind); direction is
        C{"to component"} or C{"to server"}.
    @ivar bytes: Bytes relayed, by direction.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.counts: Counter[tuple[str, str]] = Counter()
        self.bytes: Counter[str] = Counter()
        self._pendingKinds: dict[str, str] = {}
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def reset(self) -> None:
        self.counts.clear()
        self.bytes.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upReader, upWriter = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pipe(reader, upWriter, "to server"), self._pipe(upReader, writer, "to component"),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        parser = ET.XMLPullParser(events=("start", "end"))
        depth = 0
        root: ET.Element | None = None
        try:
            while data := await reader.read(65536):
                writer.write(data)
                self.bytes[direction] += len(data)
                parser.feed(data)
                for event, element in parser.read_events():
                    if event == "start":
                        if depth == 0:
                            root = element
                        depth += 1
                    else:
                        depth -= 1
                        if depth == 1 and root is not None:
                            root.remove(element)
                            self.counts[(direction, self._kind(element))] += 1
                await writer.drain()
        finally:
            writer.close()

    def _kind(self, element: ET.Element) -> str:
        tag = element.tag.rsplit("}", 1)[-1]
        if tag != "iq":
            return tag
        kind, stanzaID = element.get("type"), element.get("id", "")
        if kind in ("result", "error"):
            return self._pendingKinds.pop(stanzaID, "other iq") + " " + kind
        child = element[0] if len(element) else None
        name = "other iq"
        if child is not None and child.tag == NS_DELEGATION + "delegation":
            name = "delegated query"
        elif child is not None and child.tag == NS_ROSTER + "query":
            name = "privileged roster " + str(kind)
        elif child is not None and child.tag == NS_BULK + "query":
            name = "mod_rosteradmin_roster write"
        elif child is not None and child.tag == NS_PRIVILEGE + "privileged_iq":
            name = "privileged push"
        elif child is not None:
            name = f"iq {child.tag.rsplit('}', 1)[-1]}"
        self._pendingKinds[stanzaID] = name
        return name

    def perLogin(self, logins: int) -> dict[str, float]:
        """
        Stanzas of each kind per login, and bytes per login each way.
        """
        result = {f"stanzas/login {direction}: {kind}": count / logins
                  for (direction, kind), count in sorted(self.counts.items())}
        result.update({f"bytes/login {direction}": count / logins for direction, count in sorted(self.bytes.items())})
        return result

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


class ThreadedTap:
    """
    A L{StreamTap} on an event loop of its own thread, so that it keeps
    relaying while the benchmark's loop blocks (starting rosteradmin waits
    for it to connect synchronously).
    """

    def __init__(self, target: int) -> None:
        import threading

        self.tap = StreamTap(target)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.tap.start(), self._loop).result(10)

    def reset(self) -> None:
        self._loop.call_soon_threadsafe(self.tap.reset)

    def perLogin(self, logins: int) -> dict[str, float]:
        return asyncio.run_coroutine_threadsafe(self._perLogin(logins), self._loop).result(10)

    async def _perLogin(self, logins: int) -> dict[str, float]:
        return self.tap.perLogin(logins)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.tap.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
