"""
The demo as a new user runs it: C{python -m rosteradmin_demo.demo} (what
C{scripts/demo.sh} ends in) as a process of its own, with its own Prosody,
sample web app and rosteradmin; every roster is synced into Prosody at
start, a real client logs in, the roster file is edited and refreshed, and
Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet import reactor, threads
from twisted.web.client import HTTPConnectionPool

from rosteradmin_demo.demo import PASSWORD as DEMO_PASSWORD
from rosteradmin_demo.demo import ctlCommand
from rosteradmin_demo.devprosody import LocalProsody, freePort
from rosteradmin_demo.devwebapp import SAMPLE_ROSTERS
from tests.integration.harness import CONTRIB_CONFIG, connectClient
from tests.integration.service import RunningService
from tests.integration.test_converse import Chromium, logIn, shown
from tests.integration.test_rosters import items

ROOT = Path(__file__).parents[2]


class Demo:
    """
    One demo process on free ports, its output in a file.
    """

    def __init__(self, directory: Path, *options: str) -> None:
        """
        @param options: More of the demo's options (C{--websocket}, say).
        """
        self.directory = directory
        self.c2sPort, self.httpPort, self.webappPort = freePort(), freePort(), freePort()
        self.outputPath = directory / "demo.out"
        with open(self.outputPath, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rosteradmin_demo.demo", "--prosody-config", str(CONTRIB_CONFIG),
                 "--directory", str(directory / "data"), "--c2s-port", str(self.c2sPort),
                 "--component-port", str(freePort()), "--webapp-port", str(self.webappPort),
                 "--http-port", str(self.httpPort), *options],
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

    async def syncDone(self) -> dict[str, object]:
        """
        The progress of the sync pass the demo ran, once it has ended.
        """
        for _ in range(600):
            response = await treq.get(f"http://127.0.0.1:{self.httpPort}/roster_admin/sync",
                                      pool=HTTPConnectionPool(reactor, persistent=False))
            body = await response.json()
            if body["status"] == "idle" and body["sync"] is not None:
                sync: dict[str, object] = body["sync"]
                return sync
            await RunningService.sleep(0.05)
        raise AssertionError(f"no sync pass ended: {body}")

    def storedRoster(self, username: str) -> str:
        """
        The roster the demo's Prosody stores for C{username}.
        """
        return LocalProsody(self.directory / "data" / "prosody", CONTRIB_CONFIG).storedRoster(username)

    async def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{rosteradmin-ctl args} against the demo's API.
        """
        return await threads.deferToThread(
            subprocess.run, [sys.executable, "-m", "rosteradmin.ctl", "--url", f"http://127.0.0.1:{self.httpPort}",
                             *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)})

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
        """
        Kill the demo, and its Prosody too: killed, the demo cannot stop it,
        and it would outlive the test.
        """
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        try:
            os.kill(self.prosodyPID(), signal.SIGKILL)
        except (AssertionError, ProcessLookupError):
            pass  # it had stopped


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
        assert re.search(rf"(rosteradmin-ctl|-m rosteradmin\.ctl) --url http://127\.0\.0\.1:{demo.httpPort} "
                         rf"sync --all ", banner), banner

        # Before anyone logs in, the full sync at start has walked the
        # web app's users list, two a page, and written every roster.
        sync = await demo.syncDone()
        assert {k: sync[k] for k in ("kind", "listed", "listing_done", "synced", "failed", "error")} == {
            "kind": "full", "listed": 3, "listing_done": True, "synced": 3, "failed": 0, "error": None}
        assert "served 2 usernames after ''" in demo.output and "served 1 usernames after 'bob'" in demo.output
        for user, roster in SAMPLE_ROSTERS.items():
            stored = demo.storedRoster(user)
            assert all(contact in stored for contact in roster), (user, stored)
        assert (tmp_path / "data" / "state.sqlite").stat().st_size > 0

        # The banner's sync line runs a new pass over every user.
        run = await demo.ctl("sync", "--all")
        assert run.returncode == 0 and re.fullmatch(r"full sync done: 3 of 3 users synced in \d+\.\d s\n", run.stdout), run

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


