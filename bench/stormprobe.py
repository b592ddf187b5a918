"""
The native probe of the login storms 2c and 2s, in a process of its own.

    python -m bench.stormprobe C2S_PORT SENDER_INDEX INTERVAL ROSTER_INTERVAL

"Cold first logins never stall other users" is judged by it: two users,
C{u<SENDER_INDEX>} and the next, log in before the storm; they are no part
of it (the runner gives them the last two accounts, past every storm's
users) and the server stores their rosters right.  Then, open loop (see
L{bench.probes}), every C{INTERVAL} seconds a message round trip between
them (the native probe: Prosody's client connections and routing, no
component) and a server ping, and every C{ROSTER_INTERVAL} seconds the
sender's roster get without C{ver}: a full answer, from Prosody's storage in
A; in B from rosteradmin's cache, an online user's query among the storm's
on the component stream, unless contrib's mod_rosteradmin_roster holds
rosteradmin's promise for the user (given with the warm-up's answer), when
Prosody answers it from its store itself (C{bench.run --delegate-all} turns
that off).  Its interval is longer because rosteradmin refuses a user's ninth
query in flight (C{queries_per_user}): at 0.2 s a stall shows as latency up
to 1.6 s before it shows as refusals.

It runs in a process of its own because the storm's 200 concurrent
handshakes keep the load client's event loop busy: probes in that loop
would time the loop's backlog as much as the server.  (Both processes still
share the machine's two cores.)

Standard input and output carry one line each way at a time: this process
prints C{{"items": N}} once both users are logged in, their sessions warmed
up and the sender's roster got once (in B its first get, a fetch and
perhaps a privileged read: no part of the baseline); the probes start then,
in the idle phase.  It reads C{during} when the storm starts and C{stop}
when it has ended, and then prints the summaries (L{Probes.summary}) and the
first failure of each probe as one JSON line, and exits.

L{StormProbe} is the runner's side of it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.probes import Probes

ROOT = Path(__file__).parent.parent

#: The probes run, and the labels of their rows.
KINDS = {"message": "native probe: message rtt", "ping": "native probe: ping",
         "roster": "online user's roster get"}


class _Server:
    """
    What L{Probes} uses of a setup here: Prosody's client port.
    """

    webapp: Any = None
    httpPort = 0

    def __init__(self, c2sPort: int) -> None:
        self.prosody = SimpleNamespace(c2sPort=c2sPort)

    def cpu(self) -> dict[str, float]:
        return {}

    def webappCall(self, method: str, path: str) -> dict[str, Any]:
        raise NotImplementedError("the storm probe does not talk to the web app")


async def _serve(c2sPort: int, senderIndex: int, interval: float, rosterInterval: float) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # No fresh logins: fresh users are not needed, none is given.
    probes = await Probes.connect(_Server(c2sPort), senderIndex, 0, -1, interval)
    items = await probes.warmRoster()
    print(json.dumps({"items": items}), flush=True)
    probes.start(tuple(KINDS), {"roster": rosterInterval})
    while (line := (await reader.readline()).decode().strip()) != "stop":
        if line == "during":
            probes.phase = "during"
        elif not line:
            raise SystemExit("storm probe: the runner went away")
    await probes.stop(drain=60)
    result: dict[str, Any] = {}
    for name, label in KINDS.items():
        result.update(probes.summary(name, label))
    failures = {f"{name} {phase}": reasons[0] for (name, phase), reasons in probes.failures.items()
                if phase != "after"}
    print(json.dumps({"summary": result, "failures": failures}), flush=True)


class StormProbe:
    """
    The runner's side of a storm probe process.
    """

    def __init__(self, process: asyncio.subprocess.Process, items: int) -> None:
        self.process = process
        #: Items of the sender's roster at its warm-up get.
        self.items = items

    @classmethod
    async def start(cls, c2sPort: int, senderIndex: int, interval: float = 0.1,
                    rosterInterval: float = 0.2) -> StormProbe:
        """
        Start the process and wait until its users are online and warmed
        up: its idle phase has begun.
        """
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.stormprobe", str(c2sPort), str(senderIndex), str(interval),
            str(rosterInterval), cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 120)
        if not line:
            await process.wait()
            raise RuntimeError(f"storm probe exited with {process.returncode} before it was ready")
        return cls(process, int(json.loads(line)["items"]))

    async def _say(self, word: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(word.encode() + b"\n")
        await self.process.stdin.drain()

    async def during(self) -> None:
        """
        The storm starts: probes started from now on count as "during".
        """
        await self._say("during")

    async def stop(self) -> tuple[dict[str, Any], dict[str, str]]:
        """
        The storm has ended: stop the probes.

        @return: The summaries by metric name (ms; each ending in " idle"
            or " during"), and the first failure of each probe and phase.
        """
        await self._say("stop")
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 120)
        await self.process.wait()
        if not line:
            raise RuntimeError(f"storm probe exited with {self.process.returncode} and no summary")
        reply = json.loads(line)
        return reply["summary"], reply["failures"]


if __name__ == "__main__":
    port, sender, every, rosterEvery = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    asyncio.run(_serve(port, sender, every, rosterEvery))
