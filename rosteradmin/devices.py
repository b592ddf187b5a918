# -*- test-case-name: tests.test_devices,tests.test_component,tests.test_putback -*-
"""
What each of a user's devices shows, and the roster pushes (RFC 6121
§2.1.6) that bring it to the web app's roster.  Pushes are sent for the
user's bare JID as XEP-0356 C{<privileged_iq>}s: Prosody pushes nothing
itself while C{jabber:iq:roster} is delegated.

The model converges as the server's store does.  Every interested resource
(one that sent available presence, or asked for its roster: RFC 6121
§2.1.6 counts both, and §2.2 says clients should ask first) has a view: the
roster it is believed to hold, and the contacts whose state on it is not
known ("dirty").  A change moves only the user's target.  One batch of
pushes at a time goes to a resource, from its view to the target of that
moment, and whatever changes meanwhile is pushed by the next batch, from
where the first left it.  So pushes to one resource coalesce to the latest
state: what is queued is bounded by resources and roster sizes, not by the
number of changes or refused edits.

Each push has an iq id of its own: Prosody's mod_privilege refuses a
privileged iq whose id is that of one still unanswered, and copies of one
push for several devices shared one before.  A failed push leaves the
contacts of its batch dirty: they are pushed again, after a pause, and a
device that keeps failing, or leaves before its pushes are answered, is
given up.  It may then hold a version whose contents it lacks (it applied a
later push of the batch and missed an earlier one): that version is doubted
(L{SyncState.doubtClients}), so the device's next query with it gets the
whole roster.  The contacts of every batch are kept in the state until all
the user's devices answered them: after a crash mid-refresh the server is
current and nothing else would push them, so the devices still online are
pushed them again once the server replays their presence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from twisted.internet.defer import DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from rosteradmin.interfaces import IConnectionStatus
from rosteradmin.permissions import PermissionTracker
from rosteradmin.pushes import PushSender
from rosteradmin.roster import Contact, Roster, RosterStep, diffSteps
from rosteradmin.snapshot import DeviceSnapshot
from rosteradmin.state import SyncState

#: Failed batches in a row after which a device is given up.
MAX_FAILURES = 3

#: Seconds before a failed batch is tried again, doubling each time.
RETRY_DELAY = 2.0

#: Seconds after our stream is back by which the server has replayed the
#: available presences: a device set aside at the loss and not replayed
#: went offline meanwhile.
REPLAY_GRACE = 30.0

#: Most devices of one user that asked for the roster without sending
#: presence: nothing tells us when such a session ends (without contrib's
#: mod_rosteradmin_roster), so the oldest is given up first.
MAX_SILENT_DEVICES = 8

#: Most contacts a device's refused edits may leave dirty at once: the rest
#: of a flood of made-up JIDs is not put back.
MAX_EDITED = 256


@dataclass(eq=False)
class Device:
    """
    One interested resource of a user, and what it shows.

    @ivar jid: Its full JID.
    @ivar available: It sent available presence (else it only asked for
        its roster).
    @ivar held: The roster it holds, but for C{dirty}; C{None} until known.
    @ivar dirty: Contacts whose state on the device is unknown: each is
        pushed as the target has it (or removed).
    @ivar answered: Bumped each time the device is given a whole roster:
        pushes of a batch sent before it may have been applied after it.
    @ivar sending: A batch of pushes is unanswered.
    @ivar failures: Failed batches in a row.
    """

    jid: str
    available: bool
    held: Roster | None = None
    dirty: set[str] = field(default_factory=set)
    answered: int = 0
    sending: bool = False
    failures: int = 0
    retry: IDelayedCall | None = None

    def stepsTo(self, target: Roster) -> tuple[RosterStep, ...]:
        """
        The pushes from what the device shows to C{target}: each change,
        and each dirty contact as C{target} has it (a removal where it has
        none).  The dirty contacts go with them.
        """
        assert self.held is not None
        base, rewrite = self.held, frozenset[str]()
        if self.dirty:
            present = {c.jid for c in target.contacts}
            held = {c.jid for c in base.contacts}
            strays = [Contact(jid, None, ()) for jid in sorted(self.dirty - present - held)]
            if strays:
                base = Roster([*base.contacts, *strays])
            rewrite = frozenset(self.dirty & present)
            self.dirty = set()
        return diffSteps(base, target, rewrite)

    def givenWhole(self, roster: Roster | None) -> None:
        """
        The device was answered a whole roster (or "current" for the one
        it holds): it holds C{roster} (C{None}: one not known), and pushes
        of a batch on their way may be applied after it.
        """
        self.held = roster
        self.dirty.clear()
        self.answered += 1

    def converged(self, target: Roster | None) -> bool:
        """
        Whether the device shows C{target}, as far as known.
        """
        return (not self.sending and not self.dirty and self.held is not None and target is not None
                and self.held.version == target.version)


class UnpushedContacts:
    """
    The contacts of each user that not every device of the user has taken
    yet, kept in the state across a crash, and the versions a device may
    hold without all of their contents, doubted there.
    """

    def __init__(self, state: SyncState) -> None:
        self.state = state
        # A device of the last run may hold the version its pushes were
        # bringing it to, without all of its contents.
        versions = state.unpushedVersions()
        for username, version in versions.items():
            if version:  # else only written, not pushed yet
                state.doubtClients(username, version)
        self._users = set(versions)

    def of(self, username: str) -> frozenset[str]:
        return self.state.unpushed(username) if username in self._users else frozenset()

    def add(self, username: str, jids: frozenset[str], version: str) -> None:
        """
        These contacts are on their way to the user's devices, toward the
        roster of C{version} (C{""}: written into the server, not pushed).
        """
        self.state.addUnpushed(username, jids, version)
        self._users.add(username)

    def done(self, username: str) -> None:
        """
        Every device of the user took them, or none is left online.
        """
        if username in self._users:
            self._users.discard(username)
            self.state.pushed(username)

    def doubt(self, username: str, target: Roster) -> None:
        """
        A device may hold C{target}'s version without all of its contents:
        its next query with it gets the whole roster.
        """
        self.state.doubtClients(username, target.version)


class SetAside:
    """
    The views of available devices kept over a loss of our stream: the
    server replays the available presences when we are back, and a device
    replayed gets its view back; one not replayed within L{REPLAY_GRACE} of
    the reconnection went offline meanwhile, and is given up.
    """

    def __init__(self, clock: IReactorTime, giveUp: Callable[[str, Device], None]) -> None:
        """
        @param giveUp: Called with each device not replayed.
        """
        self.clock = clock
        self.giveUp = giveUp
        self.devices: dict[str, dict[str, Device]] = {}
        self._deadline: IDelayedCall | None = None

    def keep(self, username: str, devices: dict[str, Device]) -> None:
        if devices:
            self.devices[username] = devices

    def holds(self, username: str, device: Device | None = None) -> bool:
        """
        Whether a device of the user (this one, if given) is set aside.
        """
        kept = self.devices.get(username, {})
        return bool(kept) if device is None else kept.get(device.jid) is device

    def restore(self, username: str, resource: str) -> Device | None:
        return self.devices.get(username, {}).pop(resource, None)

    def reconnected(self) -> None:
        self.stop()
        self._deadline = self.clock.callLater(REPLAY_GRACE, self.giveUpAll)

    def giveUpAll(self) -> None:
        self._deadline = None
        kept, self.devices = self.devices, {}
        for username, devices in kept.items():
            for device in devices.values():
                self.giveUp(username, device)

    def stop(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None


class Interest:
    """
    Which resources of each user are followed: each that sent available
    presence or was answered its roster (by us, or by the server itself, as
    the module's session notices tell), until it goes offline, gives way to
    newer sessions that sent no presence, or is given up.  Over a loss of
    our stream, the available ones are set aside (L{SetAside}).
    """

    def __init__(self, clock: IReactorTime, pushedBefore: Callable[[str], frozenset[str]],
                 left: Callable[[str, Device, str], None]) -> None:
        """
        @param pushedBefore: A user's contacts pushed before our restart,
            maybe not answered: dirty on a device new to us.
        @param left: Called with each device no longer followed, once it
            is no longer among the user's, and why.
        """
        self._pushedBefore = pushedBefore
        self._left = left
        self._devices: dict[str, dict[str, Device]] = {}
        self._setAside = SetAside(clock, self._notReplayed)

    def of(self, username: str) -> dict[str, Device]:
        """
        The user's followed devices by full JID (not to be changed).
        """
        return self._devices.get(username, {})

    def everyDevice(self) -> list[Device]:
        """
        Every followed device, of every user (not those set aside).
        """
        return [device for devices in self._devices.values() for device in devices.values()]

    def follows(self, username: str, device: Device) -> bool:
        return self.of(username).get(device.jid) is device

    def aside(self, username: str, device: Device | None = None) -> bool:
        """
        Whether a device of the user (this one, if given) is set aside.
        """
        return self._setAside.holds(username, device)

    def anyOf(self, username: str) -> bool:
        """
        Whether a device of the user is followed or set aside.
        """
        return bool(self._devices.get(username)) or self._setAside.holds(username)

    def device(self, username: str, resource: str, available: bool) -> Device:
        """
        The device of a resource, followed from now on.
        """
        devices = self._devices.setdefault(username, {})
        device = devices.get(resource)
        if device is None:
            device = self._setAside.restore(username, resource)
            if device is None:
                device = Device(resource, available)
                # Pushed before our restart, maybe not answered.
                device.dirty.update(self._pushedBefore(username))
            devices[resource] = device
            if not available:
                self._boundSilent(username, devices)
        device.available = device.available or available
        return device

    def _boundSilent(self, username: str, devices: dict[str, Device]) -> None:
        silent = [jid for jid, d in devices.items() if not d.available]
        for jid in silent[:-MAX_SILENT_DEVICES]:
            self._left(username, devices.pop(jid), "gave way to newer sessions that sent no presence")

    def drop(self, username: str, device: Device, why: str) -> None:
        """
        The device is no longer followed.
        """
        devices = self._devices[username]
        del devices[device.jid]
        if not devices:
            del self._devices[username]
        self._left(username, device, why)

    def _notReplayed(self, username: str, device: Device) -> None:
        self._left(username, device, "was not online after our reconnection")

    def connectionInitialized(self) -> None:
        self._setAside.reconnected()

    def connectionLost(self) -> None:
        """
        Devices set aside at an earlier loss are given up; the views of
        the available ones are set aside until the server replays them.
        """
        self._setAside.stop()
        self._setAside.giveUpAll()
        for username in list(self._devices):
            devices = self._devices[username]
            away = {jid: d for jid, d in devices.items() if d.available}
            for jid in away:
                del devices[jid]
            self._setAside.keep(username, away)
            if not devices:
                del self._devices[username]

    def stop(self) -> None:
        self._setAside.stop()


class DeviceViews:
    """
    The users' interested resources, their views, and the pushes that
    converge each view on the user's roster.

    @ivar wire: Sends the pushes.
    @ivar givenUp: Devices given up with their pushes unanswered.
    """

    log = Logger()

    def __init__(self, status: IConnectionStatus, permissions: PermissionTracker, state: SyncState,
                 clock: IReactorTime) -> None:
        """
        @param status: Whether we are connected.
        @param permissions: Whether the server lets us push.
        @param state: Where unanswered pushes and doubted versions are kept.
        @param clock: Time for retries.
        """
        self.wire = PushSender(status, permissions)
        self.clock = clock
        self._unpushed = UnpushedContacts(state)
        self._interest = Interest(clock, self._unpushed.of, self._left)
        self._targets: dict[str, Roster] = {}
        self.givenUp = 0

    @property
    def pushes(self) -> int:
        """
        Pushes sent, over the process' life.
        """
        return self.wire.pushes

    def resources(self) -> int:
        """
        How many interested resources are known.
        """
        return len(self._interest.everyDevice())

    def views(self, username: str) -> dict[str, Device]:
        """
        A user's devices by full JID (read-only: for health and tests).
        """
        return dict(self._interest.of(username))

    def describe(self, username: str) -> tuple[DeviceSnapshot, ...]:
        """
        A user's devices and what each shows, as values, by full JID.
        """
        return tuple(
            DeviceSnapshot(jid, device.available, device.held.version if device.held is not None else None,
                           frozenset(device.dirty), device.sending, device.failures)
            for jid, device in sorted(self._interest.of(username).items()))

    # Interest

    def available(self, username: str, resource: str) -> None:
        """
        A resource sent available presence (or the server replayed it).
        """
        self._converge(username, self._interest.device(username, resource, available=True))

    def asked(self, username: str, resource: str, roster: Roster) -> None:
        """
        A resource was answered its roster get with C{roster} (whole, or
        "current" for the version it holds).
        """
        if "/" not in resource:
            return  # a bare JID cannot be pushed to
        device = self._interest.device(username, resource, available=False)
        self._targets[username] = roster
        device.givenWhole(roster)
        device.failures = 0
        self._settle(username)

    def answeredByServer(self, username: str, resource: str, version: str) -> None:
        """
        The server answered a resource's roster get itself, from the roster
        it stores, with the version we promised, or (C{version} empty) the
        resource asked while we were away: contrib's mod_rosteradmin_roster
        tells us.
        """
        device = self._interest.device(username, resource, available=False)
        target = self._targets.get(username)
        device.givenWhole(target if target is not None and target.version == version else None)

    def unavailable(self, username: str, resource: str) -> None:
        """
        A resource went offline (or its session ended).
        """
        device = self._interest.of(username).get(resource)
        if device is not None:
            self._interest.drop(username, device, "went offline")

    def connectionInitialized(self) -> None:
        """
        Our stream is back: the server replays the available presences
        now.  A device set aside at the loss and not replayed within
        L{REPLAY_GRACE} went offline meanwhile.
        """
        self._interest.connectionInitialized()

    def connectionLost(self) -> None:
        """
        Our stream is gone: the server replays the available presences
        when we are back.  Until then, the views of available devices are
        set aside.
        """
        self.wire.connectionLost()
        self._interest.connectionLost()

    def stop(self) -> None:
        """
        The service stops: no retry or replay deadline is left pending.
        """
        self._interest.stop()
        for device in self._interest.everyDevice():
            if device.retry is not None and device.retry.active():
                device.retry.cancel()

    # Changes

    def update(self, username: str, clientsHad: Roster | None, target: Roster,
               rewrite: frozenset[str] = frozenset()) -> int:
        """
        The user's roster is now C{target}: bring every device to it.

        @param clientsHad: What devices whose view is not known hold (what
            the server told them), or C{None}: the same as C{target}.
        @param rewrite: Contacts to push again though unchanged: the server
            told the clients another subscription.
        @return: The number of pushes sent or queued now.
        """
        if not self._interest.anyOf(username):
            return 0
        self._targets[username] = target
        sent = 0
        for device in list(self._interest.of(username).values()):
            if device.held is None:
                device.held = clientsHad if clientsHad is not None else target
            device.dirty.update(rewrite)
            sent += self._converge(username, device)
        self._settle(username)
        return sent

    def changing(self, username: str, jids: frozenset[str]) -> None:
        """
        The server's store of these contacts of C{username} is about to
        change: until the user's devices are pushed them, they are kept in
        the state.  Were rosteradmin killed between the write and the
        pushes, the next process would find the server current and the
        devices not.
        """
        if self._interest.anyOf(username):
            self._unpushed.add(username, jids, "")

    def edited(self, username: str, resource: str, jids: frozenset[str], roster: Roster) -> int:
        """
        A resource's roster set was refused: it may show its edit of these
        contacts (profanity does, whatever the error says), so push it
        what the roster has for them, and a removal of those it added.

        @param roster: The roster served now: the target, where no answer
            or change of ours set one yet (the server answered every get
            from a roster written before any device asked).
        @return: The number of pushes sent or queued now.
        """
        device = self._interest.of(username).get(resource)
        if device is None:
            return 0  # it holds nothing of ours to put back
        target = self._targets.setdefault(username, roster)
        if device.held is None:
            device.held = target
        for jid in sorted(jids):
            if len(device.dirty) >= MAX_EDITED:
                break
            device.dirty.add(jid)
        return self._converge(username, device)

    # Convergence

    def _converge(self, username: str, device: Device) -> int:
        """
        Send the device one batch of pushes from its view to the target,
        unless one is unanswered (it comes back here when answered).

        @return: The number of pushes sent or queued.
        """
        target = self._targets.get(username)
        if device.sending or device.retry is not None or device.held is None or target is None:
            return 0
        if not device.dirty and device.held.version == target.version:
            device.held = target
            return 0
        if not self.wire.ready():
            return 0
        steps = device.stepsTo(target)
        if not steps:
            device.held = target
            return 0
        return self._sendBatch(username, device, target, steps)

    def _sendBatch(self, username: str, device: Device, target: Roster, steps: tuple[RosterStep, ...]) -> int:
        """
        Push the device C{steps}, which bring it to C{target}, its
        contacts kept in the state until every device took them.
        """
        jids = frozenset(step.jid for step in steps)
        self._unpushed.add(username, jids, target.version)
        device.sending = True
        answered = device.answered
        pushes = [self.wire.push(username, device.jid, step) for step in steps]
        DeferredList(pushes, consumeErrors=True).addCallback(self._batchDone, username, device, target, jids,
                                                              answered)
        self.log.info("pushed {count} roster changes to {resource}", count=len(steps), resource=device.jid)
        return len(steps)

    def _batchDone(self, results: list[tuple[bool, domish.Element]], username: str, device: Device, target: Roster,
                   jids: frozenset[str], answered: int) -> None:
        """
        A batch was answered: the device holds its target, or, where a
        push failed or a whole roster was given meanwhile, its contacts are
        dirty.
        """
        device.sending = False
        # DeferredList types every result as the value type; a failed
        # one (ok false) is the Failure.
        failed = [cast(Failure, r) for ok, r in results if not ok]
        if self._interest.aside(username, device):
            device.dirty.update(jids)  # cut off by the loss of our stream
            device.failures = 0
            return
        if not self._interest.follows(username, device):
            if failed or device.answered != answered:
                self._unpushed.doubt(username, target)
            return  # it left meanwhile
        if device.answered != answered:
            device.dirty.update(jids)
        elif failed:
            device.dirty.update(jids)
            device.failures += 1
            why = failed[0].getErrorMessage()
            if device.failures >= MAX_FAILURES:
                self._interest.drop(username, device,
                                    f"did not take its roster pushes {device.failures} times ({why})")
                return
            delay = RETRY_DELAY * 2 ** (device.failures - 1)
            self.log.info("roster pushes to {resource} failed ({why}); again in {delay:.0f} s",
                          resource=device.jid, why=why, delay=delay)
            device.retry = self.clock.callLater(delay, self._retry, username, device)
            return
        else:
            device.held = target
            device.failures = 0
        self._converge(username, device)
        self._settle(username)

    def _retry(self, username: str, device: Device) -> None:
        device.retry = None
        if self._interest.follows(username, device):
            self._converge(username, device)

    def _settle(self, username: str) -> None:
        """
        Once every device of the user holds the target, its unanswered
        pushes are forgotten.
        """
        target = self._targets.get(username)
        devices = self._interest.of(username).values()
        if all(d.converged(target) for d in devices) and not self._interest.aside(username):
            self._unpushed.done(username)

    def _left(self, username: str, device: Device, why: str) -> None:
        """
        A device is no longer followed: if it may hold a version whose
        contents it lacks, doubt that version.  Once no device of the user
        is, its target and unanswered pushes are forgotten.
        """
        if device.retry is not None and device.retry.active():
            device.retry.cancel()
        device.retry = None
        target = self._targets.get(username)
        if target is not None and device.held is not None and not device.converged(target):
            self.givenUp += 1
            self._unpushed.doubt(username, target)
            self.log.info("{resource} {why} before its roster pushes were answered: its next roster query "
                          "is answered in full", resource=device.jid, why=why)
        if not self._interest.anyOf(username):
            self._targets.pop(username, None)
            # Nobody online holds them: a device logging in later
            # with a doubted version gets the whole roster.
            self._unpushed.done(username)
