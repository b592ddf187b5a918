"""
What scenarios 6 and 7 (L{bench.firstsync}, L{bench.fullsync}) share: the
probes they run open loop through an idle phase and then through the work
they measure, and the CPU accounting of that work.

Every C{interval} seconds three probes start, open loop (one per tick even
if earlier ones have not answered, so a stall is measured rather than
skipped):

  - a message round trip between two other logged-in users (one echoes):
    the native probe, Prosody's own latency (client connections and
    routing, no component);
  - a ping to the server (XEP-0199, Prosody's mod_ping), for comparison;
  - an uncached login and roster get of another user: a fresh user each
    time, answered through rosteradmin.

The login storms' probes (L{bench.stormprobe}) use the first two and, in
place of the fresh logins (a storm is logins already), a roster get without
C{ver} by the message probe's sender, an online user whose roster is
stored right and, in B, cached (or promised to contrib's module, which then
answers it in Prosody): an answer among the storm's, not a login.

A probe counts in the phase in which it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any, Awaitable, Callable, Protocol

from bench.procstat import cpuSeconds, machineBusySeconds
from bench.rosters import DOMAIN, rosterPath, username
from bench.xmppload import LoadClient, percentiles


class SetupLike(Protocol):
    """
    What the scenarios need of L{bench.run.Setup}.
    """

    prosody: Any
    webapp: Any
    httpPort: int

    def cpu(self) -> dict[str, float]: ...

    def webappCall(self, method: str, path: str) -> dict[str, Any]: ...


def health(setup: SetupLike) -> dict[str, Any]:
    """
    rosteradmin's C{/healthz}, also when it answers 503.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{setup.httpPort}/healthz", timeout=10) as r:
            return dict(json.load(r))
    except urllib.error.HTTPError as e:  # 503 while stuck or disconnected still has the body
        return dict(json.load(e))


