#!/usr/bin/env bash
# Set up everything the tests need on Debian, then run all of them,
# the real-Prosody integration tests included.  Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# ejabberd and chromium are for tests/integration/test_ejabberd.py and test_converse.py only: the demo does not install them.
export ROSTERADMIN_TEST_PACKAGES="ejabberd chromium"   # chromium (+ npm, Converse.js) for tests/integration/test_converse.py
ROSTERADMIN_PIP_TARGET=".[test]" source scripts/setup.sh

# Skipped tests fail the run: a green run must have run the real server.
export ROSTERADMIN_FORBID_SKIPS=1
.venv/bin/mypy  # mypy.ini; a type error fails the run before any test
exec .venv/bin/python -m pytest "$@"
