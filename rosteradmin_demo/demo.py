# -*- test-case-name: tests.integration.test_demo -*-
"""
A self-contained demo: a local Prosody configured for the component, the
sample web app (L{rosteradmin_demo.devwebapp}) and rosteradmin itself, in one
process that stops everything on Ctrl-C.

    python -m rosteradmin_demo.demo --prosody-config contrib/prosody/rosteradmin.cfg.lua

(C{bash scripts/demo.sh} installs what is missing and runs this.)

rosteradmin gets the sample web app's users list (C{--users-url}, a few
users a page, so that paging is used) and so writes every user's roster
into Prosody as soon as it connects, before anyone logs in; its state
(C{--state}) lives next to the roster file, so a restarted demo knows what
Prosody holds.  What users try to add in their clients reaches the web app
as events (C{--events-url}), where it waits as a contact request until
approved (L{rosteradmin_demo.devrequests}).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

from twisted.internet import task
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python import usage
from twisted.web import server

from rosteradmin import tap
from rosteradmin.ctl import DEFAULT_URL
from rosteradmin.options import Options
from rosteradmin_demo.devchat import ChatPage, ConverseNotInstalled, localSettings
from rosteradmin_demo.devprosody import LocalProsody, ProsodyNotAvailable
from rosteradmin_demo.devrequests import ContactRequests
from rosteradmin_demo.devwebapp import SAMPLE_ROSTERS, RosterFileResource, writeSample

PASSWORD = "demo"

log = Logger()


class DemoOptions(usage.Options):
    synopsis = "python -m rosteradmin_demo.demo [options]"
    # Else usage.Options shows the module docstring, epytext markup included.
    longdesc = ("Run a local Prosody, the sample web app and rosteradmin on loopback, and sync every "
                "user's roster into Prosody at start. Ctrl-C stops everything.")
    optParameters = [
        ["prosody-config", None, "contrib/prosody/rosteradmin.cfg.lua", "the rosteradmin part of Prosody's configuration"],
        ["directory", "d", "demo-data", "where Prosody's data, logs, the roster file and the sync state live"],
        ["c2s-port", None, 15222, "client port of the demo Prosody", int],
        ["component-port", None, 15347, "component port of the demo Prosody", int],
        ["webapp-port", None, 18080, "port of the sample web app", int],
        ["http-port", None, 5280, "port of rosteradmin's HTTP API", int],
        ["users-page-size", None, 2, "usernames per page of the web app's users list (2: the three "
                                     "sample users take two pages)", int],
        ["websocket-port", None, 15280, "with --websocket: Prosody's HTTP port, for WebSocket and BOSH "
                                        "(not 5280, rosteradmin's API)", int],
        ["chat-port", None, 18081, "with --websocket: port of the Converse.js chat page", int],
        ["chat-page", None, "contrib/converse", "with --websocket: the directory of the chat page's index.html"],
    ]
    optFlags = [
        ["websocket", None, "also let browsers in: Prosody serves WebSocket and BOSH (--websocket-port), and a "
                            "Converse.js page (--chat-port) logs in through it"],
    ]

    def postOptions(self) -> None:
        if self["users-page-size"] < 1:
            raise usage.UsageError(f"--users-page-size must be at least 1, not {self['users-page-size']}")
        ports = ["c2s-port", "component-port", "webapp-port", "http-port"]
        if self["websocket"]:
            ports += ["websocket-port", "chat-port"]
        seen: dict[int, str] = {}
        for name in ports:
            if self[name] in seen:
                raise usage.UsageError(f"--{name} and --{seen[self[name]]} are both {self[name]}: "
                                       f"each needs a port of its own")
            seen[self[name]] = name


def ctlCommand(httpPort: int) -> str:
    """
    How to run C{rosteradmin-ctl} against the demo from the current
    directory: from the PATH, or next to this Python (C{.venv/bin}), with
    C{--url} unless the API is on its default port.
    """
    command = "rosteradmin-ctl"
    if shutil.which(command) is None:
        beside = Path(sys.executable).parent / command
        if beside.exists():
            command = os.path.relpath(beside) if beside.is_relative_to(Path.cwd()) else str(beside)
        else:
            command = f"{Path(sys.executable).name} -m rosteradmin.ctl"
    api = f"http://127.0.0.1:{httpPort}"
    return command if api == DEFAULT_URL else f"{command} --url {api}"


def banner(prosody: LocalProsody, rosterFile: Path, statePath: Path, webappPort: int, httpPort: int,
           kickAuthorization: str, ctl: str, chatPort: int | None = None) -> str:
    """
    What the demo prints once everything listens.

    @param chatPort: Where the Converse.js page is served (C{--websocket}),
        or C{None}.
    """
    users = ", ".join(f"{u}@{prosody.domain}" for u in prosody.accounts)
    api = f"http://127.0.0.1:{httpPort}"
    webapp = f"http://127.0.0.1:{webappPort}"
    browsers = ""
    if chatPort is not None:
        browsers = (f"  chat page       http://127.0.0.1:{chatPort}/   (Converse.js: log in as alice / {PASSWORD})\n"
                    f"  WebSocket       {prosody.websocketURL}   BOSH {prosody.boshURL}\n")
    return f"""
rosteradmin demo is running (Ctrl-C stops everything).

  XMPP accounts   {users}   (password: {PASSWORD})
  XMPP server     127.0.0.1:{prosody.c2sPort}, plain TCP (no TLS: demo only)
{browsers}  rosters         {rosterFile}  (edit it, then refresh)
  web app         {webapp}/rosters/alice   {webapp}/users  (paged: see its Link header)
  requests        {webapp}/requests  (contact requests: whom users tried to add)
  HTTP API        {api}/healthz   {api}/metrics   {api}/roster_admin/sync
  sync state      {statePath}
  Prosody log     {prosody.logPath}

