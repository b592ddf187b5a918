"""
Run every benchmark scenario and print one table.

    python -m bench.run [--runs 3] [--deployed-users 1000] [--deployed-gets 10000]   # D1, D1v, D2; D2i once
    python -m bench.run --no-count-instructions                      # D1, D1v, D2 only (no valgrind)
    python -m bench.run --scenario all [--runs 3] [--quick] [--profile bench-profile.txt] [--storm-sizes 1000]
    python -m bench.run --scenario targets [--runs 3] [--tap]        # 1, 1v, 2, 2c, 2s only
    python -m bench.run --scenario targets --runs 1 --profile 2s.txt --profile-scenario 2s
    python -m bench.run --scenario large-roster [--runs 1]           # 5 and 5L only
    python -m bench.run --scenario large-first-sync [--sync-contacts 3000] [--sync-one-per-item] [--runs 1]
    python -m bench.run --scenario full-sync [--full-sync-users 10000] [--runs 1]
    python -m bench.run --scenario refresh-memory [--memory-users 100000] [--memory-caps 1000000,200000]
    python -m bench.run --scenario reactor-stall [--stall-users 1500000] [--stall-contacts 20000] [--runs 1]
    python -m bench.run --scenario flood [--runs 1]                  # 11: one client floods roster gets
    python -m bench.run --scenario slow-http [--runs 1]              # 12: 1,500 slow HTTP connections
    python -m bench.run --scenario login-cost [--runs 3]             # 13: what the wait at login costs
    python -m bench.run --scenario takeover [--kills 10] [--runs 1]  # 14: kill -9 of the leader of two

By default it measures the deployment the README recommends, in its
steady state after rosteradmin restarted on its C{--state}
(L{bench.deployed}: D1 and D1v warm gets, D2 a login storm; and, once,
D2i, a smaller storm with Prosody's instructions counted:
L{bench.instructions}), with native Prosody alongside in each run.

Each scenario runs the same users and rosters against (A) Prosody
answering roster gets itself from its storage and (B) Prosody delegating
them to rosteradmin, on loopback, in the same process tree.  In every run
of scenarios 1 to 3, A and B each get a new Prosody, one after the other,
so that both columns see the same machine; the 1-minute load average at the
start of each is printed.  Results are ratios and min/median/max over the
runs; absolute numbers depend on the machine.

Scenario names say what the server stores and what rosteradmin knows
before it starts (each row prefixed "pre:" is a checked precondition):

  - 1: warm gets, no C{ver}: clients logged in, roster cached; full answers.
  - 1v: warm gets with the C{ver} of the previous answer, which is current:
    empty results (XEP-0237), what most real clients send.
  - 2: login storm, the server's store right, rosteradmin restarted
    without C{--state}: it revokes the promises Prosody holds, and every
    login costs a delegated get and a privileged read.
  - 2c: cold login storm: the storm users' stored rosters deleted, a new
    C{--state}: every login costs a privileged read and a write, and the
    version is promised to Prosody after the answer.
  - 2s: steady login storm: the store right (written by 2c), rosteradmin
    restarted with the C{--state} 2c left, Prosody still running with the
    promises of 2c: Prosody answers the gets from its store ("roster gets
    answered by rosteradmin" says how many it did not).

Every storm client sends its initial presence after its roster; in B,
rosteradmin fetches the user's roster from the web app then, and the
storm's CPU and fetch counts include those fetches.

A runs the same storms on Prosody's own storage, which holds every roster
(native Prosody has no cold case: it would answer an empty roster).

During 2c and 2s, and for C{--storm-idle} seconds just before each (the
idle baseline), the native probe of L{bench.stormprobe} runs, in A and in
B: message round trips between two online users who are no part of the
storm and whose rosters the server stores right, server pings, and that
user's roster gets.  Their p50/p99 idle and during are printed per column
after the main table.

C{--delegate-all} turns off contrib's mod_rosteradmin_roster answering
promised rosters itself, so that B's gets and logins all reach rosteradmin.

C{--profile FILE} records rosteradmin with py-spy (raw collapsed stacks)
during scenario 1 and 1v, or with C{--profile-scenario 2|2c|2s} during that
storm alone (the first storm size, run 1); C{python -m bench.pyspysummary
FILE} sums it up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import deployed, fullsync, instructions
from bench.flood import OTHERS, oneClientFlood
from bench.luaprofile import LuaProfile, profiledConfig
from bench import logincost, slowhttp, takeover
from bench.reactorstall import reactorStall
from bench.firstsync import SMALL_ROSTER, largeFirstSync, prepareStorage, usersNeeded
from bench.procstat import cpuSeconds, residentMegabytes
from bench.probes import health, metrics
from bench.refreshmemory import WARMED, refreshMemory
from bench.stormprobe import StormProbe
from bench.streamtap import ThreadedTap
from bench.rosters import DOMAIN, rosterPath, username, writeProsodyStorage, writeStoredRoster
from bench.xmppload import LoadClient, connectMany, percentiles
from rosteradmin_demo.devprosody import LocalProsody, freePort

ROOT = Path(__file__).parent.parent
PASSWORD = "pw"


def rssBytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Setup:
    """
    Prosody (A: plain; B: delegating to rosteradmin), and for B the web app
    and the component as processes of their own.
    """

    def __init__(self, workdir: Path, mode: str, users: int, contacts: int, delay: float,
                 include: Path | None = None, tap: bool = False, counted: bool = False) -> None:
        """
        @param include: B's Prosody configuration instead of contrib's (to
            try variants of it).
        @param tap: Relay the component stream through a L{ThreadedTap},
            which counts its stanzas (profiling only).
        @param counted: Run Prosody under callgrind (L{CountedProsody}).
        """
        self.mode, self.users, self.contacts, self.delay = mode, users, contacts, delay
        self.dir = workdir / mode
        self.dir.mkdir(parents=True, exist_ok=True)
        if include is None:
            include = ROOT / "contrib" / "prosody" / "rosteradmin.cfg.lua" if mode == "B" else ROOT / "bench" / "prosody-a.cfg.lua"
        self.include = include
        options: dict[str, Any] = {"logLevel": "warn", "hasComponents": mode == "B"}
        self.prosody = (instructions.CountedProsody(self.dir / "prosody", include, output=self.dir / "callgrind.out",
                                                    **options)
                        if counted else LocalProsody(self.dir / "prosody", include, **options))
        self.tap: ThreadedTap | None = None
        self.wantTap = tap and mode == "B"
        writeProsodyStorage(self.prosody.dataPath, users, contacts, PASSWORD)
        self.webappPort = freePort()
        self.httpPort = freePort()
        self.webapp: subprocess.Popen[bytes] | None = None
        self.component: subprocess.Popen[bytes] | None = None
        #: More rosteradmin settings (TOML keys and values), read at each
        #: start of the component.
        self.extraConfig: dict[str, Any] = {}
        #: Log rosteradmin's garbage collections to this file (L{bench.gclog}).
        self.gcLog: Path | None = None
        #: Log rosteradmin's reactor stalls to this file (L{bench.stallprobe}).
        self.stallLog: Path | None = None

    def start(self, component: bool = True) -> None:
        """
        @param component: For B, start a rosteradmin too (not: the
            scenario starts its own, L{launchComponent}).
        """
        self.prosody.start()
        if self.wantTap:
            self.tap = ThreadedTap(self.prosody.componentPort)
        if self.mode == "B":
            self.webapp = subprocess.Popen(
                [sys.executable, "-m", "bench.webapp", str(self.webappPort), str(self.users),
                 str(self.contacts), str(self.delay)], cwd=ROOT)
            _waitForPort(self.webappPort)
            if component:
                self.startComponent()

    def startComponent(self) -> None:
        self.component = self.launchComponent("rosteradmin", self.httpPort, self.extraConfig)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.httpPort}/healthz", timeout=1) as r:
                    if json.load(r)["connected"]:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("rosteradmin did not connect; see " + str(self.dir / "rosteradmin.log"))

    def launchComponent(self, name: str, httpPort: int, extraConfig: dict[str, Any]) -> subprocess.Popen[bytes]:
        """
        Start a rosteradmin process on this Prosody and web app, its
        configuration in C{<name>.toml} and its output in C{<name>.log};
        not waiting for it.
        """
        config = self.dir / f"{name}.toml"
        config.write_text(f"""
