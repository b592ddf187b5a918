"""
Scenario 6 (B only), "large first sync": one user with thousands of
contacts logs in for the first time, and what that does to everyone else.

    python -m bench.run --scenario large-first-sync [--sync-contacts 3000]

Preconditions (checked, and printed with the results):

  - Prosody's roster storage for the big user C{u0} is empty (cold: no
    C{roster/u0.dat});
  - the web app serves C{u0} C{contacts} contacts (a name and one group
    each), and every other user 20, which Prosody already stores (as if
    synced before);
  - rosteradmin is started, connected, and has cached nothing.

Then the big user logs in and sends its roster get.  rosteradmin fetches
the roster, reads the (empty) stored one and writes every contact into
Prosody, one privileged roster set each, before it answers (docs/protocol.md):
the answer's latency is the sync's duration.  Prosody's internal storage
rewrites the user's whole roster file on every set, so the work grows with
the square of the contact count: 3,000 contacts take minutes.  Above about
4,400 contacts the answer itself exceeds Prosody's default 512 KiB
component stanza limit, and the client gets C{resource-constraint} instead
(after the sync, which still stores every contact): that is expected.

Every 200 ms, during an idle phase before the sync and during it, three
probes start, open loop (one per tick even if earlier ones have not
answered, so a stall is measured rather than skipped):

  - a message round trip between two other logged-in users (one echoes):
    the native probe, Prosody's own latency (client connections and
    routing, no component);
  - a ping to the server (XEP-0199, Prosody's mod_ping), for comparison;
  - an uncached login and roster get of another user: a fresh user each
    time (20 contacts, not in rosteradmin's cache), answered through
    rosteradmin.

A probe counts in the phase in which it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from bench.procstat import cpuSeconds, machineBusySeconds
from bench.rosters import DOMAIN, username
from bench.xmppload import LoadClient, percentiles

#: Contacts of every user but the big one.
SMALL_ROSTER = 20
NS_STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"


class SetupLike(Protocol):
    """
    What the scenario needs of L{bench.run.Setup}.
    """

    prosody: Any
    webapp: Any
    httpPort: int

    def cpu(self) -> dict[str, float]: ...

    def webappCall(self, method: str, path: str) -> dict[str, Any]: ...


def usersNeeded(contacts: int, idleSeconds: float, syncTimeout: float, interval: float) -> int:
    """
    Accounts to create: the big user, its contacts, one fresh user per tick
    of the whole run, and the two message probes.
    """
    return contacts + 1 + int((idleSeconds + syncTimeout + 30) / interval) + 2


def storedItems(setup: SetupLike, user: str) -> int:
    """
    Items in a user's roster file in Prosody's internal storage.
    """
    return setup.prosody.storedRoster(user).count('["subscription"]')


class Probes:
    """
    The three probes of the scenario, each started once per tick.

    @ivar phase: The phase new samples count in ("idle" or "during").
    """

    def __init__(self, setup: SetupLike, sender: LoadClient, echoJID: str, firstFresh: int, lastFresh: int,
                 interval: float) -> None:
        self.setup, self.sender, self.echoJID = setup, sender, echoJID
        self.firstFresh, self.nextFresh, self.lastFresh = firstFresh, firstFresh, lastFresh
        self.interval = interval
        self.phase = "idle"
        self.samples: dict[tuple[str, str], list[float]] = {}
        self.failures: dict[tuple[str, str], list[str]] = {}
        self.poolExhausted = False
        self._tasks: list[asyncio.Task[None]] = []
        self._tickers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """
        Start a probe of each kind now, and one per interval from now on.
        """
        for name, probe in (("message", self._message), ("ping", self._ping), ("login", self._login)):
            self._tickers.append(asyncio.ensure_future(self._tick(name, probe)))

    async def stop(self, drain: float = 90.0) -> None:
        """
        Start no more probes, and wait up to C{drain} seconds for the
        running ones (the rest count as failures).
        """
        for ticker in self._tickers:
            ticker.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=drain)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _tick(self, name: str, probe: Callable[[str], Awaitable[float]]) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            self._tasks.append(asyncio.ensure_future(self._record(name, self.phase, probe)))
            due += self.interval
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
        directory = self.setup.prosody.dataPath / DOMAIN.replace(".", "%2e") / "roster"
        return sum(1 for i in range(self.firstFresh, self.nextFresh)
                   if (directory / f"{username(i)}.dat").stat().st_mtime >= since)

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
            if name in ("message", "ping", "login"):
                result[f"{label} failed {phase}"] = len(self.failures.get((name, phase), []))
        return result


async def largeFirstSync(setup: SetupLike, contacts: int, users: int, idleSeconds: float = 30.0,
                         syncTimeout: float = 900.0, interval: float = 0.2) -> dict[str, Any]:
    """
    Run the scenario on a started setup whose storage holds C{users}
    accounts and no roster for C{u0}.

    @return: The metrics, with latencies in milliseconds.
    """
    big = username(0)
    cached = setup.webappCall("GET", "/stats")["requests"]
    health = _health(setup)
    preconditions = {
        "stored items of u0 before (cold: 0)": storedItems(setup, big),
        "web app contacts of u0": contacts,
        "rosteradmin connected": bool(health["connected"]),
        "rosteradmin cached users before": health["cached_users"],
    }
    print(f"large first sync: preconditions {preconditions}, web app fetches so far {cached}", flush=True)
    if preconditions["stored items of u0 before (cold: 0)"] or health["cached_users"]:
        raise RuntimeError(f"large first sync: not cold: {preconditions}")

    sender = LoadClient(username(users - 2), DOMAIN)
    echoer = LoadClient(username(users - 1), DOMAIN, echo=True)
    for client in (sender, echoer):
        await client.login(setup.prosody.c2sPort, "pw")
    echoJID = f"{echoer.username}@{DOMAIN}/load"
    for _ in range(5):  # the first stanzas of a session are slower: not part of the baseline
        await sender.messageRoundTrip(echoJID)
        await sender.ping()
    probes = Probes(setup, sender, echoJID, contacts + 1, users - 3, interval)
    loadBefore = os.getloadavg()

    cpuIdle = setup.cpu()
    idleStartedAt = time.time()
    idleStarted = time.perf_counter()
    probes.start()
    await asyncio.sleep(idleSeconds)

    bigClient = LoadClient(big, DOMAIN)
    await bigClient.login(setup.prosody.c2sPort, "pw")
    probes.phase = "during"
    cpuBefore = setup.cpu()
    machineBefore = machineBusySeconds()
    selfBefore = time.process_time()
    webappBefore = cpuSeconds(setup.webapp.pid)
    started = time.perf_counter()
    reply = await bigClient.iq("get", "<query xmlns='jabber:iq:roster'/>", timeout=syncTimeout)
    duration = time.perf_counter() - started
    cpuAfter = setup.cpu()
    machine = machineBusySeconds() - machineBefore
    loadClientCPU = time.process_time() - selfBefore
    webapp = cpuSeconds(setup.webapp.pid) - webappBefore
    idleDuration = started - idleStarted
    probes.phase = "after"
    await probes.stop()
    loadAfter = os.getloadavg()
    pushes = bigClient.pushes
    for client in (bigClient, sender, echoer):
        await client.close()

    query = reply.find("{jabber:iq:roster}query")
    error = reply.find("{jabber:client}error")
    condition = "-"
    if error is not None:
        condition = next((child.tag.replace(NS_STANZAS, "") for child in error if child.tag.startswith(NS_STANZAS)),
                         "?")
    health = _health(setup)
    result: dict[str, Any] = {
        "contacts (web app)": contacts,
        "stored items of u0 before": preconditions["stored items of u0 before (cold: 0)"],
        "stored items of u0 after": storedItems(setup, big),
        "answer items": len(query) if query is not None else 0,
        "answer error": condition,
        "roster pushes to u0": pushes,
        "sync seconds (get to answer)": duration,
        "cpu s during sync (prosody)": cpuAfter["prosody"] - cpuBefore["prosody"],
        "cpu s during sync (rosteradmin)": cpuAfter["rosteradmin"] - cpuBefore["rosteradmin"],
        "cpu s during sync (web app)": webapp,
        "cpu s during sync (load client, probes)": loadClientCPU,
        "cpu s during sync (whole machine)": machine,
        "cpu s during sync (other processes)": machine - webapp - loadClientCPU - sum(
            cpuAfter[name] - cpuBefore[name] for name in ("prosody", "rosteradmin")),
        "idle seconds (probes only)": idleDuration,
        "prosody cpu % idle": (cpuBefore["prosody"] - cpuIdle["prosody"]) * 100 / idleDuration,
        "prosody cpu % during": (cpuAfter["prosody"] - cpuBefore["prosody"]) * 100 / duration,
        "rosteradmin cpu % idle": (cpuBefore["rosteradmin"] - cpuIdle["rosteradmin"]) * 100 / idleDuration,
        "rosteradmin cpu % during": (cpuAfter["rosteradmin"] - cpuBefore["rosteradmin"]) * 100 / duration,
        **probes.summary("message", "message rtt"),
        **probes.summary("ping", "ping"),
        **probes.summary("login", "other login: roster get"),
        **{k: v for k, v in probes.summary("login+roster", "other login: login+roster").items() if " n " not in k},
        "fresh users sufficed": not probes.poolExhausted,
        "fresh users' stored rosters rewritten": probes.rewritten(idleStartedAt),
        "unsynced users after": health["unsynced_users"],
        "load average before (1 min)": loadBefore[0],
        "load average after (1 min)": loadAfter[0],
    }
    for (name, phase), reasons in sorted(probes.failures.items()):
        if phase != "after":
            print(f"large first sync: {len(reasons)} {name} probes failed {phase}, first: {reasons[0]}", flush=True)
    return result


def _health(setup: SetupLike) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{setup.httpPort}/healthz", timeout=10) as r:
            return dict(json.load(r))
    except urllib.error.HTTPError as e:  # 503 while stuck or disconnected still has the body
        return dict(json.load(e))


def prepareStorage(dataPath: Path) -> None:
    """
    Make the big user's stored roster cold: no roster file at all.
    """
    path = dataPath / DOMAIN.replace(".", "%2e") / "roster" / f"{username(0)}.dat"
    path.unlink(missing_ok=True)
