"""
rosteradmin started in-process the way twistd starts it (Options and
makeService), against a test Prosody and web app stub.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.task import deferLater

from rosteradmin.component import RosterComponent
from rosteradmin.backend import RosterBackend
from rosteradmin import tap
from rosteradmin.options import Options
from rosteradmin_demo.devprosody import freePort

KICK_AUTHORIZATION = "Bearer kick-test-secret"


class RunningService:
    """
    A started service tree and handles on its parts.
    """

    def __init__(self, prosody: Any, rosterURL: str, extra: list[str] | None = None) -> None:
        self.httpPort = freePort()
        self.baseURL = f"http://127.0.0.1:{self.httpPort}"
        self.argv = [
            "--jid", prosody.componentJID, "--secret", prosody.secret,
            "--xmpp-host", "127.0.0.1", "--xmpp-port", str(prosody.componentPort),
            "--domain", prosody.domain, "--roster-url", rosterURL,
            "--http", f"tcp:{self.httpPort}:interface=127.0.0.1",
            "--kick-authorization", KICK_AUTHORIZATION,
            "--reconnect-max-delay", "1", "--iq-timeout", "5",
            *(extra or []),
        ]
        options = Options()
        options.parseOptions(self.argv)
        self.top: MultiService = tap.makeService(options)

    def part(self, name: str) -> Any:
        """
        One of the leader's parts: under the top (one process), or, with a
        PostgreSQL state, under C{leader} once this process leads (built
        anew each time it starts leading).

        @raise KeyError: The tree has no such part (now).
        """
        if name in self.top.namedServices:
            return self.top.getServiceNamed(name)
        return self.top.getServiceNamed("leader").getServiceNamed(name)

    @property
    def backend(self) -> RosterBackend:
        part: RosterBackend = self.part("backend")
        return part

    @property
    def component(self) -> RosterComponent:
        part: RosterComponent = self.part("component")
        return part

    async def start(self, timeout: float = 15.0) -> None:
        """
        Start and wait until the server has advertised delegation and
        rosters can be written: privileges arrive right after the
        handshake; ejabberd's API answers its probe.
        """
        self.top.startService()
        await self.waitUntil(self.ready, timeout, "component connected with delegation, rosters writable")

    def ready(self) -> bool:
        if "leader" in self.top.namedServices and "component" not in self.top.getServiceNamed("leader").namedServices:
            return False  # not leading yet
        comp = self.component
        return bool(comp.status.connected and self.backend.canSync() and comp.delegation.delegated)

    async def stop(self) -> None:
        await self.top.stopService()

    @staticmethod
    async def sleep(seconds: float) -> None:
        await deferLater(reactor, seconds, lambda: None)

    @classmethod
    async def waitUntil(cls, condition: Any, timeout: float, what: str) -> None:
        waited = 0.0
        while not condition():
            if waited >= timeout:
                raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
            await cls.sleep(0.05)
            waited += 0.05
