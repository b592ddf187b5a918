#!/usr/bin/env bash
# Set up and run the demo: a local Prosody configured for the component, the
# sample web app and rosteradmin, which syncs every user of the web app's users
# list into Prosody at start (state in demo-data/state.sqlite).  Ctrl-C stops
# everything.  Options (--directory, --http-port, --users-page-size, ...) are
# passed on: bash scripts/demo.sh --help lists them.  With --websocket, a browser
# can log in too: Converse.js (from npm, installed here) on http://127.0.0.1:18081/.
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do
    if [ "$arg" = --websocket ]; then export ROSTERADMIN_CONVERSE=1; fi
done
source scripts/setup.sh
exec .venv/bin/python -m rosteradmin_demo.demo --prosody-config contrib/prosody/rosteradmin.cfg.lua "$@"
