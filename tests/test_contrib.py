"""
The shipped operations files are valid: the systemd unit passes
systemd-analyze verify, alone and with its two-hosts drop-in, its command
line starts the service, and the sample configuration loads.  (The
drop-in's command line runs on two hosts' worth of processes in
tests/integration/test_twohostsunit.py.)
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
from urllib.parse import urlsplit

import pytest

from rosteradmin.config import buildConfig
from rosteradmin_demo.devprosody import freePort
from rosteradmin.startup import EX_CONFIG

ROOT = Path(__file__).parent.parent
CONTRIB = ROOT / "contrib"
UNIT = CONTRIB / "systemd" / "rosteradmin.service"
DROPIN = CONTRIB / "systemd" / "rosteradmin.service.d" / "twohosts.conf"

#: Where the unit and the drop-in put the configuration file and twistd.
CONFIG_PATH = "/etc/rosteradmin/rosteradmin.toml"
TWISTD_PATH = "/opt/rosteradmin/bin/twistd"


def unitSettings(path: Path = UNIT) -> dict[str, list[str]]:
    """
    A unit file's (or drop-in's) settings, each key with its values in
    order, comments dropped and continuation lines joined as systemd joins
    them.
    """
    settings: dict[str, list[str]] = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def localCommand(execStart: str, substitutions: dict[str, str], config: Path) -> list[str]:
    """
    An C{ExecStart=} command line as it runs here: C{substitutions} made
    in its text (systemd's variables, say), then this interpreter's twistd
    and C{config} for the installed paths.
    """
    for old, new in substitutions.items():
        assert old in execStart, old
        execStart = execStart.replace(old, new)
    argv = shlex.split(execStart)
    assert (argv[0], argv.count(CONFIG_PATH)) == (TWISTD_PATH, 1)
    return [str(Path(sys.executable).parent / "twistd")] + [
        str(config) if arg == CONFIG_PATH else arg for arg in argv[1:]]


def sampleConfig(path: Path, replacements: dict[str, str]) -> Path:
    """
    Write the sample configuration to C{path} with each line of
    C{replacements} replaced (each must be there).
    """
    sample = (CONTRIB / "rosteradmin.toml").read_text()
    for old, new in replacements.items():
        assert old in sample, old
        sample = sample.replace(old, new)
    path.write_text(sample)
    return path


def pgpassLine(url: str, password: str) -> str:
    """
    The line of a libpq password file that gives C{password} to the role
    and database of C{url}.
    """
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}:{parts.path.lstrip('/')}:{parts.username}:{password}"


@pytest.mark.parametrize("dropIns", [(), (DROPIN,)], ids=["unit", "twohosts"])
def test_systemdUnitVerifies(tmp_path: Path, dropIns: tuple[Path, ...]) -> None:
    """
    systemd-analyze verify accepts the unit without a single warning, alone
    and with the two-hosts drop-in in the unit's drop-in directory, where
    systemd reads it from (the install path is pointed at this
    interpreter's twistd).
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd", pytrace=False)
    bindir = Path(sys.executable).parent
    for source, target in [(UNIT, tmp_path / UNIT.name)] + [
            (dropIn, tmp_path / dropIn.parent.name / dropIn.name) for dropIn in dropIns]:
        text = source.read_text()
        assert TWISTD_PATH in text
        target.parent.mkdir(exist_ok=True)
        target.write_text(text.replace("/opt/rosteradmin/bin/", f"{bindir}/"))
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
    config = sampleConfig(tmp_path / "rosteradmin.toml", {
        "xmpp_port = 5347": f"xmpp_port = {closedPort}",
        'http = "tcp:5280:interface=127.0.0.1"': f'http = "tcp:{httpPort}:interface=127.0.0.1"'})
    argv = localCommand(execStart, {"${CREDENTIALS_DIRECTORY}": str(credentials), "${STATE_DIRECTORY}": str(tmp_path)},
                        config)
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


def test_dropInChangesTheStateAlone() -> None:
    """
    The two-hosts drop-in resets the unit's ExecStart and gives it again
    with another C{--state} and nothing else changed; its install line
    puts it in the unit's drop-in directory; the password file line it
    shows is the one libpq looks up for its URL; the two-hosts page
    names it.
    """
    unit, dropIn = unitSettings(), unitSettings(DROPIN)
    [unitCommand] = unit["ExecStart"]
    reset, command = dropIn["ExecStart"]
    [state] = re.findall(r"--state (\S+)", command)
    assert reset == "" and command == re.sub(r"--state \S+", f"--state {state}", unitCommand) != unitCommand
    header = re.sub(r"\s*\\\n#\s*", " ", DROPIN.read_text())
    target = f"/etc/systemd/system/{UNIT.name}.d/{DROPIN.name}"
    assert f"install -D -m 644 {DROPIN.relative_to(ROOT)} {target}" in header
    assert f"echo '{pgpassLine(state, '<password>')}' > /etc/rosteradmin/credentials/pgpass" in header
    assert dropIn["LoadCredential"] == ["pgpass:/etc/rosteradmin/credentials/pgpass"]
    assert dropIn["Environment"] == ["PGPASSFILE=%d/pgpass"]
    assert str(DROPIN.relative_to(ROOT)) in (ROOT / "docs" / "twohosts.md").read_text()
