"""
Scenario 9 (B only), "reactor stall": how long rosteradmin's reactor stops
answering anything (an API request, a stanza, a timer) while it does the
heavy work a large site brings.

    python -m bench.run --scenario reactor-stall [--stall-users 1500000] [--stall-contacts 20000]

rosteradmin runs as in production (twistd), with L{bench.stallprobe} in its
process: a tick every 10 ms on its reactor, each tick's lateness logged
from 20 ms with the function the reactor was in.  An outside poller asks
C{GET /healthz} every 100 ms (10 s timeout) meanwhile.  Three phases, each
on a new rosteradmin process (without C{--state}: nothing resumes):

  - users list: the web app lists C{--stall-users} users in one page
    (C{max_roster_bytes} raised to fit it); C{POST /roster_admin/sync
    {"all": true}}, then the phase lasts until the progress shows the
    listing done and L{AFTER_LISTING} seconds more of the sync (its first
    batches), or L{PHASE_TIMEOUT} seconds;
  - bulk refresh: C{POST /roster_admin/refresh} with L{REFRESH_USERS}
    usernames (within the default 1 MiB body cap), measured for
    L{REFRESH_SECONDS} seconds from the POST;
  - large roster: the web app serves the last user (C{u<N>}, whom the
    users-list phase does not reach) C{--stall-contacts} contacts (distinct
    users, a name and one group each); C{POST /roster_admin/refresh/u<N>}
    twice (the first reads the 20 contacts Prosody stores and writes the
    rest, the second finds the state current: no privileged request), then
    once more in a new process, which reads the whole stored roster back;
    each measured from the POST to its answer.  (A later run finds the
    large roster stored already: its first refresh reads it back too.)

Each phase reports the longest stall, where the reactor was meanwhile, the
number of stalls over 100 ms, the slowest C{/healthz} answer, and the
longest garbage collection (L{bench.gclog}), which no slicing shortens.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from bench.gclog import pauses
from bench.stallprobe import stalls

#: Seconds the users-list phase goes on after the listing is done.
AFTER_LISTING = 10.0

#: Longest users-list phase, in seconds.
PHASE_TIMEOUT = 300.0

#: Users of the bulk refresh phase (their names fit the 1 MiB body cap).
REFRESH_USERS = 95_000

#: Seconds the bulk refresh phase is measured.
REFRESH_SECONDS = 15.0


class StallSetup(Protocol):
    """
    What the scenario needs of L{bench.run.Setup}.
    """

    httpPort: int
    webappPort: int
    users: int
    dir: Path
    component: Any
    extraConfig: dict[str, Any]
    stallLog: Path | None
    gcLog: Path | None

    def restartComponent(self) -> None: ...

    def webappCall(self, method: str, path: str) -> dict[str, Any]: ...


def restart(setup: StallSetup) -> None:
    """
    A new rosteradmin process: the previous one is killed, as a reactor
    that stalls for minutes would not stop on SIGTERM in time.
    """
    if setup.component is not None:
        setup.component.kill()
        setup.component.wait(30)
        setup.component = None
    setup.restartComponent()


def api(setup: StallSetup, method: str, path: str, body: Any = None, timeout: float = 600) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{setup.httpPort}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return dict(json.load(r))
    except urllib.error.HTTPError as e:
        return dict(json.load(e))


class HealthPoller:
    """
    C{GET /healthz} every C{interval} seconds in a thread, one at a time:
    the slowest answer, and the polls that got none within C{timeout}.
    """

    def __init__(self, port: int, interval: float = 0.1, timeout: float = 10.0) -> None:
        self.port, self.interval, self.timeout = port, interval, timeout
        self.slowest = 0.0
        self.unanswered = 0
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=self.timeout) as r:
                    r.read()
            except urllib.error.HTTPError:
                pass
            except OSError:
                self.unanswered += 1
            self.polls += 1
            self.slowest = max(self.slowest, time.perf_counter() - started)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def summarise(setup: StallSetup, phase: str, since: float, until: float, poller: HealthPoller) -> dict[str, Any]:
    """
    The stalls of one phase, from the stall log.
    """
    assert setup.stallLog is not None and setup.gcLog is not None
    found = stalls(setup.stallLog, since, until)
    collections = pauses(setup.gcLog, since, until)
    longest = max(found, key=lambda s: s[1], default=(0.0, 0.0, "-"))
    for at, lateness, where in sorted(found, key=lambda s: -s[1])[:5]:
        gc = [c for c in collections if at - lateness - 0.01 <= c[0] <= at]
        print(f"reactor stall, {phase}: {lateness * 1000:.0f} ms at +{at - since:.1f} s in {where}"
              + (f"; garbage collections meanwhile {', '.join(f'{c[2] * 1000:.0f} ms' for c in gc)}" if gc else ""),
              flush=True)
    where = Counter(s[2] for s in found if s[1] >= 0.1)
    return {
        f"{phase}: longest stall ms": longest[1] * 1000,
        f"{phase}: longest stall in": longest[2],
        f"{phase}: stalls over 100 ms": sum(1 for s in found if s[1] >= 0.1),
        f"{phase}: stalls over 100 ms mostly in": where.most_common(1)[0][0] if where else "-",
        f"{phase}: stalled seconds (ticks late by 20 ms or more)": sum(s[1] for s in found),
        f"{phase}: longest garbage collection ms": max((c[2] for c in collections), default=0.0) * 1000,
        f"{phase}: slowest /healthz ms": poller.slowest * 1000,
        f"{phase}: /healthz unanswered in 10 s": poller.unanswered,
        f"{phase}: seconds": until - since,
    }


async def usersList(setup: StallSetup, users: int) -> dict[str, Any]:
    setup.webappCall("POST", f"/listed/{users}/{users}")
    restart(setup)
    poller = HealthPoller(setup.httpPort)
    since = time.time()
    reply = await asyncio.to_thread(api, setup, "POST", "/roster_admin/sync", {"all": True})
    if reply.get("status") != "started":
        raise RuntimeError(f"reactor stall: sync not started: {reply}")
    listedAt: float | None = None
    progress: dict[str, Any] = reply["sync"]
    while time.time() - since < PHASE_TIMEOUT:
        progress = (await asyncio.to_thread(api, setup, "GET", "/roster_admin/sync"))["sync"]
        if progress["listing_done"] and listedAt is None:
            listedAt = time.time()
        if listedAt is not None and time.time() - listedAt >= AFTER_LISTING or not progress["running"]:
            break
        await asyncio.sleep(0.2)
    until = time.time()
    poller.stop()
    return {
        **summarise(setup, "users list", since, until, poller),
        "users list: listed by the end": progress["listed"],
        "users list: seconds to list": (listedAt - since) if listedAt is not None else float("nan"),
        "users list: error": progress["error"] or "-",
    }


async def bulkRefresh(setup: StallSetup, first: int) -> dict[str, Any]:
    restart(setup)
    names = [f"u{i}" for i in range(first, first + REFRESH_USERS)]
    poller = HealthPoller(setup.httpPort)
    since = time.time()
    posted = asyncio.ensure_future(asyncio.to_thread(api, setup, "POST", "/roster_admin/refresh", names, 5))
    await asyncio.sleep(REFRESH_SECONDS)
    until = time.time()
    poller.stop()
    try:
        await posted  # it answers once every user is refreshed, long after; a timeout here
    except OSError:
        pass
    return summarise(setup, f"refresh of {REFRESH_USERS} users", since, until, poller)


async def largeRoster(setup: StallSetup, contacts: int) -> dict[str, Any]:
    big = setup.users - 1
    setup.webappCall("POST", f"/size/{big}/{contacts}")
    restart(setup)
    result: dict[str, Any] = {}
    for attempt in ("first refresh", "second refresh", "refresh in a new process"):
        if attempt == "refresh in a new process":
            restart(setup)
        poller = HealthPoller(setup.httpPort)
        since = time.time()
        reply = await asyncio.to_thread(api, setup, "POST", f"/roster_admin/refresh/u{big}")
        until = time.time()
        poller.stop()
        phase = f"roster of {contacts} contacts, {attempt}"
        result.update(summarise(setup, phase, since, until, poller))
        result[f"{phase}: answer"] = f"{reply.get('status')}, {reply.get('updated')} updated"
    return result


async def reactorStall(setup: StallSetup, users: int, contacts: int) -> dict[str, Any]:
    """
    The three phases on a started setup whose web app and Prosody know
    more than C{contacts} users.
    """
    setup.extraConfig = {"users_url": f"http://127.0.0.1:{setup.webappPort}/users", "no_start_sync": True,
                         "max_roster_bytes": 64 * 1024 * 1024}
    result = {
        **await usersList(setup, users),
        **await bulkRefresh(setup, contacts + 10),
        **await largeRoster(setup, contacts),
    }
    restart(setup)  # not left refreshing for the setup's stop
    return result
