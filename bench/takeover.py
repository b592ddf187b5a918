"""
Scenario 14 (B only), "takeover": how long a standby takes to lead once
the leader dies, and what clients see meanwhile.

    python -m bench.run --scenario takeover [--kills 10] [--runs 1]

Two rosteradmin processes share one PostgreSQL state (a private cluster
on loopback, started as the tests start theirs:
C{tests/postgresql.py}) and one Prosody delegating to them.  Each kill:
once one process leads (its C{/healthz}: 200, C{"role": "leader"},
connected) and the other stands by (200, C{"standby"}), the leader gets
C{kill -9}; the takeover is the time from the kill until the other's
C{/healthz} says it leads, connected; then a new process is started in
the dead one's place, the next standby.

All along, L{PROBE_USERS} clients (their rosters promised to Prosody by
the first leader, as after a first login) each ask for their roster every
L{PROBE_INTERVAL} seconds, with a timeout of L{PROBE_TIMEOUT}: the gets
that fail or time out during the takeovers are counted, and the slowest
answer.  Prosody answers promised users from its store while no
rosteradmin is connected.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.rosters import DOMAIN, username
from bench.xmppload import LoadClient, connectMany
from rosteradmin_demo.devprosody import freePort

#: Kills per run, unless C{--kills} says otherwise.
KILLS = 10
#: The clients asking for their rosters throughout, and the accounts (more
#: than a roster's contacts: the web app's rosters list other users).
PROBE_USERS = 20
USERS = 100
PROBE_INTERVAL, PROBE_TIMEOUT = 0.1, 10.0
#: The target on loopback: the standby leads within this many seconds.
TARGET_SECONDS = 5.0


class PairSetup(Protocol):
    """
    What the scenario needs of L{bench.run.Setup}: its Prosody's client
    port and a way to start more rosteradmin processes on it.
    """

    @property
    def prosody(self) -> Any: ...

    def launchComponent(self, name: str, httpPort: int,
                        extraConfig: dict[str, Any]) -> subprocess.Popen[bytes]: ...


def healthz(port: int) -> dict[str, Any] | None:
    """
    A process's C{/healthz} (also a 503's body), or C{None} when it does
    not answer.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return dict(json.load(r))
    except urllib.error.HTTPError as e:
        return dict(json.load(e))
    except OSError:
        return None


def promised(port: int) -> float:
    """
    The versions a process promised Prosody (C{/metrics}).
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("rosteradmin_versions_promised_total "):
                return float(line.split()[1])
    return 0.0


@dataclass
class Instance:
    process: subprocess.Popen[bytes]
    port: int

    def role(self) -> str | None:
        """
        C{"leader"} once it leads connected, C{"standby"} while it stands
        by, else C{None}.
        """
        body = healthz(self.port)
        if body is None or body.get("role") not in ("leader", "standby"):
            return None
        if body["role"] == "leader" and not body.get("connected"):
            return None
        return str(body["role"])


@dataclass
class Gets:
    """
    Every probe's roster get: when it was sent, its latency, and whether it
    succeeded.
    """

    samples: list[tuple[float, float, bool]] = field(default_factory=list)

    def within(self, start: float, end: float) -> list[tuple[float, float, bool]]:
        return [s for s in self.samples if start <= s[0] <= end]


async def waitFor(check: Any, what: str, timeout: float = 60.0) -> float:
    """
    Poll C{check} (in a thread: it blocks) until true; the monotonic time
    it was.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout} s waiting for: {what}")


async def ask(client: LoadClient, gets: Gets, stop: asyncio.Event) -> None:
    while not stop.is_set():
        sent = time.monotonic()
        try:
            latency, _ = await asyncio.wait_for(client.rosterGet(), PROBE_TIMEOUT)
            gets.samples.append((sent, latency, True))
        except (RuntimeError, asyncio.TimeoutError):
            gets.samples.append((sent, time.monotonic() - sent, False))
        await asyncio.sleep(PROBE_INTERVAL)


async def warm(client: LoadClient, timeout: float = 30.0) -> None:
    """
    A first roster get that succeeds (a leader that just connected may
    answer "temporarily unavailable" while it reads the server's grants).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.rosterGet()
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


class Pair:
    """
    The two processes of the scenario, on one database.
    """

    def __init__(self, setup: PairSetup, url: str) -> None:
        self.setup = setup
        self.url = url
        self.started = 0
        self.instances: list[Instance] = []

    def start(self) -> Instance:
        self.started += 1
        port = freePort()
        process = self.setup.launchComponent(f"rosteradmin-{self.started}", port, {"state": self.url})
        instance = Instance(process, port)
        self.instances.append(instance)
        return instance

    async def roles(self) -> tuple[Instance, Instance]:
        """
        The leader and the standby, once one leads and the other stands by.
        """
        live = [i for i in self.instances if i.process.poll() is None]
        found: dict[str | None, Instance] = {}

        def settled() -> bool:
            found.clear()
            found.update({i.role(): i for i in live})
            return set(found) == {"leader", "standby"}

        await waitFor(settled, "a leader and a standby")
        return found["leader"], found["standby"]

    def stop(self) -> None:
        for instance in self.instances:
            if instance.process.poll() is None:
                instance.process.send_signal(signal.SIGTERM)
                try:
                    instance.process.wait(30)
                except subprocess.TimeoutExpired:
                    instance.process.kill()


async def takeovers(setup: PairSetup, url: str, kills: int, password: str) -> dict[str, Any]:
    """
    One run: C{kills} kills of the leader, with the probes asking all along.

    @param url: An empty PostgreSQL database.
    @param password: The probe users' password.
    """
    pair = Pair(setup, url)
    pair.start()
    pair.start()
    clients: list[LoadClient] = []
    stop = asyncio.Event()
    try:
        leader, standby = await pair.roles()
        clients = await connectMany([username(i) for i in range(PROBE_USERS)], DOMAIN,
                                    setup.prosody.c2sPort, password)
        for client in clients:
            await warm(client)
        await waitFor(lambda: promised(leader.port) >= PROBE_USERS, "the leader's promises")
        gets = Gets()
        probes = [asyncio.create_task(ask(client, gets, stop)) for client in clients]
        await asyncio.sleep(1)
        times: list[float] = []
        windows: list[tuple[float, float]] = []
        for _ in range(kills):
            killedAt = time.monotonic()
            leader.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(leader.process.wait, 10)
            led = await waitFor(lambda: standby.role() == "leader", "the standby leads")
            times.append(led - killedAt)
            windows.append((killedAt, led))
            pair.start()
            leader, standby = await pair.roles()
        await asyncio.sleep(1)
        stop.set()
        await asyncio.gather(*probes)
    finally:
        stop.set()
        for client in clients:
            await client.close()
        pair.stop()
    during = [s for start, end in windows for s in gets.within(start, end)]
    failed = [s for s in gets.samples if not s[2]]
    return {
        "kills": kills,
        "takeover median s": statistics.median(times),
        "takeover max s": max(times),
        "takeover min s": min(times),
        f"takeover within {TARGET_SECONDS:g} s": max(times) <= TARGET_SECONDS,
        "roster gets (all)": len(gets.samples),
        "roster gets during takeovers": len(during),
        "roster gets failed": len(failed),
        "slowest roster get s": max(s[1] for s in gets.samples),
        "takeovers s": " ".join(f"{t:.2f}" for t in times),
    }
