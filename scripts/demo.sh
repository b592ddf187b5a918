#!/usr/bin/env bash
# Set up and run the demo: a local Prosody configured for the component, the
# sample web app and rosteradmin.  Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec .venv/bin/python -m rosteradmin.demo --prosody-config contrib/prosody/rosteradmin.cfg.lua "$@"
