"""
The benchmark's web app, in its own process: synthetic rosters answered
after a fixed delay, with counters of requests and of concurrent requests.

    python -m bench.webapp PORT USERS CONTACTS DELAY

C{GET /rosters/<user>} (C{{}} for a name not of the form C{u<i>}); C{GET /stats} (C{?user=<user>} adds that user's
fetches); C{GET /users} lists the first C{listed} users (all by default), a
page at a time linked by C{Link: <...>; rel="next"}, as C{--users-url}
expects; C{POST /listed/<n>/<page size>} sets them; C{POST /bump} changes one
contact of every roster; C{POST /reset} zeroes the counters.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

from twisted.internet import reactor
from twisted.web import server
from twisted.web.resource import Resource

from bench.rosters import contacts


class BenchWebApp(Resource):
    isLeaf = True

    def __init__(self, users: int, size: int, delay: float) -> None:
        super().__init__()
        self.users, self.size, self.delay = users, size, delay
        self.generation = 0
        self.sizes: dict[int, int] = {}
        self.listed, self.pageSize = users, 1000
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.distinct: set[str] = set()
        self.perUser: Counter[str] = Counter()
        self.userPages = 0
        self.concurrent = 0
        self.peak = 0

    def render_GET(self, request: server.Request) -> bytes | int:
        parts = [p.decode() for p in request.postpath]
        if parts == ["stats"]:
            stats: dict[str, object] = {"requests": self.requests, "distinct": len(self.distinct),
                                        "peak_concurrent": self.peak, "user_pages": self.userPages}
            for user in (request.args or {}).get(b"user", []):
                stats[f"requests of {user.decode()}"] = self.perUser[user.decode()]
            return json.dumps(stats).encode()
        if parts == ["users"]:
            return self._users(request)
        user = parts[-1]
        self.requests += 1
        self.distinct.add(user)
        self.perUser[user] += 1
        self.concurrent += 1
        self.peak = max(self.peak, self.concurrent)
        if user[:1] == "u" and user[1:].isdigit():
            i = int(user[1:])
            body = json.dumps(contacts(i, self.users, self.sizes.get(i, self.size), self.generation)).encode()
        else:
            body = b"{}"  # a name it does not know: no contacts, as some web apps answer

        def answer() -> None:
            self.concurrent -= 1
            if not request._disconnected:
                request.setHeader(b"content-type", b"application/json")
                request.write(body)
                request.finish()

        reactor.callLater(self.delay, answer)
        return server.NOT_DONE_YET

    def _users(self, request: server.Request) -> bytes:
        """
        One page of the users list: C{?page=<k>}, from 0.
        """
        self.userPages += 1
        page = int((request.args or {}).get(b"page", [b"0"])[0])
        first, last = page * self.pageSize, min((page + 1) * self.pageSize, self.listed)
        if last < self.listed:
            request.setHeader(b"link", f"</users?page={page + 1}>; rel=\"next\"".encode())
        request.setHeader(b"content-type", b"application/json")
        return json.dumps([f"u{i}" for i in range(first, last)]).encode()

    def render_POST(self, request: server.Request) -> bytes:
        parts = [p.decode() for p in request.postpath]
        if parts == ["bump"]:
            self.generation += 1
        elif parts == ["reset"]:
            self.reset()
        elif parts[0] == "size":  # /size/<i>/<contacts>
            self.sizes[int(parts[1])] = int(parts[2])
        elif parts[0] == "listed":  # /listed/<n>/<page size>
            self.listed, self.pageSize = int(parts[1]), int(parts[2])
        return b"{}"


if __name__ == "__main__":
    port, users, size, delay = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    site = server.Site(BenchWebApp(users, size, delay))
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1", backlog=1024)
    reactor.run()