jid = "{self.prosody.componentJID}"
secret = "{self.prosody.secret}"
domain = "{DOMAIN}"
xmpp_port = {self.tap.port if self.tap is not None else self.prosody.componentPort}
roster_url = "http://127.0.0.1:{self.webappPort}/rosters/%s"
http = "tcp:{httpPort}:interface=127.0.0.1"
no_kick = true
iq_timeout = 60
fetch_timeout = 60
""" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in extraConfig.items()))
        log = open(self.dir / f"{name}.log", "ab")
        launcher, env = "from twisted.scripts.twistd import run; run()", {**os.environ, "PYTHONPATH": str(ROOT)}
        if self.gcLog is not None:
            launcher, env["BENCH_GC_LOG"] = "import bench.gclog; " + launcher, str(self.gcLog)
        if self.stallLog is not None:
            launcher, env["BENCH_STALL_LOG"] = "import bench.stallprobe; " + launcher, str(self.stallLog)
        return subprocess.Popen(
            [sys.executable, "-c", launcher, "-n", "--pidfile=",
             "--logger", "bench.run.quietLogger", "rosteradmin", "--config", str(config)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)

    def restartComponent(self) -> None:
        self.stopComponent()
        self.startComponent()

    def stopComponent(self) -> None:
        if self.component is not None:
            self.component.send_signal(signal.SIGTERM)
            self.component.wait(30)
            self.component = None

    def stop(self) -> None:
        self.stopComponent()
        if self.webapp is not None:
            self.webapp.terminate()
            self.webapp.wait(10)
        if self.tap is not None:
            self.tap.stop()
        self.prosody.stop()

    def cpu(self) -> dict[str, float]:
        pids = {"prosody": self.prosody._process.pid}  # type: ignore[union-attr]
        if self.component is not None:
            pids["rosteradmin"] = self.component.pid
        return {name: cpuSeconds(pid) for name, pid in pids.items()}

    def prosodyMemory(self) -> dict[str, float]:
        """
        A row with Prosody's resident memory now: B's was twice A's while
        Prosody cached the rosters rosteradmin's sync read
        (docs/benchmarks.md, "The cause: Prosody's roster cache").
        """
        return {"prosody RSS at start (MB)": residentMegabytes(self.prosody._process.pid)}  # type: ignore[union-attr]

    def webappCall(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.webappPort}{path}", method=method,
                                         data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.load(r)


def quietLogger() -> Any:
    """
    A twistd log observer that keeps warnings and errors only: per-query
    debug lines would measure the log file, not the component.
    """
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, textFileLogObserver

    return FilteringLogObserver(textFileLogObserver(sys.stdout),
                                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(
                                    os.environ.get("BENCH_COMPONENT_LOG_LEVEL", "warn")))])


def _waitForPort(port: int) -> None:
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def tapCounts(setup: Setup, logins: int) -> dict[str, float]:
    """
    Component-stream stanzas per login since the tap was last reset (with
    C{--tap} only).
    """
    return setup.tap.perLogin(logins) if setup.tap is not None else {}


async def warmGets(setup: Setup, clients: int, gets: int, withVer: bool, presence: bool = False,
                   pre: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    Scenario 1: C{clients} connected clients share C{gets} roster gets.

    Preconditions: every client is logged in and has had one roster get
    (so B has fetched and cached its roster, and the server stores it).
    C{withVer}: each get carries the C{ver} of that first answer, which is
    current, so the answer is an empty result (XEP-0237, as most real
    clients do); else no C{ver}, and each answer holds the whole roster.
    C{presence}: each client sends its initial presence after that first
    get, as real clients do (the deployed scenarios).  C{pre}: the
    preconditions already checked, printed with the results.
    """
    sessions = await connectMany([username(i) for i in range(clients)], DOMAIN, setup.prosody.c2sPort, PASSWORD)
    versions: dict[str, str | None] = {}
    for session in sessions:
        _, reply = await session.rosterGet(ver="" if withVer else None)  # warm: B fetches and caches here
        if presence:
            session.sendPresence()
        query = reply.find("{jabber:iq:roster}query")
        versions[session.username] = query.get("ver") if query is not None else None
    if withVer and not all(versions.values()):
        raise RuntimeError(f"warm gets: a first answer had no ver: {versions}")
    latencies: list[float] = []
    items = 0

    async def loop(session: LoadClient) -> None:
        nonlocal items
        ver = versions[session.username] if withVer else None
        for _ in range(gets // clients):
            latency, reply = await session.rosterGet(ver=ver)
            query = reply.find("{jabber:iq:roster}query")
            items += len(query) if query is not None else 0
            latencies.append(latency)

    if setup.tap is not None:
        setup.tap.reset()
    if setup.mode == "B":
        await deployed.settled(setup)  # the first gets' fetches, read-backs and promises are done
    load = os.getloadavg()[0]
    answeredBefore = metrics(setup)["rosteradmin_roster_queries_total"] if setup.mode == "B" else 0.0
    before = setup.cpu()
    started = time.perf_counter()
    await asyncio.gather(*(loop(s) for s in sessions))
    elapsed = time.perf_counter() - started
    after = setup.cpu()
    for session in sessions:
        await session.close()
    result: dict[str, Any] = {
        **(pre or {}),
        "pre: clients logged in, one get each before": clients,
        "pre: clients sent presence": presence,
        "pre: gets carry the current ver": withVer,
        "gets/s": len(latencies) / elapsed, **{k: v * 1000 for k, v in percentiles(latencies).items()},
        "items per answer": items / len(latencies),
    }
    for name in after:
        result[f"cpu s/10k ({name})"] = (after[name] - before[name]) * 10000 / len(latencies)
    if setup.mode == "B":
        result["gets answered by rosteradmin"] = metrics(setup)["rosteradmin_roster_queries_total"] - answeredBefore
    result["load average at start (1 min)"] = load
    result.update(tapCounts(setup, len(latencies)))
    return result


#: Login storm variants: what the server stores and what rosteradmin knows
#: before the storm (docs/benchmarks.md, scenario 2).
STORMS = {
    "nostate": "store right, rosteradmin restarted without --state",
    "cold": "cold: storm users' stored rosters deleted, new --state",
    "steady": "steady: store right, rosteradmin restarted, --state current",
}


def storedRosters(setup: Setup, users: int) -> list[tuple[int, float]]:
    """
    Items and mtime of each storm user's stored roster ((-1, 0) for none).
    """
    found = []
    for i in range(users):
        path = rosterPath(setup.prosody.dataPath, username(i))
        found.append((path.read_text().count('["subscription"]'), path.stat().st_mtime) if path.exists() else (-1, 0.0))
    return found


def stateRows(path: Path) -> int:
    import sqlite3

    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM server_rosters").fetchone()[0])


def prepareStorm(setup: Setup, users: int, variant: str) -> dict[str, Any]:
    """
    Bring B to the variant's preconditions (A always stores every roster
    and has nothing to prepare), check them, and return them.

    The cold variant must run right before the steady one, with the same
    users: the cold storm writes the store and the state the steady one
    starts from.
    """
    statePath = setup.dir / "state.sqlite"
    if variant == "cold":
        if setup.mode == "B":
            for i in range(users):
                rosterPath(setup.prosody.dataPath, username(i)).unlink(missing_ok=True)
            statePath.unlink(missing_ok=True)
        # Prosody keeps the rosters it loaded for users not online (the
        # privileged reads of the storm before, now made before each bind)
        # in its roster cache, which would go on answering the deleted
        # rosters; A restarts too, so that both start 2c on a new Prosody.
        setup.prosody.restart()
    if setup.mode == "B":
        if variant == "nostate":
            setup.extraConfig.pop("state", None)
        else:
            setup.extraConfig["state"] = str(statePath)
        setup.restartComponent()
        setup.webappCall("POST", "/reset")
    stored = storedRosters(setup, users)
    pre: dict[str, Any] = {
        "pre: storm users stored with all contacts": sum(1 for n, _ in stored if n == setup.contacts),
        "pre: storm users with no stored roster": sum(1 for n, _ in stored if n < 0),
    }
    if setup.mode == "B":
        status = health(setup)
        pre["pre: rosteradmin cached users"] = status["cached_users"]
        pre["pre: --state users known"] = stateRows(statePath) if variant != "nostate" else "no --state"
        expected = {"nostate": (users, 0, "no --state"), "cold": (0, users, 0), "steady": (users, 0, users)}[variant]
        got = (pre["pre: storm users stored with all contacts"], pre["pre: storm users with no stored roster"],
               pre["pre: --state users known"])
        if variant == "steady":
            got = got[:2] + (min(int(got[2]), users),)
        if got != expected or status["cached_users"]:
            raise RuntimeError(f"login storm ({variant}): preconditions not met: {pre}")
    print(f"login storm {setup.mode} ({users} users, {variant}): {pre}", flush=True)
    return pre


#: Storm variants measured with the native probe (L{bench.stormprobe}).
PROBED_STORMS = ("cold", "steady")

#: Accounts past the largest storm (and refresh), the storm probe's two
#: users: no storm logs them in, and their stored rosters stay right.
PROBE_ACCOUNTS = 2


async def startStormProbe(setup: Setup, stormUsers: int) -> tuple[StormProbe, dict[str, Any]]:
    """
    Start the storm probe with the setup's last two accounts, and check
    that they are no part of the storm, that the server stores their
    rosters right, and that the sender's warm-up get (in B its first:
    a fetch, and a privileged read where the state does not know it)
    wrote nothing: the probe then measures the server, not a first login.
    """
    sender = setup.users - PROBE_ACCOUNTS
    paths = [rosterPath(setup.prosody.dataPath, username(i)) for i in (sender, sender + 1)]
    stored = [path.read_text().count('["subscription"]') if path.exists() else -1 for path in paths]
    mtimes = [path.stat().st_mtime_ns if path.exists() else 0 for path in paths]
    probe = await StormProbe.start(setup.prosody.c2sPort, sender)
    pre: dict[str, Any] = {
        "pre: probe users in the storm": sum(1 for i in (sender, sender + 1) if i < stormUsers),
        "pre: probe users stored with all contacts": sum(1 for n in stored if n == setup.contacts),
        "pre: probe user's warm-up get, items": probe.items,
        "pre: probe users' stored rosters rewritten by it": sum(
            1 for path, mtime in zip(paths, mtimes) if path.exists() and path.stat().st_mtime_ns != mtime),
    }
    if setup.mode == "B":
        setup.webappCall("POST", "/reset")  # the warm-up's fetch is no part of the storm's
    if list(pre.values()) != [0, PROBE_ACCOUNTS, setup.contacts, 0]:
        await probe.stop()
        raise RuntimeError(f"storm probe: preconditions not met: {pre}")
    return probe, pre


async def loginStorm(setup: Setup, users: int, variant: str = "nostate", probeIdle: float = 0.0,
                     profile: str | None = None) -> dict[str, Any]:
    """
    Scenario 2: C{users} log in at once (200 handshakes at a time) and get
    their roster once, none of them cached by rosteradmin; see L{STORMS}.

    @param probeIdle: Seconds of the storm probe's idle baseline before a
        storm of L{PROBED_STORMS} (0: no probe).
    @param profile: Record rosteradmin with py-spy into this file during
        the storm (B only).
    """
    pre = prepareStorm(setup, users, variant)
    probe: StormProbe | None = None
    if probeIdle > 0 and variant in PROBED_STORMS:
        probe, probePre = await startStormProbe(setup, users)
        pre.update(probePre)
        await asyncio.sleep(probeIdle)
    latencies: list[float] = []
    logins: list[float] = []
    totals: list[float] = []
    limit = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with limit:
            session = LoadClient(username(i), DOMAIN)
            began = time.perf_counter()
            await session.login(setup.prosody.c2sPort, PASSWORD)
            logins.append(time.perf_counter() - began)
            latency, _ = await session.rosterGet()
            latencies.append(latency)
            totals.append(time.perf_counter() - began)
            session.sendPresence()
            await session.close()

    profiler = Profiler(setup.component.pid, profile) if profile is not None and setup.component else None
    if setup.tap is not None:
        setup.tap.reset()
    load = os.getloadavg()[0]
    if probe is not None:
        await probe.during()
    startedAt = time.time()
    answeredBefore = metrics(setup)["rosteradmin_roster_queries_total"] if setup.mode == "B" else 0.0
    before = setup.cpu()
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(users)))
    elapsed = time.perf_counter() - started
    if setup.mode == "B":
        await deployed.settled(setup)  # the fetches the storm's presences started count too
        answered = metrics(setup)["rosteradmin_roster_queries_total"] - answeredBefore
    result = {**pre, "rosters/s": users / elapsed, **{k: v * 1000 for k, v in percentiles(latencies).items()},
              **{f"login (connect to bound) {k}": v * 1000 for k, v in percentiles(logins).items() if k != "p95"},
              **{f"login+roster {k}": v * 1000 for k, v in percentiles(totals).items() if k != "p95"},
              **cpuPerThousand(before, setup.cpu(), users)}
    if profiler is not None:
        profiler.stop(users, f"{STORM_NAMES[variant]} ({users} users), logins")
    if probe is not None:
        phases, failures = await probe.stop()
        result.update(phases)
        for what, reason in failures.items():
            print(f"login storm {setup.mode} ({users} users, {variant}): {what} probes failed, first: {reason}",
                  flush=True)
    stored = storedRosters(setup, users)
    result["stored rosters rewritten by the storm"] = sum(1 for _, mtime in stored if mtime >= startedAt)
    result["storm users stored with all contacts after"] = sum(1 for n, _ in stored if n == setup.contacts)
    if setup.mode == "B":
        stats = setup.webappCall("GET", "/stats")
        result["fetches"] = stats["requests"]
        # The others Prosody answered from its store (promised versions).
        result["roster gets answered by rosteradmin"] = answered
        result["fetches = users"] = stats["requests"] == users == stats["distinct"]
    result["load average at start (1 min)"] = load
    result.update(tapCounts(setup, users))
    return result


