#!/usr/bin/env bash
# Set up everything the tests need on Debian, then run all of them,
# the real-Prosody integration tests included.  Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v prosody >/dev/null 2>&1 || missing+=(prosody)
ls /usr/lib/prosody/modules/mod_delegation.lua /usr/lib/prosody/modules/mod_delegation/mod_delegation.lua \
    >/dev/null 2>&1 || missing+=(prosody-modules)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "test.sh: installing ${missing[*]}" >&2
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q '.[test]'

# Skipped tests fail the run: a green run must have run the real server.
export ROSTERADMIN_FORBID_SKIPS=1
exec .venv/bin/python -m pytest "$@"
