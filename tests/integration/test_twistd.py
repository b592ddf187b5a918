"""
rosteradmin as operators run it: a real C{twistd -n rosteradmin} process.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, threads
from twisted.web.client import HTTPConnectionPool

from rosteradmin_demo.devprosody import freePort
from rosteradmin.startup import EX_CONFIG
from tests.integration.service import RunningService
from tests.integration.test_rosters import items
from tests.postgresql import PostgreSQLServer

ROOT = Path(__file__).parents[2]


def twistd(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """
    Start C{twistd -n rosteradmin ...} with the checkout's plugin.
    """
    command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
               "-n", "--pidfile=", "rosteradmin", *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **(env or {})})


def test_missingOptionIsOneClearLine() -> None:
    """
    A missing option stops start-up before connecting, with one line naming
    the option (no usage page, no traceback) and the configuration-error
    exit code, which the systemd unit does not restart.
    """
    process = twistd("--jid", "roster.example.org", "--domain", "example.org",
                     "--roster-url", "http://127.0.0.1:1/r/%s", "--no-kick")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == EX_CONFIG
    assert output.splitlines() == ["rosteradmin: --secret: is required"]


REQUIRED = ("--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
            "--roster-url", "http://127.0.0.1:1/r/%s", "--no-kick")


@pytest.mark.parametrize("args, line", [
    (["--bogus"],
     "rosteradmin: option --bogus not recognized; `twistd rosteradmin --help` lists the options"),
    (["--xmpp-port"],
     "rosteradmin: option --xmpp-port requires argument; `twistd rosteradmin --help` lists the options"),
    (["--no-kick=yes"],
     "rosteradmin: option --no-kick must not have an argument; `twistd rosteradmin --help` lists the options"),
    (["--no-kick", "true"], "rosteradmin: unexpected argument 'true': flags such as --no-kick take no value"),
    (["--log-format", "xml"], "rosteradmin: --log-format: must be text or json, got 'xml'"),
])
def test_badOptionIsOneClearLine(args: list[str], line: str) -> None:
    """
    An unknown option, a missing or unwanted value, or a bad value is one
    line and the configuration-error exit code, not twistd's usage page.
    """
    process = twistd(*REQUIRED, *args)
    output, _ = process.communicate(timeout=30)
    assert (process.returncode, output.splitlines()) == (EX_CONFIG, [line])


@pytest.mark.parametrize("http, line", [
    ("ssl:8443", f"rosteradmin: --http: 'ssl:8443': cannot read {ROOT / 'server.pem'}: No such file or directory"),
    ("systemd:domain=INET:index=0",
     "rosteradmin: --http: 'systemd:domain=INET:index=0': systemd passed no such socket "
     "(start rosteradmin from a .socket unit, or listen on tcp: or unix:)"),
])
def test_unusableEndpointIsOneClearLine(http: str, line: str) -> None:
    """
    An C{--http} endpoint whose parser fails (C{ssl:} without its key,
    C{systemd:} without a passed socket) is one line naming --http and the
    cause, with the configuration-error exit code.
    """
    process = twistd(*REQUIRED, "--http", http)
    output, _ = process.communicate(timeout=30)
    assert (process.returncode, output.splitlines()) == (EX_CONFIG, [line])


@pytest.mark.parametrize("http, line", [
    ("unix:/nonexistent/dir/sock",
     "rosteradmin: --http: cannot listen on 'unix:/nonexistent/dir/sock': No such file or directory"),
    ("unix:/nonexistent/dir/sock:lockfile=0",
     "rosteradmin: --http: cannot listen on 'unix:/nonexistent/dir/sock:lockfile=0': "
     "[Errno 2] No such file or directory"),
    ("tcp:99999", "rosteradmin: --http: cannot listen on 'tcp:99999': bind(): port must be 0-65535."),
])
def test_cannotListenIsOneClearLine(http: str, line: str) -> None:
    """
    An C{--http} endpoint that fails when it listens, for a reason that
    will not clear up by itself, is one line naming --http and the cause,
    with the configuration-error exit code, before connecting.
    """
    process = twistd(*REQUIRED, "--xmpp-port", "1", "--http", http)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == EX_CONFIG
    assert output.strip().splitlines()[-1].endswith(f"[stderr#error] {line}")
    assert "Traceback" not in output and "rosteradmin.component" not in output


def test_tacBadConfigIsOneClearLine(tmp_path: Path) -> None:
    """
    C{twistd -ny rosteradmin.tac} with a configuration it cannot read stops
    with one line naming the file and the configuration-error exit code.
    """
    missing = tmp_path / "missing.toml"
    process = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "-y", str(ROOT / "rosteradmin.tac")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "ROSTERADMIN_CONFIG": str(missing)})
    output, _ = process.communicate(timeout=30)
    assert process.returncode == EX_CONFIG
    assert output.splitlines() == [f"rosteradmin: --config: cannot read {missing}: No such file or directory"]


def test_kickAuthorizationRequired() -> None:
    """
    Without a kick authorization (and without --no-kick) the service refuses
    to start.
    """
    process = twistd("--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
                     "--roster-url", "http://127.0.0.1:1/r/%s")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == EX_CONFIG
    assert "--kick-authorization: is required" in output.strip().splitlines()[-1]


async def startTwistd(prosody: Any, webapp: Any, tmp_path: Path, settings: str = "",
                      env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """
    twistd with a TOML config and the secret in a file, once healthy.

    @param settings: More TOML lines for the config.
    @param env: More environment variables for the process.
    """
    httpPort = freePort()
    (tmp_path / "secret").write_text(prosody.secret + "\n")
    config = tmp_path / "rosteradmin.toml"
    config.write_text(f"""
