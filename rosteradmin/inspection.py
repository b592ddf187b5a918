# -*- test-case-name: tests.test_inspection -*-
"""
One user's whole picture: C{GET /roster_admin/users/<username>} and
C{rosteradmin-ctl inspect USER}.

When a user asks support "why don't I see Bob?", the answer lies in five
places: the web app's roster, rosteradmin's cache, the server's stored
roster, the user's online clients, and what the state and the promises
hold of the user.  An L{Inspector} reads them all at one moment: the web
app's and the server's rosters now, under the user's lock, with what the
backend holds of the user (L{IRosterBackend.readUser}: no write of the
user's is in flight, so a difference is a real one, not a write half
done), then what the XMPP side knows of the user's clients.  The L{Inspection} compares the three
rosters and says in one line what is wrong, if anything, what will fix
it, and when, if something already will (the online check, the next
reconciliation pass, the next connection).

It reads values (L{rosteradmin.snapshot}), never the parts behind them,
and changes nothing: the fix is a refresh, or the pass the verdict names.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from rosteradmin.interfaces import IRosterBackend
from rosteradmin.roster import Contact, Roster, StoredRoster, diffRosters, normaliseUsername
from rosteradmin.snapshot import ResourcesSnapshot, UserReading, UserSnapshot

#: A JSON value, as the API writes it.
JSONObject = dict[str, Any]

#: Most client JIDs a verdict names; the JSON lists them all.
MAX_NAMED = 3


@dataclass(frozen=True)
class Schedule:
    """
    When the passes that repair a user's server roster run next: each
    callable gives the seconds until then, or C{None} when none is
    scheduled.

    @ivar reconciliation: The next reconciliation pass
        (L{rosteradmin.fullsync.FullSync.nextReconciliation}): it refreshes
        every user and reads each server roster back.
    @ivar onlineCheck: The next check of the online users' server rosters
        against the cache (L{rosteradmin.onlinecheck.OnlineCheck.nextCheck}).
    """

    reconciliation: Callable[[], float | None] = field(default=lambda: None)
    onlineCheck: Callable[[], float | None] = field(default=lambda: None)


class Inspector:
    """
    Assembles L{Inspection}s.
    """

    def __init__(self, backend: IRosterBackend, resources: Callable[[str], ResourcesSnapshot],
                 deadline: float, schedule: Schedule | None = None) -> None:
        """
        @param resources: A user's online resources and pushed clients
            (L{rosteradmin.component.RosterComponent.resources}).
        @param deadline: Seconds the rosters may take to be read (waiting
            for the user's lock included); past it, the inspection says
            what is held without them.
        @param schedule: When the repairing passes run next.
        """
        self.backend = backend
        self.resources = resources
        self.deadline = deadline
        self.schedule = schedule if schedule is not None else Schedule()

    def inspect(self, username: str) -> Deferred[Inspection]:
        """
        Read everything known of a user, now.

        @raise InvalidUsername: The username cannot be a JID node (raised
            at once, nothing read).
        """
        username = normaliseUsername(username)
        return self.backend.readUser(username, self.deadline).addCallback(self._assemble, username)

    def _assemble(self, reading: UserReading, username: str) -> Inspection:
        return Inspection(username, reading, self.resources(username), self.deadline,
                          self.schedule.reconciliation(), self.schedule.onlineCheck())


@dataclass(frozen=True)
class Inspection:
    """
    Everything known of one user at one moment, the differences between
    its three rosters, and the verdict.

    @ivar reading: The web app's and the server's rosters, and what the
        backend held of the user.
    @ivar resources: The user's online resources and pushed clients.
    @ivar reconciliationIn: Seconds until the next reconciliation pass.
    @ivar onlineCheckIn: Seconds until the next online check.
    """

    username: str
    reading: UserReading
    resources: ResourcesSnapshot
    deadline: float
    reconciliationIn: float | None
    onlineCheckIn: float | None

    @property
    def held(self) -> UserSnapshot:
        return self.reading.held

    @property
    def webApp(self) -> Roster | None:
        return self.reading.webApp

    @property
    def server(self) -> StoredRoster | None:
        return self.reading.server

    @property
    def served(self) -> Roster | None:
        """
        The roster the user's clients are served: the cached one, else
        the one the next login fetches.
        """
        return self.held.cached if self.held.cached is not None else self.webApp

    @property
    def unknown(self) -> bool:
        """
        Nobody knows this user: the web app answers 404, and rosteradmin
        holds nothing of it, nor does the server store any contact.
        """
        reading, held = self.reading, self.held
        if not reading.webAppUnknown:
            return False
        stored = reading.server is not None and bool(reading.server.roster.contacts)
        return (held.cached is None and held.serverVersion is None and held.pendingSince is None and not stored
                and not self.resources.online and not self.resources.devices)

    def findings(self) -> list[str]:
        """
        What is wrong, each with what will fix it, the gravest first.
        """
        return [*self._readingFindings(), *self._heldFindings(), *self._rosterFindings(),
                *self._clientFindings()]

    def verdict(self) -> str:
        """
        One line: what is wrong and what will fix it, or that nothing is.
        """
        findings = self.findings()
        if findings:
            return "; ".join(findings)
        server, roster = self.server, self.served
        if roster is None or server is None:
            return "nothing known to be wrong"
        cached = self.held.cached is not None
        where = "the web app, the cache and the server" if cached else "the web app and the server"
        notCached = "" if cached else "; not cached: the user's next login fetches it"
        return (f"nothing is wrong: {where} hold the same roster ({_contacts(len(roster))}, version "
                f"{roster.version}){notCached}")

    def _readingFindings(self) -> list[str]:
        reading, held = self.reading, self.held
        if not reading.inTime:
            return [f"the web app's and the server's rosters were not read within {self.deadline:g} s: work on "
                    "this user (a login, a refresh, a sync) holds it, or the web app or the server is slow; "
                    "inspect again"]
        found = []
        stored = reading.server.roster if reading.server is not None else None
        if reading.webAppUnknown and (held.cached is not None or stored):
            holds = (f"the server stores {_contacts(len(stored))}" if stored
                     else f"the cache holds {_contacts(len(held.cached or ()))}")
            found.append(f"{reading.webAppProblem}, yet {holds}: rosteradmin "
                         "leaves the roster of a user the web app does not know as it is; have the web app answer "
                         "{} for the user, then refresh it")
        elif reading.webAppProblem is not None and not reading.webAppUnknown:
            serves = ("the cached roster" if held.cached is not None
                      else "nothing: their roster queries fail")
            found.append(f"the web app's roster could not be fetched ({reading.webAppProblem}): the user's clients "
                         f"are served {serves} until it answers, and a refresh then brings it")
        if reading.serverProblem is not None:
            then = ("inspect again" if held.canSync
                    else "rosteradmin writes what it lacks once the server takes roster writes again")
            found.append(f"the server's stored roster could not be read ({reading.serverProblem}): {then}")
        return found

    def _heldFindings(self) -> list[str]:
        held, found = self.held, []
        if held.refused is not None:
            found.append(f"the web app's roster is refused: {held.refused} (raise the server's stanza limit and "
                         "--max-stanza-bytes together, or have the web app serve a smaller one)")
        if held.parked is not None:
            found.append(f"the user's roster writes are held back: {held.parked}; they are tried again then")
        return found

    def _rosterFindings(self) -> list[str]:
        found = []
        cached, webApp = self.held.cached, self.webApp
        if cached is not None and webApp is not None:
            if diffRosters(cached, webApp):
                found.append("the web app changed the roster since rosteradmin last fetched it "
                             f"({_summary(cached, webApp)}):"
                             f" the user's clients show the old one until a refresh (POST /roster_admin/refresh/"
                             f"{self.username}){self._byReconciliation('does')}")
        server, served = self.server, self.served
        if server is not None and served is not None:
            notBoth = server.notBoth & {c.jid for c in served.contacts}
            if diffRosters(server.roster, served) or notBoth:
                found.append(f"the server does not store the roster served ({_summary(server.roster, served, notBoth)})"
                             f": {self._serverFix()}")
        return found

    def _serverFix(self) -> str:
        """
        What will make the server store the roster served, and when.
        """
        held = self.held
        if held.unsynced:
            when = ("once the server takes roster writes again" if not held.canSync
                    else "at the next connection or the user's next login, or now by a refresh")
            return f"its write failed; rosteradmin writes it {when}"
        if held.pendingSince is not None:
            return ("a refresh of the user is pending (accepted, not finished); it is finished once the server takes "
                    "roster writes, or now by a refresh")
        return "presence follows the server's roster; " + self._driftFix()

    def _driftFix(self) -> str:
        """
        What will repair what the server changed behind rosteradmin's
        back, and when.  A refresh reads the server's roster back only
        where the state does not record it as holding the web app's
        roster: otherwise only the passes that verify (the online check,
        for an online user; the reconciliation) see the drift.
        """
        webApp, held, resources = self.webApp, self.held, self.resources
        # The online check compares an online user's cached roster with
        # what the server stores, where the server shares presences.
        checkIn = (self.onlineCheckIn if resources.online and resources.presenceShared and held.cached is not None
                   else None)
        if webApp is not None and held.serverVersion != webApp.version:
            scheduled = (f", the online check in {_duration(checkIn)}" if checkIn is not None
                         else self._byReconciliation("does"))
            return f"a refresh repairs it now{scheduled}"
        notRefresh = " (a refresh does not: the state records the server as holding the web app's roster)"
        if checkIn is not None:
            return f"the online check repairs it in {_duration(checkIn)}{notRefresh}"
        if self.reconciliationIn is not None:
            return f"the next reconciliation pass repairs it in {_duration(self.reconciliationIn)}{notRefresh}"
        return f"nothing scheduled repairs it{notRefresh}"

    def _byReconciliation(self, does: str) -> str:
        if self.reconciliationIn is None:
            return ""
        return f", which the next reconciliation pass {does} in {_duration(self.reconciliationIn)}"

    def _clientFindings(self) -> list[str]:
        cached = self.held.cached
        if cached is None:
            return []
        behind = [device.jid for device in self.resources.devices
                  if device.dirty or device.failures or (device.holds is not None and device.holds != cached.version)]
        if not behind:
            return []
        named = ", ".join(behind[:MAX_NAMED]) + (f" and {len(behind) - MAX_NAMED} more" if len(behind) > MAX_NAMED
                                                 else "")
        return [f"{len(behind)} of the user's clients do not show the roster served yet ({named}): their pushes are "
                "under way, a failed batch retried after 2 s, doubling; a client that fails 3 times gets the whole "
                "roster at its next login"]

    def toJSON(self) -> JSONObject:
        """
        The whole picture, as C{GET /roster_admin/users/<username>} answers
        it.
        """
        findings = self.findings()
        return {
            "username": self.username,
            "verdict": self.verdict(),
            "findings": findings,
            "status": "problem" if findings else "ok",
            "web_app": self._webAppJSON(),
            "cache": ({"status": "cached", "roster": _rosterJSON(self.held.cached)} if self.held.cached is not None
                      else {"status": "not_cached"}),
            "server": self._serverJSON(),
            "resources": _resourcesJSON(self.resources, self.held.cached),
            "state": _heldJSON(self.held),
            "differences": self._differencesJSON(),
            "schedule": {"reconciliation_in": self.reconciliationIn, "online_check_in": self.onlineCheckIn},
        }

    def _webAppJSON(self) -> JSONObject:
        reading = self.reading
        if not reading.inTime:
            return {"status": "not_read", "error": reading.webAppProblem}
        if reading.webApp is not None:
            return {"status": "fetched", "roster": _rosterJSON(reading.webApp)}
        return {"status": "unknown_user" if reading.webAppUnknown else "failed", "error": reading.webAppProblem}

    def _serverJSON(self) -> JSONObject:
        stored, recorded = self.server, self.held.serverVersion
        if stored is None:
            return {"status": "not_read", "error": self.reading.serverProblem, "recorded_version": recorded}
        return {"status": "read", "roster": _rosterJSON(stored.roster), "not_both": sorted(stored.notBoth),
                "recorded_version": recorded, "holds_recorded": stored.roster.version == recorded}

    def _differencesJSON(self) -> JSONObject:
        cached, webApp, server = self.held.cached, self.webApp, self.server
        return {
            "cache_to_web_app": _diffJSON(cached, webApp) if cached is not None and webApp is not None else None,
            "server_to_web_app": (_diffJSON(server.roster, webApp, server.notBoth)
                                  if server is not None and webApp is not None else None),
            "server_to_cache": (_diffJSON(server.roster, cached, server.notBoth)
                                if server is not None and cached is not None else None),
        }


def _summary(old: Roster, new: Roster, notBoth: frozenset[str] = frozenset()) -> str:
    """
    What would make C{old} C{new}, in words: how many contacts to add, to
    change, to remove, and to give back their C{both} subscription.
    """
    before = old.byJID()
    diff = diffRosters(old, new)
    added = sum(1 for contact in diff.changed if contact.jid not in before)
    parts = [(added, "to add"), (len(diff.changed) - added, "to change"), (len(diff.removed), "to remove"),
             (len(notBoth - {c.jid for c in diff.changed}), "with a subscription other than both")]
    return ", ".join(f"{count} {what}" for count, what in parts if count)


def _contactJSON(contact: Contact) -> JSONObject:
    return {"name": contact.name, "groups": list(contact.groups)}


def _rosterJSON(roster: Roster) -> JSONObject:
    """
    A roster as the web app writes one (contacts by bare JID), with its
    version and size.
    """
    return {"version": roster.version, "count": len(roster),
            "contacts": {c.jid: _contactJSON(c) for c in roster.contacts}}


def _diffJSON(old: Roster, new: Roster, notBoth: frozenset[str] = frozenset()) -> JSONObject:
    """
    What would make C{old} C{new}: the contacts to add, to remove and to
    change (with both sides); for a stored roster, the contacts whose
    subscription is not C{both} (rewritten even when they match).
    """
    before = old.byJID()
    diff = diffRosters(old, new)
    added = [{"jid": c.jid, **_contactJSON(c)} for c in diff.changed if c.jid not in before]
    changed = [{"jid": c.jid, "from": _contactJSON(before[c.jid]), "to": _contactJSON(c)}
               for c in diff.changed if c.jid in before]
    body: JSONObject = {"added": added, "removed": list(diff.removed), "changed": changed}
    if notBoth:
        body["subscription"] = sorted(notBoth & {c.jid for c in new.contacts})
    return body


def _resourcesJSON(resources: ResourcesSnapshot, cached: Roster | None) -> JSONObject:
    return {
        "presence_shared": resources.presenceShared,
        "online": list(resources.online),
        "clients": [{"jid": d.jid, "available": d.available, "holds_version": d.holds,
                     "current": cached is not None and d.holds == cached.version and not d.dirty,
                     "dirty": sorted(d.dirty), "sending": d.sending, "failures": d.failures}
                    for d in resources.devices],
    }


def _heldJSON(held: UserSnapshot) -> JSONObject:
    return {
        "recorded_version": held.serverVersion,
        "synced_at": _timestamp(held.syncedAt),
        "pending_since": _timestamp(held.pendingSince),
        "unsynced": held.unsynced,
        "refused": held.refused,
        "parked": held.parked,
        "verified_version": held.verified,
        "promised_version": held.promised,
        "doubted_version": held.doubted,
        "unpushed": sorted(held.unpushed),
        "server_takes_writes": held.canSync,
        "server_refusal": held.syncRefusal,
    }


def _contacts(count: int) -> str:
    return f"{count} contact" if count == 1 else f"{count} contacts"


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _duration(seconds: float) -> str:
    """
    A delay in words: C{"40 s"}, C{"12 min"}, C{"6 h"}, C{"5 h 12 min"}.
    """
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
