#!/usr/bin/env bash
# Build, once, a Debian 13 (trixie) root with Prosody 13, prosody-modules
# and ejabberd 24.12 in it, for the integration tests' second and third runs
# (ROSTERADMIN_PROSODY=13: tests/integration/prosody13.py runs its Prosody
# under chroot; tests/integration/ejabberd24.py runs its ejabberd there).
#
#     bash scripts/debian13.sh           # prints the root's path
#
# The root lives in ROSTERADMIN_DEBIAN13_ROOT (default
# /var/cache/rosteradmin/trixie) and is reused while its stamp file matches
# this script's package list: a root is built under <root>.partial and
# renamed only once complete, so an interrupted build is rebuilt, never used.
# debootstrap fetches from the Debian mirror apt already uses (read from
# /etc/apt/sources.list and /etc/apt/sources.list.d/*); set
# ROSTERADMIN_DEBIAN_MIRROR to override it.  Needs root and debootstrap
# (installed here if missing).
set -euo pipefail

root="${ROSTERADMIN_DEBIAN13_ROOT:-/var/cache/rosteradmin/trixie}"
suite=trixie
packages=(prosody prosody-modules lua5.4 ejabberd)
# The stamp names what the root holds: change the packages, and the root is rebuilt.
recipe="rosteradmin debian13 v1: $suite ${packages[*]}"
stamp="$root/.rosteradmin-root"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ]; then
    echo "$root"
    exit 0
fi

sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo

# The first http(s) Debian mirror apt uses for the main archive (not
# security): deb822 "URIs:" lines of *.sources files, else one-line "deb" entries.
findMirror() {
    local file uri
    for file in /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] || continue
        # A stanza's URIs and Suites; the mirror is one whose suites are not -security.
        uri=$(awk '
            /^[[:space:]]*$/ { if (uri != "" && suites !~ /-security/ && types ~ /(^|[[:space:]])deb([[:space:]]|$)/) { print uri; exit } uri = ""; suites = ""; types = ""; next }
            /^URIs:/ { uri = $2 } /^Suites:/ { suites = $0 } /^Types:/ { types = $0 }
            END { if (uri != "" && suites !~ /-security/ && types ~ /(^|[[:space:]])deb([[:space:]]|$)/) print uri }
        ' "$file" | grep -m1 -E '^https?://.*/debian/?$' || true)
        if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$file" ] || continue
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { print $i; break } }' "$file" \
              | grep -m1 -E '/debian/?$' || true)
        if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
    done
}

mirror="${ROSTERADMIN_DEBIAN_MIRROR:-$(findMirror)}"
if [ -z "$mirror" ]; then
    echo "debian13: no Debian mirror in /etc/apt/sources.list*; set ROSTERADMIN_DEBIAN_MIRROR" >&2
    exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "debian13: installing debootstrap" >&2
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q debootstrap
fi

# Unmount whatever a killed debootstrap left mounted under a directory (it
# mounts proc and sys in the target), then delete it without crossing into
# another file system.
removeTree() {
    local dir="$1" point
    [ -e "$dir" ] || return 0
    # Deepest mount points first.
    while read -r point; do
        $sudo umount -l "$point" 2>/dev/null || true
    done < <(awk -v d="$(realpath "$dir")/" 'index($2 "/", d) == 1 { print $2 }' /proc/self/mounts | sort -r)
    $sudo rm -rf --one-file-system "$dir"
}

$sudo mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9   # one build at a time; a second caller finds the root built
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ]; then
    echo "$root"
    exit 0
fi

partial="$root.partial"
removeTree "$partial"
echo "debian13: building $root from $mirror (debootstrap $suite: ${packages[*]})" >&2
started=$SECONDS
# minbase: dpkg, apt and their dependencies.  debootstrap --include cannot
# install Prosody (its Depends name lua5.4-socket and the like, which only
# other packages Provide), so apt inside the root does.
if ! $sudo debootstrap --variant=minbase "$suite" "$partial" "$mirror" >"$root.build.log" 2>&1; then
    tail -n 30 "$root.build.log" >&2
    echo "debian13: debootstrap failed; whole log in $root.build.log" >&2
    exit 1
fi
# No package may start a daemon in the root (there is no init system either):
# the tests run Prosody and ejabberd themselves, in the foreground.  Both
# postinsts start their service through invoke-rc.d or deb-systemd-invoke,
# which ask policy-rc.d first; 101 is "action forbidden".
printf '#!/bin/sh\nexit 101\n' | $sudo tee "$partial/usr/sbin/policy-rc.d" >/dev/null
$sudo chmod 755 "$partial/usr/sbin/policy-rc.d"
if ! { $sudo chroot "$partial" apt-get update -q \
        && $sudo chroot "$partial" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${packages[@]}"; } >>"$root.build.log" 2>&1; then
    tail -n 30 "$root.build.log" >&2
    echo "debian13: installing ${packages[*]} in the root failed; whole log in $root.build.log" >&2
    exit 1
fi
# The root needs no package cache.
$sudo chroot "$partial" apt-get clean
for file in usr/bin/prosody usr/lib/prosody/modules/mod_privilege.lua usr/lib/prosody/modules/mod_delegation.lua \
            usr/sbin/ejabberdctl; do
    if [ ! -e "$partial/$file" ] && [ ! -e "$partial/${file%.lua}/$(basename "$file")" ]; then
        echo "debian13: $file is missing from the built root" >&2
        exit 1
    fi
done
echo "$recipe" | $sudo tee "$partial/.rosteradmin-root" >/dev/null
removeTree "$root"
$sudo mv "$partial" "$root"
echo "debian13: built $root in $((SECONDS - started)) s ($(chroot "$root" dpkg-query -W -f='${Package} ${Version}, ' prosody prosody-modules ejabberd | sed 's/, $//'))" >&2
echo "$root"
