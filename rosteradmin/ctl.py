# -*- test-case-name: tests.test_ctl,tests.integration.test_ctl -*-
"""
C{rosteradmin-ctl}: the HTTP API from a shell.

    rosteradmin-ctl refresh john aaron
    rosteradmin-ctl sync --all
    rosteradmin-ctl sync --cancel
    rosteradmin-ctl kick room@conference.example.org Bob --reason spam
    rosteradmin-ctl health
    rosteradmin-ctl inspect alice

The API's address comes from C{--url} or C{ROSTERADMIN_URL} (default
C{http://127.0.0.1:5280}); the C{Authorization} value from
C{--authorization-file}, C{--authorization} or C{ROSTERADMIN_AUTHORIZATION},
so it stays out of the shell history.

A success is summed up on stdout; everything else is one message on stderr
(a failed refresh or sync adds a line per user). With C{--json} the
service's JSON reply, success or error, goes to stdout as is, and messages
still go to stderr.

C{inspect USER} shows everything known of one user
(C{GET /roster_admin/users/<username>}): the verdict first, then the web
app's roster, the cache, the server's stored roster, the online clients,
what the state holds, and the differences between the three rosters.  It
exits 0 whenever the service answered with the user's picture, whatever
the verdict (C{--json} gives it to scripts).

C{sync} starts a sync pass (C{POST /roster_admin/sync}) and follows it
(C{GET /roster_admin/sync} every C{--interval}) until it ends: a progress
bar redrawn on stderr when it is a terminal, else a line every
L{LINE_INTERVAL} seconds while it moves; with C{--json} the last progress
document goes to stdout.  While another pass runs, the service starts no
other, so C{sync --all} waits for that one to end and then starts its own;
C{sync USER...} joins it (the service syncs the users at once, as part of
that pass) and follows it to its end.  C{sync --cancel} cancels the running
pass (C{DELETE /roster_admin/sync}) and follows it until it has ended.

Exit codes: 0 done; 1 the service answered with an error, or with a reply
that is not its API's (its message is printed), or a sync ended with users
failed or stopped on an error; 2 bad usage, an unreadable
C{--authorization-file} included; 3 the service could not be reached, or
gave no reply within C{--timeout}; 130 interrupted (Ctrl-C) while
following a sync, which goes on in the service.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import sys
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TextIO
from urllib import error, parse, request

from rosteradmin import __version__

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

#: Ctrl-C while following a sync (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130

DEFAULT_URL = "http://127.0.0.1:5280"

#: The longest C{--timeout}, in seconds; sockets refuse much longer ones.
MAX_TIMEOUT = 86400

#: Stands for a reply body that is not JSON.
NOT_JSON: Any = object()

SYNC_PATH = "/roster_admin/sync"

#: Seconds between two looks at a sync's progress, unless C{--interval}.
POLL_INTERVAL = 0.5

#: Seconds between progress lines when stderr is not a terminal.
LINE_INTERVAL = 5.0

#: Characters of the progress bar between its brackets.
BAR_WIDTH = 24

#: What each kind of sync pass is called (L{rosteradmin.fullsync.SyncProgress}).
SYNC_LABELS = {"full": "full sync", "users": "sync", "reconcile": "reconciliation"}


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
    parser.add_argument("--version", action="version", version=f"rosteradmin-ctl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    refresh = commands.add_parser("refresh", help="re-fetch and apply the rosters of these users")
    refresh.add_argument("usernames", nargs="+")
    kick = commands.add_parser("kick", help="kick an occupant out of a chat room")
    kick.add_argument("room", help="bare JID of the room, e.g. room@conference.example.org")
    kick.add_argument("nickname")
    kick.add_argument("--reason")
    commands.add_parser("health", help="is the service connected to the XMPP server?")
    inspect = commands.add_parser(
        "inspect", help="everything known of one user: the web app's roster, the cache, the server's stored roster, "
                        "the online clients, what the state holds, the differences and a verdict")
    inspect.add_argument("username")
    sync = commands.add_parser(
        "sync", help="write the web app's rosters of every user (--all) or of these users into the server, "
                     "and follow the progress until done")
    sync.add_argument("usernames", nargs="*", help="the users to sync (or --all)")
    sync.add_argument("--all", action="store_true", help="every user the web app lists (the service's --users-url)")
    sync.add_argument("--cancel", action="store_true",
                      help="cancel the running pass: it reads no further page of the users list, and a full sync "
                           "cancelled is not started again after a restart")
    sync.add_argument("--no-wait", action="store_true",
                      help="return once the sync has started (with --cancel: once it is cancelling)")
    sync.add_argument("--interval", type=_timeout, default=POLL_INTERVAL,
                      help=f"seconds between looks at the progress (default {POLL_INTERVAL})")
    sync.set_defaults(commandParser=sync)
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
    "inspect": [
        ("username", lambda v: isinstance(v, str), "a string"),
        ("verdict", lambda v: isinstance(v, str), "a string"),
        ("findings", lambda v: isinstance(v, list), "a list"),
    ],
    "health": [
        ("connected", lambda v: isinstance(v, bool), "true or false"),
        ("cached_users", _isCount, "a count"),
        ("fetches_in_flight", _isCount, "a count"),
        ("unsynced_users", _isCount, "a count"),
    ],
}


def _notAnObject(reply: Any) -> str | None:
    """
    What C{reply} is when it is not a JSON object, or C{None}.
    """
    if reply is NOT_JSON:
        return "the reply is not JSON"
    if not isinstance(reply, dict):
        kinds = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
        kind = kinds.get(type(reply), "null")
        return f"the reply is a JSON {kind}, not an object"
    return None


def _shapeProblem(command: str, reply: Any) -> str | None:
    """
    What makes C{reply} not a success reply to C{command}, or C{None}.
    """
    problem = _notAnObject(reply)
    if problem is not None:
        return problem
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


def _role(reply: dict[str, Any]) -> str:
    """
    Whether the service leads or stands by, and since when, if it says
    (with a PostgreSQL state several instances share it, one leads).
    """
    role, since = reply.get("role"), reply.get("since")
    if not isinstance(role, str):
        return ""
    return role + (f" since {since}" if isinstance(since, str) else "") + "; "


def _health(reply: dict[str, Any]) -> str:
    if reply.get("role") == "standby":
        return _role(reply) + "the leader holds the XMPP connection" + (
            f"; cannot lead: {reply['leadership_error']}" if reply.get("leadership_error") else "")
    # A service of an earlier release sends no "delegated": say nothing.
    # One told the server answers roster queries itself expects none.
    undelegated = reply["connected"] and reply.get("delegated") is False and reply.get("delegation") != "none"
    return (_role(reply) + f"{'connected' if reply['connected'] else 'NOT connected'}; "
            f"{reply['cached_users']} cached users, {reply['fetches_in_flight']} fetches in flight, "
            f"{reply['unsynced_users']} unsynced"
            + ("; roster queries NOT delegated to rosteradmin" if undelegated else "")
            + ("; roster queries answered by the server (delegation none)" if reply.get("delegation") == "none"
               else "")
            + (f" ({reply['delegation_error']})" if undelegated and reply.get("delegation_error") else "")
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
    if command == "inspect":
        return inspectionText(reply)
    return str(reply["message"])


def _section(name: str, section: Any) -> str:
    """
    One roster section of an inspection: what it holds, or why not.
    """
    if not isinstance(section, dict):
        return f"{name:<9} not shown"
    roster = section.get("roster")
    if isinstance(roster, dict):
        count = roster.get("count", "?")
        line = f"{name:<9} {count} contact{'' if count == 1 else 's'}, version {roster.get('version', '?')}"
    else:
        line = f"{name:<9} {str(section.get('status', '?')).replace('_', ' ')}"
    if section.get("error"):
        line += f": {section['error']}"
    if section.get("not_both"):
        line += f"; subscription not both: {', '.join(section['not_both'])}"
    if "recorded_version" in section:
        line += f"; the state records version {section['recorded_version'] or 'none'}"
    return line


def _clients(resources: Any) -> list[str]:
    """
    The online resources and pushed clients of an inspection.
    """
    if not isinstance(resources, dict):
        return []
    online = resources.get("online") or []
    lines = [f"online    {', '.join(online) if online else 'none'}"
             + ("" if resources.get("presence_shared") else " (the server shares no presence: not known)")]
    for client in resources.get("clients") or []:
        state = "current" if client.get("current") else f"holds {client.get('holds_version') or 'unknown'}"
        if client.get("sending"):
            state += ", pushes unanswered"
        if client.get("failures"):
            state += f", {client['failures']} failed batches"
        lines.append(f"client    {client.get('jid')}: {state}")
    return lines


#: What the state section's entries are called, in the order shown.
STATE_LABELS = {"synced_at": "server roster last synced", "pending_since": "pending since",
                "unsynced": "write failed (unsynced)", "refused": "refused",
                "parked": "writes parked", "verified_version": "verified version",
                "promised_version": "promised version", "doubted_version": "clients doubted at version",
                "unpushed": "unpushed contacts", "server_refusal": "the server refuses writes"}


def _state(state: Any) -> str:
    """
    What the state and the promises hold of the user, one line.
    """
    if not isinstance(state, dict):
        return "state     not shown"
    shown = []
    for key, label in STATE_LABELS.items():
        value = state.get(key)
        if value is True:
            shown.append(label)
        elif isinstance(value, list) and value:
            shown.append(f"{label}: {', '.join(value)}")
        elif isinstance(value, str):
            shown.append(f"{label}: {value}")
    return "state     " + ("; ".join(shown) if shown else "nothing pending")


#: Each difference of an inspection, with what it is called.
DIFFERENCE_LABELS = {"cache_to_web_app": "cache → web app", "server_to_web_app": "server → web app",
                     "server_to_cache": "server → cache"}


def _difference(label: str, diff: Any) -> str | None:
    """
    One difference, as C{+} added, C{-} removed, C{~} changed and C{!} a
    subscription other than both; C{None} when it is not known.
    """
    if not isinstance(diff, dict):
        return None
    marks = [f"+{item.get('jid')}" for item in diff.get("added") or []]
    marks += [f"-{jid}" for jid in diff.get("removed") or []]
    marks += [f"~{item.get('jid')}" for item in diff.get("changed") or []]
    marks += [f"!{jid}" for jid in diff.get("subscription") or []]
    return f"  {label}: {' '.join(marks) if marks else 'the same'}"


def inspectionText(reply: dict[str, Any]) -> str:
    """
    A user's picture (C{GET /roster_admin/users/<username>}), for people:
    the verdict, then each place, then the differences.
    """
    lines = [f"{reply['username']}: {reply['verdict']}", _section("web app", reply.get("web_app")),
             _section("cache", reply.get("cache")), _section("server", reply.get("server")),
             *_clients(reply.get("resources")), _state(reply.get("state"))]
    differences = reply.get("differences")
    if isinstance(differences, dict):
        shown = [_difference(label, differences.get(key)) for key, label in DIFFERENCE_LABELS.items()]
        lines += ["differences (+ to add, - to remove, ~ to change, ! subscription not both):",
                  *[line for line in shown if line is not None]]
    return "\n".join(lines)


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
    if args.command == "sync" and args.cancel:
        return "DELETE", SYNC_PATH, None
    if args.command == "sync":
        # The service would count a name given twice twice in "listed".
        return "POST", SYNC_PATH, {"all": True} if args.all else list(dict.fromkeys(args.usernames))
    if args.command == "inspect":
        return "GET", "/roster_admin/users/" + parse.quote(args.username, safe=""), None
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
    if args.command == "sync":
        _checkSyncArguments(args)
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
    if args.command == "sync":
        command = SyncCommand(args, base, authorization, out, err)
        return command.cancel() if args.cancel else command.run(body)
    try:
        status, reply = _call(base, method, path, body, authorization, args.timeout)
    except Unreachable as e:
        print(f"rosteradmin-ctl: {e}", file=err)
        return EXIT_UNREACHABLE
    return _report(args, base, status, reply, out, err)


def _checkSyncArguments(args: argparse.Namespace) -> None:
    """
    A sync names users, or C{--all}, or cancels: one of the three (a usage
    error, exiting 2, otherwise).
    """
    if args.cancel and (args.all or args.usernames):
        args.commandParser.error("--cancel takes no --all and no usernames")
    if not args.cancel and args.all == bool(args.usernames):
        args.commandParser.error("give --all or the usernames to sync, not both" if args.all
                                 else "give --all or the usernames to sync")


def _report(args: argparse.Namespace, base: str, status: int, reply: Any, out: TextIO, err: TextIO) -> int:
    """
    Print what the API answered a command, in words or as JSON; the exit
    code.
    """
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


def _isNumber(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: What a sync progress document must hold: key, check, what it should be.
PROGRESS_SHAPE: list[tuple[str, Any, str]] = [
    ("kind", lambda v: isinstance(v, str), "a string"),
    ("running", lambda v: isinstance(v, bool), "true or false"),
    ("listed", _isCount, "a count"),
    ("listing_done", lambda v: isinstance(v, bool), "true or false"),
    ("synced", _isCount, "a count"),
    ("failed", _isCount, "a count"),
    ("failures", _isReasons, "an object of usernames and reasons"),
    ("started_at", _isNumber, "a time"),
    ("finished_at", lambda v: v is None or _isNumber(v), "a time or null"),
    ("error", lambda v: v is None or isinstance(v, str), "a string or null"),
]


def _syncProblem(reply: Any, statuses: tuple[str, ...], nullable: bool) -> str | None:
    """
    What makes C{reply} not a sync reply (C{{"status", "sync"}}), or C{None}.

    @param statuses: The C{status} values the reply may have.
    @param nullable: Whether C{sync} may be null (no pass has run yet).
    """
    problem = _notAnObject(reply)
    if problem is not None:
        return problem
    if reply.get("status") not in statuses:
        *others, last = map(repr, statuses)
        allowed = f"{', '.join(others)} or {last}" if others else last
        return f"'status' is missing or not {allowed}"
    progress = reply.get("sync")
    if progress is None and nullable:
        return None
    if not isinstance(progress, dict):
        return "'sync' is missing or not an object"
    for key, check, expected in PROGRESS_SHAPE:
        if not check(progress.get(key)):
            return f"'sync.{key}' is missing or not {expected}"
    if not progress["running"] and progress["finished_at"] is None:
        return "'sync.finished_at' is null, yet the sync is not running"
    return None


def _label(progress: dict[str, Any]) -> str:
    return SYNC_LABELS.get(progress["kind"], f"{progress['kind']} sync")


def progressText(progress: dict[str, Any], total: int | None, elapsed: float) -> str:
    """
    A sync's progress in words: C{"sync: 12 of 24 users done (50%), 1 failed, 3 s"}.

    @param total: The users the pass walks, when known before it ends (the
        service counts a full sync's users as it lists them).
    """
    done = progress["synced"] + progress["failed"]
    if progress["listing_done"]:
        total = progress["listed"]
    counts = (f"{done} of {total} users done ({_percent(done, total)}%)" if total
              else f"{done} users done" + ("" if progress["listing_done"] else ", listing"))
    return f"{_label(progress)}: {counts}, {progress['failed']} failed, {elapsed:.0f} s"


def progressBar(progress: dict[str, Any], total: int | None, elapsed: float, tick: int) -> str:
    """
    L{progressText} with a bar: filled in proportion when the total is
    known, else a marker moving with C{tick} (one step per redraw).
    """
    done = progress["synced"] + progress["failed"]
    if progress["listing_done"]:
        total = progress["listed"]
    if total:
        filled = min(BAR_WIDTH, BAR_WIDTH * done // total)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    else:
        at = tick % (2 * BAR_WIDTH - 6)
        at = at if at <= BAR_WIDTH - 3 else 2 * BAR_WIDTH - 6 - at
        bar = " " * at + "<=>" + " " * (BAR_WIDTH - 3 - at)
    label, _, rest = progressText(progress, total, elapsed).partition(": ")
    return f"{label} [{bar}] {rest}"


def _percent(done: int, total: int) -> int:
    return min(100, 100 * done // total)


class ProgressDisplay:
    """
    A sync's progress on stderr: one line redrawn in place (carriage
    return) on a terminal, else a plain line every L{LINE_INTERVAL} seconds
    while the counts change.
    """

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.terminal = _isTerminal(stream)
        self.startedAt = clock()
        self._drawn = 0
        self._ticks = 0
        self._lineAt: float | None = None
        self._lineCounts: tuple[int, ...] | None = None

    def show(self, progress: dict[str, Any], total: int | None) -> None:
        elapsed = self.clock() - self.startedAt
        if self.terminal:
            line = progressBar(progress, total, elapsed, self._ticks)[:_columns(self.stream) - 1]
            self._ticks += 1
            self.stream.write("\r" + line.ljust(self._drawn))
            self._drawn = len(line)
            self.stream.flush()
            return
        counts = (progress["listed"], progress["synced"], progress["failed"])
        now = self.clock()
        if self._lineAt is None or (now - self._lineAt >= LINE_INTERVAL and counts != self._lineCounts):
            self._lineAt, self._lineCounts = now, counts
            print(progressText(progress, total, elapsed), file=self.stream, flush=True)

    def end(self) -> None:
        """
        Leave the bar as it is and move to the next line.
        """
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = 0

    def message(self, text: str) -> None:
        self.end()
        print(text, file=self.stream, flush=True)


def _isTerminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, OSError, ValueError):
        return 80


class CommandFailed(Exception):
    """
    The command cannot go on: the exit code, and the message for stderr.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SyncCommand:
    """
    C{rosteradmin-ctl sync}: start a pass, follow it to its end, sum it up.
    """

    def __init__(self, args: argparse.Namespace, base: str, authorization: str | None,
                 out: TextIO, err: TextIO, sleep: Callable[[float], None] = time.sleep) -> None:
        self.args = args
        self.base = base
        self.authorization = authorization
        self.out = out
        self.err = err
        self.sleep = sleep
        self.display = ProgressDisplay(err)

    def run(self, body: Any) -> int:
        """
        Start (or join) a pass and follow it: the exit code.
        """
        return self._guarded(lambda: self._run(body))

    def cancel(self) -> int:
        """
        Cancel the running pass and follow it until it has ended: the exit
        code.
        """
        return self._guarded(self._cancel)

    def _guarded(self, command: Callable[[], int]) -> int:
        try:
            return command()
        except CommandFailed as e:
            self.display.message(f"rosteradmin-ctl: {e.message}")
            return e.code
        except KeyboardInterrupt:
            self.display.message(f"rosteradmin-ctl: interrupted; a sync that started goes on in the service "
                                 f"(GET {self.base}{SYNC_PATH} shows its progress)")
            return EXIT_INTERRUPTED

    def _cancel(self) -> int:
        final = self._call("DELETE", None, ("cancelling", "cancelled"), nullable=False)
        if final["status"] == "cancelling" and not self.args.no_wait:
            final = self._follow(final["sync"], None, mine=True)
        self._printJSON(final)
        progress = final["sync"]
        if not self.args.json:
            if progress["running"]:
                print(f"{_label(progress)} cancelling; GET {self.base}{SYNC_PATH} shows when it has ended",
                      file=self.out)
            else:
                seconds = progress["finished_at"] - progress["started_at"]
                print(f"{_label(progress)} cancelled after {seconds:.1f} s: {self._counts(progress)}", file=self.out)
        return EXIT_OK

    def _run(self, body: Any) -> int:
        while True:
            reply = self._call("POST", body, ("started", "running", "joined"), nullable=False)
            progress = reply["sync"]
            if reply["status"] != "running":
                break
            # The service runs one pass at a time, and this one is not ours.
            if self.args.no_wait:
                self._printJSON(reply)
                raise CommandFailed(EXIT_REFUSED, f"sync not started: a {_label(progress)} is running "
                                                  f"({self._counts(progress)}); without --no-wait, sync waits for it")
            self.display.message(f"rosteradmin-ctl: a {_label(progress)} is running; "
                                 "waiting for it to end, then starting this sync")
            self._follow(progress, None, mine=False)
        joined = reply["status"] == "joined"
        if joined:
            self.display.message(f"rosteradmin-ctl: a {_label(progress)} is running; these users joined it "
                                 "(synced now, as part of it): following it to its end")
        if self.args.no_wait:
            self._printJSON(reply)
            if not self.args.json:
                print(f"{_label(progress)} {'joined' if joined else 'started'}; "
                      f"GET {self.base}{SYNC_PATH} shows its progress", file=self.out)
            return EXIT_OK
        final = self._follow(progress, None if self.args.all or joined else len(body), mine=True)
        self._printJSON(final)
        return self._outcome(final["sync"])

    def _follow(self, started: dict[str, Any], total: int | None, mine: bool) -> dict[str, Any]:
        """
        Poll until the pass C{started} ends: the last reply.

        @raise CommandFailed: C{mine} and the service lost the pass's progress.
        """
        self.display = ProgressDisplay(self.err)  # its time counts from now
        self.display.show(started, total)
        while True:
            reply = self._call("GET", None, ("running", "idle"), nullable=True)
            progress = reply["sync"]
            if progress is None or (progress["kind"], progress["started_at"]) != (started["kind"], started["started_at"]):
                self.display.end()
                if not mine:
                    return reply
                why = ("the service no longer knows it (did it restart?)" if progress is None
                       else f"a {_label(progress)} started since, and replaced its progress")
                raise CommandFailed(EXIT_REFUSED, f"sync outcome unknown: {why}")
            self.display.show(progress, total)
            if not progress["running"]:
                self.display.end()
                return reply
            self.sleep(self.args.interval)

    def _call(self, method: str, body: Any, statuses: tuple[str, ...], nullable: bool) -> dict[str, Any]:
        """
        One call to the sync resource: its JSON reply, checked.

        @raise CommandFailed: No reply, an error reply, or not the API's.
        """
        try:
            status, reply = _call(self.base, method, SYNC_PATH, body, self.authorization, self.args.timeout)
        except Unreachable as e:
            raise CommandFailed(EXIT_UNREACHABLE, str(e)) from None
        if not 200 <= status < 300:
            self._printJSON(reply)
            raise CommandFailed(EXIT_REFUSED, _describeError("sync", status, reply))
        problem = _syncProblem(reply, statuses, nullable)
        if problem is not None:
            raise CommandFailed(EXIT_REFUSED, f"sync failed: HTTP {status} but {problem} "
                                              f"(is {self.base} rosteradmin's API?)")
        result: dict[str, Any] = reply
        return result

    def _printJSON(self, reply: Any) -> None:
        if self.args.json and reply is not NOT_JSON:
            print(json.dumps(reply), file=self.out, flush=True)

    @staticmethod
    def _counts(progress: dict[str, Any]) -> str:
        return f"{progress['synced']} of {progress['listed']} users synced, {progress['failed']} failed"

    def _outcome(self, progress: dict[str, Any]) -> int:
        """
        Sum the ended pass up: 0 when every user synced, else 1.
        """
        label = _label(progress)
        seconds = progress["finished_at"] - progress["started_at"]
        failures = [f"  {user}: {why}" for user, why in sorted(progress["failures"].items())]
        if progress["failed"] > len(failures):
            failures.append(f"  ... and {progress['failed'] - len(failures)} more (see the service's log)")
        if progress["error"] is None and progress["failed"] == 0:
            if not self.args.json:
                print(f"{label} done: {progress['synced']} of {progress['listed']} users synced in {seconds:.1f} s",
                      file=self.out)
            return EXIT_OK
        if progress["error"] is not None:
            head = f"{label} stopped after {seconds:.1f} s: {progress['error']}; {self._counts(progress)}"
        else:
            head = f"{label} done with errors in {seconds:.1f} s: {self._counts(progress)}"
        self.display.message("\n".join([f"rosteradmin-ctl: {head}" + ("; errors:" if failures else ""), *failures]))
        return EXIT_REFUSED


def cli() -> None:
    """
    The console script.
    """
    sys.exit(main())


if __name__ == "__main__":
    cli()
