# -*- test-case-name: tests.test_users -*-
"""
Every user of the web app, from C{--users-url}: what a full sync walks.

The contract: C{GET users_url} answers C{200} with a JSON array of
usernames (the nodes of the users' JIDs).  A long list comes in pages: a
page that is not the last carries an RFC 8288 C{Link} header with
C{rel="next"} naming the next page's URL (absolute, or relative to the
page's), as GitHub's and many other APIs do::

    GET /xmpp/users                    200 ["alice", "bob", ...]
                                       Link: </xmpp/users?after=bob>; rel="next"
    GET /xmpp/users?after=bob          200 ["carol", ...]       (no Link: the last page)

Pages are read one at a time, so a million users never sit in memory at
once.  Every page has the fetch deadline and the reply size cap of a roster.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any, Mapping
from urllib.parse import urljoin

from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

import treq

from rosteradmin.errors import InvalidUsername, RosterAdminError
from rosteradmin.fetcher import preview, readCapped, webAppHeaders
from rosteradmin.roster import normaliseUsername

#: One C{<url>; params} entry of a C{Link} header.
_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]*)*)')
_REL_NEXT = re.compile(r';\s*rel\s*=\s*"?([^";,]*)"?', re.IGNORECASE)

#: Pages read before giving up on a list that never ends (a loop).
MAX_PAGES = 100_000


class UsersUnavailable(RosterAdminError):
    """
    The list of users could not be read; the message says why.
    """


def nextPage(linkHeaders: list[str], base: str) -> str | None:
    """
    The URL of the next page from C{Link} headers (RFC 8288), resolved
    against the page's own URL, or C{None} on the last page.
    """
    for header in linkHeaders:
        for target, params in _LINK.findall(header):
            for rel in _REL_NEXT.findall(params):
                if "next" in rel.lower().split():
                    return urljoin(base, target.strip())
    return None


def parsePage(body: bytes) -> tuple[list[str], list[str]]:
    """
    The usernames of one page, normalised, and the entries refused.

    @raise UsersUnavailable: The page is not a JSON array.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UsersUnavailable(f"users page is not JSON (body starts {preview(body)})") from None
    if not isinstance(data, list):
        raise UsersUnavailable(f"users page must be a JSON array, got {type(data).__name__}")
    usernames: list[str] = []
    refused: list[str] = []
    for entry in data:
        try:
            usernames.append(normaliseUsername(entry))
        except InvalidUsername:
            refused.append(repr(entry)[:100])
    return usernames, refused


class UserLister:
    """
    Reads the web app's users, page by page.
    """

    log = Logger()

    def __init__(self, url: str, clock: IReactorTime, http: Any = treq, timeout: float = 10.0,
                 maxBytes: int = 16 * 1024 * 1024, headers: Mapping[str, str] | None = None) -> None:
        """
        @param url: The first page.
        @param http: A treq-like client.
        @param timeout: Seconds each page may take.
        @param maxBytes: Largest page accepted.
        """
        self.url = url
        self.clock = clock
        self.http = http
        self.timeout = timeout
        self.maxBytes = maxBytes
        self.headers = webAppHeaders(headers)

    async def pages(self) -> AsyncIterator[tuple[list[str], bool]]:
        """
        Each page's usernames, in order, and whether it is the last.

        @raise UsersUnavailable: A page could not be read; the pages before
            it have been yielded.
        """
        url: str | None = self.url
        seen: set[str] = set()
        while url is not None:
            if url in seen or len(seen) >= MAX_PAGES:
                raise UsersUnavailable(f"users pages loop back to {url}")
            seen.add(url)
            usernames, url = await self._page(url)
            yield usernames, url is None

    async def _page(self, url: str) -> tuple[list[str], str | None]:
        d = ensureDeferred(self._read(url))
        d.addTimeout(self.timeout, self.clock)
        try:
            body, links = await d
        except UsersUnavailable:
            raise
        except Exception as e:
            raise UsersUnavailable(f"GET {url} failed: {type(e).__name__}: {e}") from None
        usernames, refused = parsePage(body)
        if refused:
            self.log.warn("users page {url}: {count} entries are not usernames, e.g. {example}",
                          url=url, count=len(refused), example=refused[0])
        return usernames, nextPage(links, url)

    async def _read(self, url: str) -> tuple[bytes, list[str]]:
        response = await self.http.get(url, headers=self.headers, allow_redirects=False, unbuffered=True)
        body = await readCapped(response, self.maxBytes)
        if response.code != 200:
            raise UsersUnavailable(f"GET {url} answered HTTP {response.code}: {preview(body)}")
        links = [v.decode("latin-1") if isinstance(v, bytes) else v
                 for v in response.headers.getRawHeaders("link", [])]
        return body, links