async def bulkRefresh(setup: Setup, users: int, online: int = 100) -> dict[str, Any]:
    """
    Scenario 3 (B only): one contact changed for C{users} users, one POST.
    """
    setup.restartComponent()
    sessions = await connectMany([username(i) for i in range(online)], DOMAIN, setup.prosody.c2sPort, PASSWORD)
    for session in sessions:
        await session.rosterGet()
        session._send("<presence/>")
    await asyncio.sleep(1)
    setup.webappCall("POST", "/bump")
    setup.webappCall("POST", "/reset")
    body = json.dumps([username(i) for i in range(users)]).encode()
    before = setup.cpu()
    started = time.perf_counter()
    posting = asyncio.create_task(
        asyncio.to_thread(_post, f"http://127.0.0.1:{setup.httpPort}/roster_admin/refresh", body))
    # Meanwhile the last user of the refresh, not cached, logs in.
    await asyncio.sleep(0.5)
    late = LoadClient(username(users - 1), DOMAIN)
    await late.login(setup.prosody.c2sPort, PASSWORD)
    loginLatency, _ = await late.rosterGet()
    await late.close()
    reply = await posting
    elapsed = time.perf_counter() - started
    cpu = cpuPerThousand(before, setup.cpu(), users)
    await asyncio.sleep(1)
    pushes = sum(s.pushes for s in sessions)
    for session in sessions:
        await session.close()
    stats = setup.webappCall("GET", "/stats")
    return {"seconds to reply": elapsed, "roster get ms of a login meanwhile": loginLatency * 1000,
            "updated": reply["updated"], "errors": reply["errors"],
            "pushes received": pushes, "online clients": online,
            "peak web app sockets": stats["peak_concurrent"], "fetch concurrency": 64, **cpu}


