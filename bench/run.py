"""
Run every benchmark scenario and print one table.

    python -m bench.run [--runs 3] [--quick] [--profile bench-profile.txt]
    python -m bench.run --scenario large-first-sync [--sync-contacts 3000] [--runs 1]
    python -m bench.run --scenario full-sync [--full-sync-users 10000] [--runs 1]
    python -m bench.run --scenario refresh-memory [--memory-users 100000] [--memory-caps 1000000,200000]

Each scenario runs the same users and rosters against (A) Prosody
answering roster gets itself from its storage and (B) Prosody delegating
them to rosteradmin, on loopback, in the same process tree.  Results are
ratios and min/median/max over the runs; absolute numbers depend on the
machine.
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
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import fullsync
from bench.firstsync import SMALL_ROSTER, largeFirstSync, prepareStorage, usersNeeded
from bench.procstat import cpuSeconds
from bench.refreshmemory import WARMED, refreshMemory
from bench.rosters import DOMAIN, username, writeProsodyStorage, writeStoredRoster
from bench.xmppload import LoadClient, connectMany, percentiles
from rosteradmin.devprosody import LocalProsody, freePort

ROOT = Path(__file__).parent.parent
PASSWORD = "pw"


def rssBytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Setup:
    """
    Prosody (A: plain; B: delegating to rosteradmin), and for B the web app
    and the component as processes of their own.
    """

    def __init__(self, workdir: Path, mode: str, users: int, contacts: int, delay: float) -> None:
        self.mode, self.users, self.contacts, self.delay = mode, users, contacts, delay
        self.dir = workdir / mode
        self.dir.mkdir(parents=True, exist_ok=True)
        include = ROOT / "contrib" / "prosody" / "rosteradmin.cfg.lua" if mode == "B" else ROOT / "bench" / "prosody-a.cfg.lua"
        self.prosody = LocalProsody(self.dir / "prosody", include, logLevel="warn", hasComponents=mode == "B")
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

    def start(self) -> None:
        self.prosody.start()
        if self.mode == "B":
            self.webapp = subprocess.Popen(
                [sys.executable, "-m", "bench.webapp", str(self.webappPort), str(self.users),
                 str(self.contacts), str(self.delay)], cwd=ROOT)
            _waitForPort(self.webappPort)
            self.startComponent()

    def startComponent(self) -> None:
        config = self.dir / "rosteradmin.toml"
        config.write_text(f"""
