# -*- test-case-name: tests.test_ctl,tests.integration.test_ctl -*-
"""
C{rosteradmin-ctl}: the HTTP API from a shell.

    rosteradmin-ctl refresh john aaron
    rosteradmin-ctl kick room@conference.example.org Bob --reason spam
    rosteradmin-ctl health

The API's address comes from C{--url} or C{ROSTERADMIN_URL} (default
C{http://127.0.0.1:5280}); the C{Authorization} value from
C{--authorization-file}, C{--authorization} or C{ROSTERADMIN_AUTHORIZATION},
so it stays out of the shell history.

A success is summed up on stdout; everything else is one message on stderr
(a failed refresh adds a line per user). With C{--json} the service's JSON
reply, success or error, goes to stdout as is, and messages still go to
stderr.

Exit codes: 0 done; 1 the service answered with an error, or with a reply
that is not its API's (its message is printed); 2 bad usage, an unreadable
C{--authorization-file} included; 3 the service could not be reached, or
gave no reply within C{--timeout}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import sys
from http import HTTPStatus
from typing import Any, TextIO
from urllib import error, parse, request

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

DEFAULT_URL = "http://127.0.0.1:5280"

#: The longest C{--timeout}, in seconds; sockets refuse much longer ones.
MAX_TIMEOUT = 86400

#: Stands for a reply body that is not JSON.
NOT_JSON: Any = object()


class UsageError(Exception):
    """
    A value given to C{rosteradmin-ctl} cannot be used; the message names it.
    """


class Unreachable(Exception):
    """
    No HTTP reply came from the service; the message says why.
    """


def _timeout(text: str) -> float:
    """
    The C{--timeout} value: seconds above 0, at most L{MAX_TIMEOUT}.

    @raise argparse.ArgumentTypeError: It is not.
    """
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and at most {MAX_TIMEOUT}, not {text!r}")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rosteradmin-ctl", description="Drive rosteradmin's HTTP API.")
    parser.add_argument("--url", help=f"base URL of the API (env ROSTERADMIN_URL, default {DEFAULT_URL})")
    parser.add_argument("--authorization", help="Authorization header value (env ROSTERADMIN_AUTHORIZATION)")
    parser.add_argument("--authorization-file", help="file holding the Authorization header value")
    parser.add_argument("--timeout", type=_timeout, default=60.0, help="seconds to wait for the reply")
    parser.add_argument("--json", action="store_true",
                        help="print the API's JSON reply on stdout as is (messages still go to stderr)")
    commands = parser.add_subparsers(dest="command", required=True)
    refresh = commands.add_parser("refresh", help="re-fetch and apply the rosters of these users")
    refresh.add_argument("usernames", nargs="+")
    kick = commands.add_parser("kick", help="kick an occupant out of a chat room")
    kick.add_argument("room", help="bare JID of the room, e.g. room@conference.example.org")
    kick.add_argument("nickname")
    kick.add_argument("--reason")
    commands.add_parser("health", help="is the service connected to the XMPP server?")
    return parser


def _baseURL(args: argparse.Namespace) -> str:
    """
    The API's base URL, without a final slash.

    @raise UsageError: The URL is not an http or https URL with a host.
    """
    url: str
    if args.url is not None:
        source, url = "--url", args.url
    else:
        source, url = "ROSTERADMIN_URL", os.environ.get("ROSTERADMIN_URL", DEFAULT_URL)
    # Checked first: urlsplit quietly drops some of these characters.
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise UsageError(f"{source} {url!r} must have no spaces or control characters")
    try:
        parts = parse.urlsplit(url)
        parts.port
    except ValueError as e:
        raise UsageError(f"{source} {url!r} is not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{source} {url!r} is not an http:// or https:// URL (such as {DEFAULT_URL})")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise UsageError(f"{source} {url!r} must have no query or fragment")
    return url.rstrip("/")


def _authorization(args: argparse.Namespace) -> str | None:
    """
    The Authorization header value, if any.

    @raise UsageError: The file cannot be read, is empty, or the value
        cannot be sent as a header.
    """
    if args.authorization_file is not None:
        source = f"--authorization-file {args.authorization_file}"
        try:
            with open(args.authorization_file, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as e:
            raise UsageError(f"{source}: cannot read it: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise UsageError(f"{source}: it is not UTF-8 text") from None
        if not value:
            raise UsageError(f"{source}: it is empty")
    elif args.authorization:
        source, value = "--authorization", args.authorization
    elif os.environ.get("ROSTERADMIN_AUTHORIZATION"):
        source, value = "ROSTERADMIN_AUTHORIZATION", os.environ["ROSTERADMIN_AUTHORIZATION"]
    else:
        return None
    # http.client would refuse both (or split the header at a line break).
    if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in value):
        raise UsageError(f"{source}: the value holds a line break or another control character")
    if any(ord(c) > 255 for c in value):
        raise UsageError(f"{source}: the value holds a character outside Latin-1")
    return value


def _call(base: str, method: str, path: str, body: Any, authorization: str | None,
          timeout: float) -> tuple[int, Any]:
    """
    One API call: the status and the decoded JSON reply (L{NOT_JSON} if it
    is not JSON), errors included.

    @raise Unreachable: No HTTP reply came.
    """
    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    data = json.dumps(body).encode("utf-8") if body is not None else None
    req = request.Request(base + path, data=data, headers=headers, method=method)
    try:
        try:
            response = request.urlopen(req, timeout=timeout)
        except error.HTTPError as e:
            response = e
        with response:
            status, raw = response.getcode(), response.read()
    except error.URLError as e:
        raise Unreachable(f"cannot reach {base}: {e.reason}") from None
    except TimeoutError:
        raise Unreachable(f"no reply from {base} within {timeout:g} s (see --timeout)") from None
    except http.client.HTTPException as e:
        # The start of whatever came instead, quoted: it may hold line breaks.
        raise Unreachable(f"no HTTP reply from {base}: {type(e).__name__}: {str(e)[:80]!r}") from None
    except OSError as e:
        raise Unreachable(f"cannot reach {base}: {e}") from None
    try:
        return status, json.loads(raw)
    except (ValueError, RecursionError):
        return status, NOT_JSON


def _isCount(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _isReasons(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(why, str) for why in value.values())


#: What each command's success reply must hold: key, check, what it should be.
SHAPES: dict[str, list[tuple[str, Any, str]]] = {
    "refresh": [
        ("message", lambda v: isinstance(v, str), "a string"),
        ("updated", _isCount, "a count"),
        ("errors", _isCount, "a count"),
    ],
    "kick": [("message", lambda v: isinstance(v, str), "a string")],
    "health": [
        ("connected", lambda v: isinstance(v, bool), "true or false"),
        ("cached_users", _isCount, "a count"),
        ("fetches_in_flight", _isCount, "a count"),
        ("unsynced_users", _isCount, "a count"),
    ],
}


def _shapeProblem(command: str, reply: Any) -> str | None:
    """
    What makes C{reply} not a success reply to C{command}, or C{None}.
    """
    if reply is NOT_JSON:
        return "the reply is not JSON"
    if not isinstance(reply, dict):
        kinds = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
        kind = kinds.get(type(reply), "null")
        return f"the reply is a JSON {kind}, not an object"
    for key, check, expected in SHAPES[command]:
        if not check(reply.get(key)):
            return f"{key!r} is missing or not {expected}"
    if command == "refresh" and not _isReasons(reply.get("failures") or {}):
        return "'failures' is not an object of usernames and reasons"
    if command == "health" and not isinstance(reply.get("last_error"), (str, type(None))):
        return "'last_error' is not a string or null"
    return None


def _failures(reply: dict[str, Any]) -> list[str]:
    return [f"  {user}: {why}" for user, why in sorted((reply.get("failures") or {}).items())]


def _health(reply: dict[str, Any]) -> str:
    return (f"{'connected' if reply['connected'] else 'NOT connected'}; "
            f"{reply['cached_users']} cached users, {reply['fetches_in_flight']} fetches in flight, "
            f"{reply['unsynced_users']} unsynced"
            + (f"; last error: {reply['last_error']}" if reply.get("last_error") else ""))


def _describe(command: str, reply: dict[str, Any]) -> str:
    """
    A success reply (of the shape L{SHAPES} asks for), for people.
    """
    if command == "refresh":
        return "\n".join([f"{reply['message']}: {reply['updated']} updated, {reply['errors']} errors",
                          *_failures(reply)])
    if command == "health":
        return _health(reply)
    return str(reply["message"])


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _describeError(command: str, status: int, reply: Any) -> str:
    """
    An error reply, for people: the command, the status and the service's
    message (with each user's failure for a refresh, and the counters for
    health), or the status's name when the reply has no message.
    """
    head = f"{command} failed: HTTP {status}"
    if not isinstance(reply, dict):
        note = " (the reply is not JSON)" if reply is NOT_JSON else ""
        return (f"{head}: {_phrase(status)}" if _phrase(status) else head) + note
    if command == "health" and _shapeProblem("health", reply) is None:
        return f"{head}: {_health(reply)}"
    message = reply.get("message") or reply.get("error")
    if not isinstance(message, str) or not message:
        message = _phrase(status) or "no message"
    failures = _failures(reply) if command == "refresh" and _isReasons(reply.get("failures") or {}) else []
    return "\n".join([f"{head}: {message}" + ("; errors:" if failures else ""), *failures])


def _request(args: argparse.Namespace) -> tuple[str, str, Any]:
    """
    The method, path and JSON body of the command's API call.
    """
    if args.command == "refresh":
        return "POST", "/roster_admin/refresh", args.usernames
    if args.command == "kick":
        body = {"nickname": args.nickname, "muc": args.room}
        if args.reason:
            body["reason"] = args.reason
        return "POST", "/muc_kick", body
    return "GET", "/healthz", None


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """
    Run one command; the exit code. Usage errors that argparse finds
    (options, C{--url}) print the usage on C{sys.stderr} and raise
    C{SystemExit(2)}.
    """
    out, err = out or sys.stdout, err or sys.stderr
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        base = _baseURL(args)
    except UsageError as e:
        parser.error(str(e))
    try:
        authorization = _authorization(args)
    except UsageError as e:
        # Not parser.error: the usage text would only hide the one line that matters.
        print(f"rosteradmin-ctl: error: {e}", file=err)
        return EXIT_USAGE
    method, path, body = _request(args)
    try:
        status, reply = _call(base, method, path, body, authorization, args.timeout)
    except Unreachable as e:
        print(f"rosteradmin-ctl: {e}", file=err)
        return EXIT_UNREACHABLE
    if args.json and reply is not NOT_JSON:
        print(json.dumps(reply), file=out)
    if not 200 <= status < 300:
        print(f"rosteradmin-ctl: {_describeError(args.command, status, reply)}", file=err)
        return EXIT_REFUSED
    problem = _shapeProblem(args.command, reply)
    if problem is not None:
        print(f"rosteradmin-ctl: {args.command} failed: HTTP {status} but {problem} "
              f"(is {base} rosteradmin's API?)", file=err)
        return EXIT_REFUSED
    if not args.json:
        print(_describe(args.command, reply), file=out)
    return EXIT_OK


def cli() -> None:
    """
    The console script.
    """
    sys.exit(main())


if __name__ == "__main__":
    cli()
