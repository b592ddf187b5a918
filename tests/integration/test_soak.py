# -*- test-case-name: tests.integration.test_soak -*-
"""
A day in the life, shortened, seeded and bounded: users' devices log in
(roster first, presence first, or roster only) and out, the web app changes
rosters and refreshes them (or forgets to), its roster endpoint goes down
for a while, rosteradmin is killed (kill -9) and started again on its state,
and Prosody restarts.  Then the web app refreshes everyone, as it would
after an outage, and the invariants must hold:

- the server stores each user's web-app roster, subscription both;
- every device holding a roster shows its user's web-app roster;
- every device logging in again with the version it holds ends showing it.

Real parts only: Prosody with both contrib modules, C{twistd rosteradmin}
processes with a state file, client sessions and the web app stub on
loopback.  C{pytest -m soak} runs these alone; each seed takes about half a
minute.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.web.client import HTTPConnectionPool

from tests.integration.harness import PASSWORD, ProsodyServer, WebAppStub, XMPPTestClient, connectClient
from tests.integration.service import RunningService
from tests.integration.servers import stored
from tests.integration.test_convergence import Rosteradmin, expected
from tests.integration.test_devices import shown

pytestmark = [pytest.mark.integration, pytest.mark.soak]

USERS = [f"u{n:02d}" for n in range(12)]

#: Steps of the day; each is one action, then a pause of up to 0.25 s.
STEPS = 140

#: Most devices online at once.
MAX_DEVICES = 24


@dataclass
class Day:
    """
    What happened, for the report.
    """

    logins: int = 0
    logouts: int = 0
    changes: int = 0
    refreshes: int = 0
    lostRefreshes: int = 0
    outages: int = 0
    kills: int = 0
    prosodyRestarts: int = 0
    failedGets: int = 0
    events: list[str] = field(default_factory=list)


def randomRoster(rng: random.Random, owner: str) -> dict[str, Any]:
    """
    A web-app roster: some of the other users (presence flows between
    them) and some contacts elsewhere, with names and groups.
    """
    roster: dict[str, Any] = {}
    for other in rng.sample([u for u in USERS if u != owner], rng.randint(0, 5)):
        roster[f"{other}@example.org"] = contactSpec(rng, other)
    for n in rng.sample(range(30), rng.randint(0, 4)):
        roster[f"ext{n}@elsewhere.example"] = contactSpec(rng, f"ext{n}")
    return roster


def contactSpec(rng: random.Random, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if rng.random() < 0.8:
        spec["name"] = f"{name.title()} {rng.randint(1, 9)}"
    groups = rng.sample(["Friends", "Work", "Family", "Club"], rng.randint(0, 2))
    if groups:
        spec["groups"] = groups
    return spec


def mutate(rng: random.Random, roster: dict[str, Any], owner: str) -> dict[str, Any]:
    """
    One change as a web app makes it: add, remove, rename or regroup a
    contact (or a few at once).
    """
    roster = dict(roster)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        action = rng.choice(["add", "remove", "rename", "regroup"])
        if action == "add" or not roster:
            candidates = [f"{u}@example.org" for u in USERS if u != owner] + [
                f"ext{n}@elsewhere.example" for n in range(30)]
            jid = rng.choice(candidates)
            roster[jid] = contactSpec(rng, jid.split("@")[0])
        elif action == "remove":
            del roster[rng.choice(sorted(roster))]
        else:
            jid = rng.choice(sorted(roster))
            spec = dict(roster[jid])
            if action == "rename":
                spec["name"] = f"{jid.split('@')[0].title()} {rng.randint(10, 99)}"
            else:
                spec["groups"] = rng.sample(["Friends", "Work", "Family", "Club"], rng.randint(0, 3))
            roster[jid] = spec
    return roster


class Soak:
    """
    One seeded day against one Prosody, web app and state file.
    """

    def __init__(self, seed: int, prosody: ProsodyServer, webapp: WebAppStub, directory: Path) -> None:
        self.rng = random.Random(seed)
        self.prosody = prosody
        self.webapp = webapp
        self.directory = directory
        self.state = directory / "state.sqlite"
        self.devices: list[tuple[str, XMPPTestClient]] = []
        self.day = Day()
        self.generation = 0
        self.rosteradmin: Rosteradmin | None = None
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def startRosteradmin(self) -> Rosteradmin:
        self.generation += 1
        self.rosteradmin = Rosteradmin(self.prosody, self.webapp, self.directory, f"rosteradmin{self.generation}",
                                       self.state)
        return self.rosteradmin

    async def refresh(self, usernames: list[str]) -> bool:
        """
        C{POST /roster_admin/refresh}; whether it was answered 200.
        """
        assert self.rosteradmin is not None
        try:
            response = await treq.post(self.rosteradmin.baseURL + "/roster_admin/refresh",
                                       json.dumps(usernames).encode(), pool=self.pool, timeout=30)
            await response.content()
        except Exception:
            return False
        return bool(response.code == 200)

    async def login(self) -> None:
        user = self.rng.choice(USERS)
        try:
            device = await connectClient(f"{user}@{self.prosody.domain}", PASSWORD, self.prosody.c2sPort)
        except Exception as e:
            self.day.events.append(f"login of {user} failed: {e}")
            return
        self.devices.append((user, device))
        self.day.logins += 1
        style = self.rng.choice(["roster first", "presence first", "roster only"])
        if style == "presence first":
            device.sendPresence()
        await self.askRoster(device)
        if style == "roster first":
            device.sendPresence()

    async def askRoster(self, device: XMPPTestClient) -> None:
        """
        Ask for the roster with the version held, as a client does; an
        error leaves the device without a roster, to ask again later.
        """
        try:
            reply = await device.rosterGet(ver=device.viewVersion or "", timeout=15)
        except Exception:
            self.day.failedGets += 1
            return
        if reply["type"] != "result":
            self.day.failedGets += 1

    async def logout(self) -> None:
        user, device = self.devices.pop(self.rng.randrange(len(self.devices)))
        await device.disconnect()
        self.day.logouts += 1

    async def change(self) -> None:
        user = self.rng.choice(USERS)
        self.webapp.rosters[user] = mutate(self.rng, self.webapp.rosters[user], user)
        self.day.changes += 1
        if self.rng.random() < 0.15:
            self.day.lostRefreshes += 1  # the web app forgot to tell us
            return
        self.day.refreshes += 1
        if not await self.refresh([user]):
            self.day.lostRefreshes += 1

    async def outage(self) -> None:
        """
        The web app's roster endpoint fails for a second or two.
        """
        self.day.outages += 1
        for user in USERS:
            self.webapp.failures[user] = (503, b"down for maintenance")
        await RunningService.sleep(self.rng.uniform(1, 2))
        self.webapp.failures.clear()

    async def kill(self) -> None:
        assert self.rosteradmin is not None
        self.rosteradmin.kill()
        self.day.kills += 1
        await RunningService.sleep(self.rng.uniform(0.2, 1.5))
        await self.startRosteradmin().healthy()

    async def restartProsody(self) -> None:
        self.day.prosodyRestarts += 1
        await defer.maybeDeferred(self.prosody.restart)
        await RunningService.waitUntil(lambda: all(not d.connected for _, d in self.devices), 10,
                                       "every session cut by the restart")
        self.devices.clear()
        assert self.rosteradmin is not None
        await self.rosteradmin.healthy(30)

    async def live(self) -> None:
        for user in USERS:
            self.prosody.addAccount(user, PASSWORD)
            self.webapp.rosters[user] = randomRoster(self.rng, user)
        await self.startRosteradmin().healthy()
        killAt = {self.rng.randrange(20, STEPS - 20) for _ in range(2)}
        restartAt = self.rng.randrange(20, STEPS - 20)
        for step in range(STEPS):
            self.devices = [(u, d) for u, d in self.devices if d.connected]
            if step in killAt:
                await self.kill()
            elif step == restartAt:
                await self.restartProsody()
            roll = self.rng.random()
            if roll < 0.3 and len(self.devices) < MAX_DEVICES:
                await self.login()
            elif roll < 0.45 and self.devices:
                await self.logout()
            elif roll < 0.9:
                await self.change()
            elif roll < 0.93:
                await self.outage()
            else:
                withoutRoster = [d for _, d in self.devices if d.view is None]
                if withoutRoster:
                    await self.askRoster(self.rng.choice(withoutRoster))
            await RunningService.sleep(self.rng.uniform(0, 0.25))

    async def settle(self) -> float:
        """
        The end of the day: the web app refreshes everyone (as after an
        outage), devices without a roster ask again; wait for the
        invariants.

        @return: Seconds until they held.
        """
        started = time.monotonic()
        for _ in range(10):
            if await self.refresh(USERS):
                break
            await RunningService.sleep(1)
        else:
            raise AssertionError("the final refresh was never answered 200")
        self.devices = [(u, d) for u, d in self.devices if d.connected]
        for _, device in self.devices:
            if device.view is None:
                await self.askRoster(device)
        await RunningService.waitUntil(lambda: not self.storeDiffers(), 30, "every stored roster to converge")
        await RunningService.waitUntil(lambda: not self.viewsDiffer(), 30,
                                       f"every device's view to converge: {self.viewsDiffer()}")
        return time.monotonic() - started

    def storeDiffers(self) -> list[str]:
        return [user for user in USERS if stored(self.prosody, user) != expected(self.webapp.rosters[user])]

    def viewsDiffer(self) -> list[str]:
        return [device.jid.full() for user, device in self.devices
                if device.view is not None and device.view != shown(self.webapp.rosters[user])]

    async def loginsAgree(self) -> list[str]:
        """
        Each device logs in again with the view and version it holds; the
        ones that then show something else than the web app's roster.
        """
        wrong = []
        for user, device in list(self.devices):
            if device.view is None:
                continue
            version, view = device.viewVersion, dict(device.view)
            await device.disconnect()
            again = await connectClient(f"{user}@{self.prosody.domain}", PASSWORD, self.prosody.c2sPort)
            again.view, again.viewVersion = view, version
            reply = await again.rosterGet(ver=version or "")
            await again.disconnect()
            if reply["type"] != "result" or again.view != shown(self.webapp.rosters[user]):
                wrong.append(f"{user} with ver={version}: {reply['type']}, shows {again.view}")
        self.devices = []
        return wrong

    async def stop(self) -> None:
        await defer.gatherResults([d.disconnect() for _, d in self.devices if d.connected])
        if self.rosteradmin is not None and self.rosteradmin.process.poll() is None:
            self.rosteradmin.stop()


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest_twisted.ensureDeferred
async def test_dayInTheLife(seed: int, prosody: ProsodyServer, webapp: WebAppStub, tmp_path: Path) -> None:
    soak = Soak(seed, prosody, webapp, tmp_path)
    try:
        began = time.monotonic()
        await soak.live()
        settled = await soak.settle()
        pushes = sum(len(d.pushes) for _, d in soak.devices)
        wrong = await soak.loginsAgree()
        day = soak.day
        print(f"\nseed {seed}: {STEPS} steps in {time.monotonic() - began:.1f} s: {day.logins} logins, "
              f"{day.logouts} logouts, {day.changes} roster changes ({day.refreshes} refreshes, "
              f"{day.lostRefreshes} lost), {day.outages} web-app outages, {day.kills} kill -9, "
              f"{day.prosodyRestarts} Prosody restart, {day.failedGets} failed roster gets; "
              f"converged {settled:.1f} s after the final refresh; {pushes} pushes on the devices online at "
              f"the end; logins again with the version held: {len(wrong)} wrong")
        assert wrong == []
    finally:
        await soak.stop()
