"""
Converse.js, for real: Debian's headless Chromium runs the page in
C{contrib/converse/} (Converse.js from its pinned npm package) against the
test Prosody over WebSocket, with rosteradmin and the web app stub behind
it.  The user logs in through Converse's form and sees the web app's
roster; a refresh reaches the open page; the roster edits Converse can
offer are refused; a reload, or a login after the web app changed the
roster, shows the web app's roster.  Each of the last two runs with the
page's plugin and without it, which shows what the plugin is for.  Last,
the demo's loop of contact requests: a contact alice adds in Converse
reaches the demo's web app as an event, and once it approves the request
both users' open pages show each other.

Chromium is driven over the DevTools protocol on a pipe
(C{--remote-debugging-pipe}: NUL-terminated JSON on its file descriptors 3
and 4), from the test's reactor, so nothing but Debian's C{chromium} and the
npm package that C{scripts/setup.sh} installed is needed.  Screenshots go
to the test's temporary directory; their paths are printed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web import server

from rosteradmin_demo.devchat import ChatPage, ConverseNotInstalled, localSettings
from rosteradmin_demo.devprosody import LocalProsody, freePort
from rosteradmin_demo.devrequests import ContactRequests
from rosteradmin_demo.devwebapp import SAMPLE_ROSTERS, RosterFileResource, readRosters, writeJSON
from tests.integration.harness import CONTRIB_CONFIG, PASSWORD, ProsodyServer, XMPPTestClient, startedOrFail
from tests.integration.service import RunningService

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: index.html (run unchanged) and package.json.
PAGE = ROOT / "contrib" / "converse"

#: What Converse's roster view shows: one entry per contact and group.
ROSTER_JS = """[...document.querySelectorAll('converse-roster li.list-item')].map(li => ({
    jid: li.querySelector('a.open-chat')?.dataset.jid,
    name: li.querySelector('.contact-name')?.textContent.trim(),
    status: li.dataset.status,
    group: li.closest('.roster-group')?.dataset.group,
}))"""
#: What rosteradmin answers a roster set with (rosteradmin.rosterserver).
REFUSED_TEXT = "The roster is managed by the web application and cannot be changed here."
#: What the page's plugin says when the server refuses an added contact (with
#: allow_contact_requests on, the web app takes it as a request).
REQUEST_SENT_TEXT = "Your request to add {} was sent. They appear in your contacts once it is approved."
#: The text of the toasts, the open modal and the alerts in the page.
MESSAGES_JS = """[...document.querySelectorAll(
    'converse-toast .toast-body, .modal.show .alert, converse-root .alert')].map(e => e.textContent.trim()).filter(t => t)"""


@pytest.fixture
def rosters() -> dict[str, Any]:
    return SAMPLE_ROSTERS


class WebSocketProsody(ProsodyServer):
    """
    The test Prosody, serving WebSocket and BOSH on a loopback port of its own.
    """

    def __init__(self, tempDir: Path) -> None:
        super().__init__(tempDir)
        self.httpPort = freePort(avoid={self.c2sPort, self.componentPort})


@pytest.fixture
def prosody(tmp_path: Path) -> Iterator[WebSocketProsody]:
    """
    The test's Prosody with its HTTP server on: started before rosteradmin
    picks its API port, so the two cannot clash.
    """
    server = startedOrFail(WebSocketProsody(tmp_path))
    yield server
    server.stop()


class Site:
    """
    L{ChatPage} on a loopback port, set up for the test's Prosody.
    """

    def __init__(self, prosody: ProsodyServer) -> None:
        self.settings = {**localSettings(prosody.websocketURL, prosody.domain), "i18n": "en", "loglevel": "info"}
        try:
            page = ChatPage(PAGE, self.settings)
        except ConverseNotInstalled as e:
            pytest.fail(f"{e} (`bash scripts/test.sh` does that too)", pytrace=False)
        self.port = reactor.listenTCP(0, server.Site(page), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/"


@pytest_twisted.async_yield_fixture
async def site(prosody: ProsodyServer) -> AsyncIterator[Site]:
    chat = Site(prosody)
    yield chat
    await chat.port.stopListening()


class DevToolsError(Exception):
    """
    Chromium answered a DevTools command with an error, or the page threw.
    """


class Chromium(protocol.ProcessProtocol):
    """
    A headless Chromium and one page in it, driven over the DevTools pipe.

    @ivar dialogs: The text of every JavaScript dialog (C{alert},
        C{confirm}), each accepted as it opened.
    @ivar console: Console messages and uncaught exceptions of the page.
    @ivar requests: The URL of every request the pages made, by id.
    @ivar blocked: The URL of each request the browser blocked (by the
        page's Content-Security-Policy, say) instead of sending it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.dialogs: list[str] = []
        self.console: list[str] = []
        self.requests: dict[str, str] = {}
        self.blocked: list[str] = []
        self.targetID = self.sessionID = ""
        self._ids = itertools.count(1)
        self._buffer = b""
        self._pending: dict[int, defer.Deferred[dict[str, Any]]] = {}
        self._loads: list[defer.Deferred[None]] = []
        self._ended: defer.Deferred[None] = defer.Deferred()
        self._log = open(directory / "chromium.log", "ab")

    @classmethod
    async def launch(cls, directory: Path) -> Chromium:
        """
        Start Chromium with a fresh profile in C{directory} and attach to
        its first page.
        """
        binary = shutil.which("chromium")
        if binary is None:
            pytest.fail("chromium is not installed: run `bash scripts/test.sh`, or "
                        "`apt-get install chromium`", pytrace=False)
        browser = cls(directory)
        args = [
            binary, "--headless", "--no-sandbox", "--remote-debugging-pipe",
            f"--user-data-dir={directory / 'profile'}", "--no-first-run", "--no-default-browser-check",
            "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            "--password-store=basic", "--lang=en-US",
            "--hide-scrollbars", "--mute-audio", "about:blank",
        ]
        reactor.spawnProcess(browser, binary, args, env={**os.environ, "LANGUAGE": "en"},
                             childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"})
        try:
            targets = await browser.send("Target.getTargets")
            page = next(t for t in targets["targetInfos"] if t["type"] == "page")
            await browser._attach(page["targetId"])
        except BaseException:
            await browser.close()
            raise
        return browser

    async def newTab(self) -> None:
        """
        Close the page and drive a new one, as a user closing the tab and
        opening another: the site's IndexedDB stays, its sessionStorage
        does not.
        """
        old = self.targetID
        created = await self.send("Target.createTarget", url="about:blank")
        await self._attach(created["targetId"])
        await self.send("Target.closeTarget", targetId=old)

    async def _attach(self, targetID: str) -> None:
        attached = await self.send("Target.attachToTarget", targetId=targetID, flatten=True)
        self.targetID, self.sessionID = targetID, attached["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            await self.send(f"{domain}.enable", session=True)
        await self.send("Emulation.setDeviceMetricsOverride", session=True,
                        width=1200, height=900, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, session: bool = False, **params: Any) -> defer.Deferred[dict[str, Any]]:
        """
        One DevTools command, to the browser or (C{session}) to the page.

        @return: Its result.
        @raise DevToolsError: It failed.
        """
        commandID = next(self._ids)
        command: dict[str, Any] = {"id": commandID, "method": method, "params": params}
        if session:
            command["sessionId"] = self.sessionID
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._pending[commandID] = d
        self._transport().writeToChild(3, json.dumps(command).encode() + b"\0")
        return d.addTimeout(15, reactor)

    async def evaluate(self, expression: str) -> Any:
        """
        The value of a JavaScript expression in the page (awaited if a promise).

        @raise DevToolsError: It threw.
        """
        reply = await self.send("Runtime.evaluate", session=True, expression=expression,
                                awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            raise DevToolsError(details.get("exception", {}).get("description") or details["text"])
        return reply["result"].get("value")

    async def waitFor(self, expression: str, what: str, timeout: float = 15.0) -> Any:
        """
        The first truthy value of C{expression}, polled.

        @raise AssertionError: None within C{timeout} seconds.
        """
        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await deferLater(reactor, 0.1, lambda: None)
        await self.screenshot(self.directory / "failure.png")
        raise AssertionError(f"not within {timeout:g}s: {what}\nconsole:\n" + "\n".join(self.console[-20:]))

    async def navigate(self, url: str) -> None:
        """
        Open C{url} and wait for its load event.
        """
        loaded: defer.Deferred[None] = defer.Deferred()
        self._loads.append(loaded)
        await self.send("Page.navigate", session=True, url=url)
        await loaded.addTimeout(15, reactor)

    async def reload(self) -> None:
        """
        Reload the page, as the user's F5, and wait for its load event.
        """
        loaded: defer.Deferred[None] = defer.Deferred()
        self._loads.append(loaded)
        await self.send("Page.reload", session=True)
        await loaded.addTimeout(15, reactor)

    async def screenshot(self, path: Path) -> Path:
        """
        Save what the page shows as a PNG.
        """
        shot = await self.send("Page.captureScreenshot", session=True, format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"\nscreenshot: {path}")
        return path

    async def close(self) -> None:
        """
        Close the browser, killing it if it does not exit within 5 s.
        """
        if not self._ended.called:
            self.send("Browser.close").addErrback(lambda _: None)
            kill = reactor.callLater(5, self._transport().signalProcess, "KILL")
            await self._ended
            if kill.active():
                kill.cancel()
        self._log.close()

    def _transport(self) -> IProcessTransport:
        assert self.transport is not None, "not started"
        return self.transport

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != 4:
            self._log.write(data)
            return
        self._buffer += data
        *messages, self._buffer = self._buffer.split(b"\0")
        for raw in messages:
            self._received(json.loads(raw))

    def _received(self, message: dict[str, Any]) -> None:
        if "id" in message:
            d = self._pending.pop(message["id"], None)
            if d is None or d.called:
                return
            if "error" in message:
                d.errback(DevToolsError(message["error"].get("message", message["error"])))
            else:
                d.callback(message.get("result", {}))
            return
        method, params = message.get("method"), message.get("params", {})
        if message.get("sessionId", self.sessionID) != self.sessionID:
            return
        if method == "Page.javascriptDialogOpening":
            self.dialogs.append(params["message"])
            self.send("Page.handleJavaScriptDialog", session=True, accept=True).addErrback(lambda _: None)
        elif method == "Page.loadEventFired":
            loads, self._loads = self._loads, []
            for loaded in loads:
                loaded.callback(None)
        elif method == "Network.requestWillBeSent":
            self.requests[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFailed" and params.get("blockedReason"):
            self.blocked.append(self.requests.pop(params["requestId"], "?"))
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.console.append("exception: " + (details.get("exception", {}).get("description")
                                                 or details["text"]))

    def processEnded(self, reason: Failure) -> None:
        for d in list(self._pending.values()):
            if not d.called:
                d.errback(DevToolsError(f"chromium exited: {reason.value}"))
        self._pending.clear()
        if not reason.check(ProcessDone, ProcessTerminated):
            self.console.append(f"chromium: {reason.value}")
        self._ended.callback(None)


@pytest_twisted.async_yield_fixture
async def browser(tmp_path: Path) -> AsyncIterator[Chromium]:
    chromium = await Chromium.launch(tmp_path)
    yield chromium
    await chromium.close()


async def logIn(browser: Chromium, url: str, user: str = "alice", contacts: bool = True,
                password: str = PASSWORD) -> list[dict[str, Any]]:
    """
    Open the chat page at C{url}, log in through Converse's form, and wait until the
    roster view shows contacts (or, unless C{contacts}, just the roster view).

    @return: What the roster view shows.
    """
    if await browser.evaluate("location.href") != url:
        await browser.navigate(url)
    # Converse may draw its login form more than once while it starts.
    await browser.waitFor(f"""(() => {{
        const form = document.querySelector('form#converse-login');
        if (!form?.elements.jid || !form.elements.password) return false;
        form.elements.jid.value = {json.dumps(user)};
        form.elements.password.value = {json.dumps(password)};
        form.requestSubmit();
        return true;
    }})()""", "Converse's login form")
    if contacts:
        await browser.waitFor(f"{ROSTER_JS}.length", "contacts in Converse's roster view")
    else:
        await browser.waitFor("!!document.querySelector('converse-roster')", "Converse's roster view")
    return await browser.evaluate(ROSTER_JS)


def shown(roster: list[dict[str, Any]]) -> dict[str, str]:
    """
    The name the roster view shows for each contact JID.
    """
    return {item["jid"]: item["name"] for item in roster}


def test_prosodyHTTPOnlyWhenAsked(tmp_path: Path) -> None:
    """
    Prosody's HTTP server stays off unless given a port; with one, it
    listens there on loopback alone, with WebSocket and BOSH, on a port
    apart from the client and component ports.
    """
    default = LocalProsody(tmp_path / "default", CONTRIB_CONFIG)
    default.writeConfig()
    text = default.configPath.read_text()
    assert default.httpPort is None
    assert "http_ports = { }" in text and '"http"; "bosh"; "websocket" }' in text

    served = LocalProsody(tmp_path / "served", CONTRIB_CONFIG, httpPort=0)
    served.writeConfig()
    text = served.configPath.read_text()
    assert served.httpPort not in (None, served.c2sPort, served.componentPort)
    assert f"http_ports = {{ {served.httpPort} }}" in text
    assert 'http_interfaces = { "127.0.0.1" }' in text and "https_ports = { }" in text
    assert '"websocket"; "bosh" }' in text
    assert served.websocketURL == f"ws://127.0.0.1:{served.httpPort}/xmpp-websocket"
    with pytest.raises(ValueError):
        LocalProsody(tmp_path / "clash", CONTRIB_CONFIG, c2sPort=15222, httpPort=15222)


@pytest_twisted.ensureDeferred
async def test_rosterAndLiveRefresh(tmp_path: Path, webapp: Any, service: RunningService, clients: Any,
                                    site: Site, browser: Chromium) -> None:
    """
    alice logs in with Converse over WebSocket and sees the web app's
    contacts, bob online; the page offers no way to register, add or remove
    a contact, and loads nothing from outside; a refresh of her roster
    shows the new contact in the open page, online: dave, logged in with
    presence before the refresh, whose own roster lists her.
    """
    bob = await clients("bob")
    bob.sendPresence()
    await browser.navigate(site.url)
    await browser.waitFor("!!document.querySelector('form#converse-login')", "Converse's login form")
    await deferLater(reactor, 0.5, lambda: None)  # it fades in
    await browser.screenshot(tmp_path / "converse-login.png")
    assert "Create an account" not in await browser.evaluate("document.body.innerText")
    roster = await logIn(browser, site.url)
    assert shown(roster) == {"bob@example.org": "Bob", "carol@example.org": "Carol"}
    assert {item["group"] for item in roster} == {"Friends", "Work"}
    await browser.waitFor(f"{ROSTER_JS}.find(i => i.jid === 'bob@example.org' && i.status === 'online')",
                          "bob online in alice's roster view")
    assert await browser.evaluate("document.querySelectorAll('.add-contact, .remove-xmpp-contact').length") == 0
    await browser.screenshot(tmp_path / "converse-roster.png")

    webapp.rosters["dave"] = {"alice@example.org": {"name": "Alice"}}
    dave = await clients("dave")
    dave.sendPresence()
    webapp.rosters["alice"] = {**SAMPLE_ROSTERS["alice"], "dave@example.org": {"name": "Dave", "groups": ["Work"]}}
    response = await treq.post(f"{service.baseURL}/roster_admin/refresh", json=["alice"])
    assert response.code == 200, await response.text()
    await response.text()
    await browser.waitFor(f"{ROSTER_JS}.find(i => i.jid === 'dave@example.org' && i.name === 'Dave')",
                          "dave in alice's roster view after the refresh")
    await browser.waitFor(f"{ROSTER_JS}.find(i => i.jid === 'dave@example.org' && i.status === 'online')",
                          "dave online in alice's roster view after the refresh")
    assert shown(await browser.evaluate(ROSTER_JS)) == {
        "bob@example.org": "Bob", "carol@example.org": "Carol", "dave@example.org": "Dave"}
    await browser.screenshot(tmp_path / "converse-refreshed.png")
    assert not browser.dialogs
    sent = set(browser.requests.values())
    print("blocked:", *sorted(set(browser.blocked)), sep="\n  ")
    assert sent and all(url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:"))
                        for url in sent), sorted(sent)


def contactAction(jid: str, label: str) -> str:
    """
    JavaScript clicking the item C{label} of a contact's menu in the roster view.
    """
    return f"""(() => {{
        const li = document.querySelector('converse-roster a.open-chat[data-jid="{jid}"]').closest('li');
        [...li.querySelectorAll('.dropdown-item')].find(a => a.textContent.trim() === {json.dumps(label)}).click();
    }})()"""


def submitForm(selector: str, values: dict[str, str]) -> str:
    """
    JavaScript filling in and submitting the form C{selector}, as a user would.
    """
    return f"""(() => {{
        const form = document.querySelector({json.dumps(selector)});
        for (const [name, value] of Object.entries({json.dumps(values)})) form.elements[name].value = value;
        form.requestSubmit();
    }})()"""


async def messagesAfter(browser: Chromium, seconds: float = 1.0) -> list[str]:
    """
    What the page tells the user within C{seconds}: dialogs and then the
    toasts and alerts still shown; the dialogs are forgotten.
    """
    await deferLater(reactor, seconds, lambda: None)
    dialogs, browser.dialogs[:] = [f"dialog: {text}" for text in browser.dialogs], []
    return dialogs + await browser.evaluate(MESSAGES_JS)


def presencesFrom(client: XMPPTestClient, bare: str) -> list[str]:
    """
    The type of each presence C{client} received from C{bare} ("" for available).
    """
    return [p.getAttribute("type", "") for p in client.presences
            if p.getAttribute("from", "").split("/")[0] == bare]


@pytest.mark.parametrize("plugin", [True, False], ids=["withPlugin", "withoutPlugin"])
@pytest_twisted.ensureDeferred
async def test_refusedEdits(plugin: bool, tmp_path: Path, prosody: Any, service: RunningService,
                            clients: Any, site: Site, browser: Chromium) -> None:
    """
    With Converse's own defaults (adding and removing contacts offered),
    alice adds mallory, renames bob and removes carol in Converse: the
    server refuses each, Prosody's stored roster is unchanged and presence
    still flows.  The server's pushes after each refusal put the web app's
    roster back in Converse's view, plugin or not, also after a reload;
    the page's plugin also shows the server's reason, where Converse alone
    says nothing about the rename and the removal, and says the add was
    sent as a request, where Converse alone says both that it failed and
    that it succeeded.
    """
    site.settings.update(allow_contact_requests=True, allow_contact_removal=True)
    if not plugin:
        site.settings["blacklisted_plugins"] = ["rosteradmin"]
    suffix = "" if plugin else "-without-plugin"
    bob = await clients("bob")
    bob.sendPresence()
    await logIn(browser, site.url)
    stored = prosody.storedRoster("alice")
    webAppRoster = {"bob@example.org": "Bob", "carol@example.org": "Carol"}
    bobOnline = f"{ROSTER_JS}.find(i => i.jid === 'bob@example.org' && i.status === 'online')"
    await browser.waitFor(bobOnline, "bob online in alice's roster view")

    await browser.evaluate("document.querySelector('converse-roster .add-contact').click()")
    await browser.waitFor("!!document.querySelector('converse-add-contact-modal form.add-xmpp-contact')",
                          "the Add a contact form")
    await browser.evaluate(submitForm("converse-add-contact-modal form.add-xmpp-contact",
                                      {"jid": "mallory@example.org", "name": "Mallory"}))
    shownForAdd = await messagesAfter(browser)
    print("\nrefused add, Converse shows:", shownForAdd)
    await browser.screenshot(tmp_path / f"converse-refused-add{suffix}.png")
    if plugin:
        # allow_contact_requests tells the page the web app takes requests
        # (this test's rosteradmin sends it no events: the page cannot know).
        assert shownForAdd == [REQUEST_SENT_TEXT.format("Mallory")]
    else:
        assert shownForAdd == [
            "dialog: Sorry, an error occurred while trying to add Mallory as a contact.",
            "Contact added successfully", "Sorry, something went wrong while adding the contact"]
    assert shown(await browser.evaluate(ROSTER_JS)) == webAppRoster

    await browser.evaluate(contactAction("bob@example.org", "Details"))
    await browser.waitFor("!!document.querySelector('converse-user-details-modal #edit-tab')", "bob's details")
    await browser.evaluate("document.querySelector('converse-user-details-modal #edit-tab').click()")
    await browser.waitFor("!!document.querySelector('converse-user-details-modal form.converse-form')",
                          "the Edit form")
    await browser.evaluate(submitForm("converse-user-details-modal form.converse-form", {"name": "Robert"}))
    shownForRename = await messagesAfter(browser)
    print("refused rename, Converse shows:", shownForRename, shown(await browser.evaluate(ROSTER_JS)))

    await browser.evaluate(contactAction("carol@example.org", "Remove"))
    await browser.waitFor("!!document.querySelector('.modal.show form.confirm')", "the confirmation")
    await browser.evaluate("document.querySelector('.modal.show form.confirm').requestSubmit()")
    shownForRemove = await messagesAfter(browser)
    print("refused removal, Converse shows:", shownForRemove, shown(await browser.evaluate(ROSTER_JS)))
    await browser.screenshot(tmp_path / f"converse-refused-edits{suffix}.png")
    if plugin:
        assert shownForRename[-1] == shownForRemove[-1] == REFUSED_TEXT
    else:
        assert REFUSED_TEXT not in shownForRename + shownForRemove
    await browser.waitFor(f"JSON.stringify({ROSTER_JS}.map(i => [i.jid, i.name]).sort()) === "
                          f"{json.dumps(json.dumps(sorted(map(list, webAppRoster.items())), separators=(',', ':')))}",
                          "the web app's roster in alice's roster view")
    await browser.waitFor(bobOnline, "bob still online in alice's roster view")

    assert prosody.storedRoster("alice") == stored
    # The answer to bob's probe while alice was offline (his roster is
    # stored at his login, before his presence), then available, nothing since.
    assert presencesFrom(bob, "alice@example.org") == ["unavailable", ""]
    bob.sendPresence(show="away")
    await browser.waitFor(f"{ROSTER_JS}.find(i => i.jid === 'bob@example.org' && i.status === 'away')",
                          "bob's away reaching alice")

    await browser.reload()
    await logIn(browser, site.url)
    await messagesAfter(browser)
    assert shown(await browser.evaluate(ROSTER_JS)) == webAppRoster
    await browser.screenshot(tmp_path / f"converse-reloaded{suffix}.png")
    assert prosody.storedRoster("alice") == stored


async def changeWhileAway(browser: Chromium, webapp: Any, service: RunningService,
                          roster: dict[str, Any]) -> None:
    """
    alice leaves the chat page; the web app changes her roster and refreshes it.
    """
    await browser.navigate("about:blank")
    webapp.rosters["alice"] = roster
    response = await treq.post(f"{service.baseURL}/roster_admin/refresh", json=["alice"])
    assert response.code == 200, await response.text()
    await response.text()


@pytest.mark.parametrize("plugin", [True, False], ids=["withPlugin", "withoutPlugin"])
@pytest_twisted.ensureDeferred
async def test_changesWhileAway(plugin: bool, webapp: Any, service: RunningService, site: Site,
                                browser: Chromium) -> None:
    """
    The web app changes alice's roster while her chat page is closed: at
    her next login, in a new tab or in the same one, the page shows the
    web app's roster.  Without the page's plugin Converse shows its cache:
    in a new tab it adds what the server sends but drops nothing, and in
    the same tab it does not even ask (and shows an earlier login's
    contacts, or none).
    """
    if not plugin:
        site.settings["blacklisted_plugins"] = ["rosteradmin"]
    assert shown(await logIn(browser, site.url)) == {"bob@example.org": "Bob", "carol@example.org": "Carol"}

    await changeWhileAway(browser, webapp, service, {
        "carol@example.org": {"name": "Carol"}, "erin@example.org": {"name": "Erin"}})
    await browser.newTab()
    await logIn(browser, site.url)
    await browser.waitFor(f"{ROSTER_JS}.some(i => i.jid === 'erin@example.org')", "erin shown")
    expected = {"carol@example.org": "Carol", "erin@example.org": "Erin"}
    assert shown(await browser.evaluate(ROSTER_JS)) == expected if plugin else {
        **expected, "bob@example.org": "Bob"}

    await changeWhileAway(browser, webapp, service, {
        "carol@example.org": {"name": "Carol"}, "erin@example.org": {"name": "Erin"},
        "dave@example.org": {"name": "Dave"}})
    await logIn(browser, site.url, contacts=plugin)
    if plugin:
        await browser.waitFor(f"{ROSTER_JS}.some(i => i.jid === 'dave@example.org')", "dave shown")
        assert shown(await browser.evaluate(ROSTER_JS)) == {**expected, "dave@example.org": "Dave"}
    else:
        await messagesAfter(browser)
        # Its cache: an earlier login's contacts, or none at all.
        print("\nwithout the plugin, same tab:", shown(await browser.evaluate(ROSTER_JS)))
        assert "dave@example.org" not in shown(await browser.evaluate(ROSTER_JS))


class Recorded(Resource):
    """
    The demo's contact requests, with every events body they were POSTed
    kept, so that the test can read the transactions as sent.
    """

    isLeaf = True

    def __init__(self, requests: ContactRequests) -> None:
        super().__init__()
        self.requests = requests
        self.bodies: list[dict[str, Any]] = []

    def render(self, request: server.Request) -> Any:
        if request.method == b"POST" and request.postpath == [b"events"] and request.content is not None:
            self.bodies.append(json.loads(request.content.read()))
            request.content.seek(0)
        return self.requests.render(request)


async def webAppCall(method: str, url: str) -> tuple[int, Any]:
    """
    One call to the demo's web app, as its operator would make it.
    """
    response = await treq.request(method, url, pool=HTTPConnectionPool(reactor, persistent=False))
    return response.code, await response.json()


@pytest_twisted.ensureDeferred
async def test_contactRequestApprovedInTheDemoWebApp(tmp_path: Path, prosody: WebSocketProsody, site: Site,
                                                     browser: Chromium) -> None:
    """
    The demo's loop, with its own web app: alice, in Converse, adds dave
    ("Add a contact", as the demo's page offers it); the server refuses the
    roster set, the page tells her, in one message and no alert, that her
    request was sent, and the web app receives it as a signed event and
    lists a contact request; approved through the web app's HTTP call, both
    rosters change and both users are refreshed, and without a reload
    alice's page shows dave online and dave's page (a second browser)
    shows alice online.
    """
    rosterFile = tmp_path / "rosters.json"
    writeJSON(rosterFile, {**SAMPLE_ROSTERS, "dave": {}})
    requests = ContactRequests(rosterFile, tmp_path / "requests.json", [b"events-key"], "", reactor)
    recorded = Recorded(requests)
    port = reactor.listenTCP(0, server.Site(RosterFileResource(rosterFile, routes={  # type: ignore[arg-type]
        b"events": recorded, b"requests": recorded})), interface="127.0.0.1")
    webapp = f"http://127.0.0.1:{port.getHost().port}"
    service = RunningService(prosody, f"{webapp}/rosters/%s", [
        "--events-url", f"{webapp}/events", "--events-secret", "events-key"])
    requests.refreshURL = f"{service.baseURL}/roster_admin/refresh"
    (tmp_path / "dave").mkdir()
    dave: Chromium | None = None
    await service.start()
    try:
        site.settings.update(allow_contact_requests=True)  # as the demo's page
        dave = await Chromium.launch(tmp_path / "dave")
        await logIn(dave, site.url, user="dave", contacts=False)
        assert await dave.evaluate(ROSTER_JS) == []
        await dave.screenshot(tmp_path / "loop-1-dave-alone.png")
        await logIn(browser, site.url)
        assert shown(await browser.evaluate(ROSTER_JS)) == {"bob@example.org": "Bob", "carol@example.org": "Carol"}
        for page in (browser, dave):
            await page.evaluate("window.sameDocument = true")

        # alice fills the form in once the dialog has opened (Converse marks
        # it aria-hidden="false" then): one still fading in ignores being closed.
        await browser.evaluate("document.querySelector('converse-roster .add-contact').click()")
        await browser.waitFor("""document.querySelector('converse-add-contact-modal[aria-hidden="false"]')
                                 ?.querySelector('form.add-xmpp-contact') != null""", "the Add a contact form")
        await browser.evaluate(submitForm("converse-add-contact-modal form.add-xmpp-contact",
                                          {"jid": "dave@example.org", "name": "Dave"}))
        shownForAdd = await messagesAfter(browser)
        print("\nalice adds dave, Converse shows:", shownForAdd)
        await browser.screenshot(tmp_path / "loop-2-alice-adds-dave.png")
        # One message, no alert, and the dialog closed.
        assert shownForAdd == [REQUEST_SENT_TEXT.format("Dave")]
        assert not await browser.evaluate("!!document.querySelector('.modal.show')")

        await RunningService.waitUntil(lambda: recorded.bodies, 10, "the event at the web app")
        [transaction] = recorded.bodies
        print("transaction:", json.dumps(transaction))
        [event] = transaction["events"]
        assert transaction["txn_id"] == event["id"]
        assert {k: v for k, v in event.items() if k not in ("id", "ts", "resource")} == {
            "type": "roster.set", "user": "alice",
            "items": [{"jid": "dave@example.org", "action": "add", "name": "Dave", "groups": []}]}
        assert event["resource"].startswith("alice@example.org/")
        code, pending = await webAppCall("GET", f"{webapp}/requests")
        print("requests:", json.dumps(pending))
        assert code == 200 and [{k: r[k] for k in ("id", "user", "contact", "name")} for r in pending] == [
            {"id": event["id"], "user": "alice@example.org", "contact": "dave@example.org", "name": "Dave"}]
        assert "dave@example.org" not in shown(await browser.evaluate(ROSTER_JS))
        assert readRosters(rosterFile)["dave"] == {}

        code, approved = await webAppCall("POST", f"{webapp}/requests/{event['id']}/approve")
        print("approve:", code, json.dumps(approved))
        assert code == 200 and approved["refresh"]["errors"] == 0 and approved["refresh"]["updated"] == 2, approved
        assert readRosters(rosterFile)["alice"]["dave@example.org"] == {"name": "Dave", "groups": []}
        assert readRosters(rosterFile)["dave"] == {"alice@example.org": {"name": "Alice", "groups": []}}
        assert (await webAppCall("GET", f"{webapp}/requests")) == (200, [])

        await browser.waitFor(f"{ROSTER_JS}.find(i => i.jid === 'dave@example.org' && i.status === 'online')",
                              "dave online in alice's page")
        await dave.waitFor(f"{ROSTER_JS}.find(i => i.jid === 'alice@example.org' && i.status === 'online')",
                           "alice online in dave's page")
        await browser.screenshot(tmp_path / "loop-3-alice-sees-dave.png")
        await dave.screenshot(tmp_path / "loop-4-dave-sees-alice.png")
        assert shown(await browser.evaluate(ROSTER_JS)) == {
            "bob@example.org": "Bob", "carol@example.org": "Carol", "dave@example.org": "Dave"}
        assert shown(await dave.evaluate(ROSTER_JS)) == {"alice@example.org": "Alice"}
        assert await browser.evaluate("window.sameDocument") and await dave.evaluate("window.sameDocument")
        assert len(recorded.bodies) == 1
    finally:
        if dave is not None:
            await dave.close()
        await service.stop()
        await port.stopListening()
