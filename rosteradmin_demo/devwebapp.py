# -*- test-case-name: tests.test_devwebapp -*-
"""
A tiny web app for trying rosteradmin: rosters live in a JSON file you can
edit, keyed by username::

    {"alice": {"bob@example.org": {"name": "Bob", "groups": ["Friends"]}},
     "bob": {"alice@example.org": {"name": "Alice"}}}

C{GET /rosters/<username>} answers that user's roster in the format
rosteradmin expects, and 404 for a username the file does not list: a
user without contacts is listed with C{{}}.  C{GET /users} lists the
usernames of the file, in pages linked by C{Link: <...>; rel="next"}, as
C{--users-url} expects (L{rosteradmin.users}).  The file is read on every
request, so an edit followed by C{POST /roster_admin/refresh} shows up in
clients at once.  The demo also routes C{/events} and C{/requests} to
the contact requests (L{rosteradmin_demo.devrequests}), which approve a
request by writing this file.  Run alone, without them, with
C{python -m rosteradmin_demo.devwebapp rosters.json 8080 [page size]}.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

SAMPLE_ROSTERS = {
    "alice": {
        "bob@example.org": {"name": "Bob", "groups": ["Friends"]},
        "carol@example.org": {"name": "Carol", "groups": ["Work"]},
    },
    "bob": {"alice@example.org": {"name": "Alice", "groups": ["Friends"]}},
    "carol": {"alice@example.org": {"name": "Alice", "groups": ["Work"]}},
}

#: Usernames per page of C{GET /users}, unless told otherwise.
PAGE_SIZE = 100

log = Logger()


class RosterFileUnreadable(Exception):
    """
    The roster file cannot be read, or is not an object of usernames.
    """


class RosterFileResource(Resource):
    """
    Serves C{GET /rosters/<username>} and C{GET /users} from a JSON file.

    Requests and responses::

        GET /rosters/alice HTTP/1.1

        HTTP/1.1 200 OK
        Content-Type: application/json

        {"bob@example.org": {"name": "Bob", "groups": ["Friends"]}}

        GET /rosters/nobody HTTP/1.1

        HTTP/1.1 404 Not Found
        Content-Type: application/json

        {"error": "no such user"}

        GET /users HTTP/1.1                       (with a page size of 2)

        HTTP/1.1 200 OK
        Content-Type: application/json
        Link: </users?after=bob>; rel="next"

        ["alice", "bob"]

        GET /users?after=bob HTTP/1.1

        HTTP/1.1 200 OK
        Content-Type: application/json

        ["carol"]

    Users are listed in code point order, and a page starts after the last
    username of the one before (not at an offset), so a user added or
    removed while a list is being read shifts no one into another page.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, path: Path, pageSize: int = PAGE_SIZE, routes: Mapping[bytes, Resource] | None = None) -> None:
        """
        @param path: The roster file.
        @param pageSize: Usernames per page of C{GET /users}.
        @param routes: Resources that answer the paths starting with each
            segment, whatever the method (the demo's C{events} and
            C{requests}, L{rosteradmin_demo.devrequests}).
        """
        super().__init__()
        if pageSize < 1:
            raise ValueError(f"page size must be at least 1, got {pageSize}")
        self.path = path
        self.pageSize = pageSize
        self.routes = dict(routes or {})

    def render(self, request: server.Request) -> Any:
        postpath = request.postpath or []
        if postpath and postpath[0] in self.routes:
            return self.routes[postpath[0]].render(request)
        return super().render(request)

    def render_GET(self, request: server.Request) -> bytes:
        postpath = request.postpath or []  # None only before traversal
        if postpath == [b"users"]:
            return self._users(request)
        if len(postpath) != 2 or postpath[0] != b"rosters":
            request.setResponseCode(404)
            return b'{"error": "use /rosters/<username> or /users"}'
        # twisted.web has already percent-decoded the path segments.
        username = postpath[1].decode("utf-8", "replace")
        try:
            rosters = readRosters(self.path)
        except RosterFileUnreadable:
            return self._unreadable(request)
        request.setHeader(b"content-type", b"application/json")
        # A real web app answers 404 for a user it does not know, so that
        # rosteradmin does not take it for a user without contacts.
        if username not in rosters:
            self.log.info("no roster for {user}: not in the file", user=username)
            request.setResponseCode(404)
            return b'{"error": "no such user"}'
        self.log.info("served the roster of {user}", user=username)
        return json.dumps(rosters[username]).encode("utf-8")

    def _users(self, request: server.Request) -> bytes:
        """
        One page of usernames: those after C{?after=}, if given.
        """
        after = (request.args or {}).get(b"after", [b""])[0].decode("utf-8", "replace")
        try:
            rosters = readRosters(self.path)
        except RosterFileUnreadable:
            return self._unreadable(request)
        usernames = sorted(u for u in rosters if u > after)
        page = usernames[:self.pageSize]
        request.setHeader(b"content-type", b"application/json")
        if len(usernames) > len(page):
            # Relative to this page's URL, as RFC 8288 §3.1 allows.
            request.setHeader(b"link", f'</users?after={quote(page[-1], safe="")}>; rel="next"'.encode("ascii"))
        self.log.info("served {count} usernames after {after!r}", count=len(page), after=after)
        return json.dumps(page).encode("utf-8")

    @staticmethod
    def _unreadable(request: server.Request) -> bytes:
        request.setResponseCode(500)
        return b'{"error": "roster file unreadable"}'


def readRosters(path: Path) -> dict[str, Any]:
    """
    The roster file's content.

    @raise RosterFileUnreadable: It cannot be read or is not an object.
    """
    try:
        rosters = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.error("cannot read {path}: {why}", path=str(path), why=str(e))
        raise RosterFileUnreadable(str(e)) from None
    if not isinstance(rosters, dict):
        log.error("cannot read {path}: {why}", path=str(path), why="not an object of usernames")
        raise RosterFileUnreadable("not an object of usernames")
    return rosters


def writeJSON(path: Path, value: Any) -> None:
    """
    Replace C{path} with C{value} at once (a new file renamed over it), so
    a request reading it meanwhile never sees half of it.
    """
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def writeSample(path: Path) -> None:
    """
    Create the roster file with sample rosters, unless it exists.
    """
    if not path.exists():
        writeJSON(path, SAMPLE_ROSTERS)


def main(argv: list[str]) -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    path = Path(argv[1] if len(argv) > 1 else "rosters.json")
    port = int(argv[2]) if len(argv) > 2 else 8080
    pageSize = int(argv[3]) if len(argv) > 3 else PAGE_SIZE
    writeSample(path)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    # Twisted types Site's protocol (a proxy) so that it fails listenTCP's bound.
    reactor.listenTCP(port, server.Site(RosterFileResource(path, pageSize)),  # type: ignore[arg-type]
                      interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
