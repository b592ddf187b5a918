# -*- test-case-name: tests.integration.test_prosody13 -*-
"""
The integration tests' second Prosody: Debian 13's (Prosody 13 and
prosody-modules 2025-04), run under C{chroot} from the root that
C{scripts/debian13.sh} builds and caches, so the host keeps Debian 12's
Prosody 0.12 for the first run.

C{ROSTERADMIN_PROSODY=13} selects it for the whole suite
(L{tests.integration.harness.ProsodyServer}); C{scripts/test.sh} runs the
integration tests once on each.

Prosody in the root sees the paths the tests use: the server's directory
is made inside the root at its own path, with a symlink at that path on the
host leading into it, and the included configuration, with the Lua files
next to it (our C{mod_rosteradmin_subscriptions}), is copied to its own
path in the root at each start.  So the generated configuration is the one
the host's Prosody would get, and nothing is mounted.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rosteradmin_demo.devprosody import LocalProsody, ProsodyNotAvailable
from tests.integration.debianroot import STAMP, DebianRoot, debian13Root

__all__ = ["STAMP", "ChrootProsody", "debian13Root"]

#: The directories made inside the root, one host path a line.
MIRRORS = Path("var/lib/rosteradmin-tests/mirrors")


class ChrootProsody(LocalProsody):
    """
    A L{LocalProsody} whose Prosody is the one installed in another Debian
    root, run there with C{chroot}; with no root, the host's own.

    @ivar root: The root, or C{None} for the host's Prosody.
    """

    def __init__(self, directory: str | Path, includeConfig: str | Path,
                 root: Path | None = None, **kwargs: Any) -> None:
        """
        @param directory: Where the configuration, data and logs live; with
            a root it must not exist yet (it becomes a symlink into the root).
        @param root: The root whose Prosody runs, normally L{debian13Root}.
        @param kwargs: The other options of L{LocalProsody}.
        @raise ValueError: C{directory} exists and is not our symlink.
        """
        self.debianRoot = None if root is None else DebianRoot(root)
        self.root = None if self.debianRoot is None else self.debianRoot.path
        # Nothing is made in a root that is not built: start says so.
        if self._built():
            directory = Path(directory).absolute()
            inside = self._inRoot(directory)
            with self._mirrors() as mirrors:
                # An existing symlink of ours: another server on the same data.
                if not (directory.is_symlink() and Path(os.readlink(directory)) == inside):
                    if directory.exists() or directory.is_symlink():
                        raise ValueError(f"{directory} exists: a server in {self.root} needs a new directory")
                    directory.parent.mkdir(parents=True, exist_ok=True)
                    directory.symlink_to(inside, target_is_directory=True)
                inside.mkdir(parents=True, exist_ok=True)
                if str(directory) not in mirrors:
                    mirrors.append(str(directory))
        super().__init__(directory, includeConfig, **kwargs)

    def command(self) -> list[str]:
        """
        C{chroot <root> prosody}, with the configuration at its own path.

        @raise ProsodyNotAvailable: The root is not (completely) built.
        """
        if self.debianRoot is None:
            return super().command()
        if not self.debianRoot.built():
            raise ProsodyNotAvailable(self.debianRoot.missing())
        # /usr/bin/prosody starts with "#!/usr/bin/env lua5.4": the root's
        # PATH, whatever the host's is.
        return self.debianRoot.command(["/usr/bin/prosody", "--config", str(self.configPath), "-F"])

    def writeConfig(self) -> None:
        """
        Write the configuration, then copy the included file and the Lua
        files beside it (plugins) to their own paths inside the root.
        """
        super().writeConfig()
        if self.root is None or not self._built():
            return
        if self.includeConfig.is_relative_to(self.root):
            raise ValueError(f"{self.includeConfig}: an included configuration must be outside {self.root}")
        source = self.includeConfig.parent
        target = self._inRoot(source)
        target.mkdir(parents=True, exist_ok=True)
        for path in {self.includeConfig, *source.glob("*.lua")}:
            if path.is_file():
                # Another test may read the copy right now: replace it whole.
                fd, name = tempfile.mkstemp(dir=target, prefix=f".{path.name}.")
                os.close(fd)
                shutil.copyfile(path, name)
                os.chmod(name, 0o644)
                os.replace(name, target / path.name)

    def _built(self) -> bool:
        """
        Whether there is a root and scripts/debian13.sh finished building it.
        """
        return self.debianRoot is not None and self.debianRoot.built()

    def _inRoot(self, path: Path) -> Path:
        assert self.debianRoot is not None
        return self.debianRoot.inRoot(path)

    @contextmanager
    def _mirrors(self) -> Iterator[list[str]]:
        """
        The host paths of the directories made inside the root, locked, to
        append to; first those whose host symlink is gone (pytest removes
        old temporary directories) are removed from the root.
        """
        assert self.root is not None
        registry = self.root / MIRRORS
        registry.parent.mkdir(parents=True, exist_ok=True)
        with open(registry, "a+") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            file.seek(0)
            kept = []
            for line in file.read().splitlines():
                host = Path(line)
                inside = self._inRoot(host)
                if host.is_symlink() and Path(os.readlink(host)) == inside:
                    kept.append(line)
                elif host.is_absolute() and host.parent != Path("/"):  # never a root's /usr or /
                    shutil.rmtree(inside, ignore_errors=True)
                    self._removeEmptyParents(inside.parent)
            yield kept
            file.seek(0)
            file.truncate()
            file.write("".join(f"{line}\n" for line in kept))

    def _removeEmptyParents(self, directory: Path) -> None:
        assert self.root is not None
        stop = {self.root, self.root / "tmp"}
        while directory not in stop and directory.is_relative_to(self.root):
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent
