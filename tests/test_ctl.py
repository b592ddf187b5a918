"""
rosteradmin-ctl, run as a process against a stub of the HTTP API listening
on loopback: what it sends, what it prints where, and its exit codes.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from rosteradmin import ctl as ctl_module

ROOT = Path(__file__).parents[1]

REFRESH_OK = {"status": "ok", "message": "roster update complete", "updated": 2, "errors": 0, "failures": {}}
REFRESH_PARTIAL = {"status": "ok", "message": "roster update complete", "updated": 1, "errors": 1,
                   "failures": {"dave": "web app answered HTTP 503"}}
REFRESH_FAILED = {"status": "error", "message": "roster update failed for every user", "updated": 0,
                  "errors": 2, "failures": {"dave": "web app answered HTTP 503", "erin": "timeout"}}
HEALTH_OK = {"status": "ok", "connected": True, "cached_users": 3, "fetches_in_flight": 1,
             "unsynced_users": 0, "last_error": None}
HEALTH_DOWN = {"status": "unavailable", "connected": False, "cached_users": 3, "fetches_in_flight": 0,
               "unsynced_users": 2, "last_error": "not-authorized"}
KICK_OK = {"status": "ok", "message": "Bob kicked from room@conference.example.org"}

#: Each command's route on the API.
PATHS = {"refresh": "/roster_admin/refresh", "health": "/healthz", "kick": "/muc_kick"}
COMMANDS = {"refresh": ["refresh", "alice", "bob"], "health": ["health"],
            "kick": ["kick", "room@conference.example.org", "Bob"]}


class ApiStub(Resource):
    """
    The API in memory: each path answers the status and body set in
    C{replies}, or nothing at all while C{hold} is true.

    @ivar requests: Method, path, Authorization header and body of each request.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.url = ""
        self.replies: dict[str, tuple[int, bytes]] = {}
        self.scripts: dict[tuple[str, str], list[tuple[int, bytes] | None]] = {}
        self.requests: list[tuple[str, str, str | None, bytes]] = []
        self.hold = False

    def reply(self, command: str, status: int, body: Any) -> None:
        """
        Answer C{command}'s route with C{status} and C{body}, as JSON unless
        it is bytes already.
        """
        self.replies[PATHS[command]] = (status, body if isinstance(body, bytes) else json.dumps(body).encode())

    def script(self, method: str, path: str, *replies: tuple[int, Any] | None) -> None:
        """
        Answer C{method path} with each of C{replies} in turn, the last one
        again and again; C{None} is no reply at all.
        """
        self.scripts[method, path] = [
            None if r is None else (r[0], r[1] if isinstance(r[1], bytes) else json.dumps(r[1]).encode())
            for r in replies]

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode()
        method = request.method.decode()
        authorization = request.getHeader("authorization")
        self.requests.append((method, path, authorization, request.content.read()))
        script = self.scripts.get((method, path))
        reply = (script.pop(0) if len(script) > 1 else script[0]) if script else None
        if self.hold or script and reply is None:
            return NOT_DONE_YET
        status, body = reply or self.replies.get(path, (404, b'{"error": "No such resource"}'))
        request.setResponseCode(status)
        request.setHeader("content-type", "application/json")
        return body