jid = "{prosody.componentJID}"
secret_file = "{tmp_path / 'secret'}"
domain = "{prosody.domain}"
xmpp_port = {prosody.componentPort}
roster_url = "{webapp.url}"
http = "tcp:{httpPort}:interface=127.0.0.1"
no_kick = true
{settings}
""")
    process = twistd("--config", str(config), env=env)
    base = f"http://127.0.0.1:{httpPort}"
    for _ in range(200):
        try:
            response = await treq.get(base + "/healthz", pool=HTTPConnectionPool(reactor, persistent=False))
            await response.content()
            if response.code == 200:
                return process, base
        except Exception:
            pass
        await RunningService.sleep(0.05)
    process.kill()
    raise AssertionError(f"twistd never became healthy:\n{process.communicate()[0]}")


def stop(process: subprocess.Popen[str], signalled: bool = False) -> str:
    """
    SIGTERM (unless already sent), then check for a clean exit.
    """
    if not signalled:
        process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    print(output)
    # twistd ends by re-raising the signal that stopped it; systemd counts
    # a SIGTERM exit as a clean stop.
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in output
    return output


@pytest_twisted.ensureDeferred
async def test_twistdServesRosters(prosody: Any, webapp: Any, clients: Any, tmp_path: Path) -> None:
    """
    twistd with a TOML config and the secret in a file connects, serves a
    client's roster and health, and stops cleanly on SIGTERM, never logging
    the secret.
    """
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}}
    process, _ = await startTwistd(prosody, webapp, tmp_path)
    try:
        alice = await clients("alice")
        assert items(await alice.rosterGet()) == {"bob@example.org": ("Bob", "both", [])}
    finally:
        output = stop(process)
    assert "connected to the XMPP server as roster.example.org" in output
    assert prosody.secret not in output


@pytest_twisted.ensureDeferred
async def test_sigtermLetsRequestsFinish(prosody: Any, webapp: Any, tmp_path: Path) -> None:
    """
    SIGTERM during a refresh that waits on a slow web app: the refresh
    still completes with 200, then the process exits cleanly.
    """
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}}
    webapp.delays["alice"] = 1.5
    process, base = await startTwistd(prosody, webapp, tmp_path)
    pending = treq.post(base + "/roster_admin/refresh", data=b'["alice"]',
                        pool=HTTPConnectionPool(reactor, persistent=False))
    await RunningService.waitUntil(lambda: webapp.requests["alice"] == 1, 5, "the fetch started")
    process.send_signal(signal.SIGTERM)
    response = await pending
    assert response.code == 200 and (await response.json())["updated"] == 1
    output = await threads.deferToThread(stop, process, True)
    assert "waiting for 1 HTTP requests to finish" in output


def test_httpPortInUseIsOneClearLine() -> None:
    """
    The HTTP API's port already taken: exit 1 with one line naming it,
    before connecting, instead of running on without the API.
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = twistd("--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
                         "--roster-url", "http://127.0.0.1:1/r/%s", "--no-kick",
                         "--http", f"tcp:{port}:interface=127.0.0.1", "--xmpp-port", "1")
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert output.strip().splitlines()[-1].endswith(
        f"rosteradmin: --http: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use")


def test_httpPortInUseWithPostgreSQLStateExits(postgresql: PostgreSQLServer) -> None:
    """
    With a PostgreSQL state, opened (its writing thread started) before the
    HTTP API's port is found taken, the process still exits 1 at once: no
    thread of the state keeps it alive without its service.
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = twistd(*REQUIRED, "--http", f"tcp:{port}:interface=127.0.0.1", "--xmpp-port", "1",
                         "--state", postgresql.newDatabase())
        try:
            output, _ = process.communicate(timeout=15)
        finally:
            if process.returncode is None:
                process.kill()
                process.communicate()
    assert process.returncode == 1
    assert output.strip().splitlines()[-1].endswith(f"cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use")
    assert "Traceback" not in output and "Starting factory" not in output
