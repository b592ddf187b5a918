"""
The documents hold together: their links and anchors lead somewhere, and
the configuration they show is the configuration the tests run.  (The
options they name are checked against the reference in
tests/test_reference.py.)
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import yaml

from rosteradmin.roster import parseRoster
from tests.integration.conftest import PROSODY_ONLY
from tests.docs import ROOT, anchors, codeBlocks, contains, documents, linkProblems, luaExcerptProblem, slug

#: For each language of configuration the documents show, the file of
#: contrib/ every block of it must be an excerpt of, and the test module
#: that runs that file.
TESTED_CONFIGS = {
    "lua": ("contrib/prosody/rosteradmin.cfg.lua", "tests/integration/harness.py"),
    "yaml": ("contrib/ejabberd/rosteradmin.yml", "tests/integration/test_ejabberd24.py"),
    "toml": ("contrib/rosteradmin.toml", "tests/test_contrib.py"),
}

#: Code blocks that are no configuration file of ours: commands, data, and
#: (without a language) diagrams, tables and output; Python and JavaScript
#: for the web app (tests/test_events.py runs its signature check).
NOT_CONFIGURATION = {"sh", "json", "text", "python", "js", ""}

#: Configuration blocks that are not excerpts of a contrib/ file, by
#: document and first line, and why.
NOT_EXCERPTS = {
    ("docs/converse.md", 'modules_enabled = { --[[ yours, and ]] "websocket" }   -- or "bosh"'):
        "Prosody's own HTTP settings, for the operator's prosody.cfg.lua; tests/integration/test_converse.py"
        " gets them from LocalProsody(httpPort=...)",
}


def configurationProblems(document: Path, root: Path = ROOT) -> list[str]:
    """
    What is wrong with a document's configuration blocks: a block of a
    language this test does not know, or one that is not an excerpt of the
    tested file of its language.

    @return: One line per bad block, naming the document and its line.
    """
    problems = []
    name = str(document.relative_to(root))
    for block in codeBlocks(document.read_text()):
        where = f"{name}:{block.line}: {block.language or 'a block without a language'}"
        if block.language in NOT_CONFIGURATION or (name, block.text.split("\n", 1)[0]) in NOT_EXCERPTS:
            continue
        if block.language not in TESTED_CONFIGS:
            problems.append(f"{where}: neither configuration of contrib/ nor NOT_CONFIGURATION")
            continue
        path, _ = TESTED_CONFIGS[block.language]
        whole = (root / path).read_text()
        if block.language == "lua":
            missing = luaExcerptProblem(block.text, whole)
            if missing is not None:
                problems.append(f"{where}: {path} has no {missing}")
            continue
        load = yaml.safe_load if block.language == "yaml" else tomllib.loads
        if not contains(load(whole), load(block.text)):
            problems.append(f"{where}: not an excerpt of {path}")
    return problems


def test_linksResolve() -> None:
    """
    Every link of README.md and docs/*.md to a file of the repository finds
    it, and every anchor, in the same document or another, names a heading.
    """
    assert len(documents()) > 5
    assert [problem for document in documents() for problem in linkProblems(document)] == []


def test_brokenLinksAreFound(tmp_path: Path) -> None:
    """
    A missing file, a missing heading in the same document or in another,
    and a link out of the repository are each reported with their line;
    links that work, links to other sites and links inside code are not.
    (The documents here end in C{.markdown}, which GitHub renders too, so
    that tests/test_layout.py does not take them for documents of ours.)
    """
    root = tmp_path / "checkout"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "other.markdown").write_text(
        "# Other\n\n## What works where\n\n## Run of 2026-12-02 (3 runs): 1, 2c\n")
    (root / "setup.py").write_text("")
    (root / "README.md").write_text(
        "# Read me\n\n## `--state` and you\n\n## Read me\n\n"
        "[fine](docs/other.markdown) [fine](docs/other.markdown#what-works-where) [fine](#--state-and-you)\n"
        "[fine](#read-me-1) [fine](setup.py) [fine](docs/) [fine](https://example.org/nowhere.markdown)\n"
        "[fine](docs/other.markdown#run-of-2026-12-02-3-runs-1-2c) `[code](nowhere.markdown)`\n\n"
        "```sh\n[block](nowhere.markdown)\n```\n\n"
        "[gone](docs/gone.markdown)\n"
        "[typo](#read-me-2)\n"
        "[renamed](docs/other.markdown#what-works)\n"
        "[outside](../escape.markdown)\n")
    (tmp_path / "escape.markdown").write_text("")
    assert linkProblems(root / "README.md", root=root) == [
        "README.md:15: docs/gone.markdown: no such file",
        "README.md:16: #read-me-2: no such heading",
        "README.md:17: docs/other.markdown#what-works: no such heading",
        "README.md:18: ../escape.markdown: outside the repository",
    ]


def test_slugsAreGitHubs() -> None:
    """
    Headings get the anchors GitHub gives them: punctuation and symbols
    dropped, hyphens, underscores, letters of any script and digits kept,
    spaces made hyphens, a repeated heading numbered.
    """
    assert slug("Run of 2026-12-02 16:50 UTC (3 runs): scenarios 1, 1v, 2") == \
        "run-of-2026-12-02-1650-utc-3-runs-scenarios-1-1v-2"
    assert slug("Runs of 2026-12-02, 10,000 users × 50 contacts") == "runs-of-2026-12-02-10000-users--50-contacts"
    assert slug("ejabberd 24.12 (Debian 13)") == "ejabberd-2412-debian-13"
    assert slug("max_body_bytes: Größe — été") == "max_body_bytes-größe--été"
    assert anchors("# A\n\n## A\n\n```sh\n# A\n```\n\n### A `b`\n\n## A\n") == {"a", "a-1", "a-b", "a-2"}


def test_configurationBlocksAreTested() -> None:
    """
    Every configuration block README.md and docs/*.md show is an excerpt of
    the contrib/ file of its language, which a test runs as it is.
    """
    for path, test in TESTED_CONFIGS.values():
        assert Path(path).name in (ROOT / test).read_text(), (path, test)
    assert [problem for document in documents() for problem in configurationProblems(document)] == []


def test_jsonExamplesParse() -> None:
    """
    Every JSON block of the documents is JSON, and the web app's guide's
    roster example (its first) is a roster the web app may answer.
    """
    blocks = {document: [b.text for b in codeBlocks(document.read_text()) if b.language == "json"]
              for document in documents()}
    assert [json.loads(text) for texts in blocks.values() for text in texts]
    roster = parseRoster(blocks[ROOT / "docs" / "webapp.md"][0].encode(), "alice@example.org")
    assert [(c.jid, c.name, c.groups) for c in roster.contacts] == [
        ("marie@example.org", "Marie", ()), ("michael@example.org", "Michael", ("Work",))]


def test_driftedConfigurationIsFound(tmp_path: Path) -> None:
    """
    A Lua or YAML block that says something the tested file does not, or a
    block of an unknown language, is reported; comments, spacing, left-out
    lines and lines joined are not.
    """
    for path, _ in TESTED_CONFIGS.values():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text((ROOT / path).read_text())
    (tmp_path / "README.md").write_text(
        "```lua\n"
        'admins = { "roster.example.org" }  -- a comment of the excerpt\n'
        'VirtualHost "example.org"\n'
        '    delegations = { ["jabber:iq:roster"] = { jid = "roster.example.org" }; }\n'
        "```\n\n"
        "```lua\n"
        'Component "roster.example.org"\n'
        '    component_secret = "secret"\n'
        "```\n\n"
        "```yaml\n"
        "modules:\n  mod_muc:\n    access_admin:\n      - allow: rosteradmin\n"
        "```\n\n"
        "```yaml\n"
        "modules:\n  mod_muc:\n    access_admin: muc_admin\n"
        "```\n\n"
        "```ini\n[x]\n```\n")
    assert configurationProblems(tmp_path / "README.md", root=tmp_path) == [
        'README.md:7: lua: contrib/prosody/rosteradmin.cfg.lua has no component_secret="secret"',
        "README.md:19: yaml: not an excerpt of contrib/ejabberd/rosteradmin.yml",
        "README.md:25: ini: neither configuration of contrib/ nor NOT_CONFIGURATION",
    ]


def leftOutTable(leftOut: dict[str, str]) -> str:
    """
    docs/servers.md's table of the integration tests the ejabberd runs
    leave out, as it must read.
    """
    rows = [f"| `{test}` | {why} |" for test, why in sorted(leftOut.items())]
    return "\n".join(["| Test | Why not on ejabberd |", "|---|---|", *rows])


def test_leftOutOnEjabberdListed() -> None:
    """
    docs/servers.md lists every integration test the ejabberd runs leave
    out, with the reason that tests/integration/conftest.py's
    C{PROSODY_ONLY} (the one place) gives.
    """
    expected = leftOutTable(PROSODY_ONLY)
    assert expected in (ROOT / "docs" / "servers.md").read_text(), f"docs/servers.md needs:\n{expected}"
