"""
Session-wide test settings and fixtures.

With C{ROSTERADMIN_FORBID_SKIPS=1} (set by C{scripts/test.sh}, hence CI) a
skipped test fails the run: a green run that skipped the real-server tests
would be a red run in disguise.  For the same reason the C{postgresql}
fixture fails, never skips, when PostgreSQL or its driver is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.postgresql import PostgreSQLServer

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


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PostgreSQLServer]:
    """
    A private PostgreSQL server for the whole session, removed at its end.
    Without the server or the driver every test using it fails, saying
    how to install them.
    """
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("the psycopg driver is not installed: bash scripts/setup.sh installs it "
                    "(pip install '.[postgresql]')", pytrace=False)
    server: PostgreSQLServer | None = None
    try:
        server = PostgreSQLServer()
        server.start()
    except RuntimeError as e:
        problem = str(e)
    else:
        try:
            yield server
        finally:
            server.remove()
        return
    if server is not None:
        server.remove()
    pytest.fail(problem, pytrace=False)  # outside the handler: the message shows once
