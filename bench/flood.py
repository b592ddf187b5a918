"""
Scenario 11, "one client floods roster gets": what one misbehaving client
does to everyone else's roster gets, against the same gets with no flood,
in the same run.

    python -m bench.run --scenario flood [--runs 1]

Every user has the bench's roster (50 contacts) and is logged in; each of
the others has had one roster get before (in B, rosteradmin fetched and
cached it).  B's Prosody delegates every get to rosteradmin
(C{rosteradmin_answer_rosters = false}, as C{--delegate-all}): otherwise,
contrib's module answers the flood from Prosody's store and rosteradmin's
per-user gate is never reached.  rosteradmin runs with its default
C{--query-rate} (20 a second per user, in bursts of two seconds' worth).

The others each send a roster get without C{ver}, one after another,
C{PAUSE} seconds apart (10 a second, half what rosteradmin allows one
user), through three phases:

  - idle: C{PHASE_SECONDS} with nobody flooding (the baseline);
  - during: the flooding client C{u0} sends C{AT_ONCE} gets at once, then
    C{THEN} more at C{PER_SECOND} (a burst every 50 ms), never waiting for
    a reply, until the last of them is answered;
  - after: C{PHASE_SECONDS} more, right after the flood.

A get counts in the phase in which it was sent.  The targets compare the
others' roster get p99 during and after the flood with its idle p99.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Any

from bench.probes import SetupLike
from bench.rosters import DOMAIN, username
from bench.xmppload import NS_ROSTER, LoadClient, percentiles

#: The users getting their rosters meanwhile (u1 to u10).
OTHERS = 10
#: Seconds between one user's gets.
PAUSE = 0.1
#: Seconds of the idle and after phases.
PHASE_SECONDS = 10.0
#: The flood: gets sent at once, then more at a rate (the integration
#: test's, tests/integration/test_blastradius.py, sends 1,000 more: 2
#: seconds, too few of the others' gets for a p99).
AT_ONCE, THEN, PER_SECOND = 1000, 4000, 500.0
NS_STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"

#: The targets (ratios of p99s in the same run): a flood slows the others'
#: gets down by at most this much, and leaves nothing behind it.
TARGET_DURING, TARGET_AFTER = 10.0, 2.0


def outcomeOf(reply: Any) -> str:
    """
    C{"result"}, or C{"error <condition>"} of an iq reply.
    """
    if reply.get("type") == "result":
        return "result"
    error = reply.find("{jabber:client}error")
    condition = next((c.tag.replace(NS_STANZAS, "") for c in (error if error is not None else [])
                      if c.tag.startswith(NS_STANZAS)), "?")
    return f"error {condition}"


class Others:
    """
    The other users' sequential gets, each counted in the phase in which
    it was sent.

    @ivar phase: The phase new gets count in.
    """

    def __init__(self, clients: list[LoadClient]) -> None:
        self.clients = clients
        self.phase = "idle"
        self.samples: dict[str, list[float]] = {}
        self.failures: Counter[str] = Counter()
        self._running = True
        self._tasks = [asyncio.ensure_future(self._loop(c)) for c in clients]

    async def _loop(self, client: LoadClient) -> None:
        while self._running:
            phase = self.phase
            started = time.perf_counter()
            try:
                reply = await client.iq("get", f"<query xmlns='{NS_ROSTER}'/>", timeout=30)
            except asyncio.TimeoutError:
                self.failures[phase] += 1
            else:
                if reply.get("type") == "result":
                    self.samples.setdefault(phase, []).append(time.perf_counter() - started)
                else:
                    self.failures[phase] += 1
            await asyncio.sleep(PAUSE)

    async def stop(self) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for phase in ("idle", "during", "after"):
            samples = self.samples.get(phase, [])
            stats = percentiles(samples)
            result[f"others' roster get p50 {phase}"] = stats["p50"] * 1000
            result[f"others' roster get p99 {phase}"] = stats["p99"] * 1000
            result[f"others' roster get max {phase}"] = max(samples, default=float("nan")) * 1000
            result[f"others' roster get n {phase}"] = len(samples)
            result[f"others' roster get failed {phase}"] = self.failures[phase]
        return result


async def flood(client: LoadClient) -> list[str]:
    """
    C{AT_ONCE} gets in one go, then C{THEN} more at C{PER_SECOND} in bursts
    every 50 ms, never waiting for a reply.

    @return: The outcome of each, once every one has been answered.
    """
    async def one() -> str:
        try:
            return outcomeOf(await client.iq("get", f"<query xmlns='{NS_ROSTER}'/>", timeout=120))
        except asyncio.TimeoutError:
            return "timeout"

    sent = [asyncio.ensure_future(one()) for _ in range(AT_ONCE)]
    burst = max(1, round(PER_SECOND / 20))
    while len(sent) < AT_ONCE + THEN:
        await asyncio.sleep(0.05)
        sent += [asyncio.ensure_future(one()) for _ in range(min(burst, AT_ONCE + THEN - len(sent)))]
    return list(await asyncio.gather(*sent))


async def oneClientFlood(setup: SetupLike, mode: str) -> dict[str, Any]:
    """
    Run the scenario on a started setup (A or B) whose users u0 to
    u{OTHERS} exist.

    @return: The metrics, latencies in milliseconds.
    """
    flooder = LoadClient(username(0), DOMAIN)
    await flooder.login(setup.prosody.c2sPort, "pw")
    clients = []
    for i in range(1, OTHERS + 1):
        client = LoadClient(username(i), DOMAIN)
        await client.login(setup.prosody.c2sPort, "pw")
        clients.append(client)
    warm = [len((await c.rosterGet())[1].find(f"{{{NS_ROSTER}}}query")) for c in [flooder] + clients]
    load = os.getloadavg()[0]

    others = Others(clients)
    await asyncio.sleep(PHASE_SECONDS)
    others.phase = "during"
    before = setup.cpu()
    started = time.perf_counter()
    outcomes = await flood(flooder)
    floodSeconds = time.perf_counter() - started
    after = setup.cpu()
    others.phase = "after"
    await asyncio.sleep(PHASE_SECONDS)
    await others.stop()
    for client in [flooder] + clients:
        await client.close()

    counted = Counter(outcomes)
    result: dict[str, Any] = {
        "pre: others logged in, one get each before": len(clients),
        "pre: items of each first answer": min(warm),
        "flood: gets answered": sum(counted.values()),
        "flood: results": counted["result"],
        "flood: errors": " ".join(f"{k.removeprefix('error ')} {v}" for k, v in sorted(counted.items())
                                  if k != "result") or "-",
        "flood: seconds to the last answer": floodSeconds,
        **{f"cpu s during the flood ({name})": after[name] - before[name] for name in after},
        **others.summary(),
        "load average at start (1 min)": load,
    }
    idle = result["others' roster get p99 idle"]
    result["others' roster get p99 during/idle"] = result["others' roster get p99 during"] / idle
    result["others' roster get p99 after/idle"] = result["others' roster get p99 after"] / idle
    if mode == "B":
        result[f"target: p99 during/idle <= {TARGET_DURING:g}"] = (
            result["others' roster get p99 during/idle"] <= TARGET_DURING)
        result[f"target: p99 after/idle <= {TARGET_AFTER:g}"] = (
            result["others' roster get p99 after/idle"] <= TARGET_AFTER)
    return result
