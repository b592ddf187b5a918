# -*- test-case-name: tests.integration.test_ctl -*-
"""
C{rosteradmin-ctl}: the HTTP API from a shell.

    rosteradmin-ctl refresh john aaron
    rosteradmin-ctl kick room@conference.example.org Bob --reason spam
    rosteradmin-ctl health

The API's address comes from C{--url} or C{ROSTERADMIN_URL} (default
C{http://127.0.0.1:5280}); the C{Authorization} value from
C{--authorization}, C{--authorization-file} or C{ROSTERADMIN_AUTHORIZATION},
so it stays out of the shell history.

Exit codes: 0 done, 1 the service refused or failed (its message is
printed), 2 bad usage, 3 the service could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO
from urllib import error, request

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rosteradmin-ctl", description="Drive rosteradmin's HTTP API.")
    parser.add_argument("--url", default=os.environ.get("ROSTERADMIN_URL", "http://127.0.0.1:5280"),
                        help="base URL of the API (env ROSTERADMIN_URL)")
    parser.add_argument("--authorization", help="Authorization header value (env ROSTERADMIN_AUTHORIZATION)")
    parser.add_argument("--authorization-file", help="file holding the Authorization header value")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the reply")
    parser.add_argument("--json", action="store_true", help="print the API's JSON reply as is")
    commands = parser.add_subparsers(dest="command", required=True)
    refresh = commands.add_parser("refresh", help="re-fetch and apply the rosters of these users")
    refresh.add_argument("usernames", nargs="+")
    kick = commands.add_parser("kick", help="kick an occupant out of a chat room")
    kick.add_argument("room", help="bare JID of the room, e.g. room@conference.example.org")
    kick.add_argument("nickname")
    kick.add_argument("--reason")
    commands.add_parser("health", help="is the service connected to the XMPP server?")
    return parser


def _authorization(args: argparse.Namespace) -> str | None:
    if args.authorization_file:
        with open(args.authorization_file, encoding="utf-8") as f:
            return f.read().strip()
    return args.authorization or os.environ.get("ROSTERADMIN_AUTHORIZATION")


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """
    One API call; the status and the decoded JSON reply, errors included.

    @raise OSError: The service could not be reached.
    """
    headers = {"Content-Type": "application/json"}
    authorization = _authorization(args)
    if authorization:
        headers["Authorization"] = authorization
    data = json.dumps(body).encode("utf-8") if body is not None else None
    req = request.Request(args.url.rstrip("/") + path, data=data, headers=headers, method=method)
    try:
        with request.urlopen(req, timeout=args.timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None


def _describe(command: str, status: int, reply: Any) -> str:
    if not isinstance(reply, dict):
        return f"HTTP {status}"
    if command == "refresh":
        lines = [f"{reply.get('message', '')}: {reply.get('updated', 0)} updated, {reply.get('errors', 0)} errors"]
        lines += [f"  {user}: {why}" for user, why in sorted((reply.get("failures") or {}).items())]
        return "\n".join(lines)
    if command == "health":
        return (f"{'connected' if reply.get('connected') else 'NOT connected'}; "
                f"{reply.get('cached_users')} cached users, {reply.get('fetches_in_flight')} fetches in flight, "
                f"{reply.get('unsynced_users')} unsynced"
                + (f"; last error: {reply['last_error']}" if reply.get("last_error") else ""))
    return reply.get("message") or reply.get("error") or f"HTTP {status}"


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = _parser().parse_args(argv)
    if args.command == "refresh":
        call: tuple[str, str, Any] = ("POST", "/roster_admin/refresh", args.usernames)
    elif args.command == "kick":
        body = {"nickname": args.nickname, "muc": args.room}
        if args.reason:
            body["reason"] = args.reason
        call = ("POST", "/muc_kick", body)
    else:
        call = ("GET", "/healthz", None)
    try:
        status, reply = _call(args, *call)
    except OSError as e:
        reason = getattr(e, "reason", e)
        print(f"rosteradmin-ctl: cannot reach {args.url}: {reason}", file=err)
        return EXIT_UNREACHABLE
    text = json.dumps(reply) if args.json else _describe(args.command, status, reply)
    ok = 200 <= status < 300
    print(text if ok or args.json else f"rosteradmin-ctl: {args.command} failed (HTTP {status}): {text}",
          file=out if ok else err)
    return EXIT_OK if ok else EXIT_REFUSED


def cli() -> None:
    """
    The console script.
    """
    sys.exit(main())


if __name__ == "__main__":
    cli()
