"""
What cutting a release relies on (docs/releasing.md): one version number,
shown by the programs, named by the changelog's newest section; news
fragments that towncrier can build into that changelog.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

from rosteradmin import __version__
from rosteradmin.ctl import main

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: A release's section of CHANGELOG.md: C{## 0.9.0 (2026-12-07)}.
RELEASE = re.compile(r"^## (\S+) \((\d{4}-\d{2}-\d{2})\)$", re.MULTILINE)


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """
    Run a program of this interpreter's environment with this checkout's
    code, and its output.
    """
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def towncrier(*arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """
    Run towncrier (a test dependency) in a directory.
    """
    if shutil.which("towncrier", path=str(BIN)) is None:
        pytest.fail("towncrier is missing: pip install -e '.[test]'", pytrace=False)
    return run(str(BIN / "towncrier"), *arguments, cwd=cwd)


def test_setupReadsTheVersion() -> None:
    """
    The package built says the version C{rosteradmin/__init__.py} sets.
    """
    result = run(sys.executable, "setup.py", "--version")
    assert (result.returncode, result.stdout.strip().splitlines()[-1]) == (0, __version__)


def test_twistdShowsTheVersion() -> None:
    """
    C{twistd rosteradmin --version} prints the release and exits 0, before
    any option is checked.
    """
    result = run(str(BIN / "twistd"), "rosteradmin", "--version")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"rosteradmin {__version__} (Twisted ")


def test_ctlShowsTheVersion(capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{rosteradmin-ctl --version} prints the release and exits 0.
    """
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"rosteradmin-ctl {__version__}\n"


def test_changelogNamesTheVersion() -> None:
    """
    The newest section of CHANGELOG.md is the version of the package, or,
    between releases, one before the C{.dev} version the package has.
    """
    releases = RELEASE.findall((ROOT / "CHANGELOG.md").read_text())
    assert releases, "CHANGELOG.md has no release"
    newest, version = Version(releases[0][0]), Version(__version__)
    assert newest == version or (version.is_devrelease and newest < version), (newest, version)
    assert [Version(v) for v, _ in releases] == sorted((Version(v) for v, _ in releases), reverse=True)


def test_draftBuilds() -> None:
    """
    C{towncrier build --draft} reads every news fragment of the checkout
    (a misnamed one fails it) and shows each in the next release's notes.
    """
    result = towncrier("build", "--draft", "--version", "99.0.0")
    assert result.returncode == 0, result.stdout + result.stderr
    fragments = [p for p in (ROOT / "newsfragments").iterdir() if p.name != "README.md"]
    shown = " ".join(result.stdout.split())  # a fragment's lines come indented under its bullet
    assert [p.name for p in fragments if " ".join(p.read_text().split()) not in shown] == []
    assert "## 99.0.0 (" in result.stdout


def test_buildAddsARelease(tmp_path: Path) -> None:
    """
    A release built from fragments of each type gets its section at the top
    of the changelog, above the earlier ones, with a heading per type and no
    issue references; a fragment not named C{<name>.<type>.md} fails the
    build.
    """
    shutil.copy(ROOT / "towncrier.toml", tmp_path)
    shutil.copy(ROOT / "CHANGELOG.md", tmp_path)
    (tmp_path / "newsfragments").mkdir()
    (tmp_path / "newsfragments" / "README.md").write_text("How to write one.\n")
    types = tomllib.loads((ROOT / "towncrier.toml").read_text())["tool"]["towncrier"]["type"]
    for kind in types:
        (tmp_path / "newsfragments" / f"+a.{kind['directory']}.md").write_text(f"A {kind['directory']} change.\n")
    result = towncrier("build", "--keep", "--version", "99.0.0", "--date", "2099-01-02", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    changelog = (tmp_path / "CHANGELOG.md").read_text()
    previous = RELEASE.findall((ROOT / "CHANGELOG.md").read_text())[0]
    assert RELEASE.findall(changelog)[:2] == [("99.0.0", "2099-01-02"), previous]
    section = changelog.split("## 99.0.0", 1)[1].split("\n## ", 1)[0]
    for kind in types:
        assert f"### {kind['name']}\n\n- A {kind['directory']} change.\n" in section
    assert "#" not in section.replace("### ", "")
    (tmp_path / "newsfragments" / "feature.txt").write_text("Misnamed.\n")
    assert towncrier("build", "--draft", "--version", "99.0.1", cwd=tmp_path).returncode != 0
