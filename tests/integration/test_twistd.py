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

import pytest_twisted
import treq
from twisted.internet import reactor, threads
from twisted.web.client import HTTPConnectionPool

from rosteradmin.devprosody import freePort
from tests.integration.service import RunningService
from tests.integration.test_rosters import items

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
    A missing option stops start-up before connecting, with a last line
    naming the option and no traceback.
    """
    process = twistd("--jid", "roster.example.org", "--domain", "example.org",
                     "--roster-url", "http://127.0.0.1:1/r/%s", "--no-kick")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert output.strip().splitlines()[-1].endswith("--secret: is required")
    assert "Traceback" not in output


def test_kickAuthorizationRequired() -> None:
    """
    Without a kick authorization (and without --no-kick) the service refuses
    to start.
    """
    process = twistd("--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
                     "--roster-url", "http://127.0.0.1:1/r/%s")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "--kick-authorization: is required" in output.strip().splitlines()[-1]


async def startTwistd(prosody: Any, webapp: Any, tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """
    twistd with a TOML config and the secret in a file, once healthy.
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
""")
    process = twistd("--config", str(config))
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
    assert "Traceback" not in output and "Starting factory" not in output
