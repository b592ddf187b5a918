"""
The shipped operations files are valid: the systemd unit passes
systemd-analyze verify, and the sample configuration loads.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rosteradmin.config import buildConfig

CONTRIB = Path(__file__).parent.parent / "contrib"


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
