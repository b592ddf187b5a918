"""
Scenario 8 (B only), "refresh memory": rosteradmin's resident memory before,
during and after a refresh of many users, with the roster cache at its
default bound and at a smaller one (C{--cache-max-contacts}).

    python -m bench.run --scenario refresh-memory [--memory-users 100000] [--memory-caps 1000000,200000]

Each bound gets a new rosteradmin process (and a new C{--state} file) on
the same Prosody and web app.  Preconditions (checked, and printed with the
results):

  - Prosody has an account and a stored roster for each of the N refreshed
    users, with the C{contacts} contacts the web app serves (written by the
    same function, as if synced before): the refresh fetches every user and
    reads every stored roster, and writes nothing;
  - the refresh's JSON array fits the request body cap (C{--max-body-bytes},
    1 MiB by default, left as it is), or is split into POSTs that each fit;
  - rosteradmin is connected and has cached nothing but the few users
    warmed for the probes.

Then C{POST /roster_admin/refresh} with the N usernames, while VmRSS of the
rosteradmin process is sampled every 100 ms from C{/proc/<pid>/status}.
GET /metrics gives the cached users and contacts and the evictions, after.

Login probes, one login and roster get of each kind per second, before (the
warmed kind only) and during the refresh:

  - warmed: one of 20 users (not refreshed) whose roster was cached just
    before the refresh, in turn;
  - recent: a user the refresh fetched about 2,000 users ago;
  - early: the refresh's first users, in order (the first ones evicted
    under a small bound).

A probe is a cache hit when the web app was not asked for that user's roster
during it (its per-user fetch counter).  With C{gcLog}, rosteradmin's garbage
collections during the refresh (L{bench.gclog}) are counted, and set against
the probes slower than 500 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from bench.gclog import pauses
from bench.probes import health as _health
from bench.probes import metrics
from bench.rosters import DOMAIN, rosterPath, username
from bench.xmppload import LoadClient, percentiles

#: Users cached before the refresh, for the "warmed" probe.
WARMED = 20

#: How far behind the refresh's fetches the "recent" probe's user is.
RECENT_LAG = 2000


class MemorySetup(Protocol):
    """
    What the scenario needs of L{bench.run.Setup}.
    """

    prosody: Any
    webapp: Any
    component: Any
    httpPort: int

    def cpu(self) -> dict[str, float]: ...

    def webappCall(self, method: str, path: str) -> dict[str, Any]: ...


def status(pid: int, field: str) -> float:
    """
    A C{/proc/<pid>/status} memory field (C{VmRSS}, C{VmHWM}) in MB.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise KeyError(field)


def bodies(usernames: list[str], cap: int) -> list[bytes]:
    """
    The refresh as JSON arrays of at most C{cap} bytes each.
    """
    whole = json.dumps(usernames).encode()
    if len(whole) <= cap:
        return [whole]
    half = len(usernames) // 2
    return bodies(usernames[:half], cap) + bodies(usernames[half:], cap)


def post(url: str, body: bytes) -> dict[str, Any]:
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=900) as r:
        return dict(json.load(r))