@pytest_twisted.ensureDeferred
async def test_demoWebSocketServesConverse(tmp_path: Path) -> None:
    """
    C{--websocket}: Prosody serves WebSocket on a port of its own, not the
    API's, the banner names the chat page, and Converse.js from that page,
    in a real headless Chromium, logs alice in over the WebSocket and shows
    the sample roster.
    """
    websocketPort, chatPort = freePort(), freePort()
    demo = Demo(tmp_path, "--websocket", "--websocket-port", str(websocketPort), "--chat-port", str(chatPort))
    browser = None
    try:
        await demo.ready()
        assert f"chat page       http://127.0.0.1:{chatPort}/" in demo.output
        assert f"WebSocket       ws://127.0.0.1:{websocketPort}/xmpp-websocket" in demo.output
        config = await treq.get(f"http://127.0.0.1:{chatPort}/config.js",
                                pool=HTTPConnectionPool(reactor, persistent=False))
        configText = await config.text()
        assert f'"websocket_url": "ws://127.0.0.1:{websocketPort}/xmpp-websocket"' in configText
        assert '"allow_contact_requests": true' in configText

        browser = await Chromium.launch(tmp_path)
        roster = await logIn(browser, f"http://127.0.0.1:{chatPort}/", password=DEMO_PASSWORD)
        assert shown(roster) == {"bob@example.org": "Bob", "carol@example.org": "Carol"}
        await browser.screenshot(tmp_path / "demo-converse.png")
    finally:
        if browser is not None:
            await browser.close()
        demo.kill()
    assert "Traceback" not in demo.output


@pytest_twisted.ensureDeferred
async def test_demoContactRequestLoop(tmp_path: Path) -> None:
    """
    The demo sends what users try to its web app: bob adds carol in his
    client, the server refuses it, and the banner's requests URL lists
    it; the banner's approve call adds each to the other's roster and
    refreshes both, so both clients, online, get the push.
    """
    demo = Demo(tmp_path)
    try:
        await demo.ready()
        webapp = f"http://127.0.0.1:{demo.webappPort}"
        assert f"curl -s {webapp}/requests " in demo.output
        assert f"curl -s -X POST {webapp}/requests/<id>/approve " in demo.output
        bob = await connectClient("bob@example.org", DEMO_PASSWORD, demo.c2sPort)
        carol = await connectClient("carol@example.org", DEMO_PASSWORD, demo.c2sPort)
        for client in (bob, carol):
            await client.rosterGet()
            client.sendPresence()
        assert (await bob.rosterSet("carol@example.org", "Carol"))["type"] == "error"

        async def pending() -> list[dict[str, object]]:
            response = await treq.get(f"{webapp}/requests", pool=HTTPConnectionPool(reactor, persistent=False))
            listed: list[dict[str, object]] = await response.json()
            return listed

        for _ in range(100):
            requests = await pending()
            if requests:
                break
            await RunningService.sleep(0.1)
        assert [(r["user"], r["contact"], r["name"]) for r in requests] == [
            ("bob@example.org", "carol@example.org", "Carol")]
        response = await treq.post(f"{webapp}/requests/{requests[0]['id']}/approve",
                                   pool=HTTPConnectionPool(reactor, persistent=False))
        answer = await response.json()
        assert response.code == 200 and answer["refresh"]["updated"] == 2, answer
        # bob's refused add was put back (a removal of carol) before.
        for client, contact in ((bob, "carol@example.org"), (carol, "bob@example.org")):
            await RunningService.waitUntil(lambda: any(
                (push.query.item["jid"], push.query.item.getAttribute("subscription")) == (contact, "both")
                for push in client.pushes), 10, f"{contact} pushed")
        assert await pending() == []
        await bob.disconnect()
        await carol.disconnect()
    finally:
        demo.kill()
    assert "Traceback" not in demo.output


def test_bannerSyncCommand() -> None:
    """
    The banner's rosteradmin-ctl line names the API only when it is not on
    rosteradmin-ctl's default port.
    """
    assert re.fullmatch(r"\S*(rosteradmin-ctl|python\S* -m rosteradmin\.ctl)", ctlCommand(5280))
    assert ctlCommand(5281) == ctlCommand(5280) + " --url http://127.0.0.1:5281"
