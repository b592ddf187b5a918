"""
Scenario 13: what contrib's mod_rosteradmin_roster's wait at login costs
one login, measured one login at a time (latency, not throughput).

Before a login loads a user's roster, the module asks rosteradmin for it
unless rosteradmin wrote, promised or loaded that roster since Prosody
started, and holds the bind until answered.  The bind's round trip (the
client's bind iq to its result) is where the wait lands, so that is what
is timed, for:

- A: Prosody alone (mod_roster): no wait, the baseline;
- B unsynced: a user no sync has reached (no stored roster, unknown to
  C{--state}): the bind waits for a web-app fetch, a privileged read and a
  write;
- B synced: a user whose stored roster is right and recorded in
  C{--state} (a refresh that found nothing to write), not vouched for in
  this Prosody run: one round trip on the component stream, no fetch;
- B vouched: the users of B unsynced logging in again: nothing is asked;
- B stopped: rosteradmin stopped, unsynced users: Prosody bounces the
  request at once and the bind goes on with the stored roster.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from bench.rosters import DOMAIN, rosterPath, username
from bench.xmppload import LoadClient, percentiles

#: The variants of B, in the order they run.
VARIANTS = ("unsynced", "vouched", "synced", "stopped")

NAMES = {
    "unsynced": "13 login cost, unsynced user (fetched and written at bind)",
    "vouched": "13v login cost, user written in this Prosody run (nothing asked)",
    "synced": "13s login cost, synced user, first login since Prosody started (one round trip)",
    "stopped": "13x login cost, rosteradmin stopped (bounced at once)",
}


class SetupLike(Protocol):
    mode: str
    contacts: int
    httpPort: int
    prosody: Any

    def webappCall(self, method: str, path: str) -> dict[str, Any]: ...

    def stopComponent(self) -> None: ...


async def timedLogins(setup: SetupLike, users: list[str], password: str) -> dict[str, Any]:
    """
    Log each user in, one after the other, and out again: the bind's round
    trip and connect-to-bound, in ms.
    """
    binds: list[float] = []
    logins: list[float] = []
    for user in users:
        client = LoadClient(user, DOMAIN)
        began = time.perf_counter()
        await client.login(setup.prosody.c2sPort, password)
        logins.append(time.perf_counter() - began)
        binds.append(client.bindSeconds)
        await client.close()
    return {**{k: v * 1000 for k, v in percentiles(binds).items()},
            **{f"login (connect to bound) {k}": v * 1000 for k, v in percentiles(logins).items() if k != "p95"}}


def storedUsers(setup: SetupLike, users: list[str]) -> int:
    """
    How many of C{users} the server stores with every contact.
    """
    found = 0
    for user in users:
        path = rosterPath(setup.prosody.dataPath, user)
        found += path.exists() and path.read_text().count('["subscription"]') == setup.contacts
    return found


def refresh(setup: SetupLike, users: list[str]) -> dict[str, Any]:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{setup.httpPort}/roster_admin/refresh",
                                     data=json.dumps(users).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=600) as r:
        return dict(json.load(r))


async def loginCost(setup: SetupLike, users: int, password: str) -> dict[str, dict[str, Any]]:
    """
    Scenario 13 on a fresh setup whose Prosody stores every roster right:
    A's one variant, or B's L{VARIANTS}, each over its own C{users} users
    (B's vouched variant: the unsynced variant's users again).

    @return: The results by variant (A's under C{"native"}).
    """
    groups = {name: [username(i + k * users) for i in range(users)] for k, name in enumerate(("unsynced", "synced",
                                                                                              "stopped"))}
    if setup.mode == "A":
        return {"native": {"pre: stored with every contact": storedUsers(setup, groups["unsynced"]),
                           **await timedLogins(setup, groups["unsynced"], password)}}
    for name in ("unsynced", "stopped"):
        for user in groups[name]:
            rosterPath(setup.prosody.dataPath, user).unlink()
    refreshed = refresh(setup, groups["synced"])  # nothing to write: recorded in the state, not vouched
    setup.webappCall("POST", "/reset")
    results: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        group = groups["unsynced" if variant == "vouched" else variant]
        if variant == "stopped":
            setup.stopComponent()
        pre = {"pre: stored with every contact": storedUsers(setup, group)}
        if variant == "synced":
            pre["pre: refreshed, nothing written (updated)"] = refreshed["updated"]
        fetched = setup.webappCall("GET", "/stats")["requests"] if variant != "stopped" else 0
        measured = await timedLogins(setup, group, password)
        if variant != "stopped":
            measured["fetches"] = setup.webappCall("GET", "/stats")["requests"] - fetched
        measured["stored with every contact after"] = storedUsers(setup, group)
        results[variant] = {**pre, **measured}
        print(f"login cost {variant}: {results[variant]}", flush=True)
    return results
