"""
docs/configuration.md matches the options, and the options the other
documents name exist.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.python import usage
from twisted.scripts.twistd import ServerOptions

from rosteradmin.options import Options
from rosteradmin.reference import configurationReference
from rosteradmin_demo.demo import DemoOptions
from tests.docs import ROOT, documents, optionsNamed

#: Options of other programs that the documents name, and whose they are
#: (or why they are no option at all).
FOREIGN = {
    "now": "systemctl enable",
    "variant": "debootstrap",
    "include": "debootstrap",
    "userspec": "chroot",
    "one-file-system": "rm",
    "omit": "npm ci",
    "ignore-scripts": "npm ci",
    "no-sandbox": "chromium",
    "remote-debugging-pipe": "chromium",
    "content": "towncrier create",
    "draft": "towncrier build",
    "yes": "towncrier build",
    "instr-atstart": "valgrind --tool=callgrind (docs/benchmarks.md)",
    "option": "a placeholder in an error message (docs/troubleshooting.md)",
    "bogus": "a misspelt option, in an error message (docs/troubleshooting.md)",
}

CTL = ROOT / "rosteradmin" / "ctl.py"


def longOptions(options: usage.Options) -> set[str]:
    """
    The long options a L{usage.Options} takes, from its tables and its
    C{opt_} methods (C{--help}, C{--version}).
    """
    return {name.rstrip("=") for name in options.longOpt}


def argparseOptions(*sources: Path) -> set[str]:
    """
    The options argparse programs declare in these files: rosteradmin-ctl
    and the benchmarks (whose parsers are built under C{__main__}, so they
    are read from the source).
    """
    return {name for source in sources
            for name in re.findall(r'add_argument\(\s*"--([a-z0-9-]+)"', source.read_text())}


def test_configurationDocMatchesOptions() -> None:
    """
    The committed reference is what the options generate now; regenerate
    it with `python -m rosteradmin.reference > docs/configuration.md`.
    """
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == configurationReference()


def test_everyOptionIsDocumented() -> None:
    """
    Each command-line option appears in the reference, those of its
    methods (C{--help}, C{--version}) too.
    """
    text = configurationReference()
    names = longOptions(Options())
    assert {"config", "no-kick", "secret-file", "help", "version"} <= names
    assert [n for n in sorted(names) if f"`--{n}`" not in text] == []


def test_namedOptionsExist() -> None:
    """
    Every option README.md and docs/*.md name is one of rosteradmin's (in
    the reference), of twistd, the demo, rosteradmin-ctl or the benchmarks,
    or of another program listed in L{FOREIGN}: a renamed or removed option
    cannot stay in the documents.
    """
    known = (longOptions(Options()) | longOptions(ServerOptions()) | longOptions(DemoOptions())
             | argparseOptions(CTL, *ROOT.glob("bench/*.py")) | set(FOREIGN))
    assert "cancel" in known and "sync-one-per-item" in known and "pidfile" in known
    unknown = {f"{document.relative_to(ROOT)}: --{name}"
               for document in documents() for name in optionsNamed(document.read_text()) - known}
    assert unknown == set()


#: A command line of the service (C{twistd -n rosteradmin ...}) or of
#: rosteradmin-ctl in a document, up to the end of its code span, line or
#: shell comment: the options after the program's name.
COMMAND = re.compile(r"\b(twistd\b[^`\n#]*?\brosteradmin|rosteradmin-ctl)(?![\w-])([^`\n#]*)")


def test_commandLinesUseTheirProgramsOptions() -> None:
    """
    In the documents' command lines, the options after C{twistd ...
    rosteradmin} are rosteradmin's, and those after C{rosteradmin-ctl} are
    its own.
    """
    programs = {"rosteradmin": longOptions(Options()), "rosteradmin-ctl": argparseOptions(CTL)}
    commands = [match for document in documents() for match in COMMAND.finditer(document.read_text())]
    assert len(commands) > 10
    wrong = {f"{program}: --{name}" for program, arguments in (m.groups() for m in commands)
             for name in optionsNamed(arguments) - programs[program.split()[-1]]}
    assert wrong == set()