Every user's roster is written into Prosody as soon as rosteradmin connects
(a full sync of the web app's users list), before anyone logs in.

Try:
  curl -s {api}/healthz
  curl -s {webapp}/requests                       # after bob adds carol in his client
  curl -s -X POST {webapp}/requests/<id>/approve  # both rosters changed, both users refreshed
  curl -s -X POST {api}/roster_admin/refresh -d '["alice", "bob"]'
  {ctl} sync --all        # sync every user again, with a progress bar
  curl -s -X POST {api}/muc_kick -H 'Authorization: {kickAuthorization}' \\
       -d '{{"nickname": "Alice", "muc": "room@{prosody.mucDomain}", "reason": "demo"}}'
"""


class ProsodyWatch:
    """
    Stops the demo if its Prosody dies: without it, rosteradmin would only
    retry its connection forever and the demo would look alive.

    @ivar died: Prosody exited while the demo ran (the demo then exits 1).
    """

    def __init__(self, prosody: LocalProsody, reactor: IReactorCore, clock: IReactorTime,
                 interval: float = 1.0) -> None:
        """
        @param reactor: Stopped when Prosody dies.
        @param clock: Times the checks (the reactor too, as a timer).
        """
        self.prosody = prosody
        self.reactor = reactor
        self.died = False
        self._loop = task.LoopingCall(self._check)
        self._loop.clock = clock
        self._loop.start(interval, now=False)
        reactor.addSystemEventTrigger("before", "shutdown", self._stopLooking)

    def _stopLooking(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        if self.prosody.running:
            return
        self.died = True
        log.error("Prosody has exited; stopping the demo. Its log: {path}", path=str(self.prosody.logPath))
        self._stopLooking()
        try:
            self.reactor.stop()
        except ReactorNotRunning:  # Ctrl-C got there first
            pass


def main(argv: list[str]) -> None:
    from twisted.internet import reactor

    options = DemoOptions()
    try:
        options.parseOptions(argv[1:])
    except usage.UsageError as e:
        raise SystemExit(f"{argv[0]}: {e}")
    directory = Path(options["directory"]).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    rosterFile = directory / "rosters.json"
    statePath = directory / "state.sqlite"
    writeSample(rosterFile)

    chat: ChatPage | None = None
    if options["websocket"]:
        try:
            chat = ChatPage(Path(options["chat-page"]), {})
        except ConverseNotInstalled as e:
            raise SystemExit(f"demo: {e}")
    prosody = LocalProsody(directory / "prosody", options["prosody-config"],
                           options["c2s-port"], options["component-port"],
                           httpPort=options["websocket-port"] if chat is not None else None)
    for user in SAMPLE_ROSTERS:
        prosody.addAccount(user, PASSWORD)
    try:
        prosody.start()
    except ProsodyNotAvailable as e:
        raise SystemExit(f"demo: {e}")
    reactor.addSystemEventTrigger("after", "shutdown", prosody.stop)

    eventsSecret = secrets.token_urlsafe(16)
    requests = ContactRequests(rosterFile, directory / "requests.json", [eventsSecret.encode()],
                               f"http://127.0.0.1:{options['http-port']}/roster_admin/refresh", reactor)
    webapp = RosterFileResource(rosterFile, options["users-page-size"], {b"events": requests, b"requests": requests})
    try:
        # Twisted types Site's protocol (a proxy) so that it fails listenTCP's bound.
        reactor.listenTCP(options["webapp-port"], server.Site(webapp),  # type: ignore[arg-type]
                          interface="127.0.0.1")
    except CannotListenError as e:
        prosody.stop()
        raise SystemExit(f"demo: the sample web app cannot listen on port {e.port} (--webapp-port): {e.socketError}")
    if chat is not None:
        # "Add a contact" is offered: the server refuses it, and the web
        # app gets it as a contact request.
        chat.settings.update(localSettings(prosody.websocketURL, prosody.domain), allow_contact_requests=True)
        try:
            reactor.listenTCP(options["chat-port"], server.Site(chat), interface="127.0.0.1")  # type: ignore[arg-type]
        except CannotListenError as e:
            prosody.stop()
            raise SystemExit(f"demo: the chat page cannot listen on port {e.port} (--chat-port): {e.socketError}")
    kickAuthorization = "Bearer " + secrets.token_urlsafe(12)
    serviceOptions = Options()
    serviceOptions.parseOptions([
        "--jid", prosody.componentJID, "--secret", prosody.secret,
        "--xmpp-port", str(prosody.componentPort), "--domain", prosody.domain,
        "--roster-url", f"http://127.0.0.1:{options['webapp-port']}/rosters/%s",
        "--users-url", f"http://127.0.0.1:{options['webapp-port']}/users",
        "--state", str(statePath),
        "--http", f"tcp:{options['http-port']}:interface=127.0.0.1",
        "--kick-authorization", kickAuthorization,
        "--events-url", f"http://127.0.0.1:{options['webapp-port']}/events", "--events-secret", eventsSecret,
    ])
    service = tap.makeService(serviceOptions)
    try:
        service.privilegedStartService()
    except SystemExit:
        prosody.stop()
        raise
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)

    print(banner(prosody, rosterFile, statePath, options["webapp-port"], options["http-port"], kickAuthorization,
                 ctlCommand(options["http-port"]), options["chat-port"] if chat is not None else None), flush=True)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    service.startService()
    watch = ProsodyWatch(prosody, reactor, reactor)
    reactor.run()
    if watch.died:
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv)
