"""
Session-wide test settings.

With C{ROSTERADMIN_FORBID_SKIPS=1} (set by C{scripts/test.sh}, hence CI) a
skipped test fails the run: a green run that skipped the real-server tests
would be a red run in disguise.
"""

from __future__ import annotations

import os

import pytest

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and os.environ.get("ROSTERADMIN_FORBID_SKIPS") == "1":
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"FAILED: {len(_skipped)} tests were skipped, which this run forbids:", red=True)
            for nodeid in _skipped:
                reporter.write_line(f"  {nodeid}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
