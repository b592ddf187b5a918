#!/usr/bin/env bash
# Build, once, a Debian 13 root whose ejabberd is the newest Debian ships
# (trixie-backports: 26.07 when written), for the integration tests' run on
# it (ROSTERADMIN_EJABBERD=26.07; scripts/test.sh's fourth run).  It is the
# root scripts/debian13.sh builds (built first if needed), copied, with
# ejabberd upgraded from trixie-backports in the copy.
#
#     bash scripts/ejabberd-backports.sh     # prints the root's path
#
# The root lives in ROSTERADMIN_EJABBERD_BACKPORTS_ROOT (default
# /var/cache/rosteradmin/trixie-backports) and is reused while its stamp
# matches this script's recipe; like the base root, it is built under
# <root>.partial and renamed only once complete.
set -euo pipefail
cd "$(dirname "$0")/.."

root="${ROSTERADMIN_EJABBERD_BACKPORTS_ROOT:-/var/cache/rosteradmin/trixie-backports}"
recipe="rosteradmin ejabberd-backports v1: the debian13 root, ejabberd from trixie-backports"
stamp="$root/.rosteradmin-root"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ]; then
    echo "$root"
    exit 0
fi
base=$(bash scripts/debian13.sh)
sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo

$sudo mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9   # one build at a time; a second caller finds the root built
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ]; then
    echo "$root"
    exit 0
fi
# The mirror the base root was built from, as its own sources name it.
mirror=$(awk '$1 == "deb" { print $2; exit }' "$base/etc/apt/sources.list")
if [ -z "$mirror" ]; then
    echo "ejabberd-backports: no mirror in $base/etc/apt/sources.list" >&2
    exit 1
fi
partial="$root.partial"
$sudo rm -rf --one-file-system "$partial"
started=$SECONDS
$sudo cp -a "$base" "$partial"
$sudo rm -f "$partial/.rosteradmin-root"
echo "deb $mirror trixie-backports main" | $sudo tee "$partial/etc/apt/sources.list.d/backports.list" >/dev/null
if ! { $sudo chroot "$partial" apt-get update -q \
        && $sudo chroot "$partial" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends -t trixie-backports ejabberd; } >"$root.build.log" 2>&1; then
    tail -n 30 "$root.build.log" >&2
    echo "ejabberd-backports: installing ejabberd from trixie-backports failed; whole log in $root.build.log" >&2
    exit 1
fi
$sudo chroot "$partial" apt-get clean
version=$(chroot "$partial" dpkg-query -W -f='${Version}' ejabberd)
case "$version" in
    *bpo13*) ;;
    *) echo "ejabberd-backports: the root's ejabberd is $version, not trixie-backports'" >&2; exit 1 ;;
esac
echo "$recipe" | $sudo tee "$partial/.rosteradmin-root" >/dev/null
$sudo rm -rf --one-file-system "$root"
$sudo mv "$partial" "$root"
echo "ejabberd-backports: built $root in $((SECONDS - started)) s (ejabberd $version)" >&2
echo "$root"
