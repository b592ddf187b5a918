"""
Scenario 4, run in a fresh process: the memory a RosterCache takes.

    python -m bench.memory USERS CONTACTS

Rosters go through the same path as in production (the web app's JSON,
parseRoster, RosterCache.put); the RSS growth is divided by the number of
cached contacts, before and after each roster has been served once (which
builds its serialised payload).
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

from bench.rosters import DOMAIN, contacts, username
from rosteradmin.cache import RosterCache
from rosteradmin.roster import parseRoster


def rss() -> int:
    gc.collect()
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(users: int, size: int) -> None:
    cache = RosterCache()
    before = rss()
    for i in range(users):
        body = json.dumps(contacts(i, users, size)).encode()
        cache.put(username(i), parseRoster(body, f"{username(i)}@{DOMAIN}"))
    cached = rss()
    for name in cache:
        cache.peek(name).queryXML()  # type: ignore[union-attr]
    served = rss()
    total = users * size
    print(json.dumps({
        "cached contacts": total,
        "RSS MB": (cached - before) / 1e6,
        "bytes/contact (cached)": (cached - before) / total,
        "bytes/contact (after serving)": (served - before) / total,
    }))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
