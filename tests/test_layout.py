"""
Cross-references inside the repository that nothing else would check.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
TEST_CASE_NAME = re.compile(r"-\*- test-case-name: (\S+) -\*-")


def test_testCaseNamesExist() -> None:
    """
    Every module's C{test-case-name} header (which C{trial} and editors use
    to run a module's tests) names test modules that exist.
    """
    named = {}
    for source in sorted(ROOT.glob("rosteradmin*/*.py")) + sorted(ROOT.glob("bench/*.py")):
        match = TEST_CASE_NAME.search(source.read_text().split("\n", 1)[0])
        if match:
            named[source.relative_to(ROOT)] = match.group(1).split(",")
    assert len(named) > 10
    missing = {str(source): module for source, modules in named.items() for module in modules
               if not (ROOT / (module.replace(".", "/") + ".py")).is_file()}
    assert missing == {}


#: A document named in code or docs: a path ending in .md.
DOCUMENT = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b")


def test_namedDocumentsExist() -> None:
    """
    Every C{*.md} document that code, tests, scripts or docs name exists in
    the repository (at that path from the root, or beside the file naming
    it): nothing points at a document users do not have.
    """
    sources = [p for pattern in ("rosteradmin/*.py", "tests/**/*.py", "bench/*.py", "scripts/*", "docs/*.md",
                                 "contrib/**/*", "*.md", "twisted/plugins/*.py")
               for p in ROOT.glob(pattern) if p.is_file()]
    missing = set()
    for source in sources:
        for name in DOCUMENT.findall(source.read_text(errors="replace")):
            if not ((ROOT / name).is_file() or (source.parent / name).is_file() or (ROOT / "docs" / name).is_file()):
                missing.add(f"{source.relative_to(ROOT)}: {name}")
    assert missing == set()
