# -*- test-case-name: tests.test_devwebapp -*-
"""
A tiny web app for trying rosteradmin: rosters live in a JSON file you can
edit, keyed by username::

    {"alice": {"bob@example.org": {"name": "Bob", "groups": ["Friends"]}},
     "bob": {"alice@example.org": {"name": "Alice"}}}

C{GET /rosters/<username>} answers that user's roster in the format
rosteradmin expects, and 404 for a username the file does not list: a
user without contacts is listed with C{{}}.  The file is read on every
request, so an edit followed by C{POST /roster_admin/refresh} shows up in
clients at once.  Run alone with
C{python -m rosteradmin.devwebapp rosters.json 8080}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


class RosterFileResource(Resource):
    """
    Serves C{GET /rosters/<username>} from a JSON file.

    Request and responses::

        GET /rosters/alice HTTP/1.1

        HTTP/1.1 200 OK
        Content-Type: application/json

        {"bob@example.org": {"name": "Bob", "groups": ["Friends"]}}

        GET /rosters/nobody HTTP/1.1

        HTTP/1.1 404 Not Found
        Content-Type: application/json

        {"error": "no such user"}
    """

    isLeaf = True
    log = Logger()

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def render_GET(self, request: server.Request) -> bytes:
        if len(request.postpath) != 2 or request.postpath[0] != b"rosters":
            request.setResponseCode(404)
            return b'{"error": "use /rosters/<username>"}'
        # twisted.web has already percent-decoded the path segments.
        username = request.postpath[1].decode("utf-8", "replace")
        try:
            rosters = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(rosters, dict):
                raise ValueError("not an object of usernames")
        except (OSError, ValueError) as e:
            self.log.error("cannot read {path}: {why}", path=str(self.path), why=str(e))
            request.setResponseCode(500)
            return b'{"error": "roster file unreadable"}'
        request.setHeader(b"content-type", b"application/json")
        # A real web app answers 404 for a user it does not know, so that
        # rosteradmin does not take it for a user without contacts.
        if username not in rosters:
            self.log.info("no roster for {user}: not in the file", user=username)
            request.setResponseCode(404)
            return b'{"error": "no such user"}'
        self.log.info("served the roster of {user}", user=username)
        return json.dumps(rosters[username]).encode("utf-8")


def writeSample(path: Path) -> None:
    """
    Create the roster file with sample rosters, unless it exists.
    """
    if not path.exists():
        path.write_text(json.dumps(SAMPLE_ROSTERS, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str]) -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    path = Path(argv[1] if len(argv) > 1 else "rosters.json")
    port = int(argv[2]) if len(argv) > 2 else 8080
    writeSample(path)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    reactor.listenTCP(port, server.Site(RosterFileResource(path)), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
