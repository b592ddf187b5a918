"""
The demo as a new user runs it: C{python -m rosteradmin.demo} (what
C{scripts/demo.sh} ends in) as a process of its own, with its own Prosody,
sample web app and rosteradmin; a real client logs in, the roster file is
edited and refreshed, and Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet import reactor, threads
from twisted.web.client import HTTPConnectionPool

from rosteradmin.devprosody import freePort
from rosteradmin.devwebapp import SAMPLE_ROSTERS
from tests.integration.harness import CONTRIB_CONFIG, connectClient
from tests.integration.service import RunningService
from tests.integration.test_rosters import items

ROOT = Path(__file__).parents[2]


class Demo:
    """
    One demo process on free ports, its output in a file.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.c2sPort, self.httpPort = freePort(), freePort()
        self.outputPath = directory / "demo.out"
        with open(self.outputPath, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rosteradmin.demo", "--prosody-config", str(CONTRIB_CONFIG),
                 "--directory", str(directory / "data"), "--c2s-port", str(self.c2sPort),
                 "--component-port", str(freePort()), "--webapp-port", str(freePort()),
                 "--http-port", str(self.httpPort)],
                cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(ROOT)})

    @property
    def output(self) -> str:
        return self.outputPath.read_text()

    async def ready(self) -> None:
        """
        Wait until rosteradmin has its delegation (the last thing the demo
        logs while starting).
        """
        await RunningService.waitUntil(
            lambda: "server delegates ['jabber:iq:roster']" in self.output or self.process.poll() is not None,
            60, "demo started")
        assert self.process.poll() is None, self.output

    async def waitForMetric(self, line: str) -> None:
        for _ in range(100):
            response = await treq.get(f"http://127.0.0.1:{self.httpPort}/metrics",
                                      pool=HTTPConnectionPool(reactor, persistent=False))
            if line in (await response.text()).splitlines():
                return
            await RunningService.sleep(0.05)
        raise AssertionError(f"/metrics never showed {line!r}")

    def prosodyPID(self) -> int:
        """
        The demo's Prosody, found by the configuration path in its command line.
        """
        marker = str(self.directory / "data").encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "cmdline").read_bytes() and int(entry.name) != self.process.pid:
                        return int(entry.name)
                except OSError:
                    continue
        raise AssertionError("the demo's Prosody is not running")

    async def exitCode(self) -> int:
        return await threads.deferToThread(self.process.wait, 30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest_twisted.ensureDeferred
async def test_demoServesRostersAndStopsOnCtrlC(tmp_path: Path) -> None:
    """
    The banner lists accounts and curl lines; alice gets the sample roster;
    once she is online, an edit of the roster file plus the banner's refresh
    reaches her client as a push; SIGINT stops rosteradmin and Prosody with
    exit code 0.
    """
    demo = Demo(tmp_path)
    try:
        await demo.ready()
        banner = demo.output
        assert "alice@example.org, bob@example.org, carol@example.org" in banner and "(password: demo)" in banner
        assert f"curl -s -X POST http://127.0.0.1:{demo.httpPort}/roster_admin/refresh" in banner

        alice = await connectClient("alice@example.org", "demo", demo.c2sPort)
        assert items(await alice.rosterGet()) == {
            "bob@example.org": ("Bob", "both", ["Friends"]), "carol@example.org": ("Carol", "both", ["Work"])}

        alice.sendPresence()
        await demo.waitForMetric("rosteradmin_online_resources 1.0")

        rosterFile = tmp_path / "data" / "rosters.json"
        rosters = json.loads(rosterFile.read_text())
        assert rosters == SAMPLE_ROSTERS
        rosters["alice"]["dave@example.org"] = {"name": "Dave"}
        rosterFile.write_text(json.dumps(rosters))
        response = await treq.post(f"http://127.0.0.1:{demo.httpPort}/roster_admin/refresh", data=b'["alice"]',
                                   pool=HTTPConnectionPool(reactor, persistent=False))
        assert (await response.json())["updated"] == 1
        pushes = await alice.waitForPushes(1)
        assert [p.query.item["jid"] for p in pushes] == ["dave@example.org"]

        demo.process.send_signal(signal.SIGINT)
        assert await demo.exitCode() == 0
    finally:
        demo.kill()
    assert "Traceback" not in demo.output
    assert not accepts(demo.c2sPort), "Prosody outlived the demo"


@pytest_twisted.ensureDeferred
async def test_demoStopsWhenProsodyDies(tmp_path: Path) -> None:
    """
    Prosody killed under the demo: the demo says so, where its log is, and
    exits 1 instead of retrying forever.
    """
    demo = Demo(tmp_path)
    try:
        await demo.ready()
        os.kill(demo.prosodyPID(), signal.SIGKILL)
        assert await demo.exitCode() == 1
    finally:
        demo.kill()
    assert "Prosody has exited; stopping the demo" in demo.output
    assert "Traceback" not in demo.output
