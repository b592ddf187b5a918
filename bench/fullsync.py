"""
Scenario 7 (B only), "full sync": rosteradmin writes every user's roster
into an empty Prosody before anyone logs in (README, "Rosters in the server
before anyone logs in"), and what that does to everyone else.

    python -m bench.run --scenario full-sync [--full-sync-users 10000]

Preconditions (checked, and printed with the results):

  - Prosody has an account for each of the N listed users (it refuses
    privileged writes for unknown accounts), and stores no roster for any
    of them (no C{roster/u<i>.dat});
  - the web app lists exactly those N users at C{GET /users}, in pages of
    1,000 linked by C{Link: <...>; rel="next"} (walked here once), and
    serves each C{contacts} contacts, a name and one group each;
  - rosteradmin runs with C{--users-url}, C{--state} (a new SQLite file,
    which knows no user) and C{--no-start-sync}, is connected, has cached
    nothing and has run no sync;
  - the users the probes log in are not listed, and Prosody already stores
    their rosters, equal to the web app's (as if synced before).

Then C{POST /roster_admin/sync {"all": true}} starts the sync, and
C{GET /roster_admin/sync} is polled every 200 ms until C{running} is false:
that is the sync's duration.  Every listed user is fetched, its (empty)
stored roster read, and its contacts written with one privileged iq and one
save (contrib's mod_rosteradmin_roster).

The probes of L{bench.probes} run every 200 ms, open loop, during an idle
phase before the sync and during it: a message round trip between two other
logged-in users (the native probe), a server ping, and an uncached login
plus roster get of another user (a fresh one each time).

After it, every listed user's stored roster is counted, and the sync is run
once more: with the state knowing what the server holds, it only fetches.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin

from bench.probes import Probes, SetupLike, Window, health
from bench.rosters import DOMAIN, rosterPath, username

#: Usernames per page of the web app's users list.
PAGE_SIZE = 1000


class FullSyncSetup(SetupLike, Protocol):
    """
    What the scenario needs of L{bench.run.Setup}.
    """

    webappPort: int


def freshNeeded(idleSeconds: float, syncTimeout: float, interval: float) -> int:
    """
    Users for the login probe: one per tick of the whole run.
    """
    return int((idleSeconds + syncTimeout + 30) / interval)


def prepareStorage(dataPath: Path, listed: int) -> None:
    """
    Empty the stored rosters of the listed users (their accounts stay).
    """
    for i in range(listed):
        rosterPath(dataPath, username(i)).unlink(missing_ok=True)


def storedCounts(dataPath: Path, first: int, last: int) -> list[int]:
    """
    Items in the stored roster of each user C{first} to C{last - 1}
    (-1 for no roster file).
    """
    counts = []
    for i in range(first, last):
        path = rosterPath(dataPath, username(i))
        counts.append(path.read_text().count('["subscription"]') if path.exists() else -1)
    return counts


def walkUsers(url: str) -> tuple[int, int, bool]:
    """
    Walk the web app's users list as C{--users-url} does: the usernames,
    the pages, and whether they are C{u0} to C{u<N-1>} in order.
    """
    names: list[str] = []
    pages = 0
    next_: str | None = url
    while next_ is not None:
        with urllib.request.urlopen(next_, timeout=10) as r:
            names += json.load(r)
            link = r.headers.get("Link")
        pages += 1
        next_ = None
        if link is not None:
            target = link.split(">", 1)[0].lstrip("<")
            next_ = urljoin(url, target)
    return len(names), pages, names == [username(i) for i in range(len(names))]


def stateRows(path: Path) -> int:
    """
    Users whose server roster version the state file knows.
    """
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM server_rosters").fetchone()[0])


def api(setup: FullSyncSetup, method: str, path: str, body: Any = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{setup.httpPort}{path}", data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as r:
        return dict(json.load(r))


async def runSync(setup: FullSyncSetup, timeout: float, poll: float = 0.2) -> tuple[float, dict[str, Any]]:
    """
    Start a full sync and poll its progress until it is done.

    @return: The seconds from the POST to the first progress that shows it
        finished, and that progress.
    """
    started = time.perf_counter()
    reply = await asyncio.to_thread(api, setup, "POST", "/roster_admin/sync", {"all": True})
    if reply.get("status") != "started":
        raise RuntimeError(f"full sync: not started: {reply}")
    deadline = started + timeout
    while True:
        progress = (await asyncio.to_thread(api, setup, "GET", "/roster_admin/sync"))["sync"]
        if not progress["running"]:
            return time.perf_counter() - started, progress
        if time.perf_counter() > deadline:
            raise RuntimeError(f"full sync: still running after {timeout} s: {progress}")
        await asyncio.sleep(poll)


async def fullSync(setup: FullSyncSetup, listed: int, contacts: int, fresh: int, statePath: Path,
                   idleSeconds: float = 30.0, syncTimeout: float = 600.0, interval: float = 0.2) -> dict[str, Any]:
    """
    Run the scenario on a started setup: users C{u0} to C{u<listed-1>} are
    listed and unsynced, the next C{fresh} are the login probe's, and the
    two after them the message probe's.

    @return: The metrics, with latencies in milliseconds.
    """
    dataPath = setup.prosody.dataPath
    accounts = dataPath / DOMAIN.replace(".", "%2e") / "accounts"
    walkedUsers, walkedPages, inOrder = walkUsers(f"http://127.0.0.1:{setup.webappPort}/users")
    with urllib.request.urlopen(f"http://127.0.0.1:{setup.webappPort}/rosters/{username(0)}", timeout=10) as r:
        sample = json.load(r)
    status = health(setup)
    storedListed = storedCounts(dataPath, 0, listed)
    storedFresh = storedCounts(dataPath, listed, listed + fresh + 2)
    before = api(setup, "GET", "/roster_admin/sync")
    preconditions = {
        "listed users with an account": sum(1 for i in range(listed) if (accounts / f"{username(i)}.dat").exists()),
        "listed users with a stored roster (cold: 0)": sum(1 for c in storedListed if c >= 0),
        "users listed by the web app (walked)": walkedUsers,
        "pages of the users list": walkedPages,
        "web app contacts of u0 (name + group each)": sum(
            1 for entry in sample.values() if entry.get("name") and entry.get("groups")),
        "probe users stored with all contacts": sum(1 for c in storedFresh if c == contacts),
        "state file users known (new: 0)": stateRows(statePath),
        "rosteradmin connected": bool(status["connected"]),
        "rosteradmin cached users before": status["cached_users"],
        "sync before (none: idle)": before["status"],
    }
    print(f"full sync: preconditions {preconditions}", flush=True)
    expected = {
        "listed users with an account": listed, "listed users with a stored roster (cold: 0)": 0,
        "users listed by the web app (walked)": listed, "web app contacts of u0 (name + group each)": contacts,
        "probe users stored with all contacts": fresh + 2, "state file users known (new: 0)": 0,
        "rosteradmin connected": True, "rosteradmin cached users before": 0, "sync before (none: idle)": "idle",
    }
    wrong = {k: (preconditions[k], v) for k, v in expected.items() if preconditions[k] != v}
    if wrong or not inOrder or before["sync"] is not None:
        raise RuntimeError(f"full sync: preconditions not met (got, expected): {wrong}")

    probes = await Probes.connect(setup, listed + fresh, listed, listed + fresh - 1, interval)
    setup.webappCall("POST", "/reset")
    window = Window(setup)
    window.idle()
    probes.start()
    await asyncio.sleep(idleSeconds)

    probes.phase = "during"
    window.begin()
    duration, progress = await runSync(setup, syncTimeout)
    window.end()
    await probes.stop()
    stats = setup.webappCall("GET", "/stats")
    status = health(setup)
    synced = storedCounts(dataPath, 0, listed)
    known = stateRows(statePath)

    # Once more, with the state knowing every user: fetches only.
    setup.webappCall("POST", "/reset")
    cpuAgain = setup.cpu()
    againDuration, againProgress = await runSync(setup, syncTimeout)
    cpuAgainAfter = setup.cpu()

    result: dict[str, Any] = {
        "users (listed, synced)": listed,
        "contacts per user (web app)": contacts,
        "sync seconds (POST to running false)": duration,
        "sync seconds (its started_at to finished_at)": progress["finished_at"] - progress["started_at"],
        "users synced per second": progress["synced"] / duration,
        "progress: listed": progress["listed"],
        "progress: synced": progress["synced"],
        "progress: failed": progress["failed"],
        "progress: error": progress["error"] or "-",
        "web app roster fetches (sync and login probes)": stats["requests"],
        "web app users-list pages": stats["user_pages"],
        "users stored with all contacts after": sum(1 for c in synced if c == contacts),
        "users stored with fewer after": sum(1 for c in synced if c < contacts),
        "state file users known after (synced and probes)": known,
        "unsynced users after": status["unsynced_users"],
        "rosteradmin cached users after (synced and probes)": status["cached_users"],
        **window.summary("sync"),
        "prosody cpu ms per user": window.spent("prosody") * 1000 / listed,
        "rosteradmin cpu ms per user": window.spent("rosteradmin") * 1000 / listed,
        **probes.summaries(),
        "fresh users sufficed": not probes.poolExhausted,
        "fresh users' stored rosters rewritten": probes.rewritten(window.idleStartedAt),
        "second sync seconds (state current)": againDuration,
        "second sync: synced / failed": f"{againProgress['synced']} / {againProgress['failed']}",
        "second sync: web app fetches": setup.webappCall("GET", "/stats")["requests"],
        "second sync: cpu s (prosody)": cpuAgainAfter["prosody"] - cpuAgain["prosody"],
        "second sync: cpu s (rosteradmin)": cpuAgainAfter["rosteradmin"] - cpuAgain["rosteradmin"],
        **window.loadAverages(),
    }
    probes.printFailures("full sync")
    if progress["failures"]:
        print(f"full sync: failures shown {progress['failures']}", flush=True)
    return result
