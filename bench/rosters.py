"""
The synthetic users and rosters every benchmark process agrees on.

User C{u<i>} has the next K users as contacts, named after them; a
C{generation} number in the first contact's name lets a benchmark change
one contact of every roster at once.
"""

from __future__ import annotations

from pathlib import Path

DOMAIN = "example.org"


def username(i: int) -> str:
    return f"u{i}"


def contacts(i: int, users: int, size: int, generation: int = 0) -> dict[str, dict[str, object]]:
    """
    The roster of user C{i}, as the web app serves it.
    """
    roster: dict[str, dict[str, object]] = {}
    for k in range(1, size + 1):
        j = (i + k) % users
        name = f"User {j}" + (f" v{generation}" if k == 1 and generation else "")
        roster[f"{username(j)}@{DOMAIN}"] = {"name": name, "groups": ["Team" if k % 2 else "Friends"]}
    return roster


def rosterPath(dataPath: Path, user: str) -> Path:
    """
    A user's roster file in Prosody's internal storage.
    """
    return dataPath / DOMAIN.replace(".", "%2e") / "roster" / f"{user}.dat"


def writeStoredRoster(dataPath: Path, i: int, users: int, size: int) -> None:
    """
    User C{i}'s roster in Prosody's internal storage, subscription both.
    """
    items = []
    for jid, entry in contacts(i, users, size).items():
        groups = "".join(f'["{g}"] = true;' for g in entry["groups"])  # type: ignore[union-attr]
        items.append(f'["{jid}"] = {{ ["subscription"] = "both"; ["name"] = "{entry["name"]}"; '
                     f'["groups"] = {{ {groups} }}; }};')
    path = rosterPath(dataPath, username(i))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('return {\n[false] = { ["version"] = 1; ["pending"] = {}; };\n' + "\n".join(items) + "\n};\n")


def writeProsodyStorage(dataPath: Path, users: int, size: int, password: str) -> None:
    """
    Accounts and stored rosters in Prosody's internal storage, as if synced
    before: both setups start from the same state.
    """
    accounts = dataPath / DOMAIN.replace(".", "%2e") / "accounts"
    accounts.mkdir(parents=True, exist_ok=True)
    for i in range(users):
        (accounts / f"{username(i)}.dat").write_text(f'return {{ ["password"] = "{password}"; }};\n')
        writeStoredRoster(dataPath, i, users, size)
