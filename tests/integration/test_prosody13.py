"""
The Prosody 13 runner on its own (L{tests.integration.prosody13}), in a
stand-in root: what Prosody in the root would see, and what it says when
the root is not built.  Running the real root is what every other
integration test does under C{ROSTERADMIN_PROSODY=13}.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rosteradmin_demo.devprosody import ProsodyNotAvailable
from tests.integration.harness import CONTRIB_CONFIG
from tests.integration.prosody13 import STAMP, ChrootProsody


def inRoot(root: Path, path: Path) -> Path:
    """
    Where C{path}, as Prosody in C{root} sees it, is on the host.
    """
    return root / path.relative_to("/")


def test_unbuiltRootExplainsSetup(tmp_path: Path) -> None:
    """
    A root without the stamp scripts/debian13.sh writes last (never built,
    or its build was cut short) fails the start, naming the script, and no
    process is left.
    """
    root = tmp_path / "root"
    root.mkdir()
    server = ChrootProsody(tmp_path / "prosody", CONTRIB_CONFIG, root=root)
    with pytest.raises(ProsodyNotAvailable, match=r"no Debian 13 root in .*root: run `bash scripts/debian13\.sh`"):
        server.start()
    assert not server.running
    assert list(root.iterdir()) == []


def test_prosodySeesTheTestsPaths(tmp_path: Path) -> None:
    """
    The server's directory is a symlink to the same path inside the root,
    the configuration is the host's one (including the contrib file at its
    own path), and that file and contrib's Lua modules are copied there.
    """
    root = tmp_path / "root"
    (root / "tmp").mkdir(parents=True)
    (root / STAMP).write_text("test\n")
    server = ChrootProsody(tmp_path / "prosody", CONTRIB_CONFIG, root=root)
    server.writeConfig()
    inside = inRoot(root.resolve(), tmp_path / "prosody")
    assert server.directory.resolve() == inside and inside.is_dir()
    assert (inside / "prosody.cfg.lua").read_text() == server.configPath.read_text()
    assert server.configPath.read_text().rstrip().endswith(f'Include "{CONTRIB_CONFIG}"')
    for source in CONTRIB_CONFIG.parent.glob("*.lua"):
        assert inRoot(root.resolve(), source).read_text() == source.read_text(), source.name
    server.addAccount("alice", "pw")
    assert (inside / "data" / "example%2eorg" / "accounts" / "alice.dat").exists()
    command = server.command()
    assert str(root.resolve()) in command
    assert command[-4:] == ["/usr/bin/prosody", "--config", str(server.configPath), "-F"]


def test_goneDirectoriesArePruned(tmp_path: Path) -> None:
    """
    Once the host's symlink is gone (pytest removes old temporary
    directories), the next server removes its directory from the root;
    a directory in use is kept, and one that exists already is refused.
    """
    root = tmp_path / "root"
    root.mkdir()
    (root / STAMP).write_text("test\n")
    old = ChrootProsody(tmp_path / "old" / "prosody", CONTRIB_CONFIG, root=root)
    kept = ChrootProsody(tmp_path / "kept", CONTRIB_CONFIG, root=root)
    old.addAccount("alice", "pw")
    (tmp_path / "old" / "prosody").unlink()
    ChrootProsody(tmp_path / "new", CONTRIB_CONFIG, root=root)
    assert not inRoot(root.resolve(), tmp_path / "old").exists()
    assert kept.directory.resolve().is_dir()
    again = ChrootProsody(tmp_path / "kept", CONTRIB_CONFIG, root=root)
    assert again.directory.resolve() == kept.directory.resolve()
    with pytest.raises(ValueError, match="needs a new directory"):
        ChrootProsody(tmp_path, CONTRIB_CONFIG, root=root)