class Profiler:
    """
    py-spy recording a process (rosteradmin) into a file, as raw collapsed
    stacks (one line per distinct stack, with its sample count), until
    L{stop}.  py-spy pauses the process for each sample (its default: whole
    stacks), which costs it a little time at 200 Hz.

    py-spy drops the samples of threads it finds idle, but on this shared
    2-core machine a thread that waits for a core is runnable, not idle: in
    a storm py-spy counted about 2.7 times the CPU time C{/proc} did.  So
    the process's CPU seconds over the same window (from C{/proc}) go into
    C{FILE.json}, and L{bench.pyspysummary} scales the samples to them: the
    shares come from py-spy, the seconds from C{/proc}.
    """

    #: More py-spy options (C{--py-spy-options}).
    options: list[str] = ["--threads"]

    def __init__(self, pid: int, output: str, rate: int = 200) -> None:
        self.log = Path(output + ".py-spy.log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--output", output,
                 "--rate", str(rate), *self.options], stdout=log, stderr=subprocess.STDOUT)
        # Wait until it samples: what it misses of the work would not be
        # in the profile.
        deadline = time.monotonic() + 20
        while b"Sampling process" not in self.log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"py-spy did not start sampling {pid}: see {self.log}")
            time.sleep(0.05)
        self.pid = pid
        self.output = output
        self.rate = rate
        self.cpuStart = cpuSeconds(pid)
        self.started = time.perf_counter()

    def stop(self, work: int = 0, what: str = "") -> None:
        """
        Stop recording, and write C{FILE.json}: the CPU seconds C{/proc}
        counted for the process over the recording, its wall seconds, the
        rate, and how much work (C{work} logins or gets) it covered.
        """
        cpu = cpuSeconds(self.pid) - self.cpuStart
        wall = time.perf_counter() - self.started
        self.process.send_signal(signal.SIGINT)
        self.process.wait(60)
        Path(self.output + ".json").write_text(json.dumps(
            {"cpu_seconds": cpu, "wall_seconds": wall, "rate": self.rate, "work": work, "what": what}) + "\n")


def cpuPerThousand(before: dict[str, float], after: dict[str, float], users: int) -> dict[str, float]:
    """
    CPU seconds per 1,000 users of each process: shows which one a
    scenario's throughput is bound by.
    """
    return {f"cpu s/1k users ({name})": (after[name] - before[name]) * 1000 / users for name in after}


def _post(url: str, body: bytes) -> dict[str, Any]:
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=600) as r:
        return json.load(r)


async def largeRoster(setup: Setup, size: int) -> dict[str, Any]:
    """
    Scenario 5: one user with C{size} contacts: full and ver-current gets.
    """
    session = LoadClient(username(0), DOMAIN)
    await session.login(setup.prosody.c2sPort, PASSWORD)
    _, reply = await session.rosterGet(ver="")
    query = reply.find("{jabber:iq:roster}query")
    items = len(query) if query is not None else 0
    version = query.get("ver") if query is not None else None
    full = [(await session.rosterGet(ver=""))[0] for _ in range(20)]
    current = [(await session.rosterGet(ver=version))[0] for _ in range(20)]
    await session.close()
    return {"items": items, "full get ms": statistics.median(full) * 1000,
            "ver-current get ms": statistics.median(current) * 1000}


async def largeFirstSyncRuns(workdir: Path, args: argparse.Namespace, contacts: int) -> list[dict[str, Any]]:
    """
    Scenario 6 (B only, L{bench.firstsync}): each run on a fresh Prosody
    whose storage holds no roster for the big user.
    """
    users = usersNeeded(contacts, args.sync_idle, args.sync_timeout, 0.2)
    include = Path(args.prosody_b_config).resolve() if args.prosody_b_config else None
    if args.sync_one_per_item:
        include = onePerItemConfig(workdir, include)
    results = []
    for run in range(args.runs):
        setup = Setup(workdir / f"first-sync-{run}", "B", users, SMALL_ROSTER, args.delay, include=include)
        prepareStorage(setup.prosody.dataPath)
        setup.start()
        try:
            setup.webappCall("POST", f"/size/0/{contacts}")
            results.append(await largeFirstSync(setup, contacts, users, args.sync_idle, args.sync_timeout))
        finally:
            setup.stop()
    return results


