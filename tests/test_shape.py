"""
The shape the code keeps as it grows: each class one job, each function
readable at a glance.  Checked here rather than in review, so that a class
cannot grow past its job unnoticed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from radon.complexity import cc_visit

ROOT = Path(__file__).parents[1]
SOURCES = sorted((ROOT / "rosteradmin").glob("*.py"))

#: Lines a class may span, docstrings and comments included.
MAX_CLASS_LINES = 300

#: Cyclomatic complexity a function or method may reach (radon's count).
MAX_COMPLEXITY = 15


def test_noClassOverBound() -> None:
    """
    No class in C{rosteradmin/} spans more than L{MAX_CLASS_LINES} lines:
    past that, a class does more than one job and is split by job.
    """
    assert len(SOURCES) > 20
    long = {}
    for source in SOURCES:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    long[f"{source.name}:{node.lineno} {node.name}"] = lines
    assert long == {}


def test_noFunctionOverComplexity() -> None:
    """
    No function or method in C{rosteradmin/} has a cyclomatic complexity
    over L{MAX_COMPLEXITY} (radon's count, as C{radon cc} shows it).
    """
    complex = {}
    for source in SOURCES:
        blocks = cc_visit(source.read_text())
        for block in blocks + [method for block in blocks for method in getattr(block, "methods", [])]:
            if not hasattr(block, "methods") and block.complexity > MAX_COMPLEXITY:
                complex[f"{source.name}:{block.lineno} {block.fullname}"] = block.complexity
    assert complex == {}


def test_architectureNamesEveryModule() -> None:
    """
    docs/architecture.md, the map contributors start from, names every
    module of the service and of the demo.
    """
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    modules = [p for package in ("rosteradmin", "rosteradmin_demo") for p in sorted((ROOT / package).glob("*.py"))
               if p.name not in ("__init__.py", "__main__.py")]
    assert len(modules) > 20
    named = set(re.findall(r"(?<![\w.])(\w+\.py)\b", architecture))
    assert [str(p.relative_to(ROOT)) for p in modules if p.name not in named] == []