jid = "{self.prosody.componentJID}"
secret = "{self.prosody.secret}"
domain = "{DOMAIN}"
xmpp_port = {self.prosody.componentPort}
roster_url = "http://127.0.0.1:{self.webappPort}/rosters/%s"
http = "tcp:{self.httpPort}:interface=127.0.0.1"
no_kick = true
iq_timeout = 60
fetch_timeout = 60
""" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in self.extraConfig.items()))
        log = open(self.dir / "rosteradmin.log", "ab")
        launcher, env = "from twisted.scripts.twistd import run; run()", {**os.environ, "PYTHONPATH": str(ROOT)}
        if self.gcLog is not None:
            launcher, env["BENCH_GC_LOG"] = "import bench.gclog; " + launcher, str(self.gcLog)
        self.component = subprocess.Popen(
            [sys.executable, "-c", launcher, "-n", "--pidfile=",
             "--logger", "bench.run.quietLogger", "rosteradmin", "--config", str(config)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
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
        self.prosody.stop()

    def cpu(self) -> dict[str, float]:
        pids = {"prosody": self.prosody._process.pid}  # type: ignore[union-attr]
        if self.component is not None:
            pids["rosteradmin"] = self.component.pid
        return {name: cpuSeconds(pid) for name, pid in pids.items()}

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


async def warmGets(setup: Setup, clients: int, gets: int) -> dict[str, Any]:
    """
    Scenario 1: C{clients} connected clients share C{gets} roster gets.
    """
    sessions = await connectMany([username(i) for i in range(clients)], DOMAIN, setup.prosody.c2sPort, PASSWORD)
    for session in sessions:
        await session.rosterGet()  # warm: B fetches and caches here
    latencies: list[float] = []

    async def loop(session: LoadClient) -> None:
        for _ in range(gets // clients):
            latency, _ = await session.rosterGet()
            latencies.append(latency)

    before = setup.cpu()
    started = time.perf_counter()
    await asyncio.gather(*(loop(s) for s in sessions))
    elapsed = time.perf_counter() - started
    after = setup.cpu()
    for session in sessions:
        await session.close()
    result = {"gets/s": len(latencies) / elapsed, **{k: v * 1000 for k, v in percentiles(latencies).items()}}
    for name in after:
        result[f"cpu s/10k ({name})"] = (after[name] - before[name]) * 10000 / len(latencies)
    return result


async def loginStorm(setup: Setup, users: int) -> dict[str, Any]:
    """
    Scenario 2: C{users} log in and fetch their roster once, cold cache.
    """
    if setup.mode == "B":
        setup.restartComponent()
        setup.webappCall("POST", "/reset")
    latencies: list[float] = []
    limit = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with limit:
            session = LoadClient(username(i), DOMAIN)
            await session.login(setup.prosody.c2sPort, PASSWORD)
            latency, _ = await session.rosterGet()
            latencies.append(latency)
            await session.close()

    before = setup.cpu()
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(users)))
    elapsed = time.perf_counter() - started
    result = {"rosters/s": users / elapsed, **{k: v * 1000 for k, v in percentiles(latencies).items()},
              **cpuPerThousand(before, setup.cpu(), users)}
    if setup.mode == "B":
        stats = setup.webappCall("GET", "/stats")
        result["fetches"] = stats["requests"]
        result["fetches = users"] = stats["requests"] == users == stats["distinct"]
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
    results = []
    for run in range(args.runs):
        setup = Setup(workdir / f"first-sync-{run}", "B", users, SMALL_ROSTER, args.delay)
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
    with tempfile.TemporaryDirectory(prefix="rosteradmin-bench-") as tmp:
        if args.scenario == "all":
            await classicScenarios(Path(tmp), args, scale, results)
        if args.scenario in ("all", "large-first-sync"):
            contacts = args.sync_contacts if args.sync_contacts is not None else int(3000 * scale)
            results[f"6 large first sync ({contacts} contacts)"]["B"] = await largeFirstSyncRuns(
                Path(tmp), args, contacts)
        if args.scenario == "full-sync":
            results[f"7 full sync ({args.full_sync_users} users x 50)"]["B"] = await fullSyncRuns(Path(tmp), args)
        if args.scenario == "refresh-memory":
            for cap, runs in (await refreshMemoryRuns(Path(tmp), args)).items():
                results[f"8 refresh memory ({args.memory_users} x 10, cache max {cap:,})"]["B"] = runs
    printResults(results, rows, ratios)


async def classicScenarios(tmp: Path, args: argparse.Namespace, scale: float,
                           results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """
    Scenarios 1 to 5.
    """
    storm = [int(1000 * scale), int(5000 * scale)]
    refreshSizes = [int(1000 * scale), int(10000 * scale)]
    users = max(refreshSizes + storm + [100])
    gets = int(10000 * scale)
    for mode in ("A", "B"):
        setup = Setup(tmp, mode, users, 50, args.delay)
        setup.start()
        try:
            for run in range(args.runs):
                profiler = None
                if mode == "B" and args.profile and run == 0:
                    profiler = subprocess.Popen(["py-spy", "record", "--pid", str(setup.component.pid),
                                                 "--format", "raw", "--output", args.profile, "--rate", "200"],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                results["1 warm gets (100 clients)"][mode].append(await warmGets(setup, 100, gets))
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)
                    profiler.wait(60)
                for n in storm:
                    results[f"2 login storm ({n} users)"][mode].append(await loginStorm(setup, n))
                if mode == "B":
                    for n in refreshSizes:
                        results[f"3 bulk refresh ({n} users)"][mode].append(await bulkRefresh(setup, n))
        finally:
            setup.stop()
    for mode in ("A", "B"):
        big = Setup(tmp / "large", mode, 5001, 50, args.delay)
        writeStoredRoster(big.prosody.dataPath, 0, 5001, 5000)
        big.start()
        try:
            if mode == "B":
                big.webappCall("POST", "/size/0/5000")
                big.restartComponent()
            for _ in range(args.runs):
                results["5 large roster (5000 contacts)"][mode].append(await largeRoster(big, 5000))
        finally:
            big.stop()
    for users_, contacts in ((int(10000 * scale), 50), (int(100000 * scale), 20)):
        results[f"4 memory ({users_} x {contacts})"]["B"] = [memory(users_, contacts) for _ in range(args.runs)]


def printResults(results: dict[str, dict[str, list[dict[str, Any]]]], rows: list[tuple[str, ...]],
                 ratios: dict[str, list[float]]) -> None:
    for scenario in sorted(results):
        a = summarise(results[scenario]["A"]) if results[scenario]["A"] else {}
        b = summarise(results[scenario]["B"])
        for metric in b:
            if not metric.endswith(PHASES):
                rows.append((scenario, metric, a.get(metric, "-"), b[metric]))
        for metric in ("gets/s", "rosters/s", "p50", "p99", "full get ms"):
            if metric in a and metric in b:
                ra = statistics.median(r[metric] for r in results[scenario]["A"])
                rb = statistics.median(r[metric] for r in results[scenario]["B"])
                ratios[f"{scenario}: {metric} B/A"].append(rb / ra)
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
        printPhases(scenario, summarise(results[scenario]["B"]))


#: Suffixes of metrics measured in two phases of one scenario (B only),
#: printed side by side by L{printPhases}.
PHASES = (" idle", " during")


def printPhases(scenario: str, table: dict[str, str]) -> None:
    """
    A scenario's two-phase metrics as one row each: idle, then during.
    """
    names = list(dict.fromkeys(m[:-len(" idle")] for m in table if m.endswith(" idle")))
    if not names:
        return
    print()
    rows: list[tuple[str, ...]] = [(f"{scenario}, B", "idle", "during")]
    rows += [(name, table[name + " idle"], table.get(name + " during", "-")) for name in names]
    printTable(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes, to try the harness")
    parser.add_argument("--delay", type=float, default=0.005, help="web app answer delay in seconds")
    parser.add_argument("--profile", help="write a py-spy profile of rosteradmin in scenario 1 here")
    parser.add_argument("--scenario", choices=("all", "large-first-sync", "full-sync", "refresh-memory"),
                        default="all",
                        help="run scenarios 1 to 6, or only scenario 6 (bench/firstsync.py), 7 (bench/fullsync.py)"
                             " or 8 (bench/refreshmemory.py); 7 and 8 run only when named")
    parser.add_argument("--sync-contacts", type=int, default=None,
                        help="contacts of the big user in scenario 6 (default 3,000; 300 with --quick)")
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
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(parser.parse_args()))