class Babbler(Protocol):
    """
    A server that is not HTTP: it answers anything with an XMPP stream header.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"<stream:stream xmlns='jabber:component:accept'>\r\n")
        self.transport.loseConnection()


@dataclass(frozen=True)
class Run:
    """
    One run of rosteradmin-ctl: its exit code and what it printed.
    """

    code: int
    out: str
    err: str


async def ctl(*args: str, env: dict[str, str] | None = None) -> Run:
    """
    Run C{rosteradmin-ctl args} as a process, with no C{ROSTERADMIN_*} or
    proxy settings from the test's environment unless given in C{env}.
    """
    environ = {name: value for name, value in os.environ.items()
               if not name.startswith("ROSTERADMIN_") and not name.lower().endswith("_proxy")}
    environ.update(env or {})
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "rosteradmin.ctl", *args], env=environ, path=str(ROOT))
    run = Run(code, out.decode(), err.decode())
    print(f"$ rosteradmin-ctl {' '.join(args)}\n{run.out}{run.err}[exit {code}]")
    return run


def lastLine(text: str) -> str:
    """
    The last line of C{text}, which must end with a line break.
    """
    assert text.endswith("\n")
    return text.splitlines()[-1]


@pytest_twisted.async_yield_fixture
async def api() -> AsyncIterator[ApiStub]:
    """
    The API stub listening on loopback, its base URL in C{url}.
    """
    stub = ApiStub()
    port = reactor.listenTCP(0, Site(stub), interface="127.0.0.1")
    stub.url = f"http://127.0.0.1:{port.getHost().port}"
    yield stub
    await port.stopListening()


# Success


@pytest_twisted.ensureDeferred
async def test_refreshSuccess(api: ApiStub) -> None:
    """
    A refresh posts the usernames as a JSON array and prints the summary on
    stdout, exit 0.
    """
    api.reply("refresh", 200, REFRESH_OK)
    run = await ctl("--url", api.url, "refresh", "alice", "bob")
    assert run == Run(0, "roster update complete: 2 updated, 0 errors\n", "")
    assert api.requests == [("POST", "/roster_admin/refresh", None, b'["alice", "bob"]')]


@pytest_twisted.ensureDeferred
async def test_refreshPartialSuccess(api: ApiStub) -> None:
    """
    A refresh that updated some users is a success that lists the failed
    users under the summary.
    """
    api.reply("refresh", 200, REFRESH_PARTIAL)
    run = await ctl("--url", api.url, "refresh", "alice", "dave")
    assert run == Run(0, "roster update complete: 1 updated, 1 errors\n  dave: web app answered HTTP 503\n", "")


@pytest_twisted.ensureDeferred
async def test_healthSuccess(api: ApiStub) -> None:
    """
    health prints the connection state and counters on stdout, exit 0.
    """
    api.reply("health", 200, HEALTH_OK)
    run = await ctl("--url", api.url, "health")
    assert run == Run(0, "connected; 3 cached users, 1 fetches in flight, 0 unsynced\n", "")
    assert api.requests == [("GET", "/healthz", None, b"")]


@pytest_twisted.ensureDeferred
async def test_healthShowsTheRole(api: ApiStub) -> None:
    """
    health says whether the service leads or stands by, and since when,
    when it says so (a PostgreSQL state shared by several instances).
    """
    api.reply("health", 200, {**HEALTH_OK, "role": "leader", "since": "2026-12-07T06:40:00Z"})
    run = await ctl("--url", api.url, "health")
    assert run == Run(0, "leader since 2026-12-07T06:40:00Z; connected; 3 cached users, 1 fetches in flight, "
                         "0 unsynced\n", "")
    api.reply("health", 200, {"status": "standby", "role": "standby", "since": "2026-12-07T06:41:00Z",
                              "connected": False, "cached_users": 0, "fetches_in_flight": 0, "unsynced_users": 0,
                              "last_error": None, "leadership_error": None})
    run = await ctl("--url", api.url, "health")
    assert run == Run(0, "standby since 2026-12-07T06:41:00Z; the leader holds the XMPP connection\n", "")
    api.reply("health", 503, {"status": "unavailable", "role": "standby", "since": "2026-12-07T06:41:00Z",
                              "connected": False, "cached_users": 0, "fetches_in_flight": 0, "unsynced_users": 0,
                              "last_error": None, "leadership_error": "connection refused"})
    run = await ctl("--url", api.url, "health")
    assert run == Run(1, "", "rosteradmin-ctl: health failed: HTTP 503: standby since 2026-12-07T06:41:00Z; "
                             "the leader holds the XMPP connection; cannot lead: connection refused\n")


@pytest_twisted.ensureDeferred
async def test_healthSaysWhenNotDelegated(api: ApiStub) -> None:
    """
    Connected without the server's delegation, health says so (with the
    error, once there is one); delegated, it says nothing more.
    """
    api.reply("health", 200, {**HEALTH_OK, "delegated": False, "delegation_error": None})
    run = await ctl("--url", api.url, "health")
    assert run == Run(0, "connected; 3 cached users, 1 fetches in flight, 0 unsynced; "
                         "roster queries NOT delegated to rosteradmin\n", "")
    api.reply("health", 200, {**HEALTH_OK, "status": "degraded", "delegated": False,
                              "delegation_error": "the server delegated no jabber:iq:roster"})
    run = await ctl("--url", api.url, "health")
    assert run.out.endswith("; roster queries NOT delegated to rosteradmin "
                            "(the server delegated no jabber:iq:roster)\n")
    api.reply("health", 200, {**HEALTH_OK, "delegated": True})
    run = await ctl("--url", api.url, "health")
    assert run.out == "connected; 3 cached users, 1 fetches in flight, 0 unsynced\n"


@pytest_twisted.ensureDeferred
async def test_kickSuccess(api: ApiStub) -> None:
    """
    kick posts the room, nickname and reason with the Authorization value
    from the environment, and prints the service's message.
    """
    api.reply("kick", 200, KICK_OK)
    run = await ctl("--url", api.url + "/", "kick", "room@conference.example.org", "Bob", "--reason", "spam",
                    env={"ROSTERADMIN_AUTHORIZATION": "Bearer s3cret"})
    assert run == Run(0, "Bob kicked from room@conference.example.org\n", "")
    [(method, path, authorization, body)] = api.requests
    assert (method, path, authorization) == ("POST", "/muc_kick", "Bearer s3cret")
    assert json.loads(body) == {"nickname": "Bob", "muc": "room@conference.example.org", "reason": "spam"}


@pytest_twisted.ensureDeferred
async def test_urlFromEnvironment(api: ApiStub) -> None:
    """
    Without C{--url}, the API's address comes from C{ROSTERADMIN_URL}.
    """
    api.reply("health", 200, HEALTH_OK)
    run = await ctl("health", env={"ROSTERADMIN_URL": api.url})
    assert run.code == 0 and len(api.requests) == 1


# Defect 1: the authorization file is a usage matter, not reachability.


@pytest_twisted.ensureDeferred
async def test_authorizationFileSent(api: ApiStub, tmp_path: Path) -> None:
    """
    The value in C{--authorization-file}, without its final line break, is
    the Authorization header.
    """
    api.reply("kick", 200, KICK_OK)
    secret = tmp_path / "kick-authorization"
    secret.write_text("Bearer s3cret\n")
    run = await ctl("--url", api.url, "--authorization-file", str(secret), "kick", "room@conference.example.org", "Bob")
    assert run.code == 0
    assert api.requests[0][2] == "Bearer s3cret"


@pytest.mark.parametrize("content, cause", [
    (None, "cannot read it: No such file or directory"),
    ("directory", "cannot read it: Is a directory"),
    (b"\xff\xfeBearer\n", "it is not UTF-8 text"),
    (b"  \n", "it is empty"),
    (b"Bearer a\nX-Injected: 1\n", "the value holds a line break or another control character"),
    ("Bearer \u20ac".encode(), "the value holds a character outside Latin-1"),
])
@pytest_twisted.ensureDeferred
async def test_authorizationFileUnusable(api: ApiStub, tmp_path: Path, content: bytes | str | None,
                                         cause: str) -> None:
    """
    An authorization file that is missing, unreadable, empty or unusable as
    a header value is a usage error (exit 2) told in one line naming the
    file and the cause, and nothing is sent.
    """
    path = tmp_path / "kick-authorization"
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    run = await ctl("--url", api.url, "--authorization-file", str(path), "kick", "room@conference.example.org", "Bob")
    assert run == Run(2, "", f"rosteradmin-ctl: error: --authorization-file {path}: {cause}\n")
    assert api.requests == []


@pytest_twisted.ensureDeferred
async def test_authorizationValueUnusable(api: ApiStub) -> None:
    """
    A C{ROSTERADMIN_AUTHORIZATION} value that cannot be a header value is a
    usage error naming the variable, not a traceback.
    """
    run = await ctl("--url", api.url, "health", env={"ROSTERADMIN_AUTHORIZATION": "Bearer a\r\nX: 1"})
    assert run == Run(2, "", "rosteradmin-ctl: error: ROSTERADMIN_AUTHORIZATION: "
                             "the value holds a line break or another control character\n")
    assert api.requests == []


# Defect 2: a success status with a body that is not the API's.


@pytest.mark.parametrize("command, body, problem", [
    ("health", b"<html><body>It works!</body></html>", "the reply is not JSON"),
    ("refresh", b"", "the reply is not JSON"),
    ("kick", b"\xff\xfe{", "the reply is not JSON"),
    ("health", b"[" * 100_000 + b"]" * 100_000, "the reply is not JSON"),
    ("health", b'["connected"]', "the reply is a JSON array, not an object"),
    ("refresh", b"null", "the reply is a JSON null, not an object"),
    ("refresh", b'{"status": "ok", "message": "roster update complete"}', "'updated' is missing or not a count"),
    ("refresh", b'{"message": "ok", "updated": 1, "errors": 0, "failures": ["dave"]}',
     "'failures' is not an object of usernames and reasons"),
    ("health", b'{"connected": "yes", "cached_users": 0, "fetches_in_flight": 0, "unsynced_users": 0}',
     "'connected' is missing or not true or false"),
    ("kick", b'{"status": "ok"}', "'message' is missing or not a string"),
])
@pytest_twisted.ensureDeferred
async def test_successReplyNotTheAPIs(api: ApiStub, command: str, body: bytes, problem: str) -> None:
    """
    A 200 reply that is not JSON, or JSON of the wrong shape, is a failure
    (exit 1) told in one line on stderr.
    """
    api.reply(command, 200, body)
    run = await ctl("--url", api.url, *COMMANDS[command])
    assert run == Run(1, "", f"rosteradmin-ctl: {command} failed: HTTP 200 but {problem} "
                             f"(is {api.url} rosteradmin's API?)\n")


@pytest_twisted.ensureDeferred
async def test_successReplyNotJSONWithJSONOption(api: ApiStub) -> None:
    """
    With C{--json}, a 200 reply that is not JSON prints no document, and the
    failure goes to stderr, exit 1.
    """
    api.reply("health", 200, b"<html></html>")
    run = await ctl("--url", api.url, "--json", "health")
    assert run == Run(1, "", f"rosteradmin-ctl: health failed: HTTP 200 but the reply is not JSON "
                             f"(is {api.url} rosteradmin's API?)\n")


# Defect 3: option values checked before anything is sent.


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "1e10", "soon"])
@pytest_twisted.ensureDeferred
async def test_timeoutOutOfRange(api: ApiStub, value: str) -> None:
    """
    A C{--timeout} that is not a number of seconds above 0 (and at most a
    day) is a usage error (exit 2), not a traceback.
    """
    run = await ctl("--url", api.url, "--timeout", value, "health")
    assert run.code == 2 and run.out == "" and "Traceback" not in run.err
    assert lastLine(run.err) == ("rosteradmin-ctl: error: argument --timeout: must be a number of seconds "
                                 f"above 0 and at most 86400, not {value!r}")
    assert api.requests == []


@pytest.mark.parametrize("url, problem", [
    ("localhost:8080", "is not an http:// or https:// URL (such as http://127.0.0.1:5280)"),
    ("127.0.0.1:5280", "is not an http:// or https:// URL (such as http://127.0.0.1:5280)"),
    ("ftp://example.org", "is not an http:// or https:// URL (such as http://127.0.0.1:5280)"),
    ("http://", "is not an http:// or https:// URL (such as http://127.0.0.1:5280)"),
    ("http://localhost:99999", "is not a URL: Port out of range 0-65535"),
    ("http://localhost/api?x=1", "must have no query or fragment"),
    ("http://local host", "must have no spaces or control characters"),
])
@pytest_twisted.ensureDeferred
async def test_urlUnusable(url: str, problem: str) -> None:
    """
    A C{--url} without an http or https scheme and a host, or that is not
    a URL, is a usage error (exit 2) told in one clear line.
    """
    run = await ctl("--url", url, "health")
    assert run.code == 2 and run.out == "" and "Traceback" not in run.err
    assert lastLine(run.err) == f"rosteradmin-ctl: error: --url {url!r} {problem}"


@pytest_twisted.ensureDeferred
async def test_urlFromEnvironmentUnusable() -> None:
    """
    A bad C{ROSTERADMIN_URL} is a usage error that names the variable.
    """
    run = await ctl("health", env={"ROSTERADMIN_URL": "localhost:8080"})
    assert run.code == 2
    assert lastLine(run.err) == ("rosteradmin-ctl: error: ROSTERADMIN_URL 'localhost:8080' is not an http:// "
                                 "or https:// URL (such as http://127.0.0.1:5280)")


# Unreachable: exit 3, one line.


@pytest_twisted.ensureDeferred
async def test_unreachable() -> None:
    """
    A port nothing listens on: exit 3, one line on stderr.
    """
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()
    run = await ctl("--url", url, "health")
    assert run == Run(3, "", f"rosteradmin-ctl: cannot reach {url}: [Errno 111] Connection refused\n")


@pytest_twisted.ensureDeferred
async def test_noReplyInTime(api: ApiStub) -> None:
    """
    A service that accepts the request but does not answer within
    C{--timeout}: exit 3, with a line saying so.
    """
    api.hold = True
    run = await ctl("--url", api.url, "--timeout", "0.5", "refresh", "alice")
    assert run == Run(3, "", f"rosteradmin-ctl: no reply from {api.url} within 0.5 s (see --timeout)\n")


@pytest_twisted.ensureDeferred
async def test_notHTTP() -> None:
    """
    A port that answers something other than HTTP (here an XMPP stream, as
    when C{--url} names the component port): exit 3, one line.
    """
    port = reactor.listenTCP(0, Factory.forProtocol(Babbler), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    try:
        run = await ctl("--url", url, "health")
    finally:
        await port.stopListening()
    assert run.code == 3 and run.out == ""
    assert run.err == (f"rosteradmin-ctl: no HTTP reply from {url}: BadStatusLine: "
                       "\"<stream:stream xmlns='jabber:component:accept'>\\r\\n\"\n")


# Defect 4: error replies read as errors.


@pytest.mark.parametrize("command, status, body, expected", [
    ("refresh", 500, REFRESH_FAILED,
     "refresh failed: HTTP 500: roster update failed for every user; errors:\n"
     "  dave: web app answered HTTP 503\n  erin: timeout"),
    ("refresh", 401, {"status": "error", "message": "Authorization failed"},
     "refresh failed: HTTP 401: Authorization failed"),
    ("health", 503, HEALTH_DOWN,
     "health failed: HTTP 503: NOT connected; 3 cached users, 0 fetches in flight, 2 unsynced; "
     "last error: not-authorized"),
    ("health", 503, {"error": "The service is stopping"}, "health failed: HTTP 503: The service is stopping"),
    ("kick", 404, {"error": "Room or nickname not found"}, "kick failed: HTTP 404: Room or nickname not found"),
    ("kick", 502, b"<html>Bad Gateway</html>", "kick failed: HTTP 502: Bad Gateway (the reply is not JSON)"),
    ("kick", 599, b"", "kick failed: HTTP 599 (the reply is not JSON)"),
])
@pytest_twisted.ensureDeferred
async def test_errorReply(api: ApiStub, command: str, status: int, body: Any, expected: str) -> None:
    """
    An error reply is told as a failure of the command with the status and
    the service's message (and, for a refresh, each user's failure) on
    stderr, exit 1; nothing goes to stdout.
    """
    api.reply(command, status, body)
    run = await ctl("--url", api.url, *COMMANDS[command])
    assert run == Run(1, "", f"rosteradmin-ctl: {expected}\n")


# Defect 5: --json puts the document on stdout and errors on stderr.


@pytest.mark.parametrize("command, body", [("refresh", REFRESH_OK), ("health", HEALTH_OK), ("kick", KICK_OK)])
@pytest_twisted.ensureDeferred
async def test_jsonSuccess(api: ApiStub, command: str, body: Any) -> None:
    """
    With C{--json}, a success prints the reply as one JSON document on
    stdout and nothing on stderr.
    """
    api.reply(command, 200, body)
    run = await ctl("--url", api.url, "--json", *COMMANDS[command])
    assert (run.code, run.err) == (0, "")
    assert run.out.count("\n") == 1 and json.loads(run.out) == body


@pytest.mark.parametrize("command, status, body", [("refresh", 500, REFRESH_FAILED), ("health", 503, HEALTH_DOWN),
                                                   ("kick", 401, {"error": "Authorization failed"})])
@pytest_twisted.ensureDeferred
async def test_jsonErrorReply(api: ApiStub, command: str, status: int, body: Any) -> None:
    """
    With C{--json}, an error reply still prints its JSON document on stdout,
    and the error line goes to stderr, exit 1.
    """
    api.reply(command, status, body)
    run = await ctl("--url", api.url, "--json", *COMMANDS[command])
    assert run.code == 1 and json.loads(run.out) == body
    assert run.err.startswith(f"rosteradmin-ctl: {command} failed: HTTP {status}: ")


@pytest_twisted.ensureDeferred
async def test_jsonUnreachable() -> None:
    """
    With C{--json}, an unreachable service prints nothing on stdout.
    """
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()
    run = await ctl("--url", url, "--json", "health")
    assert (run.code, run.out) == (3, "") and run.err.startswith(f"rosteradmin-ctl: cannot reach {url}: ")


# sync: start a pass, follow it, sum it up.

STARTED_AT = 1_700_000_000.25


def progress(kind: str = "users", running: bool = True, listed: int = 2, synced: int = 0, failed: int = 0,
             failures: dict[str, str] | None = None, error: str | None = None, startedAt: float = STARTED_AT,
             seconds: float = 1.5) -> dict[str, Any]:
    """
    A sync progress document as the service writes it; a pass that is not
    running ended C{seconds} after it started, with every user listed.
    """
    return {"kind": kind, "running": running, "listed": listed, "listing_done": not running, "synced": synced,
            "failed": failed, "failures": failures or {}, "started_at": startedAt,
            "finished_at": None if running else startedAt + seconds, "error": error}


def started(**fields: Any) -> tuple[int, dict[str, Any]]:
    return 202, {"status": "started", "sync": progress(**fields)}


def polled(**fields: Any) -> tuple[int, dict[str, Any]]:
    sync = progress(**fields)
    return 200, {"status": "running" if sync["running"] else "idle", "sync": sync}


SYNC = "/roster_admin/sync"

#: Short polls, so that a test takes a fraction of a second.
FAST = ["--interval", "0.05"]


@pytest_twisted.ensureDeferred
async def test_syncUsersFollowedToTheEnd(api: ApiStub) -> None:
    """
    sync posts the usernames (each once), polls the progress until the
    pass ends, prints a progress line on stderr (not a terminal) and the
    summary on stdout, exit 0.
    """
    api.script("POST", SYNC, started())
    api.script("GET", SYNC, polled(synced=1), polled(synced=2), polled(running=False, synced=2))
    run = await ctl("--url", api.url, "sync", "alice", "bob", "alice", *FAST)
    assert run == Run(0, "sync done: 2 of 2 users synced in 1.5 s\n", "sync: 0 of 2 users done (0%), 0 failed, 0 s\n")
    assert [(m, p, b) for m, p, _, b in api.requests] == [
        ("POST", SYNC, b'["alice", "bob"]'), ("GET", SYNC, b""), ("GET", SYNC, b""), ("GET", SYNC, b"")]


@pytest_twisted.ensureDeferred
async def test_syncAllWithJSON(api: ApiStub) -> None:
    """
    sync --all posts C{{"all": true}}, sends the Authorization value, and
    with C{--json} prints the last progress document, as is, on stdout.
    """
    api.script("POST", SYNC, started(kind="full", listed=0))
    last = polled(kind="full", running=False, listed=3, synced=3)
    api.script("GET", SYNC, polled(kind="full", listed=2, synced=1), last)
    run = await ctl("--url", api.url, "--json", "--authorization", "Bearer s3cret", "sync", "--all", *FAST)
    assert (run.code, json.loads(run.out), run.out.count("\n")) == (0, last[1], 1)
    assert run.err == "full sync: 0 users done, listing, 0 failed, 0 s\n"
    assert api.requests[0] == ("POST", SYNC, "Bearer s3cret", b'{"all": true}')


@pytest_twisted.ensureDeferred
async def test_syncSomeUsersFailed(api: ApiStub) -> None:
    """
    A pass that ended with failed users exits 1, with the counts and each
    failure on stderr, and more failures than the service shows counted.
    """
    api.script("POST", SYNC, started(listed=4))
    api.script("GET", SYNC, polled(running=False, listed=4, synced=1, failed=3,
                                   failures={"erin": "timeout", "dave": "web app answered HTTP 503"}))
    run = await ctl("--url", api.url, "sync", "alice", "dave", "erin", "frank", *FAST)
    assert (run.code, run.out) == (1, "")
    assert run.err.endswith("rosteradmin-ctl: sync done with errors in 1.5 s: 1 of 4 users synced, 3 failed; errors:\n"
                            "  dave: web app answered HTTP 503\n  erin: timeout\n"
                            "  ... and 1 more (see the service's log)\n")


@pytest_twisted.ensureDeferred
async def test_syncStoppedOnError(api: ApiStub) -> None:
    """
    A pass that stopped on an error (the users list could not be read)
    exits 1 with the error on stderr, even with no user failed; with
    C{--json} the last document still goes to stdout.
    """
    why = "GET http://app/users?after=bob answered HTTP 500: oops"
    api.script("POST", SYNC, started(kind="full", listed=0))
    last = polled(kind="full", running=False, listed=2, synced=2, error=why)
    api.script("GET", SYNC, last)
    run = await ctl("--url", api.url, "--json", "sync", "--all", *FAST)
    assert (run.code, json.loads(run.out)) == (1, last[1])
    assert lastLine(run.err) == f"rosteradmin-ctl: full sync stopped after 1.5 s: {why}; 2 of 2 users synced, 0 failed"


@pytest.mark.parametrize("options, out", [
    ([], "full sync started; GET {url}/roster_admin/sync shows its progress\n"),
    (["--json"], json.dumps(started(kind="full", listed=0)[1]) + "\n"),
])
@pytest_twisted.ensureDeferred
async def test_syncNoWait(api: ApiStub, options: list[str], out: str) -> None:
    """
    sync --no-wait returns once the pass has started, exit 0, and polls
    nothing.
    """
    api.script("POST", SYNC, started(kind="full", listed=0))
    run = await ctl("--url", api.url, *options, "sync", "--all", "--no-wait")
    assert run == Run(0, out.replace("{url}", api.url), "")
    assert [m for m, *_ in api.requests] == ["POST"]


@pytest_twisted.ensureDeferred
async def test_syncWaitsForTheRunningPass(api: ApiStub) -> None:
    """
    While another pass runs, the service starts none: sync says so, follows
    that pass to its end, then starts its own and follows it.
    """
    theirs = {"kind": "reconcile", "listed": 500, "startedAt": STARTED_AT - 60}
    api.script("POST", SYNC, (202, {"status": "running", "sync": progress(**theirs)}), started())
    api.script("GET", SYNC, polled(**theirs, synced=200), polled(**theirs, running=False, synced=500),
               polled(running=False, synced=2))
    run = await ctl("--url", api.url, "sync", "alice", "bob", *FAST)
    assert (run.code, run.out) == (0, "sync done: 2 of 2 users synced in 1.5 s\n")
    assert run.err.startswith("rosteradmin-ctl: a reconciliation is running; waiting for it to end, "
                              "then starting this sync\nreconciliation: 0 users done, listing, 0 failed, 0 s\n")
    assert [m for m, *_ in api.requests] == ["POST", "GET", "GET", "POST", "GET"]


@pytest_twisted.ensureDeferred
async def test_syncNoWaitWhileAnotherRuns(api: ApiStub) -> None:
    """
    sync --no-wait while another pass runs starts nothing: exit 1, saying
    which pass runs.
    """
    api.script("POST", SYNC, (202, {"status": "running", "sync": progress(kind="full", listed=500, synced=120)}))
    run = await ctl("--url", api.url, "sync", "--all", "--no-wait")
    assert run == Run(1, "", "rosteradmin-ctl: sync not started: a full sync is running (120 of 500 users synced, "
                             "0 failed); without --no-wait, sync waits for it\n")


@pytest.mark.parametrize("reply, message", [
    (None, "the service no longer knows it (did it restart?)"),
    (progress(kind="reconcile", startedAt=STARTED_AT + 5), "a reconciliation started since, and replaced its progress"),
])
@pytest_twisted.ensureDeferred
async def test_syncProgressLost(api: ApiStub, reply: dict[str, Any] | None, message: str) -> None:
    """
    When the service shows no pass, or another one, before this pass was
    seen ending, its outcome is unknown: exit 1.
    """
    api.script("POST", SYNC, started())
    api.script("GET", SYNC, polled(synced=1), (200, {"status": "idle" if reply is None else "running", "sync": reply}))
    run = await ctl("--url", api.url, "sync", "alice", "bob", *FAST)
    assert (run.code, run.out) == (1, "")
    assert lastLine(run.err) == f"rosteradmin-ctl: sync outcome unknown: {message}"


@pytest.mark.parametrize("args, message", [
    ([], "give --all or the usernames to sync"),
    (["--all", "alice"], "give --all or the usernames to sync, not both"),
    (["alice", "--interval", "0"], "argument --interval: must be a number of seconds above 0 and at most 86400, not '0'"),
])
@pytest_twisted.ensureDeferred
async def test_syncUsage(api: ApiStub, args: list[str], message: str) -> None:
    """
    sync needs --all or usernames, not both, and a positive --interval:
    else a usage error (exit 2) and nothing is sent.
    """
    run = await ctl("--url", api.url, "sync", *args)
    assert (run.code, run.out) == (2, "")
    assert lastLine(run.err) == f"rosteradmin-ctl sync: error: {message}"
    assert api.requests == []


@pytest.mark.parametrize("method, status, body, message", [
    ("POST", 400, {"status": "error", "message": "No --users-url is configured: name the users to sync"},
     "sync failed: HTTP 400: No --users-url is configured: name the users to sync"),
    ("POST", 401, {"status": "error", "message": "Authorization failed"}, "sync failed: HTTP 401: Authorization failed"),
    ("POST", 404, {"error": "No such resource"}, "sync failed: HTTP 404: No such resource"),
    ("GET", 503, {"error": "The service is stopping"}, "sync failed: HTTP 503: The service is stopping"),
])
@pytest_twisted.ensureDeferred
async def test_syncErrorReply(api: ApiStub, method: str, status: int, body: Any, message: str) -> None:
    """
    An error reply, to the POST or to a poll, is told on stderr, exit 1;
    with C{--json} its document goes to stdout.
    """
    api.script("POST", SYNC, (status, body) if method == "POST" else started())
    api.script("GET", SYNC, (status, body))
    run = await ctl("--url", api.url, "--json", "sync", "--all", *FAST)
    assert (run.code, json.loads(run.out)) == (1, body)
    assert lastLine(run.err) == f"rosteradmin-ctl: {message}"


@pytest.mark.parametrize("method, body, problem", [
    ("POST", b"<html></html>", "the reply is not JSON"),
    ("POST", {"status": "ok", "message": "sync started"}, "'status' is missing or not 'started', 'running' or 'joined'"),
    ("POST", {"status": "started", "sync": None}, "'sync' is missing or not an object"),
    ("GET", {"status": "idle", "sync": {**progress(), "synced": "2"}}, "'sync.synced' is missing or not a count"),
    ("GET", {"status": "idle", "sync": {**progress(), "running": False}},
     "'sync.finished_at' is null, yet the sync is not running"),
    ("GET", [progress()], "the reply is a JSON array, not an object"),
])
@pytest_twisted.ensureDeferred
async def test_syncReplyNotTheAPIs(api: ApiStub, method: str, body: Any, problem: str) -> None:
    """
    A success status with a reply that is not the sync resource's is a
    failure (exit 1) told in one line.
    """
    status = 202 if method == "POST" else 200
    api.script("POST", SYNC, (status, body) if method == "POST" else started())
    api.script("GET", SYNC, (status, body))
    run = await ctl("--url", api.url, "sync", "alice", "bob", *FAST)
    assert (run.code, run.out) == (1, "")
    assert lastLine(run.err) == (f"rosteradmin-ctl: sync failed: HTTP {status} but {problem} "
                                 f"(is {api.url} rosteradmin's API?)")


@pytest_twisted.ensureDeferred
async def test_syncUnreachable(api: ApiStub) -> None:
    """
    A poll left unanswered within C{--timeout} is told like any
    unreachable service, exit 3; so is a service that does not listen.
    """
    api.script("POST", SYNC, started())
    api.script("GET", SYNC, polled(synced=1), None)
    run = await ctl("--url", api.url, "--timeout", "0.5", "sync", "alice", "bob", *FAST)
    assert (run.code, run.out) == (3, "")
    assert lastLine(run.err) == f"rosteradmin-ctl: no reply from {api.url} within 0.5 s (see --timeout)"

    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()
    run = await ctl("--url", url, "sync", "--all")
    assert run == Run(3, "", f"rosteradmin-ctl: cannot reach {url}: [Errno 111] Connection refused\n")


def runInBackground(*args: str, stderr: int | None = None) -> subprocess.Popen[bytes]:
    environ = {name: value for name, value in os.environ.items()
               if not name.startswith("ROSTERADMIN_") and not name.lower().endswith("_proxy")}
    return subprocess.Popen([sys.executable, "-m", "rosteradmin.ctl", *args], cwd=ROOT, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE if stderr is None else stderr)


@pytest_twisted.ensureDeferred
async def test_syncInterrupted(api: ApiStub) -> None:
    """
    Ctrl-C while following a pass leaves it running in the service, says
    so in one line, and exits 130, without a traceback.
    """
    api.script("POST", SYNC, started())
    api.script("GET", SYNC, polled(synced=1))
    process = runInBackground("--url", api.url, "sync", "alice", "bob", *FAST)
    try:
        for _ in range(200):
            if len(api.requests) >= 3:
                break
            await deferLater(reactor, 0.02, lambda: None)
        process.send_signal(signal.SIGINT)
        out, err = await threads.deferToThread(process.communicate, timeout=10)
    finally:
        process.kill()
    assert (process.returncode, out) == (130, b"")
    assert err.decode().endswith(f"rosteradmin-ctl: interrupted; a sync that started goes on in the service "
                                 f"(GET {api.url}/roster_admin/sync shows its progress)\n")


def readAll(fd: int) -> bytes:
    """
    Everything written to a pseudo-terminal until its last writer closes it.
    """
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: no writer left
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_syncProgressBarOnATerminal(api: ApiStub) -> None:
    """
    With stderr on a terminal, the progress is one bar redrawn in place
    with carriage returns, ended by a line break before the summary goes to
    stdout.
    """
    api.script("POST", SYNC, started(listed=4))
    api.script("GET", SYNC, polled(listed=4, synced=1), polled(listed=4, synced=3),
               polled(running=False, listed=4, synced=4))
    controller, terminal = os.openpty()
    try:
        process = runInBackground("--url", api.url, "sync", "a", "b", "c", "d", *FAST, stderr=terminal)
        os.close(terminal)
        drawn = threads.deferToThread(readAll, controller)
        out, _ = await threads.deferToThread(process.communicate, timeout=10)
        # Seconds so far, which a slow machine may make more than 0.
        err = re.sub(r"failed, \d+ s", "failed, 0 s", (await drawn).decode())
    finally:
        os.close(controller)
    assert (process.returncode, out) == (0, b"sync done: 4 of 4 users synced in 1.5 s\n")
    # Each frame is as long as the one before (none is shorter here), and
    # the terminal turns the final \n into \r\n.
    assert err == "".join("\r" + frame for frame in [
        "sync [------------------------] 0 of 4 users done (0%), 0 failed, 0 s",
        "sync [######------------------] 1 of 4 users done (25%), 0 failed, 0 s",
        "sync [##################------] 3 of 4 users done (75%), 0 failed, 0 s",
        "sync [########################] 4 of 4 users done (100%), 0 failed, 0 s",
    ]) + "\r\n"


@pytest.mark.parametrize("failures, merged", [
    ({}, "full sync: 0 users done, listing, 0 failed, 0 s\nfull sync done: 3 of 3 users synced in 1.5 s\n"),
    ({"dave": "timeout"}, "full sync: 0 users done, listing, 0 failed, 0 s\n"
                          "rosteradmin-ctl: full sync done with errors in 1.5 s: 2 of 3 users synced, 1 failed; "
                          "errors:\n  dave: timeout\n"),
])
@pytest_twisted.ensureDeferred
async def test_syncOutputOnOnePipe(api: ApiStub, failures: dict[str, str], merged: str) -> None:
    """
    With stdout and stderr on one pipe and no terminal (a log, cron's
    mail, C{2>&1 | tee}), each line is whole and in order, the outcome last.
    """
    api.script("POST", SYNC, started(kind="full", listed=0))
    api.script("GET", SYNC, polled(kind="full", listed=2, synced=1),
               polled(kind="full", running=False, listed=3, synced=3 - len(failures), failed=len(failures),
                      failures=failures))
    process = runInBackground("--url", api.url, "sync", "--all", *FAST, stderr=subprocess.STDOUT)
    out, _ = await threads.deferToThread(process.communicate, timeout=10)
    assert (process.returncode, out.decode()) == (1 if failures else 0, merged)


# The progress display itself, with a fake clock.


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progressLinesWhenNotATerminal() -> None:
    """
    Off a terminal, a progress line is printed at once, then at most every
    L{ctl.LINE_INTERVAL} seconds, and only when the counts moved.
    """
    now = [0.0]
    stream = io.StringIO()
    display = ctl_module.ProgressDisplay(stream, clock=lambda: now[0])
    for at, synced in [(0, 0), (1, 5), (ctl_module.LINE_INTERVAL + 1, 9), (ctl_module.LINE_INTERVAL + 2, 12),
                       (3 * ctl_module.LINE_INTERVAL, 12), (4 * ctl_module.LINE_INTERVAL, 12)]:
        now[0] = at
        display.show(progress(kind="full", listed=20, synced=synced), None)
    display.end()
    assert stream.getvalue() == ("full sync: 0 users done, listing, 0 failed, 0 s\n"
                                 "full sync: 9 users done, listing, 0 failed, 6 s\n"
                                 "full sync: 12 users done, listing, 0 failed, 15 s\n")


def test_progressBarRedrawnInPlace() -> None:
    """
    On a terminal, each redraw starts with a carriage return and pads over
    a longer previous line; a message first ends the bar's line.  A pass
    whose total is not known yet shows a moving marker instead of a fill.
    """
    stream = FakeTerminal()
    display = ctl_module.ProgressDisplay(stream, clock=lambda: 0.0)
    display.show(progress(kind="full", listed=1000, synced=990, failed=10), None)
    display.show(progress(kind="full", listed=1500, synced=1000, failed=10), None)
    display.message("rosteradmin-ctl: something")
    first = "full sync [<=>                     ] 1000 users done, listing, 10 failed, 0 s"
    second = "full sync [ <=>                    ] 1010 users done, listing, 10 failed, 0 s"
    assert stream.getvalue() == f"\r{first}\r{second}\nrosteradmin-ctl: something\n"
    assert len(first) == len(second)


def test_progressBarMarkerBounces() -> None:
    """
    The marker of a bar without a total goes from end to end and back.
    """
    sync = progress(kind="full")
    positions = [ctl_module.progressBar(sync, None, 0, tick).index("<=>") - len("full sync [")
                 for tick in range(2 * ctl_module.BAR_WIDTH - 5)]
    width = ctl_module.BAR_WIDTH - 3
    assert positions == [*range(width + 1), *range(width - 1, 0, -1), 0]


@pytest_twisted.ensureDeferred
async def test_syncJoinsTheRunningPass(api: ApiStub) -> None:
    """
    Users named while a pass runs join it (the service syncs them at once,
    as part of it): sync says so and follows that pass to its end, without
    posting again.
    """
    theirs = {"kind": "full", "listed": 501, "startedAt": STARTED_AT - 60}
    api.script("POST", SYNC, (202, {"status": "joined", "sync": progress(**theirs, synced=120)}))
    api.script("GET", SYNC, polled(**theirs, synced=300), polled(**theirs, running=False, synced=501))
    run = await ctl("--url", api.url, "sync", "newcomer", *FAST)
    assert (run.code, run.out) == (0, "full sync done: 501 of 501 users synced in 1.5 s\n")
    assert run.err.startswith("rosteradmin-ctl: a full sync is running; these users joined it (synced now, as part "
                              "of it): following it to its end\n")
    assert [(m, b) for m, _, _, b in api.requests] == [("POST", b'["newcomer"]'), ("GET", b""), ("GET", b"")]


CANCELLED = "cancelled (DELETE /roster_admin/sync)"


@pytest_twisted.ensureDeferred
async def test_syncCancel(api: ApiStub) -> None:
    """
    sync --cancel cancels the running pass and follows it until it has
    ended (the batch under way finishes first), exit 0.
    """
    api.script("DELETE", SYNC, (202, {"status": "cancelling", "sync": progress(kind="full", error=CANCELLED)}))
    api.script("GET", SYNC, polled(kind="full", synced=1, error=CANCELLED),
               polled(kind="full", running=False, synced=2, error=CANCELLED))
    run = await ctl("--url", api.url, "sync", "--cancel", *FAST)
    assert (run.code, run.out) == (0, "full sync cancelled after 1.5 s: 2 of 2 users synced, 0 failed\n")
    assert [m for m, *_ in api.requests] == ["DELETE", "GET", "GET"]


@pytest_twisted.ensureDeferred
async def test_syncCancelWhenNoneRuns(api: ApiStub) -> None:
    """
    sync --cancel when no pass runs: the service's 409, exit 1.
    """
    api.script("DELETE", SYNC, (409, {"status": "error", "message": "No sync is running"}))
    run = await ctl("--url", api.url, "sync", "--cancel")
    assert (run.code, run.out, run.err) == (1, "", "rosteradmin-ctl: sync failed: HTTP 409: No sync is running\n")


@pytest_twisted.ensureDeferred
async def test_syncCancelTakesNoUsers(api: ApiStub) -> None:
    """
    sync --cancel with --all or usernames is a usage error; nothing is sent.
    """
    run = await ctl("--url", api.url, "sync", "--cancel", "alice")
    assert (run.code, lastLine(run.err)) == (2, "rosteradmin-ctl sync: error: --cancel takes no --all and no usernames")
    assert api.requests == []


# inspect

INSPECTION = {
    "username": "alice", "status": "problem", "leading": True,
    "verdict": "the web app changed the roster since rosteradmin last fetched it (1 to add): the user's clients "
               "show the old one until a refresh (POST /roster_admin/refresh/alice)",
    "findings": ["the web app changed the roster since rosteradmin last fetched it (1 to add): ..."],
    "web_app": {"status": "fetched", "roster": {"version": "v2", "count": 2, "contacts": {}}},
    "cache": {"status": "cached", "roster": {"version": "v1", "count": 1, "contacts": {}}},
    "server": {"status": "read", "roster": {"version": "v1", "count": 1, "contacts": {}}, "not_both": [],
               "recorded_version": "v1", "holds_recorded": True},
    "resources": {"presence_shared": True, "online": ["alice@example.org/phone"],
                  "clients": [{"jid": "alice@example.org/phone", "available": True, "holds_version": "v1",
                               "current": True, "dirty": [], "sending": False, "failures": 0}]},
    "state": {"recorded_version": "v1", "pending_since": None, "unsynced": False, "refused": None, "parked": None,
              "verified_version": "v1", "promised_version": None, "doubted_version": None, "unpushed": [],
              "server_takes_writes": True, "server_refusal": None},
    "differences": {"cache_to_web_app": {"added": [{"jid": "dave@example.org", "name": None, "groups": []}],
                                         "removed": [], "changed": []},
                    "server_to_web_app": {"added": [{"jid": "dave@example.org", "name": None, "groups": []}],
                                          "removed": [], "changed": []},
                    "server_to_cache": {"added": [], "removed": [], "changed": []}},
    "schedule": {"reconciliation_in": None, "online_check_in": None},
}


@pytest_twisted.ensureDeferred
async def test_inspectPrintsTheVerdictFirst(api: ApiStub) -> None:
    """
    inspect GETs the user's route, the username percent-encoded, and
    prints the verdict, each place and the differences, exiting 0
    whatever the verdict.
    """
    api.replies["/roster_admin/users/alice"] = (200, json.dumps(INSPECTION).encode())
    run = await ctl("--url", api.url, "--authorization", "s3", "inspect", "alice")
    assert run.code == 0 and run.err == ""
    assert api.requests == [("GET", "/roster_admin/users/alice", "s3", b"")]
    assert run.out == (
        f"alice: {INSPECTION['verdict']}\n"
        "web app   2 contacts, version v2\n"
        "cache     1 contact, version v1\n"
        "server    1 contact, version v1; the state records version v1\n"
        "online    alice@example.org/phone\n"
        "client    alice@example.org/phone: current\n"
        "state     verified version: v1\n"
        "differences (+ to add, - to remove, ~ to change, ! subscription not both):\n"
        "  cache → web app: +dave@example.org\n"
        "  server → web app: +dave@example.org\n"
        "  server → cache: the same\n")
    await ctl("--url", api.url, "inspect", "a b/c")
    assert api.requests[-1][1] == "/roster_admin/users/a%20b%2Fc"


@pytest_twisted.ensureDeferred
async def test_inspectJSONAndErrors(api: ApiStub) -> None:
    """
    With --json the picture goes to stdout as is; an unknown user's 400 is
    one message on stderr and exit 1.
    """
    api.replies["/roster_admin/users/alice"] = (200, json.dumps(INSPECTION).encode())
    run = await ctl("--url", api.url, "--json", "inspect", "alice")
    assert run.code == 0 and json.loads(run.out) == INSPECTION
    api.replies["/roster_admin/users/zoe"] = (400, json.dumps(
        {"status": "error", "message": "unknown user 'zoe': the web app does not know it"}).encode())
    run = await ctl("--url", api.url, "inspect", "zoe")
    assert run.code == 1 and run.out == ""
    assert run.err == "rosteradmin-ctl: inspect failed: HTTP 400: unknown user 'zoe': the web app does not know it\n"
    api.replies["/roster_admin/users/bob"] = (200, b'{"username": "bob"}')
    run = await ctl("--url", api.url, "inspect", "bob")
    assert run.code == 1 and "'verdict' is missing or not a string" in run.err
