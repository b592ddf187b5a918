"""
Contact JIDs as Prosody stores them: the roster we serve, the roster we
write and the roster Prosody keeps must name each contact the same way, or
every sync removes what the previous one added.

Prosody stores C{jid.prep} of each item it is given (mod_privilege), so a
JID it would prepare differently from us (C{bob@example.org.}) comes back
different from what we wrote.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from rosteradmin.errors import InvalidRoster
from rosteradmin.roster import contactJID
from tests.integration.service import RunningService
from tests.integration.test_http import call
from tests.integration.test_rosters import items

pytestmark = pytest.mark.integration

#: Reads JIDs in hex, one a line, and writes Prosody's jid.prep of each in
#: hex, or "nil" when Prosody refuses it.
PREP_SCRIPT = r"""
package.path = SOURCEDIR .. "/?.lua;" .. package.path
package.cpath = SOURCEDIR .. "/?.so;" .. package.cpath
local prep = require "util.jid".prep
for line in io.lines() do
  local result = prep((line:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)))
  io.write(result and (result:gsub(".", function(c) return string.format("%02x", c:byte()) end)) or "nil", "\n")
end
"""


@pytest.fixture
def rosters() -> dict[str, Any]:
    return {
        "alice": {"bob@example.org.": {"name": "Bob"}},
        "bob": {"alice@example.org": {"name": "Alice"}},
    }


def storedContacts(prosody: Any, user: str) -> set[str]:
    """
    The contact JIDs in Prosody's stored roster of C{user} (its internal
    storage keeps each as C{["jid"] = {...}}).
    """
    return set(re.findall(r'\["([^"]+@[^"]+)"\]', prosody.storedRoster(user)))


@pytest_twisted.ensureDeferred
async def test_trailingDotContactSurvivesRefreshes(prosody: Any, webapp: Any, service: RunningService,
                                                   clients: Any) -> None:
    """
    The web app lists C{bob@example.org.}: Prosody's stored roster holds
    C{bob@example.org} after the login and after each of two refreshes,
    the refreshes push nothing, and bob's presence reaches alice.
    """
    alice = await clients("alice")
    assert items(await alice.rosterGet(ver="")) == {"bob@example.org": ("Bob", "both", [])}
    alice.sendPresence()
    await RunningService.waitUntil(lambda: "alice" in service.component.privileges.online, 10, "alice online")
    assert storedContacts(prosody, "alice") == {"bob@example.org"}

    for _ in range(2):
        code, body = await call(service, "POST", "/roster_admin/refresh", ["alice"])
        assert (code, body["errors"]) == (200, 0)
        assert storedContacts(prosody, "alice") == {"bob@example.org"}
    assert alice.pushes == []
    assert items(await alice.rosterGet()) == {"bob@example.org": ("Bob", "both", [])}

    bob = await clients("bob")
    await bob.rosterGet()
    bob.sendPresence()
    seen = await alice.waitForPresence(lambda p: p.getAttribute("from", "").startswith("bob@example.org/"))
    assert seen.getAttribute("type") is None


def prosodyPrep(jids: list[str]) -> list[str | None]:
    """
    Prosody's own C{util.jid.prep} of each JID, run by the Lua interpreter
    and from the sources of the installed Prosody (read from its launcher).
    """
    launcher = Path(shutil.which("prosody") or "prosody").read_text()
    interpreter = launcher.splitlines()[0].split()[-1]
    match = re.search(r"^CFG_SOURCEDIR\s*=\s*'([^']+)'", launcher, re.M)
    assert match, "the prosody launcher does not say where its sources are"
    script = f"SOURCEDIR = {match.group(1)!r}\n" + PREP_SCRIPT
    lines = "".join(j.encode("utf-8", "surrogatepass").hex() + "\n" for j in jids)
    output = subprocess.run([interpreter, "-e", script], input=lines, capture_output=True, text=True,
                            check=True, timeout=120).stdout.splitlines()
    assert len(output) == len(jids)
    return [None if line == "nil" else bytes.fromhex(line).decode("utf-8") for line in output]


def ours(key: str) -> str | None:
    """
    Our normalised contact JID for C{key}, or C{None} when refused.
    """
    try:
        return contactJID(key)
    except InvalidRoster:
        return None


def sampleKeys() -> list[str]:
    """
    Contact keys worth comparing: the cases a review found mishandled, every
    character of the Basic Multilingual Plane in a localpart and in a
    domain label, and random keys from characters stringprep treats
    specially (dots, case, combining marks, bidi, width, mapped to nothing).
    """
    keys = [
        "bob@example.org", "bob@example.org.", "Bob@Example.ORG.", "bob@example.org..", "bob@.",
        "bob@example\u3002org", "bob@example\uff0eorg", "bob@example.org\uff0e", "bob@example\uff61org",
        "bob@example.org\u3002", "bob@\u0639\u0631\u0628\u064a.example", "\u0639\u0631\u0628\u064a@example.org",
        "bob@a\u1dc0\u0316.example", "bob@\U0001f642.example", "\U0001f642@example.org",
        "bob@xn--bcher-kva.example", "bob@B\u00fccher.example", "STRASSE\u00df@example.org",
        "bob@" + "a" * 1023, "b" * 1023 + "@example.org", "b" * 1024 + "@example.org",
        "\u00e9" * 512 + "@example.org", "\u3300" * 90 + "@example.org", "bob@" + "\u3300" * 90,
        "\u0639\u2808\u0639@example.org", "bob@a\u10a0b.example", "a\u023db@example.org",
    ]
    for code in range(0x20, 0x10000):
        c = chr(code)
        if unicodedata.category(c) != "Cs":
            keys += [f"a{c}b@example.org", f"bob@a{c}b.example"]
    alphabet = ("aZ09.-_@/\u3002\uff0e\uff61\u2024\u00ad\u200b\u0301\u0316\u1dc0\u00df\u0130\u03a3\u2126"
                "\u05d0\u0627\u0661\u2808\uff21\u2168\u00bd\ufb01\U0001d400\U0001f642 ")
    rng = random.Random(17)
    for _ in range(20000):
        keys.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))))
    return keys


def test_normalisedAsProsodyStoresIt() -> None:
    """
    Every key we accept is normalised to exactly what Prosody's jid.prep
    makes of it, and Prosody prepares that JID to itself: what we write is
    what Prosody stores, and what it stores diffs equal on the next sync.
    """
    keys = sampleKeys()
    accepted = {key: jid for key in keys if (jid := ours(key)) is not None}
    prepped = dict(zip(keys, prosodyPrep(keys)))
    again = dict(zip(accepted.values(), prosodyPrep(list(accepted.values()))))
    differ = {key: (jid, prepped[key], again[jid]) for key, jid in accepted.items()
              if prepped[key] != jid or again[jid] != jid}
    assert differ == {}
    assert accepted["Bob@Example.ORG."] == "bob@example.org"
    assert len(accepted) > len(keys) // 3
