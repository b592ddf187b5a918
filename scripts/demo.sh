#!/usr/bin/env bash
# Set up and run the demo: a local Prosody configured for the component, the
# sample web app and rosteradmin, which syncs every user of the web app's users
# list into Prosody at start (state in demo-data/state.sqlite).  Ctrl-C stops
# everything.  Options (--directory, --http-port, --users-page-size, ...) are
# passed on: bash scripts/demo.sh --help lists them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec .venv/bin/python -m rosteradmin.demo --prosody-config contrib/prosody/rosteradmin.cfg.lua "$@"
