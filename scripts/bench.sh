#!/usr/bin/env bash
# Set up (like test.sh) and run the benchmarks: bash scripts/bench.sh [--runs 3] [--scenario deployed|all|targets|large-roster|...] [--no-count-instructions] [--profile FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
# valgrind counts Prosody's instructions in D2i (bench/instructions.py).
ROSTERADMIN_TEST_PACKAGES="valgrind" ROSTERADMIN_PIP_TARGET=". py-spy" source scripts/setup.sh
PATH="$PWD/.venv/bin:$PATH" exec .venv/bin/python -m bench.run "$@"