class LoginProbes:
    """
    Logins of users whose roster should be cached, and whether it was.
    """

    def __init__(self, setup: MemorySetup, users: int) -> None:
        self.setup, self.users = setup, users
        #: (roster get latency, cache hit, wall time started, wall time done)
        self.samples: dict[tuple[str, str], list[tuple[float, bool, float, float]]] = {}
        self.failures: dict[tuple[str, str], list[str]] = {}
        self.nextWarmed = 0
        self.nextEarly = 0

    def fetches(self, user: str) -> int:
        return int(self.setup.webappCall("GET", f"/stats?user={user}")[f"requests of {user}"])

    async def probe(self, kind: str, phase: str) -> None:
        """
        One login and roster get of a user of that kind, recorded.
        """
        if kind == "warmed":
            user = username(self.users + self.nextWarmed % WARMED)
            self.nextWarmed += 1
        elif kind == "early":
            user = username(self.nextEarly)
        else:
            fetched = (await asyncio.to_thread(self.setup.webappCall, "GET", "/stats"))["requests"]
            if fetched < RECENT_LAG + WARMED * 2:
                return
            user = username(fetched - RECENT_LAG)
        before = await asyncio.to_thread(self.fetches, user)
        if kind != "warmed" and before == 0:
            return  # not refreshed yet: not a cached user
        if kind == "early":
            self.nextEarly += 1
        client = LoadClient(user, DOMAIN)
        startedAt = time.time()
        try:
            await client.login(self.setup.prosody.c2sPort, "pw")
            latency, _ = await client.rosterGet()
        except Exception as e:
            self.failures.setdefault((kind, phase), []).append(f"{type(e).__name__}: {e}"[:200])
            return
        finally:
            await client.close()
        doneAt = time.time()
        hit = await asyncio.to_thread(self.fetches, user) == before
        self.samples.setdefault((kind, phase), []).append((latency, hit, startedAt, doneAt))

    def summary(self) -> dict[str, Any]:
        """
        Per kind and phase: roster get p50, p99 and max (ms) of the hits,
        p50 and max of the misses ("-" where there was none), hits out of
        all, failures.
        """
        result: dict[str, Any] = {}
        for kind in ("warmed", "recent", "early"):
            for phase in ("idle", "during"):
                samples = self.samples.get((kind, phase), [])
                for outcome, hit in (("hits", True), ("misses", False)):
                    latencies = [sample[0] for sample in samples if sample[1] == hit]
                    label = f"{kind} login: roster get ({outcome})"
                    result[f"{label} p50 {phase}"] = percentiles(latencies)["p50"] * 1000 if latencies else "-"
                    if hit:
                        result[f"{label} p99 {phase}"] = percentiles(latencies)["p99"] * 1000 if latencies else "-"
                    result[f"{label} max {phase}"] = max(latencies) * 1000 if latencies else "-"
                result[f"{kind} login: cache hits / n {phase}"] = f"{sum(1 for s in samples if s[1])} / {len(samples)}"
                result[f"{kind} login: failed {phase}"] = len(self.failures.get((kind, phase), []))
        return result


