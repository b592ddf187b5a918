# Sourced by demo.sh and test.sh: install what rosteradmin needs on Debian
# (Prosody with its community modules, a virtualenv with the package).
set -euo pipefail

missing=()
command -v prosody >/dev/null 2>&1 || missing+=(prosody)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
[ -e /usr/lib/prosody/modules/mod_delegation.lua ] \
    || [ -e /usr/lib/prosody/modules/mod_delegation/mod_delegation.lua ] || missing+=(prosody-modules)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
read -ra targets <<< "${ROSTERADMIN_PIP_TARGET:-.}"   # what to install, space-separated
.venv/bin/python -m pip install -q "${targets[@]}"
