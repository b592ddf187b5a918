"""
Scenario 6 (B only), "large first sync": one user with thousands of
contacts logs in for the first time, and what that does to everyone else.

    python -m bench.run --scenario large-first-sync [--sync-contacts 3000] [--sync-one-per-item]

Preconditions (checked, and printed with the results):

  - Prosody's roster storage for the big user C{u0} is empty (cold: no
    C{roster/u0.dat});
  - the web app serves C{u0} C{contacts} contacts (a name and one group
    each), and every other user 20, which Prosody already stores (as if
    synced before);
  - rosteradmin is started, connected, and has cached nothing.

Then the big user logs in and sends its roster get.  rosteradmin fetches
the roster, reads the (empty) stored one and writes every contact into
Prosody before it answers (docs/protocol.md): the answer's latency is the
sync's duration.  The bench's Prosody runs contrib's configuration, so the
contacts go as few iqs of contrib's mod_rosteradmin_roster as fit the stanza
limit, each saved once; with mod_privilege alone it is one privileged set,
and one full save of the roster file, per contact.  Above about 4,400
contacts the answer itself exceeds Prosody's default 512 KiB component
stanza limit, and the client gets C{resource-constraint} instead (after the
sync, which still stores every contact): that is expected.
C{--sync-one-per-item} runs B's Prosody without contrib's module: the
costliest path, and a sync long enough for the probes' percentiles.

Every 200 ms, during an idle phase before the sync and during it, the
probes of L{bench.probes} start, open loop: a message round trip between two
other logged-in users (the native probe), a server ping, and an uncached
login and roster get of another user (a fresh one each time, 20 contacts,
not in rosteradmin's cache).

The target (L{TARGET_LOGIN_OVER_NATIVE}) compares the other logins' roster
get with the native probe during the same sync; the ratios to the idle
phase are printed beside it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.probes import Probes, SetupLike, Window, health
from bench.rosters import DOMAIN, rosterPath, username
from bench.xmppload import LoadClient

#: Contacts of every user but the big one.
SMALL_ROSTER = 20

#: The target: another user's uncached login waits for its roster get
#: (p99 during the sync) at most this many times the native probe's message
#: round trip (p99 during the same sync).  The login crosses Prosody three
#: times (the login, the delegated get, the privileged read of its stored
#: roster), the message twice: a sync slows other logins down as much as it
#: slows Prosody itself, not by queueing them behind the big user's writes.
TARGET_LOGIN_OVER_NATIVE = 4.0
NS_STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"


def usersNeeded(contacts: int, idleSeconds: float, syncTimeout: float, interval: float) -> int:
    """
    Accounts to create: the big user, its contacts, one fresh user per tick
    of the whole run, and the two message probes.
    """
    return contacts + 1 + int((idleSeconds + syncTimeout + 30) / interval) + 2


def storedItems(setup: SetupLike, user: str) -> int:
    """
    Items in a user's roster file in Prosody's internal storage.
    """
    return setup.prosody.storedRoster(user).count('["subscription"]')


async def largeFirstSync(setup: SetupLike, contacts: int, users: int, idleSeconds: float = 30.0,
                         syncTimeout: float = 900.0, interval: float = 0.2) -> dict[str, Any]:
    """
    Run the scenario on a started setup whose storage holds C{users}
    accounts and no roster for C{u0}.

    @return: The metrics, with latencies in milliseconds.
    """
    big = username(0)
    cached = setup.webappCall("GET", "/stats")["requests"]
    status = health(setup)
    preconditions = {
        "stored items of u0 before (cold: 0)": storedItems(setup, big),
        "web app contacts of u0": contacts,
        "rosteradmin connected": bool(status["connected"]),
        "rosteradmin cached users before": status["cached_users"],
    }
    print(f"large first sync: preconditions {preconditions}, web app fetches so far {cached}", flush=True)
    if preconditions["stored items of u0 before (cold: 0)"] or status["cached_users"]:
        raise RuntimeError(f"large first sync: not cold: {preconditions}")

    probes = await Probes.connect(setup, users - 2, contacts + 1, users - 3, interval)
    window = Window(setup)
    window.idle()
    probes.start()
    await asyncio.sleep(idleSeconds)

    bigClient = LoadClient(big, DOMAIN)
    await bigClient.login(setup.prosody.c2sPort, "pw")
    probes.phase = "during"
    window.begin()
    reply = await bigClient.iq("get", "<query xmlns='jabber:iq:roster'/>", timeout=syncTimeout)
    duration = window.end()
    await probes.stop()
    pushes = bigClient.pushes
    await bigClient.close()

    query = reply.find("{jabber:iq:roster}query")
    error = reply.find("{jabber:client}error")
    condition = "-"
    if error is not None:
        condition = next((child.tag.replace(NS_STANZAS, "") for child in error if child.tag.startswith(NS_STANZAS)),
                         "?")
    status = health(setup)
    result: dict[str, Any] = {
        "contacts (web app)": contacts,
        "stored items of u0 before": preconditions["stored items of u0 before (cold: 0)"],
        "stored items of u0 after": storedItems(setup, big),
        "answer items": len(query) if query is not None else 0,
        "answer error": condition,
        "roster pushes to u0": pushes,
        "sync seconds (get to answer)": duration,
        **window.summary("sync"),
        **probes.summaries(),
        "fresh users sufficed": not probes.poolExhausted,
        "fresh users' stored rosters rewritten": probes.rewritten(window.idleStartedAt),
        "unsynced users after": status["unsynced_users"],
        **window.loadAverages(),
    }
    probes.printFailures("large first sync")
    login, native = "other login: roster get p99", "message rtt p99"
    result[f"{login} during/idle"] = result[f"{login} during"] / result[f"{login} idle"]
    result[f"{native} during/idle"] = result[f"{native} during"] / result[f"{native} idle"]
    ratio = f"{login} / {native} in the sync"
    result[ratio] = result[f"{login} during"] / result[f"{native} during"]
    result[f"target: {login} <= {TARGET_LOGIN_OVER_NATIVE:g} x {native} in the sync"] = (
        result[ratio] <= TARGET_LOGIN_OVER_NATIVE)
    return result


def prepareStorage(dataPath: Path) -> None:
    """
    Make the big user's stored roster cold: no roster file at all.
    """
    rosterPath(dataPath, username(0)).unlink(missing_ok=True)
