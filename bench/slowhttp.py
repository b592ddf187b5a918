"""
Scenario 12 (B only), "slow HTTP clients": what 1,500 idle and slow
connections to rosteradmin's HTTP API do to its other work, against the
same work with none open, in the same run.

    python -m bench.run --scenario slow-http [--runs 1]

rosteradmin runs with C{--http-max-connections} L{CAP} and its default
C{--http-timeout} (30 s).  Probes start open loop (one per tick even if
earlier ones have not answered): a C{GET /healthz} on a new connection every
L{HEALTH_INTERVAL} seconds, and an uncached login and roster get of a fresh
user (20 contacts, as scenario 6's) every L{LOGIN_INTERVAL} seconds.  Phases:

  - idle: L{PHASE_SECONDS} of the probes alone (the baseline);
  - during: L{SLOW} connections opened, L{BATCH} at a time (more would
    overflow the listening socket's backlog), a third idle, a third sending
    a header byte and a third a body byte every 0.5 s; once all are open,
    L{PHASE_SECONDS} of the probes;
  - over the cap: L{FLOOD} more connections, L{FLOOD} - (L{CAP} - L{SLOW})
    of them over the cap, each timed from its connect to the server
    closing it (the refusal).

The slow connections are then closed by the bench, not left to the
deadline (the integration test tests/integration/test_slowclients.py
checks the deadline itself).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.probes import Probes, SetupLike
from bench.xmppload import percentiles

#: Slow connections, the cap, and the connections opened over it at the end.
SLOW, CAP, FLOOD = 1500, 1600, 200
#: Connections opened at once.
BATCH = 40
#: Seconds of the idle and during phases.
PHASE_SECONDS = 20.0
HEALTH_INTERVAL, LOGIN_INTERVAL = 0.1, 0.1
#: The first bytes of each kind of slow connection.
STARTS = {
    "idle": b"",
    "headers": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
    "body": b"POST /roster_admin/refresh HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n[",
}
#: The targets (ratios of p99s in the same run): slow connections slow
#: /healthz and logins down by at most this much, and a connection over
#: the cap is refused no slower than an idle /healthz is answered.
TARGET_DURING, TARGET_REFUSAL = 2.0, 1.0


def usersNeeded() -> int:
    """
    Accounts: the message probe's two, and a fresh user per login probe
    (with room for the slow connections' opening).
    """
    return 2 + int((2 * PHASE_SECONDS + 30) / LOGIN_INTERVAL)


async def healthz(port: int) -> float:
    """
    One C{GET /healthz} on a connection of its own; its latency in seconds.
    """
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 30)
        await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    if b" 200 " not in status and b" 503 " not in status:
        raise RuntimeError(f"/healthz: {status!r}")
    return time.perf_counter() - started


class HealthProbe:
    """
    C{GET /healthz} every L{HEALTH_INTERVAL}, open loop, each counted in the
    phase in which it started.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.phase = "idle"
        self.samples: dict[str, list[float]] = {}
        self.failures: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ticker = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            self._tasks.append(asyncio.ensure_future(self._one(self.phase)))
            due += HEALTH_INTERVAL
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def _one(self, phase: str) -> None:
        try:
            self.samples.setdefault(phase, []).append(await healthz(self.port))
        except Exception:
            self.failures[phase] = self.failures.get(phase, 0) + 1

    async def stop(self) -> None:
        self._ticker.cancel()
        await asyncio.gather(self._ticker, *self._tasks, return_exceptions=True)

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for phase in ("idle", "during"):
            samples = self.samples.get(phase, [])
            stats = percentiles(samples)
            result[f"/healthz p50 {phase}"] = stats["p50"] * 1000
            result[f"/healthz p99 {phase}"] = stats["p99"] * 1000
            result[f"/healthz max {phase}"] = max(samples, default=float("nan")) * 1000
            result[f"/healthz n {phase}"] = len(samples)
            result[f"/healthz failed {phase}"] = self.failures.get(phase, 0)
        return result


class SlowConnection(asyncio.Protocol):
    """
    A connection that never finishes its request; it records when the
    server closed it.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.transport: asyncio.Transport | None = None
        self.opened = 0.0
        self.closed: float | None = None
        self.received = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.opened = transport, time.perf_counter()
        if STARTS.get(self.kind):
            transport.write(STARTS[self.kind])

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = time.perf_counter()

    def tick(self) -> None:
        if self.transport is not None and self.closed is None and self.kind in ("headers", "body"):
            self.transport.write(b"x" if self.kind == "headers" else b" ")


async def openConnections(port: int, kinds: list[str]) -> list[SlowConnection]:
    loop = asyncio.get_running_loop()
    opened: list[SlowConnection] = []
    for start in range(0, len(kinds), BATCH):
        batch = [SlowConnection(kind) for kind in kinds[start:start + BATCH]]
        await asyncio.gather(*(loop.create_connection(lambda c=c: c, "127.0.0.1", port) for c in batch))
        opened += batch
    return opened


async def trickle(connections: list[SlowConnection]) -> None:
    while True:
        await asyncio.sleep(0.5)
        for connection in connections:
            connection.tick()


async def slowClients(setup: SetupLike) -> dict[str, Any]:
    """
    Run the scenario on a started setup (B, with C{--http-max-connections}
    L{CAP}) whose storage holds L{usersNeeded} accounts.

    @return: The metrics, latencies in milliseconds.
    """
    probes = await Probes.connect(setup, 0, 2, usersNeeded() - 1, LOGIN_INTERVAL)
    health = HealthProbe(setup.httpPort)
    probes.start(("login",))
    await asyncio.sleep(PHASE_SECONDS)

    kinds = [("idle", "headers", "body")[i % 3] for i in range(SLOW)]
    probes.phase = health.phase = "opening"  # counted in neither phase
    started = time.perf_counter()
    slow = await openConnections(setup.httpPort, kinds)
    opening = time.perf_counter() - started
    trickling = asyncio.ensure_future(trickle(slow))
    probes.phase = health.phase = "during"
    await asyncio.sleep(PHASE_SECONDS)
    await health.stop()
    await probes.stop()
    closedEarly = sum(c.closed is not None for c in slow)

    over = await openConnections(setup.httpPort, ["over"] * FLOOD)
    deadline = time.perf_counter() + 10
    while time.perf_counter() < deadline and sum(c.closed is not None for c in over) < FLOOD - (CAP - SLOW):
        await asyncio.sleep(0.05)
    refusals = [c.closed - c.opened for c in over if c.closed is not None]
    trickling.cancel()
    for connection in slow + over:
        if connection.transport is not None and connection.closed is None:
            connection.transport.abort()

    result: dict[str, Any] = {
        "pre: slow connections open during the probes": SLOW - closedEarly,
        "seconds to open the slow connections": opening,
        **health.summary(),
        **{k: v for k, v in probes.summaries().items() if k.startswith("other login")},
        "connections over the cap refused": len(refusals),
        "refusal (connect to close) p50": percentiles(refusals)["p50"] * 1000,
        "refusal (connect to close) p99": percentiles(refusals)["p99"] * 1000,
        "refusal (connect to close) max": max(refusals, default=float("nan")) * 1000,
    }
    probes.printFailures("slow HTTP clients")
    idle = result["/healthz p99 idle"]
    result["/healthz p99 during/idle"] = result["/healthz p99 during"] / idle
    result["other login: roster get p99 during/idle"] = (
        result["other login: roster get p99 during"] / result["other login: roster get p99 idle"])
    result["refusal p99 / idle /healthz p99"] = result["refusal (connect to close) p99"] / idle
    result[f"target: p99 during/idle <= {TARGET_DURING:g} (/healthz and login)"] = (
        max(result["/healthz p99 during/idle"], result["other login: roster get p99 during/idle"]) <= TARGET_DURING)
    result[f"target: refusal p99 / idle /healthz p99 <= {TARGET_REFUSAL:g}"] = (
        result["refusal p99 / idle /healthz p99"] <= TARGET_REFUSAL)
    return result
