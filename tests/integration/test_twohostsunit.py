"""
The two-hosts systemd drop-in (contrib/systemd/rosteradmin.service.d/
twohosts.conf) runs as written: its command line and environment, with this
checkout's twistd and test files for the installed paths and a private
PostgreSQL database for the example one, started twice (a host each) on one
real Prosody.  The database asks for a password, which reaches libpq only as
the drop-in passes it: a password file in the credentials directory, named
by C{PGPASSFILE}.  One process leads, the other stands by, and when the
leader is killed the other leads.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from rosteradmin_demo.devprosody import freePort
from tests.integration.harness import ProsodyServer, WebAppStub
from tests.integration.test_convergence import Rosteradmin
from tests.integration.test_leadership import (
    SECOND, TAKEOVER_BOUND, Pair, leaderAndStandby, mostComponentConnections, prosodyLog, rosterServed, waitForRole,
)
from tests.postgresql import PostgreSQLServer
from tests.test_contrib import DROPIN, ROOT, localCommand, pgpassLine, sampleConfig, unitSettings

pytestmark = pytest.mark.integration


class UnitProcess(Rosteradmin):
    """
    A C{twistd} process started from a unit's command line, not from
    L{Rosteradmin}'s own; it has the same handles (C{baseURL}, C{process},
    C{log}), so the leadership tests' helpers watch and kill it.
    """

    def __init__(self, argv: list[str], environment: dict[str, str], httpPort: int, log: Path) -> None:
        self.httpPort = httpPort
        self.baseURL = f"http://127.0.0.1:{httpPort}"
        self.log = log
        with open(log, "w") as output:
            # systemd's default working directory and a bare environment.
            self.process = subprocess.Popen(argv, cwd="/", stdout=output, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **environment})


def startHost(name: str, directory: Path, prosody: ProsodyServer, webapp: WebAppStub, state: str,
              password: str) -> UnitProcess:
    """
    One host's service as the unit with the drop-in runs it: the drop-in's
    C{ExecStart} (after its reset) and C{Environment}, C{%d} and
    C{${CREDENTIALS_DIRECTORY}} a credentials directory holding what the
    unit's and the drop-in's C{LoadCredential=} load, the sample
    configuration pointed at C{prosody} and C{webapp}, and C{state} for the
    drop-in's example database.
    """
    settings = unitSettings(DROPIN)
    reset, execStart = settings["ExecStart"]
    assert reset == ""
    [example] = re.findall(r"--state (\S+)", execStart)
    credentials = directory / name / "credentials"
    credentials.mkdir(parents=True)
    loaded = {"secret": prosody.secret, "kick-authorization": "Bearer k", "pgpass": pgpassLine(state, password)}
    for credential, value in loaded.items():
        (credentials / credential).write_text(value + "\n")
        (credentials / credential).chmod(0o400)  # as systemd passes them (libpq insists on 0600 or less)
    assert (prosody.componentJID, prosody.domain) == ("roster.example.org", "example.org")  # the sample's
    httpPort = freePort()
    config = sampleConfig(directory / name / "rosteradmin.toml", {
        "xmpp_port = 5347": f"xmpp_port = {prosody.componentPort}",
        'roster_url = "https://app.example.org/xmpp/roster/%s"': f'roster_url = "{webapp.url}"',
        'http = "tcp:5280:interface=127.0.0.1"': f'http = "tcp:{httpPort}:interface=127.0.0.1"'})
    argv = localCommand(execStart, {"${CREDENTIALS_DIRECTORY}": str(credentials), example: state}, config)
    environment = dict(assignment.split("=", 1) for value in settings["Environment"]
                       for assignment in shlex.split(value.replace("%d", str(credentials))))
    assert environment == {"PGPASSFILE": str(credentials / "pgpass")}
    return UnitProcess(argv, environment, httpPort, directory / f"{name}.log")


@pytest_twisted.ensureDeferred
async def test_dropInOnTwoHosts(prosody: ProsodyServer, webapp: WebAppStub, clients: Any,
                                postgresql: PostgreSQLServer, tmp_path: Path) -> None:
    """
    Two services started from the drop-in, on a database that asks for a
    password: one leads (clients' roster gets reach it), the other stands
    by and never connects; the leader killed (C{kill -9}), the other leads
    within L{TAKEOVER_BOUND} seconds and the roster is served again.
    Prosody never sees two component connections at once.
    """
    password = "the database's password"  # quoted as SQL, never on a command line
    state = postgresql.newDatabase(password)
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}}
    pair = Pair(prosody, webapp, tmp_path, state)
    try:
        for name in ("host0", "host1"):
            pair.started.append(startHost(name, tmp_path, prosody, webapp, state, password))
        leader, standby = await leaderAndStandby(pair)
        await rosterServed(prosody, clients, webapp)
        assert "connected to the XMPP server" not in standby.output()
        killedAt = time.monotonic()
        leader.kill()
        takeover = await waitForRole(standby, "leader") - killedAt
        await rosterServed(prosody, clients, webapp)
        output = standby.stop()
    finally:
        pair.stopAll()
    log = prosodyLog(prosody)
    print(f"\ndrop-in on two hosts: {leader.log.stem} led, {standby.log.stem} led {takeover:.2f} s after "
          f"kill -9; at most {mostComponentConnections(log)} component connection(s) at once")
    assert takeover < TAKEOVER_BOUND
    assert SECOND not in log and mostComponentConnections(log) == 1
    assert "Traceback" not in leader.output() + output
