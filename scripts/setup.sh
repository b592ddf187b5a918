# Sourced by demo.sh, test.sh and bench.sh: install what rosteradmin needs on Debian
# (Prosody with its community modules, a virtualenv with the package).
set -euo pipefail

missing=()
command -v prosody >/dev/null 2>&1 || missing+=(prosody)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
[ -e /usr/lib/prosody/modules/mod_delegation.lua ] \
    || [ -e /usr/lib/prosody/modules/mod_delegation/mod_delegation.lua ] || missing+=(prosody-modules)
# Packages only the tests or the benchmarks need (scripts/test.sh and scripts/bench.sh set
# ROSTERADMIN_TEST_PACKAGES), such as ejabberd for tests/integration/test_ejabberd.py, postgresql
# for the PostgreSQL state (tests/test_stateengines.py starts its own server with the package's
# initdb and pg_ctl), or valgrind for the bench's instruction counts.
read -ra testPackages <<< "${ROSTERADMIN_TEST_PACKAGES:-}"
for package in "${testPackages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# With chromium comes tests/integration/test_converse.py, which also needs the npm
# package contrib/converse/package-lock.json pins (npm may come with a nodejs not from Debian);
# the demo's chat page (demo.sh --websocket sets ROSTERADMIN_CONVERSE=1) needs it too.
converse=""
if [[ " ${testPackages[*]} " == *" chromium "* ]] || [ "${ROSTERADMIN_CONVERSE:-}" = 1 ]; then
    converse="${ROSTERADMIN_CONVERSE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rosteradmin/converse}"
    command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
    if [[ " ${missing[*]} " == *" ejabberd "* ]]; then
        # The package enables a system ejabberd at boot and starts it, unless policy-rc.d
        # forbids that (containers); the tests start their own, so stop and disable it.
        if [ -d /run/systemd/system ]; then
            $sudo systemctl disable --now ejabberd.service
        else
            if pgrep -f -- "-sname ejabberd@localhost" >/dev/null; then
                $sudo /etc/init.d/ejabberd stop
            fi
            $sudo systemctl disable ejabberd.service >/dev/null 2>&1 || true
            $sudo update-rc.d ejabberd disable >/dev/null 2>&1 || true
        fi
    fi
fi

# Once per version, into a cache outside the checkout; the test reads it from there.
if [ -n "$converse" ] && { ! cmp -s contrib/converse/package-lock.json "$converse/package-lock.json" \
        || [ ! -e "$converse/node_modules/converse.js/dist/converse.min.js" ]; }; then
    echo "setup: installing Converse.js into $converse" >&2
    mkdir -p "$converse"
    cp contrib/converse/package.json contrib/converse/package-lock.json "$converse/"
    (cd "$converse" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
read -ra targets <<< "${ROSTERADMIN_PIP_TARGET:-.}"   # what to install, space-separated
.venv/bin/python -m pip install -q "${targets[@]}"