def metrics(setup: SetupLike) -> dict[str, float]:
    """
    rosteradmin's C{/metrics}, samples without labels only.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{setup.httpPort}/metrics", timeout=30) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


class Probes:
    """
    The three probes, each started once per tick.

    @ivar phase: The phase new samples count in ("idle" or "during").
    """

    def __init__(self, setup: SetupLike, sender: LoadClient, echoJID: str, firstFresh: int, lastFresh: int,
                 interval: float) -> None:
        self.setup, self.sender, self.echoJID = setup, sender, echoJID
        self.firstFresh, self.nextFresh, self.lastFresh = firstFresh, firstFresh, lastFresh
        self.interval = interval
        self.phase = "idle"
        #: Items of the sender's roster, once L{warmRoster} has got it.
        self.rosterItems = 0
        self.samples: dict[tuple[str, str], list[float]] = {}
        self.failures: dict[tuple[str, str], list[str]] = {}
        self.poolExhausted = False
        self._tasks: list[asyncio.Task[None]] = []
        self._tickers: list[asyncio.Task[None]] = []

    @classmethod
    async def connect(cls, setup: SetupLike, senderIndex: int, firstFresh: int, lastFresh: int,
                      interval: float) -> Probes:
        """
        Log in the message probe's two users (C{senderIndex} and the next,
        which echoes), warm their sessions up, and make the probes.
        """
        sender = LoadClient(username(senderIndex), DOMAIN)
        echoer = LoadClient(username(senderIndex + 1), DOMAIN, echo=True)
        for client in (sender, echoer):
            await client.login(setup.prosody.c2sPort, "pw")
        echoJID = f"{echoer.username}@{DOMAIN}/load"
        for _ in range(5):  # the first stanzas of a session are slower: not part of the baseline
            await sender.messageRoundTrip(echoJID)
            await sender.ping()
        probes = cls(setup, sender, echoJID, firstFresh, lastFresh, interval)
        probes._echoer = echoer
        return probes

    _echoer: LoadClient | None = None

    async def warmRoster(self) -> int:
        """
        Get the sender's roster once, before L{start} with C{"roster"}: in
        B this is its first get (a fetch, and a privileged read where the
        state does not know the user), which is no part of the baseline.

        @return: The items of the answer.
        """
        _, reply = await self.sender.rosterGet()
        query = reply.find("{jabber:iq:roster}query")
        self.rosterItems = len(query) if query is not None else 0
        return self.rosterItems

    def start(self, kinds: tuple[str, ...] = ("message", "ping", "login"),
              intervals: dict[str, float] | None = None) -> None:
        """
        Start a probe of each kind now, and one per interval from now on.

        @param kinds: Which probes: C{"message"}, C{"ping"}, C{"login"}
            (a fresh user's login), C{"roster"} (the sender's roster get,
            after L{warmRoster}).
        @param intervals: Seconds between probes of a kind, where not the
            C{interval} of all.
        """
        probes = {"message": self._message, "ping": self._ping, "login": self._login, "roster": self._roster}
        for name in kinds:
            interval = (intervals or {}).get(name, self.interval)
            self._tickers.append(asyncio.ensure_future(self._tick(name, probes[name], interval)))

    async def stop(self, drain: float = 90.0) -> None:
        """
        Start no more probes, wait up to C{drain} seconds for the running
        ones (the rest count as failures), and close the message probe's
        sessions.
        """
        self.phase = "after"
        for ticker in self._tickers:
            ticker.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=drain)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in (self.sender, self._echoer):
            if client is not None:
                await client.close()

    async def _tick(self, name: str, probe: Callable[[str], Awaitable[float]], interval: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            self._tasks.append(asyncio.ensure_future(self._record(name, self.phase, probe)))
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def _record(self, name: str, phase: str, probe: Callable[[str], Awaitable[float]]) -> None:
        try:
            latency = await probe(phase)
        except asyncio.CancelledError:
            self.failures.setdefault((name, phase), []).append("still running at the end")
            raise
        except Exception as e:
            self.failures.setdefault((name, phase), []).append(f"{type(e).__name__}: {e}"[:200])
        else:
            self.samples.setdefault((name, phase), []).append(latency)

    async def _message(self, phase: str) -> float:
        return await self.sender.messageRoundTrip(self.echoJID)

    async def _ping(self, phase: str) -> float:
        return await self.sender.ping()

    async def _roster(self, phase: str) -> float:
        """
        The sender's roster get, without C{ver}: a full answer, which in B
        rosteradmin gives from its cache (with a current C{ver}, contrib's
        module would answer it in Prosody itself, no component involved).
        """
        latency, reply = await self.sender.rosterGet()
        query = reply.find("{jabber:iq:roster}query")
        if query is None or len(query) != self.rosterItems:
            raise RuntimeError(f"roster probe: {len(query) if query is not None else 0} items, "
                               f"not {self.rosterItems}")
        return latency

    async def _login(self, phase: str) -> float:
        """
        Log a fresh user in and get its roster; the roster get's latency
        (the total from connecting is kept aside).
        """
        if self.nextFresh > self.lastFresh:
            self.poolExhausted = True
            raise RuntimeError("no fresh user left")
        client = LoadClient(username(self.nextFresh), DOMAIN)
        self.nextFresh += 1
        try:
            started = time.perf_counter()
            await client.login(self.setup.prosody.c2sPort, "pw")
            latency, _ = await client.rosterGet()
            self.samples.setdefault(("login+roster", phase), []).append(time.perf_counter() - started)
            return latency
        finally:
            await client.close()

    def rewritten(self, since: float) -> int:
        """
        Fresh users whose roster file Prosody rewrote since C{since} (a
        wall-clock time): their logins caused privileged writes, not only a
        read.
        """
        dataPath = self.setup.prosody.dataPath
        return sum(1 for i in range(self.firstFresh, self.nextFresh)
                   if rosterPath(dataPath, username(i)).stat().st_mtime >= since)

    def summary(self, name: str, label: str) -> dict[str, Any]:
        """
        p50, p99, max (in ms), samples and failures of a probe, by phase.
        """
        result: dict[str, Any] = {}
        for phase in ("idle", "during"):
            samples = self.samples.get((name, phase), [])
            stats = percentiles(samples)
            result[f"{label} p50 {phase}"] = stats["p50"] * 1000
            result[f"{label} p99 {phase}"] = stats["p99"] * 1000
            result[f"{label} max {phase}"] = max(samples, default=float("nan")) * 1000
            result[f"{label} n {phase}"] = len(samples)
            if name in ("message", "ping", "login", "roster"):
                result[f"{label} failed {phase}"] = len(self.failures.get((name, phase), []))
        return result

    def summaries(self) -> dict[str, Any]:
        """
        Every probe's L{summary}, under the names the tables use.
        """
        return {
            **self.summary("message", "message rtt"),
            **self.summary("ping", "ping"),
            **self.summary("login", "other login: roster get"),
            **{k: v for k, v in self.summary("login+roster", "other login: login+roster").items() if " n " not in k},
        }

    def printFailures(self, scenario: str) -> None:
        for (name, phase), reasons in sorted(self.failures.items()):
            if phase != "after":
                print(f"{scenario}: {len(reasons)} {name} probes failed {phase}, first: {reasons[0]}", flush=True)


class Window:
    """
    CPU of each process over an idle phase and then over the measured work:
    call L{idle} when the idle phase starts, L{begin} when the work starts
    and L{end} when it is done.
    """

    def __init__(self, setup: SetupLike) -> None:
        self.setup = setup
        self.loadBefore = os.getloadavg()[0]

    def idle(self) -> None:
        self.cpuIdle = self.setup.cpu()
        self.idleStartedAt = time.time()
        self.idleStarted = time.perf_counter()

    def begin(self) -> None:
        self.cpuBefore = self.setup.cpu()
        self.machineBefore = machineBusySeconds()
        self.selfBefore = time.process_time()
        self.webappBefore = cpuSeconds(self.setup.webapp.pid)
        self.started = time.perf_counter()

    def end(self) -> float:
        """
        @return: The seconds from L{begin}.
        """
        self.duration = time.perf_counter() - self.started
        self.cpuAfter = self.setup.cpu()
        self.machine = machineBusySeconds() - self.machineBefore
        self.loadClientCPU = time.process_time() - self.selfBefore
        self.webappCPU = cpuSeconds(self.setup.webapp.pid) - self.webappBefore
        self.idleDuration = self.started - self.idleStarted
        return self.duration

    def spent(self, name: str) -> float:
        """
        CPU seconds process C{name} spent between L{begin} and L{end}.
        """
        return self.cpuAfter[name] - self.cpuBefore[name]

    def summary(self, what: str) -> dict[str, Any]:
        """
        CPU seconds during C{what} of each process, the machine and the
        rest, and each component's share of a core, idle and during.
        """
        result: dict[str, Any] = {
            f"cpu s during {what} (prosody)": self.spent("prosody"),
            f"cpu s during {what} (rosteradmin)": self.spent("rosteradmin"),
            f"cpu s during {what} (web app)": self.webappCPU,
            f"cpu s during {what} (load client, probes)": self.loadClientCPU,
            f"cpu s during {what} (whole machine)": self.machine,
            f"cpu s during {what} (other processes)": self.machine - self.webappCPU - self.loadClientCPU - sum(
                self.spent(name) for name in ("prosody", "rosteradmin")),
            "idle seconds (probes only)": self.idleDuration,
        }
        for name in ("prosody", "rosteradmin"):
            result[f"{name} cpu % idle"] = (self.cpuBefore[name] - self.cpuIdle[name]) * 100 / self.idleDuration
            result[f"{name} cpu % during"] = self.spent(name) * 100 / self.duration
        return result

    def loadAverages(self) -> dict[str, float]:
        return {"load average before (1 min)": self.loadBefore, "load average after (1 min)": os.getloadavg()[0]}
