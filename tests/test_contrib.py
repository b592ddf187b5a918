"""
The shipped operations files are valid: the systemd unit passes
systemd-analyze verify, its command line starts the service, and the sample
configuration loads.
"""

from __future__ import annotations

import http.client
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rosteradmin.config import buildConfig
from rosteradmin_demo.devprosody import freePort
from rosteradmin.startup import EX_CONFIG

ROOT = Path(__file__).parent.parent
CONTRIB = ROOT / "contrib"
UNIT = CONTRIB / "systemd" / "rosteradmin.service"


def unitSettings() -> dict[str, list[str]]:
    """
    The unit file's settings, each key with its values in order, comments
    dropped and continuation lines joined as systemd joins them.
    """
    settings: dict[str, list[str]] = {}
    text = re.sub(r"\\\n\s*", " ", UNIT.read_text())
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemdUnitVerifies(tmp_path: Path) -> None:
    """
    systemd-analyze verify accepts the unit without a single warning (the
    install path is pointed at this interpreter's twistd).
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd", pytrace=False)
    bindir = Path(sys.executable).parent
    unit = (CONTRIB / "systemd" / "rosteradmin.service").read_text()
    assert "/opt/rosteradmin/bin/twistd" in unit
    (tmp_path / "rosteradmin.service").write_text(unit.replace("/opt/rosteradmin/bin/", f"{bindir}/"))
    result = subprocess.run([analyze, "verify", str(tmp_path / "rosteradmin.service")],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_sampleConfigLoads() -> None:
    """
    The sample TOML file is a valid configuration once the secrets are given
    as the unit gives them.
    """
    secrets = {"secret": "s", "kick_authorization": "k"}
    config = buildConfig({"config": str(CONTRIB / "rosteradmin.toml"), "secret_file": "/run/secret",
                          "kick_authorization_file": "/run/kick"},
                         environ={}, readFile=lambda option, path: secrets[option.replace("-", "_")])
    assert (config.jid, config.domain, config.kick_authorization) == ("roster.example.org", "example.org", "k")


def test_unitCommandLineStarts(tmp_path: Path) -> None:
    """
    The unit's ExecStart, with this checkout's twistd and test files for the
    configuration and credentials, starts the service: its HTTP API answers
    and its component has tried the (unreachable) XMPP server, and it stops
    cleanly on SIGTERM.
    """
    [execStart] = unitSettings()["ExecStart"]
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "secret").write_text("s\n")
    (credentials / "kick-authorization").write_text("Bearer k\n")
    httpPort, closedPort = freePort(), freePort()
    sample = (CONTRIB / "rosteradmin.toml").read_text()
    config = tmp_path / "rosteradmin.toml"
    config.write_text(sample.replace("xmpp_port = 5347", f"xmpp_port = {closedPort}").replace(
        'http = "tcp:5280:interface=127.0.0.1"', f'http = "tcp:{httpPort}:interface=127.0.0.1"'))
    assert config.read_text() != sample
    argv = shlex.split(execStart.replace("${CREDENTIALS_DIRECTORY}", str(credentials))
                       .replace("${STATE_DIRECTORY}", str(tmp_path)))
    assert (argv[0], argv.count("/etc/rosteradmin/rosteradmin.toml")) == ("/opt/rosteradmin/bin/twistd", 1)
    argv = [str(Path(sys.executable).parent / "twistd")] + [
        str(config) if arg == "/etc/rosteradmin/rosteradmin.toml" else arg for arg in argv[1:]]
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        health = None
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", httpPort, timeout=5)
                connection.request("GET", "/healthz")
                health = json.loads(connection.getresponse().read())
                connection.close()
            except OSError:
                health = None
            if health is not None and health["last_error"] is not None:
                break
            time.sleep(0.05)
        assert process.poll() is None, f"twistd exited {process.returncode}:\n{process.communicate()[0]}"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert health is not None and health["connected"] is False
    assert f"127.0.0.1:{closedPort}" in health["last_error"]
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in output
    assert (tmp_path / "state.sqlite").exists()  # --state ${STATE_DIRECTORY}/state.sqlite


def test_unitDoesNotRestartConfigurationErrors() -> None:
    """
    The unit restarts on failure, except on the configuration-error exit
    code, and gives up after repeated failures.
    """
    settings = unitSettings()
    assert settings["Restart"] == ["on-failure"]
    assert settings["RestartPreventExitStatus"] == [str(EX_CONFIG)]
    assert "StartLimitIntervalSec" in settings and "StartLimitBurst" in settings


def test_unitDocumentationIsInstalled() -> None:
    """
    Every page Documentation= names is one the install steps at the top of
    the unit copy there, from files of this checkout.
    """
    installed = {}
    for line in UNIT.read_text().splitlines():
        if not line.lstrip("# ").startswith("install "):
            continue
        words = shlex.split(line.lstrip("#"))
        if "-t" in words:
            target = words[words.index("-t") + 1]
            for source in words[words.index("-t") + 2:]:
                assert (ROOT / source).is_file(), source
                installed[f"file://{target}/{Path(source).name}"] = source
    pages = [uri for value in unitSettings()["Documentation"] for uri in value.split()]
    assert pages and set(pages) <= set(installed)
