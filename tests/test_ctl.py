"""
rosteradmin-ctl, run as a process against a stub of the HTTP API listening
on loopback: what it sends, what it prints where, and its exit codes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

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
        self.requests: list[tuple[str, str, str | None, bytes]] = []
        self.hold = False

    def reply(self, command: str, status: int, body: Any) -> None:
        """
        Answer C{command}'s route with C{status} and C{body}, as JSON unless
        it is bytes already.
        """
        self.replies[PATHS[command]] = (status, body if isinstance(body, bytes) else json.dumps(body).encode())

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode()
        authorization = request.getHeader("authorization")
        self.requests.append((request.method.decode(), path, authorization, request.content.read()))
        if self.hold:
            return NOT_DONE_YET
        status, body = self.replies.get(path, (404, b'{"error": "No such resource"}'))
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