async def refreshMemory(setup: MemorySetup, users: int, contacts: int, cacheMax: int, maxBody: int,
                        gcLog: Path | None = None, idleSeconds: float = 10.0, interval: float = 1.0,
                        settle: float = 10.0) -> dict[str, Any]:
    """
    Run the scenario on a started setup whose rosteradmin has just started
    with C{--cache-max-contacts cacheMax}: users C{u0} to C{u<users-1>} are
    refreshed, the next L{WARMED} are the warmed probe's.

    @return: The metrics (memory in MB, latencies in milliseconds).
    """
    pid = setup.component.pid
    dataPath = setup.prosody.dataPath
    accounts = dataPath / DOMAIN.replace(".", "%2e") / "accounts"
    usernames = [username(i) for i in range(users)]
    posts = bodies(usernames, maxBody)
    stored = [rosterPath(dataPath, name) for name in usernames]
    health = _health(setup)
    before = metrics(setup)
    preconditions = {
        "refreshed users with an account": sum(1 for n in usernames if (accounts / f"{n}.dat").exists()),
        "refreshed users stored with all contacts": sum(
            1 for path in stored if path.exists() and path.read_text().count('["subscription"]') == contacts),
        "request body bytes": sum(len(b) for b in posts),
        "request body cap (--max-body-bytes)": maxBody,
        "POSTs": len(posts),
        "rosteradmin connected": bool(health["connected"]),
        "rosteradmin cached users before": before["rosteradmin_cached_users"],
    }
    print(f"refresh memory ({cacheMax:,}): preconditions {preconditions}", flush=True)
    if (preconditions["refreshed users with an account"] != users or not health["connected"]
            or preconditions["refreshed users stored with all contacts"] != users
            or before["rosteradmin_cached_users"] != 0):
        raise RuntimeError(f"refresh memory: preconditions not met: {preconditions}")

    rssStarted = status(pid, "VmRSS")
    probes = LoginProbes(setup, users)
    for i in range(WARMED):  # cached, then offline
        await probes.probe("warmed", "warm-up")
    warmed = probes.samples.pop(("warmed", "warm-up"), [])
    if len(warmed) != WARMED or any(sample[1] for sample in warmed):
        raise RuntimeError(f"refresh memory: warming {WARMED} users: {warmed}, {probes.failures}")
    for _ in range(int(idleSeconds / interval)):
        started = time.perf_counter()
        await probes.probe("warmed", "idle")
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))

    rssBefore = status(pid, "VmRSS")
    peak, peakAt = rssBefore, 0.0
    loadBefore = os.getloadavg()
    cpuBefore = setup.cpu()
    started = time.perf_counter()
    startedAt = time.time()
    tasks: list[asyncio.Task[None]] = []

    async def sample() -> None:
        nonlocal peak, peakAt
        while True:
            rss = status(pid, "VmRSS")
            if rss > peak:
                peak, peakAt = rss, time.perf_counter() - started
            await asyncio.sleep(0.1)

    async def tick() -> None:
        while True:
            for kind in ("warmed", "recent", "early"):
                tasks.append(asyncio.ensure_future(probes.probe(kind, "during")))
            await asyncio.sleep(interval)

    sampler = asyncio.ensure_future(sample())
    ticker = asyncio.ensure_future(tick())
    url = f"http://127.0.0.1:{setup.httpPort}/roster_admin/refresh"
    replies = [await asyncio.to_thread(post, url, body) for body in posts]
    duration = time.perf_counter() - started
    endedAt = time.time()
    cpuAfter = setup.cpu()
    ticker.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    rssReply = status(pid, "VmRSS")
    after = metrics(setup)
    await asyncio.sleep(settle)
    sampler.cancel()
    rssSettled = status(pid, "VmRSS")
    loadAfter = os.getloadavg()
    rewritten = sum(1 for path in stored if path.stat().st_mtime >= startedAt)
    for (kind, phase), reasons in sorted(probes.failures.items()):
        print(f"refresh memory ({cacheMax:,}): {len(reasons)} {kind} probes failed {phase}: {sorted(set(reasons))}",
              flush=True)
    collections = pauses(gcLog, startedAt, endedAt) if gcLog is not None else []
    oldest = [pause for _, generation, pause in collections if generation == 2]
    during = [sample for (kind, phase), samples in probes.samples.items() if phase == "during" for sample in samples]
    slow = [sample for sample in during if sample[0] > 0.5]
    long = [(end - pause, end) for end, _, pause in collections if pause > 0.1]
    overlapping = sum(1 for sample in slow if any(b > sample[2] and a < sample[3] for a, b in long))
    gcStats = {
        "gc: full collections during (generation 2)": len(oldest),
        "gc: longest full collection s": max(oldest, default=0.0),
        "gc: seconds paused in full collections": sum(oldest),
        "gc: seconds paused in collections over 5 ms": sum(pause for _, _, pause in collections),
        "probes during over 500 ms (all kinds)": f"{len(slow)} / {len(during)}",
        "of them overlapping a gc pause over 100 ms": overlapping,
    } if gcLog is not None else {}
    return {
        "users refreshed": users,
        "contacts per user": contacts,
        "--cache-max-contacts": cacheMax,
        "POSTs (body bytes, cap)": f"{len(posts)} ({preconditions['request body bytes']:,}, {maxBody:,})",
        "refresh seconds (POST to reply)": duration,
        "users refreshed per second": users / duration,
        "updated": sum(r["updated"] for r in replies),
        "errors": sum(r["errors"] for r in replies),
        "stored rosters rewritten (expected 0)": rewritten,
        "RSS MB at start (connected, nothing cached)": rssStarted,
        "RSS MB before (20 users cached)": rssBefore,
        "RSS MB peak during (VmRSS every 100 ms)": peak,
        "RSS MB peak at (s into the refresh)": peakAt,
        "RSS MB after the reply": rssReply,
        f"RSS MB {settle:.0f} s after": rssSettled,
        "RSS MB high-water mark (VmHWM)": status(pid, "VmHWM"),
        "cached users after": after["rosteradmin_cached_users"],
        "cached contacts after": after["rosteradmin_cached_contacts"],
        "cache evictions": after.get("rosteradmin_cache_evictions_total", float("nan")),
        "cpu s during refresh (rosteradmin)": cpuAfter["rosteradmin"] - cpuBefore["rosteradmin"],
        "cpu s during refresh (prosody)": cpuAfter["prosody"] - cpuBefore["prosody"],
        **probes.summary(),
        **gcStats,
        "load average before (1 min)": loadBefore[0],
        "load average after (1 min)": loadAfter[0],
    }
