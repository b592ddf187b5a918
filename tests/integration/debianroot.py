# -*- test-case-name: tests.integration.test_prosody13,tests.integration.test_ejabberd24 -*-
"""
The Debian 13 root that C{scripts/debian13.sh} builds and caches, as the
servers run from it see it: Prosody 13 (L{tests.integration.prosody13})
and ejabberd 24.12 (L{tests.integration.ejabberd}).

Both run under C{chroot} with nothing mounted; what they share is where the
root is, whether it is complete, how a host path looks from inside it, and
the command line that runs a program there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: Where scripts/debian13.sh builds the root unless told otherwise.
DEFAULT_ROOT = Path("/var/cache/rosteradmin/trixie")
#: The file scripts/debian13.sh writes last, into a complete root only.
STAMP = ".rosteradmin-root"
#: The PATH programs run with in the root: the host's may name directories
#: the root lacks, and scripts there start with C{#!/usr/bin/env}.
ROOT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"


def debian13Root() -> Path:
    """
    The Debian 13 root: C{ROSTERADMIN_DEBIAN13_ROOT}, as for
    C{scripts/debian13.sh}, else L{DEFAULT_ROOT}.
    """
    return Path(os.environ.get("ROSTERADMIN_DEBIAN13_ROOT") or DEFAULT_ROOT)


class DebianRoot:
    """
    A root directory holding another Debian, whose programs run with
    C{chroot}.

    @ivar path: The root, resolved.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()

    def built(self) -> bool:
        """
        Whether scripts/debian13.sh finished building it (a root without
        the stamp is never used, nor written into).
        """
        return (self.path / STAMP).is_file()

    def missing(self) -> str:
        """
        What to do about a root that is not built, for the error a server
        start fails with.
        """
        return f"no Debian 13 root in {self.path}: run `bash scripts/debian13.sh` (`bash scripts/test.sh` does)"

    def inRoot(self, path: Path) -> Path:
        """
        Where an absolute path, as programs in the root see it, is on the
        host.
        """
        return self.path / path.relative_to("/")

    def fromRoot(self, path: Path) -> Path:
        """
        The path a program in the root sees for a host path inside the
        root: the inverse of L{inRoot}.
        """
        return Path("/") / path.relative_to(self.path)

    def user(self, name: str) -> tuple[int, int]:
        """
        The uid and gid of a system user of the root, from its
        C{/etc/passwd}: the root's packages made their users there, with
        ids the host may give to someone else.

        @raise KeyError: The root has no such user.
        """
        for line in (self.path / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) >= 4 and fields[0] == name:
                return int(fields[2]), int(fields[3])
        raise KeyError(name)

    def command(self, argv: list[str], user: tuple[int, int] | None = None) -> list[str]:
        """
        The command line that runs C{argv} in the root, with the root's
        L{ROOT_PATH}, as C{user} (uid, gid) or else as the caller.
        """
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        userspec = [f"--userspec={user[0]}:{user[1]}"] if user is not None else []
        return [chroot, *userspec, str(self.path), "/usr/bin/env", f"PATH={ROOT_PATH}", *argv]
