"""
What one cached user and one cached contact cost, with tracemalloc, in a
fresh process: the measurement behind L{rosteradmin.cache.USER_CHARGE}.

    python -m bench.cachecost [USERS]

Rosters go through the production path (a username as a JSON body carries
it, nodeprep, the web app's JSON, parseRoster, RosterCache.put), and the
backend's record of what it verified of each user is kept beside each, as
it is while the user is cached.  For rosters of 0, 1, 10 and 50 contacts,
before and after each has been served once (which builds its payload):
the bytes allocated per user.  The fixed cost is that of an empty roster;
a contact's, the growth per contact from there.
"""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from typing import Any

from bench.rosters import DOMAIN, contacts
from rosteradmin.cache import USER_CHARGE, RosterCache
from rosteradmin.roster import normaliseUsername, parseRoster


def perUser(users: int, size: int, served: bool) -> float:
    """
    Bytes allocated per cached user with C{size} contacts.
    """
    cache = RosterCache()
    verified: dict[str, str] = {}
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(users):
        name = normaliseUsername(json.loads(json.dumps([f"nobody{i}"]))[0])
        body = json.dumps(contacts(i, 10 * users, size)).encode() if size else b"{}"
        roster = parseRoster(body, f"{name}@{DOMAIN}")
        if served:
            roster.queryXML()
        cache.put(name, roster)
        verified[name] = roster.version
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")) / users


def main(users: int) -> dict[str, Any]:
    result: dict[str, Any] = {"users": users, "USER_CHARGE": USER_CHARGE}
    for served in (False, True):
        label = "served" if served else "cached"
        fixed = perUser(users, 0, served)
        result[f"bytes per user, no contacts ({label})"] = round(fixed)
        for size in (1, 10, 50):
            result[f"bytes per contact, {size} per user ({label})"] = round((perUser(users, size, served) - fixed) / size)
    return result


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000), indent=1))