async def fullSyncRuns(workdir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """
    Scenario 7 (B only, L{bench.fullsync}): each run on a fresh Prosody
    that stores no roster of the listed users, and a new state file.
    """
    listed = args.full_sync_users
    fresh = fullsync.freshNeeded(args.sync_idle, args.full_sync_timeout, 0.2)
    results = []
    for run in range(args.runs):
        setup = Setup(workdir / f"full-sync-{run}", "B", listed + fresh + 2, 50, args.delay)
        fullsync.prepareStorage(setup.prosody.dataPath, listed)
        statePath = setup.dir / "state.sqlite"
        statePath.unlink(missing_ok=True)
        setup.extraConfig = {"users_url": f"http://127.0.0.1:{setup.webappPort}/users", "state": str(statePath),
                             "no_start_sync": True}
        setup.start()
        try:
            setup.webappCall("POST", f"/listed/{listed}/{fullsync.PAGE_SIZE}")
            results.append(await fullsync.fullSync(setup, listed, 50, fresh, statePath, args.sync_idle,
                                                   args.full_sync_timeout))
        finally:
            setup.stop()
    return results


async def refreshMemoryRuns(workdir: Path, args: argparse.Namespace) -> dict[int, list[dict[str, Any]]]:
    """
    Scenario 8 (B only, L{bench.refreshmemory}): one Prosody and web app,
    and for each cache bound a new rosteradmin with a new state file.
    """
    users, contacts = args.memory_users, 10
    maxBody = 1024 * 1024  # rosteradmin's default --max-body-bytes, not raised
    results: dict[int, list[dict[str, Any]]] = defaultdict(list)
    setup = Setup(workdir / "refresh-memory", "B", users + WARMED, contacts, args.delay)
    setup.start()
    try:
        for run in range(args.runs):
            for index, cap in enumerate(args.memory_caps):
                statePath = setup.dir / f"state-{run}-{index}.sqlite"
                statePath.unlink(missing_ok=True)
                setup.extraConfig = {"cache_max_contacts": cap, "state": str(statePath)}
                setup.gcLog = setup.dir / f"gc-{run}-{index}.log"
                setup.restartComponent()
                setup.webappCall("POST", "/reset")
                results[cap].append(await refreshMemory(setup, users, contacts, cap, maxBody, setup.gcLog))
    finally:
        setup.stop()
    return results


async def reactorStallRuns(workdir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """
    Scenario 9 (B only, L{bench.reactorstall}): one Prosody and web app,
    a new rosteradmin process per phase.
    """
    results = []
    setup = Setup(workdir / "reactor-stall", "B", args.stall_contacts + 10, 20, args.delay)
    setup.stallLog = setup.dir / "stalls.log"
    setup.gcLog = setup.dir / "gc.log"
    setup.start()
    try:
        for _ in range(args.runs):
            results.append(await reactorStall(setup, args.stall_users, args.stall_contacts))
    finally:
        setup.stop()
    return results


async def floodRuns(tmp: Path, args: argparse.Namespace,
                    results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """
    Scenario 11 (L{bench.flood}): in each run, A and then B on a new
    Prosody each; B's delegates every roster get, so that the flood
    reaches rosteradmin's per-user gate.
    """
    include = delegateAllConfig(tmp, Path(args.prosody_b_config).resolve() if args.prosody_b_config else None)
    name = f"11 one client floods roster gets ({OTHERS} others)"
    for run in range(args.runs):
        for mode in ("A", "B"):
            # 50 distinct contacts each: more users than contacts.
            setup = Setup(tmp / f"flood-{run}", mode, 60, 50, args.delay, include=include if mode == "B" else None)
            setup.start()
            try:
                LOADS.append((f"flood run {run + 1} {mode}", os.getloadavg()[0]))
                results[name][mode].append(await oneClientFlood(setup, mode))
            finally:
                setup.stop()


async def loginCostRuns(tmp: Path, args: argparse.Namespace,
                        results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """
    Scenario 13 (L{bench.logincost}): in each run, A and then B on a new
    Prosody each; A's native logins are the baseline of every B variant.
    """
    users = args.login_cost_users
    for run in range(args.runs):
        native: dict[str, Any] = {}
        for mode in ("A", "B"):
            setup = Setup(tmp / f"login-cost-{run}", mode, 3 * users, 50, args.delay)
            setup.extraConfig["state"] = str(setup.dir / "state.sqlite")
            setup.start()
            try:
                LOADS.append((f"login-cost run {run + 1} {mode}", os.getloadavg()[0]))
                measured = await logincost.loginCost(setup, users, PASSWORD)
            finally:
                setup.stop()
            if mode == "A":
                native = measured["native"]
                continue
            for variant, result in measured.items():
                results[logincost.NAMES[variant]]["A"].append(native)
                results[logincost.NAMES[variant]]["B"].append(result)


async def slowHTTPRuns(tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """
    Scenario 12 (B only, L{bench.slowhttp}): each run on a new Prosody and
    rosteradmin.
    """
    results = []
    for run in range(args.runs):
        setup = Setup(tmp / f"slow-http-{run}", "B", slowhttp.usersNeeded(), SMALL_ROSTER, args.delay)
        setup.extraConfig["http_max_connections"] = slowhttp.CAP
        setup.start()
        try:
            LOADS.append((f"slow-http run {run + 1}", os.getloadavg()[0]))
            results.append(await slowhttp.slowClients(setup))
        finally:
            setup.stop()
    return results


async def takeoverRuns(tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """
    Scenario 14 (B only, L{bench.takeover}): each run on a new Prosody and
    database, with two rosteradmin processes.
    """
    # The tests' private cluster, reused rather than copied.
    from tests.postgresql import PostgreSQLServer

    server = PostgreSQLServer()
    server.start()
    results = []
    try:
        for run in range(args.runs):
            setup = Setup(tmp / f"takeover-{run}", "B", takeover.USERS, SMALL_ROSTER, args.delay)
            setup.start(component=False)
            try:
                LOADS.append((f"takeover run {run + 1}", os.getloadavg()[0]))
                results.append(await takeover.takeovers(setup, server.newDatabase(), args.kills, PASSWORD))
            finally:
                setup.stop()
    finally:
        server.remove()
    return results


def memory(users: int, contacts: int) -> dict[str, Any]:
    """
    Scenario 4, in a fresh process: RSS per cached contact.
    """
    out = subprocess.run([sys.executable, "-m", "bench.memory", str(users), str(contacts)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def summarise(runs: list[dict[str, Any]]) -> dict[str, str]:
    table: dict[str, str] = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        if all(isinstance(v, bool) for v in values):
            table[key] = "yes" if all(values) else "NO"
        elif all(isinstance(v, (int, float)) for v in values):
            lo, mid, hi = min(values), statistics.median(values), max(values)
            table[key] = _number(mid) if lo == hi else f"{_number(mid)} ({_number(lo)}–{_number(hi)})"
        elif all(isinstance(v, str) for v in values):
            table[key] = " / ".join(sorted(set(values)))
    return table


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def printTable(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print(" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
        if index == 0:
            print("-+-".join("-" * w for w in widths))


async def main(args: argparse.Namespace) -> None:
    scale = 0.1 if args.quick else 1.0
    rows: list[tuple[str, ...]] = [("scenario", "metric", "A: Prosody", "B: rosteradmin")]
    results: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    ratios: dict[str, list[float]] = defaultdict(list)
    if args.scenario == "deployed" and args.count_instructions:
        instructions.valgrind()  # before any run, not after the first one's results
    with tempfile.TemporaryDirectory(prefix="rosteradmin-bench-") as tmp:
        if args.scenario == "deployed":
            await deployedScenarios(Path(tmp), args, results)
        if args.scenario in ("all", "targets"):
            await classicScenarios(Path(tmp), args, scale, results)
        if args.scenario == "large-roster":
            await largeRosterScenarios(Path(tmp), args, results)
        if args.scenario in ("all", "large-first-sync"):
            contacts = args.sync_contacts if args.sync_contacts is not None else int(3000 * scale)
            results[f"6 large first sync ({contacts} contacts)"]["B"] = await largeFirstSyncRuns(
                Path(tmp), args, contacts)
        if args.scenario == "full-sync":
            results[f"7 full sync ({args.full_sync_users} users x 50)"]["B"] = await fullSyncRuns(Path(tmp), args)
        if args.scenario == "refresh-memory":
            for cap, runs in (await refreshMemoryRuns(Path(tmp), args)).items():
                results[f"8 refresh memory ({args.memory_users} x 10, cache max {cap:,})"]["B"] = runs
        if args.scenario == "flood":
            await floodRuns(Path(tmp), args, results)
        if args.scenario == "login-cost":
            await loginCostRuns(Path(tmp), args, results)
        if args.scenario == "slow-http":
            results[f"12 slow HTTP clients ({slowhttp.SLOW:,} open, cap {slowhttp.CAP:,})"]["B"] = (
                await slowHTTPRuns(Path(tmp), args))
        if args.scenario == "takeover":
            results[f"14 takeover ({args.kills} kills of the leader, {takeover.PROBE_USERS} clients asking)"]["B"] = (
                await takeoverRuns(Path(tmp), args))
        if args.scenario == "reactor-stall":
            results[f"9 reactor stall ({args.stall_users:,} users, {args.stall_contacts:,} contacts)"]["B"] = (
                await reactorStallRuns(Path(tmp), args))
    printResults(results, rows, ratios)
    if LOADS:
        print()
        print("load average (1 min) at the start of each run: " + ", ".join(f"{label} {load:.2f}" for label, load in LOADS))


#: Scenario names, with what each one's precondition is.
WARM = {False: "1 warm gets, no ver (100 clients)", True: "1v warm gets, current ver (100 clients)"}
STORM_NAMES = {"nostate": "2 login storm, store right, no --state", "cold": "2c cold login storm, empty store",
               "steady": "2s steady login storm, store right, --state current"}
#: The scenario number of each storm variant (C{--profile-scenario}).
STORM_SCENARIOS = {"nostate": "2", "cold": "2c", "steady": "2s"}

#: The 1-minute load average at the start of each run, by run label.
LOADS: list[tuple[str, float]] = []


def noteLoad(label: str) -> None:
    """
    Record the load average at the start of run C{label} in L{LOADS} and
    print all three figures.
    """
    load = os.getloadavg()
    LOADS.append((label, load[0]))
    print(f"{label}: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)


async def classicScenarios(tmp: Path, args: argparse.Namespace, scale: float,
                           results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """
    Scenarios 1 to 5; with C{--scenario targets}, only 1, 1v, 2, 2c and 2s
    (the ones docs/benchmarks.md's targets name).
    """
    targets = args.scenario == "targets"
    storm = [int(n * scale) for n in args.storm_sizes]
    refreshSizes = [] if targets else [int(1000 * scale), int(10000 * scale)]
    users = max(refreshSizes + storm + [100]) + PROBE_ACCOUNTS
    gets = int(10000 * scale)
    include = Path(args.prosody_b_config).resolve() if args.prosody_b_config else None
    if args.delegate_all:
        include = delegateAllConfig(tmp, include)
    for run in range(args.runs):
        # A and B alternate within each run, so both see the same machine.
        for mode in ("A", "B"):
            setup = Setup(tmp / f"classic-{run}", mode, users, 50, args.delay,
                          include=include if mode == "B" else None, tap=args.tap)
            # Scenario 1's clients each send 20 and more gets a second, which
            # rosteradmin's per-user gate (query_rate, 20 by default) refuses
            # as a flood once B answers that fast (with --delegate-all it did,
            # and the run stopped): the bench measures throughput, not the
            # gate.  No other scenario here sends a user more than one get.
            setup.extraConfig["query_rate"] = 1000.0
            setup.start()
            try:
                noteLoad(f"run {run + 1} {mode}")
                profiled = mode == "B" and args.profile and run == 0
                profiler = None
                if profiled and args.profile_scenario == "1":
                    profiler = Profiler(setup.component.pid, args.profile)  # type: ignore[union-attr]
                for withVer in (False, True):
                    results[WARM[withVer]][mode].append(await warmGets(setup, 100, gets, withVer))
                if profiler is not None:
                    profiler.stop(2 * gets, "scenarios 1 and 1v, roster gets")
                for n in storm:
                    for variant in ("nostate", "cold", "steady"):
                        profile = args.profile if (profiled and n == storm[0]
                                                   and STORM_SCENARIOS[variant] == args.profile_scenario) else None
                        results[f"{STORM_NAMES[variant]} ({n} users)"][mode].append(
                            await loginStorm(setup, n, variant, args.storm_idle, profile))
                if mode == "B":
                    for n in refreshSizes:
                        results[f"3 bulk refresh ({n} users)"][mode].append(await bulkRefresh(setup, n))
            finally:
                setup.stop()
    if targets:
        return
    await largeRosterScenarios(tmp, args, results)
    for users_, contacts in ((int(10000 * scale), 50), (int(100000 * scale), 20)):
        results[f"4 memory ({users_} x {contacts})"]["B"] = [memory(users_, contacts) for _ in range(args.runs)]


#: The deployed scenarios' names (L{bench.deployed}).
DEPLOYED_WARM = {False: "D1 deployed, restarted: warm gets, no ver", True: "D1v deployed, restarted: warm gets, current ver"}
DEPLOYED_STORM = "D2 deployed, restarted: login storm"
DEPLOYED_COUNTED = "D2i deployed, restarted: login storm, Prosody's instructions counted"


def startedDeployed(workdir: Path, mode: str, users: int, prosodyConfig: Path, delay: float,
                    counted: bool = False) -> Setup:
    """
    A started setup of the deployed scenarios (L{bench.deployed}): users of
    50 contacts; in B, rosteradmin with the users list and a state
    (L{deployed.configure}).

    @param counted: Run Prosody under callgrind (D2i).
    """
    setup = Setup(workdir, mode, users, 50, delay, include=prosodyConfig, counted=counted)
    setup.extraConfig["query_rate"] = 1000.0  # as in scenario 1: throughput, not the gate
    if mode == "B":
        deployed.configure(setup)
    setup.start()
    return setup


async def deployedScenarios(tmp: Path, args: argparse.Namespace,
                            results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """
    D1, D1v and D2 (L{bench.deployed}): per run, A and then B on a new
    Prosody each; in B, rosteradmin is restarted on its state (after its
    start-up sync) before each scenario.  After the first run, D2i.
    """
    users = args.deployed_users
    clients = min(100, users)
    include = deployed.deployedConfig(tmp, ROOT / "contrib" / "prosody" / "rosteradmin.cfg.lua")
    for run in range(args.runs):
        for mode in ("A", "B"):
            prosodyConfig = include if mode == "B" else ROOT / "bench" / "prosody-a.cfg.lua"
            luaProfile = None
            if args.prosody_profile and run == 0:
                luaProfile = LuaProfile(Path(f"{args.prosody_profile}.{mode}.raw").resolve())
                prosodyConfig = profiledConfig(tmp, prosodyConfig, luaProfile.output, args.prosody_profile_charge)
            setup = startedDeployed(tmp / f"deployed-{run}", mode, users, prosodyConfig, args.delay)
            try:
                noteLoad(f"run {run + 1} {mode}")
                profiled = mode == "B" and args.profile and run == 0
                for withVer in (False, True):
                    pre = await deployed.restartedOnState(setup, users)
                    if luaProfile is not None:
                        await luaProfile.start()
                    profiler = (Profiler(setup.component.pid, f"{args.profile}.{'D1v' if withVer else 'D1'}")  # type: ignore[union-attr]
                                if profiled and args.profile_scenario == "D1" else None)
                    results[f"{DEPLOYED_WARM[withVer]} ({clients} clients)"][mode].append(
                        await warmGets(setup, clients, args.deployed_gets, withVer, presence=True, pre=pre))
                    if profiler is not None:
                        profiler.stop(args.deployed_gets, DEPLOYED_WARM[withVer])
                    if luaProfile is not None:
                        await luaProfile.stop(f"{args.prosody_profile}.{mode}.{'D1v' if withVer else 'D1'}.folded")
                pre = await deployed.restartedOnState(setup, users)
                profiler = (Profiler(setup.component.pid, args.profile)  # type: ignore[union-attr]
                            if profiled and args.profile_scenario == "D2" else None)
                if luaProfile is not None:
                    await luaProfile.start()
                results[f"{DEPLOYED_STORM} ({users} users)"][mode].append(
                    await deployed.deployedStorm(setup, users, pre))
                if luaProfile is not None:
                    await luaProfile.stop(f"{args.prosody_profile}.{mode}.D2.folded")
                if profiler is not None:
                    profiler.stop(users, f"{DEPLOYED_STORM} ({users} users), logins")
            finally:
                setup.stop()
        if run == 0 and args.count_instructions:
            await countedScenario(tmp, include, args, results)


async def countedScenario(tmp: Path, include: Path, args: argparse.Namespace,
                          results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """
    D2i (L{bench.instructions}), once: the count moves by under 1 % from
    run to run.  Its storm has L{instructions.USERS} users whatever
    C{--deployed-users} says, so that its counts compare across runs.

    @param include: B's Prosody configuration, as in D2.
    """
    for mode in ("A", "B"):
        prosodyConfig = include if mode == "B" else ROOT / "bench" / "prosody-a.cfg.lua"
        setup = startedDeployed(tmp / "counted", mode, instructions.USERS, prosodyConfig, args.delay, counted=True)
        try:
            noteLoad(f"counted {mode}")
            pre = await deployed.restartedOnState(setup, instructions.USERS)
            results[f"{DEPLOYED_COUNTED} ({instructions.USERS} users)"][mode].append(
                await instructions.countedStorm(setup, pre))
        finally:
            setup.stop()


def delegateAllConfig(tmp: Path, include: Path | None) -> Path:
    """
    B's Prosody configuration (contrib's, or C{include}) with contrib's
    mod_rosteradmin_roster answering no roster get itself
    (C{rosteradmin_answer_rosters = false}): every query is delegated to
    rosteradmin, as before the module answered promised rosters, so each
    login of 2, 2c and 2s costs rosteradmin a delegated get (C{--delegate-all},
    to measure that path).  The file lives in C{tmp}, so it names contrib's
    directory as a plugin path itself (L{LocalProsody} adds the included
    file's own directory).
    """
    base = include if include is not None else ROOT / "contrib" / "prosody" / "rosteradmin.cfg.lua"
    path = tmp / "prosody-b-delegate-all.cfg.lua"
    path.write_text(f"""-- Generated by bench/run.py --delegate-all.
plugin_paths = {{ "/usr/lib/prosody/modules", "{base.parent}", "{ROOT / 'contrib' / 'prosody'}" }}
Include "{base}"
VirtualHost "{DOMAIN}"
    rosteradmin_answer_rosters = false
""")
    return path


def onePerItemConfig(tmp: Path, include: Path | None) -> Path:
    """
    B's Prosody configuration (contrib's, or C{include}) without contrib's
    mod_rosteradmin_roster: rosteradmin writes one item per privileged set
    (mod_privilege alone), and Prosody saves the whole roster on each, the
    costliest path (C{--sync-one-per-item}, scenario 6).
    """
    base = include if include is not None else ROOT / "contrib" / "prosody" / "rosteradmin.cfg.lua"
    path = tmp / "prosody-b-one-per-item.cfg.lua"
    path.write_text(f"""-- Generated by bench/run.py --sync-one-per-item.
plugin_paths = {{ "/usr/lib/prosody/modules", "{base.parent}", "{ROOT / 'contrib' / 'prosody'}" }}
Include "{base}"
VirtualHost "{DOMAIN}"
    modules_disabled = {{ "rosteradmin_roster" }}
""")
    return path


async def largeRosterScenarios(tmp: Path, args: argparse.Namespace,
                               results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """
    Scenarios 5 (A and B) and 5L (B).
    """
    for mode in ("A", "B"):
        big = Setup(tmp / "large", mode, LARGEST_USERS, 50, args.delay)
        writeStoredRoster(big.prosody.dataPath, 0, LARGEST_USERS, 5000)
        big.start()
        try:
            if mode == "B":
                big.webappCall("POST", "/size/0/5000")
                big.restartComponent()
            for _ in range(args.runs):
                results["5 large roster (5000 contacts)"][mode].append(await largeRoster(big, 5000))
            if mode == "B":
                results["5L largest roster served, default stanza limit"]["B"].append(await largestRoster(big))
        finally:
            big.stop()


#: Accounts of the large-roster setup: enough for the largest roster
#: searched by L{largestRoster}, each contact a distinct user.
LARGEST_USERS = 12001


async def largestRoster(setup: Setup, low: int = 1000, high: int = 12000) -> dict[str, Any]:
    """
    Scenario 5L (B): the largest roster of the bench's shape (contacts
    C{u1234@example.org}, named C{User 1234}, in one group C{Team} or
    C{Friends}) that rosteradmin serves through a Prosody with the default
    512 KiB C{component_stanza_size_limit} and the default
    C{--max-stanza-bytes}: a bisection over the web app's size of C{u0},
    each step a refresh (which stores it) and a roster get.
    """
    async def served(size: int) -> tuple[bool, str]:
        setup.webappCall("POST", f"/size/0/{size}")
        try:
            await asyncio.to_thread(_post, f"http://127.0.0.1:{setup.httpPort}/roster_admin/refresh",
                                    json.dumps([username(0)]).encode())
        except urllib.error.HTTPError as e:  # a refresh whose user failed; the get below says what it serves
            print(f"largest roster: refresh of {size} contacts: {e.code} {e.read()[:300]!r}", flush=True)
        session = LoadClient(username(0), DOMAIN)
        await session.login(setup.prosody.c2sPort, PASSWORD)
        try:
            reply = await session.iq("get", "<query xmlns='jabber:iq:roster'/>")
        finally:
            await session.close()
        query = reply.find("{jabber:iq:roster}query")
        if reply.get("type") == "result" and query is not None and len(query) == size:
            return True, ""
        error = reply.find("{jabber:client}error")
        return False, "".join(child.tag.rsplit("}", 1)[-1] + " " for child in error) if error is not None else "?"

    ok, _ = await served(low)
    refusedWith = ""
    while ok and high - low > 1:
        middle = (low + high) // 2
        fits, why = await served(middle)
        if fits:
            low = middle
        else:
            high, refusedWith = middle, why
    await served(high)
    stored = setup.prosody.storedRoster(username(0)).count('["subscription"]')
    await served(low)
    return {"largest roster served (contacts)": low, "smallest refused (contacts)": high,
            "refused with": refusedWith.strip() or "-", "stored items of the last refused size": stored,
            "rosteradmin connected after": bool(health(setup)["connected"])}


def printResults(results: dict[str, dict[str, list[dict[str, Any]]]], rows: list[tuple[str, ...]],
                 ratios: dict[str, list[float]]) -> None:
    for scenario in sorted(results):
        a = summarise(results[scenario]["A"]) if results[scenario]["A"] else {}
        b = summarise(results[scenario]["B"])
        for metric in b:
            if not inPhases(metric, b):
                rows.append((scenario, metric, a.get(metric, "-"), b[metric]))
        for metric in ("gets/s", "rosters/s", "p50", "p99", "mean", "gets over 4 x p10 (%)", "login+roster p99",
                       "full get ms", "cpu s/10k (prosody)", "cpu ms/login (prosody)", instructions.INSTRUCTIONS):
            if metric in a and metric in b:
                ra = statistics.median(r[metric] for r in results[scenario]["A"])
                rb = statistics.median(r[metric] for r in results[scenario]["B"])
                if ra:  # A's storms may have no slow mode at all
                    ratios[f"{scenario}: {metric} B/A"].append(rb / ra)
        for mode, table in (("A", results[scenario]["A"]), ("B", results[scenario]["B"])):
            if table and NATIVE_P99 + " during" in table[0]:
                during = statistics.median(r[NATIVE_P99 + " during"] for r in table)
                idle = statistics.median(r[NATIVE_P99 + " idle"] for r in table)
                ratios[f"{scenario}: {NATIVE_P99} during/idle, {mode}"].append(during / idle)
        if "cpu s/10k (rosteradmin)" in b:
            cpuB = [r["cpu s/10k (rosteradmin)"] for r in results[scenario]["B"]]
            cpuA = [r["cpu s/10k (prosody)"] for r in results[scenario]["A"]]
            ratios[f"{scenario}: rosteradmin CPU / Prosody(A) CPU per get"].append(
                statistics.median(cpuB) / statistics.median(cpuA))
    print()
    printTable(rows)
    print()
    for name, values in ratios.items():
        print(f"{name}: {values[0]:.2f}")
    for scenario in sorted(results):
        a = summarise(results[scenario]["A"]) if results[scenario]["A"] else {}
        printPhases(scenario, summarise(results[scenario]["B"]), a)


#: Suffixes of metrics measured in two phases of one scenario (B only),
#: printed side by side by L{printPhases}.
PHASES = (" idle", " during")

#: The storms' native probe p99, whose during/idle ratio is printed.
NATIVE_P99 = "native probe: message rtt p99"


def inPhases(metric: str, table: dict[str, str]) -> bool:
    """
    Whether L{printPhases} prints C{metric}: an idle or during one, or an
    "after" one (scenario 11) of a metric also measured idle.
    """
    return metric.endswith(PHASES) or (metric.endswith(" after") and metric[:-len(" after")] + " idle" in table)


def printPhases(scenario: str, table: dict[str, str], tableA: dict[str, str] | None = None) -> None:
    """
    A scenario's phased metrics as one row each: idle, during, and after
    where measured; B only, or A and B where A has them too (the storm
    probes, scenario 11).
    """
    names = list(dict.fromkeys(m[:-len(" idle")] for m in table if m.endswith(" idle")))
    if not names:
        return
    phases = ("idle", "during") + (("after",) if any(n + " after" in table for n in names) else ())
    print()
    if tableA and any(m.endswith(" idle") for m in tableA):
        rows: list[tuple[str, ...]] = [(scenario,) + tuple(f"{mode} {phase}" for mode in "AB" for phase in phases)]
        rows += [(name,) + tuple(t.get(f"{name} {phase}", "-") for t in (tableA, table) for phase in phases)
                 for name in names]
    else:
        rows = [(f"{scenario}, B",) + phases]
        rows += [(name,) + tuple(table.get(f"{name} {phase}", "-") for phase in phases) for name in names]
    printTable(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes, to try the harness")
    parser.add_argument("--delay", type=float, default=0.005, help="web app answer delay in seconds")
    parser.add_argument("--profile", help="write a py-spy profile (raw collapsed stacks) of rosteradmin here:"
                                          " of scenario 1 and 1v, or of --profile-scenario")
    parser.add_argument("--prosody-profile", metavar="PREFIX",
                        help="profile Prosody's Lua during D1, D1v and D2 of run 1 (bench/mod_benchprofile.lua), A and "
                             "B, into PREFIX.<A|B>.<scenario>.folded; compare with python -m bench.luaprofile")
    parser.add_argument("--prosody-profile-charge", choices=("cpu", "instructions"), default="cpu",
                        help="what a sample of --prosody-profile counts: CPU time, or Lua VM instructions (work,"
                             " unmoved by the machine's load; summarise with python -m bench.luaprofile"
                             " --instructions)")
    parser.add_argument("--profile-scenario", choices=("1", "2", "2c", "2s", "D1", "D2"), default=None,
                        help="what --profile records: scenarios 1 and 1v, or one storm (run 1, first storm size);"
                             " with the deployed scenarios, D1 (FILE.D1 and FILE.D1v, the default) or D2")
    parser.add_argument("--storm-idle", type=float, default=10.0,
                        help="seconds of the storm probe's idle baseline before 2c and 2s (0: no storm probe)")
    parser.add_argument("--scenario", choices=("deployed", "all", "targets", "large-roster", "large-first-sync",
                                               "full-sync", "refresh-memory", "reactor-stall", "flood", "slow-http",
                                               "login-cost", "takeover"),
                        default="deployed",
                        help="run D1, D1v and D2, the recommended deployment after a restart of rosteradmin on its"
                             " state, and D2i once (deployed, the default: bench/deployed.py,"
                             " bench/instructions.py); or scenarios 1 to 6 (all);"
                             " or only 1, 1v, 2, 2c and 2s (targets); or only 5 and 5L (large-roster);"
                             " or only scenario 6"
                             " (bench/firstsync.py), 7 (bench/fullsync.py), 8 (bench/refreshmemory.py)"
                             " or 9 (bench/reactorstall.py), 11 (flood: bench/flood.py) or 12 (slow-http:"
                             " bench/slowhttp.py), 13 (login-cost: bench/logincost.py) or 14 (takeover:"
                             " bench/takeover.py, with PostgreSQL); 7 to 14 run only when named")
    parser.add_argument("--deployed-users", type=int, default=1000,
                        help="users of the deployed scenarios (all synced; all in D2's storm; the first 100 in D1)")
    parser.add_argument("--no-count-instructions", dest="count_instructions", action="store_false",
                        help="skip D2i, the storm with Prosody's instructions counted under valgrind "
                             "(needs valgrind; about 3 minutes)")
    parser.add_argument("--deployed-gets", type=int, default=10000,
                        help="roster gets of each of D1 and D1v, shared by 100 clients")
    parser.add_argument("--login-cost-users", type=int, default=200,
                        help="users of each variant of scenario 13, logged in one at a time")
    parser.add_argument("--kills", type=int, default=takeover.KILLS,
                        help="kills of the leader per run of scenario 14")
    parser.add_argument("--storm-sizes", type=lambda v: [int(c) for c in v.split(",")], default=[1000],
                        help="users of each login storm (scenarios 2, 2c, 2s), comma-separated")
    parser.add_argument("--prosody-b-config", help="B's Prosody configuration instead of contrib's (experiments)")
    parser.add_argument("--delegate-all", action="store_true",
                        help="B's Prosody delegates every roster get (rosteradmin_answer_rosters = false), so that"
                             " scenarios 1 to 2s measure rosteradmin's answers, not the module's")
    parser.add_argument("--tap", action="store_true",
                        help="relay B's component stream through bench/streamtap.py and count stanzas per login"
                             " (profiling: it costs the load client CPU and adds a hop)")
    parser.add_argument("--sync-contacts", type=int, default=None,
                        help="contacts of the big user in scenario 6 (default 3,000; 300 with --quick)")
    parser.add_argument("--sync-one-per-item", action="store_true",
                        help="scenario 6 without contrib's mod_rosteradmin_roster in B's Prosody: one privileged set,"
                             " and one save of the whole roster, per contact")
    parser.add_argument("--sync-idle", type=float, default=30.0,
                        help="seconds of probes before the sync in scenario 6 (the idle baseline)")
    parser.add_argument("--sync-timeout", type=float, default=900.0,
                        help="seconds the big user waits for its roster in scenario 6")
    parser.add_argument("--full-sync-users", type=int, default=10000,
                        help="users listed and synced in scenario 7, 50 contacts each")
    parser.add_argument("--full-sync-timeout", type=float, default=600.0,
                        help="seconds scenario 7 waits for its sync (and sizes its probe users by)")
    parser.add_argument("--memory-users", type=int, default=100000,
                        help="users refreshed in scenario 8, 10 contacts each")
    parser.add_argument("--memory-caps", type=lambda v: [int(c) for c in v.split(",")], default=[1000000, 200000],
                        help="--cache-max-contacts values scenario 8 runs with, comma-separated")
    parser.add_argument("--stall-users", type=int, default=1_500_000,
                        help="users of the one-page users list of scenario 9")
    parser.add_argument("--stall-contacts", type=int, default=20_000,
                        help="contacts of the large roster of scenario 9")
    parser.add_argument("--py-spy-options", default="--threads",
                        help="more py-spy record options for --profile (default --threads: bench.pyspysummary"
                             " counts the main thread's samples); write --py-spy-options='--threads --gil'")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    arguments = parser.parse_args()
    if arguments.prosody_profile_charge != "cpu" and not arguments.prosody_profile:
        parser.error("--prosody-profile-charge goes with --prosody-profile")
    if arguments.profile_scenario is None:
        arguments.profile_scenario = "D1" if arguments.scenario == "deployed" else "1"
    Profiler.options = arguments.py_spy_options.split()
    asyncio.run(main(arguments))
