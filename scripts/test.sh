#!/usr/bin/env bash
# Set up everything the tests need on Debian, then run all of them, the
# real-Prosody integration tests included, on the host's Prosody 0.12; then
# the integration tests again on Prosody 13, from the Debian 13 root that
# scripts/debian13.sh builds once and caches (ROSTERADMIN_PROSODY=13); then
# the integration tests on ejabberd 24.12, from the same root
# (ROSTERADMIN_EJABBERD=24.12); then the same on 26.07, from a copy of that root with
# ejabberd from trixie-backports (scripts/ejabberd-backports.sh).
# Usage: bash scripts/test.sh [pytest args]   (the same args for every run;
# the second to fourth add -m integration, which replaces an -m of yours)
# The exit status is non-zero if any run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# ejabberd and chromium are for tests/integration/test_ejabberd.py and test_converse.py only, postgresql for
# tests/test_stateengines.py (its driver comes with .[test]): the demo does not install them.
export ROSTERADMIN_TEST_PACKAGES="ejabberd chromium postgresql"   # chromium (+ npm, Converse.js) for tests/integration/test_converse.py
ROSTERADMIN_PIP_TARGET=".[test]" source scripts/setup.sh

# Skipped tests fail the run: a green run must have run the real server.
export ROSTERADMIN_FORBID_SKIPS=1
.venv/bin/mypy  # mypy.ini; a type error fails the run before any test

# A root that cannot be built does not stop the first run; in the second
# to fourth, every Prosody and ejabberd test then fails saying so.
if ! bash scripts/debian13.sh >/dev/null; then
    echo "test.sh: no Debian 13 root: the Prosody 13 and ejabberd runs will fail" >&2
fi
backports="${ROSTERADMIN_EJABBERD_BACKPORTS_ROOT:-/var/cache/rosteradmin/trixie-backports}"
if ! bash scripts/ejabberd-backports.sh >/dev/null; then
    echo "test.sh: no trixie-backports root: the ejabberd 26.07 run will fail" >&2
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
color=()
[ -t 1 ] && color=(--color=yes)   # pytest sees tee, not the terminal
summaries=()
failed=0

# run NAME WHAT COMMAND...: run pytest, showing its output, and note its
# summary line ("12 passed in 3.45s"), its time and its exit status.
run() {
    local name="$1" what="$2" started=$SECONDS code last
    shift 2
    set +e
    "$@" "${color[@]}" 2>&1 | tee "$logs/$name.log"
    code=${PIPESTATUS[0]}
    set -e
    last=$(sed 's/\x1b\[[0-9;]*m//g' "$logs/$name.log" \
           | grep -E '[0-9]+ (passed|failed|errors?|deselected|skipped)|no tests ran' | tail -n 1 \
           | sed -E 's/^=+ //; s/ =+$//' || true)
    if [ "$code" -eq 5 ] && [ "$name" != first ]; then
        code=0; last="no integration tests selected"   # e.g. bash scripts/test.sh tests/test_cache.py
    fi
    [ "$code" -eq 0 ] || failed=1
    summaries+=("test.sh: $what: ${last:-no summary} (exit $code, $((SECONDS - started)) s)")
}

run first "Prosody 0.12 (host), all tests" .venv/bin/python -m pytest "$@"
# The integration tests only: nothing else depends on the server.
run second "Prosody 13 (Debian 13 root), integration tests" \
    env ROSTERADMIN_PROSODY=13 .venv/bin/python -m pytest "$@" -m integration
# The integration tests on ejabberd, less those tests/integration/conftest.py's
# PROSODY_ONLY lists (with why), plus the ejabberd tests its EJABBERD24 lists.
run third "ejabberd 24.12 (Debian 13 root), integration tests" \
    env ROSTERADMIN_EJABBERD=24.12 .venv/bin/python -m pytest "$@" -m integration
run fourth "ejabberd 26.07 (Debian 13 root, trixie-backports), integration tests" \
    env ROSTERADMIN_EJABBERD=26.07 ROSTERADMIN_DEBIAN13_ROOT="$backports" \
    .venv/bin/python -m pytest "$@" -m integration

printf '%s\n' "${summaries[@]}"
exit "$failed"
