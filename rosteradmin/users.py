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
once.  Every page has the fetch deadline and the reply size cap of a roster,
and is decoded and prepared in slices (L{rosteradmin.slicing}): a page of a
million names is seconds of work, during which the reactor would serve
nothing else.

A list whose next links never end (a web app bug) is stopped: at a link back
to a page already read, or past L{MAX_PAGES} pages or L{MAX_USERS} users.
"""

from __future__ import annotations

import hashlib
import json
import json.scanner
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Mapping, cast
from urllib.parse import urljoin

from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

import treq

from rosteradmin.errors import InvalidUsername, RosterAdminError
from rosteradmin.fetcher import preview, readCapped, webAppHeaders
from rosteradmin.roster import normaliseUsername
from rosteradmin.slicing import inSlices

#: One C{<url>; params} entry of a C{Link} header.
_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]*)*)')
_REL_NEXT = re.compile(r';\s*rel\s*=\s*"?([^";,]*)"?', re.IGNORECASE)

#: Pages read before giving up on a list that never ends.
MAX_PAGES = 100_000

#: Users listed before giving up on a list that never ends.
MAX_USERS = 10_000_000

#: Entries of a page that are not usernames kept to show (all are counted).
REFUSED_KEPT = 20

#: Whitespace between JSON tokens (RFC 8259 §2).
_JSON_SPACE = re.compile(r"[ \t\n\r]*")

#: Decodes one JSON value at a position of a string: C{(value, end)}, or
#: C{StopIteration(position)}.  (Typeshed types its argument as the scanner
#: class itself; it takes the decoder whose settings it uses.)
_SCAN: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(cast(Any, json.JSONDecoder()))


class UsersUnavailable(RosterAdminError):
    """
    The list of users could not be read; the message says why.
    """


class UsersListEndless(UsersUnavailable):
    """
    The list of users loops back, or goes on past L{MAX_PAGES} pages or
    L{MAX_USERS} users: walking it again (after a restart) would end the
    same way.
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


async def parsePage(body: bytes, clock: IReactorTime) -> tuple[list[str], list[str], int]:
    """
    The usernames of one page, normalised, the first L{REFUSED_KEPT}
    entries refused (quoted) and how many were; decoded and prepared in
    slices, the reactor getting a turn between them.

    @raise UsersUnavailable: The page is not a JSON array.
    """
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")
        if not text.lstrip(" \t\n\r").startswith("["):
            data = json.loads(text)
            raise UsersUnavailable(f"users page must be a JSON array, got {type(data).__name__}")
        usernames: list[str] = []
        refused: list[str] = []
        refusedCount = 0
        async for part in inSlices(_arrayValues(text), clock):
            for entry in part:
                try:
                    usernames.append(normaliseUsername(entry))
                except InvalidUsername:
                    refusedCount += 1
                    # Not all: a page of millions of numbers would keep a
                    # string for each.
                    if len(refused) < REFUSED_KEPT:
                        refused.append(repr(entry)[:100])
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UsersUnavailable(f"users page is not JSON (body starts {preview(body)})") from None
    return usernames, refused, refusedCount


def _arrayValues(text: str) -> Iterator[Any]:
    """
    The values of the JSON array C{text}, decoded one at a time: one
    C{json.loads} of a 16 MB page holds the reactor (and the GIL) for a
    fifth of a second.

    @raise ValueError: C{text} is not one JSON array.
    """
    end = _skipSpace(text, 0)
    if not text.startswith("[", end):
        raise ValueError("not an array")
    end = _skipSpace(text, end + 1)
    if text.startswith("]", end):
        end += 1
    else:
        while True:
            try:
                value, end = _SCAN(text, end)
            except StopIteration as e:
                raise ValueError(f"expecting a value at {e.value}") from None
            yield value
            end = _skipSpace(text, end)
            if text.startswith("]", end):
                end += 1
                break
            if not text.startswith(",", end):
                raise ValueError(f"expecting ',' or ']' at {end}")
            end = _skipSpace(text, end + 1)
    if _skipSpace(text, end) != len(text):
        raise ValueError(f"extra data at {end}")


def _skipSpace(text: str, at: int) -> int:
    """
    The position of the first character at or after C{at} that is not JSON
    whitespace.
    """
    match = _JSON_SPACE.match(text, at)
    return match.end() if match is not None else at


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
        @raise UsersListEndless: The list does not end.
        """
        url: str | None = self.url
        # Digests of the URLs read, not the URLs: a web app may link pages
        # with URLs of kilobytes.
        seen: set[bytes] = set()
        listed = 0
        while url is not None:
            digest = hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if digest in seen:
                raise UsersListEndless(f"users pages loop back to {url[:200]}")
            if len(seen) >= MAX_PAGES:
                raise UsersListEndless(f"users list goes on past {MAX_PAGES:,} pages: stopped there "
                                       "(do its next links ever end?)")
            seen.add(digest)
            usernames, url = await self._page(url)
            listed += len(usernames)
            if listed > MAX_USERS:
                raise UsersListEndless(f"users list goes on past {MAX_USERS:,} users: stopped there "
                                       "(do its next links ever end?)")
            yield usernames, url is None

    async def _page(self, url: str) -> tuple[list[str], str | None]:
        d = ensureDeferred(self._read(url))
        d.addTimeout(self.timeout, self.clock)
        try:
            body, links = await d
        except UsersUnavailable:
            raise
        except Exception as e:
            raise UsersUnavailable(f"GET {url[:200]} failed: {type(e).__name__}: {e}") from None
        usernames, refused, refusedCount = await parsePage(body, self.clock)
        if refused:
            self.log.warn("users page {url}: {count} entries are not usernames, e.g. {example}",
                          url=url[:200], count=refusedCount, example=refused[0])
        return usernames, nextPage(links, url)

    async def _read(self, url: str) -> tuple[bytes, list[str]]:
        response = await self.http.get(url, headers=self.headers, allow_redirects=False, unbuffered=True)
        body = await readCapped(response, self.maxBytes)
        if response.code != 200:
            raise UsersUnavailable(f"GET {url[:200]} answered HTTP {response.code}: {preview(body)}")
        links = [v.decode("latin-1") if isinstance(v, bytes) else v
                 for v in response.headers.getRawHeaders("link", [])]
        return body, links
