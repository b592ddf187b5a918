"""
Reading the Markdown documents as GitHub renders them, for the checks of
tests/test_docs.py and tests/test_reference.py: their headings (and the
anchors GitHub gives them), their links, their code blocks and the
command-line options they name.

A CommonMark parser (markdown-it-py, with GitHub's tables) reads them, not
regular expressions, so that a C{#} line in a code block is no heading and a
link inside a code span is no link.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

ROOT = Path(__file__).resolve().parents[1]

#: A command-line option named in a document: C{--name}, not inside a word
#: or a longer run of dashes (a table's C{|---|}).
OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")

#: The names GitHub renders as Markdown end so.
MARKDOWN = (".md", ".markdown")

#: A link target with a scheme (C{https:}, C{mailto:}) points outside.
SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:")


def documents(root: Path = ROOT) -> list[Path]:
    """
    The documents users read: the C{*.md} files at the top, in C{docs/} and
    in C{newsfragments/} (the next release's notes).
    """
    return [path for folder in (root, root / "docs", root / "newsfragments") for path in sorted(folder.glob("*.md"))]


@dataclass(frozen=True)
class Link:
    """
    A link of a document.

    @ivar line: Its line, counting from 1.
    @ivar href: Its target, as written.
    """

    line: int
    href: str


@dataclass(frozen=True)
class CodeBlock:
    """
    A fenced code block of a document.

    @ivar line: The line of its opening fence, counting from 1.
    @ivar language: The first word of its info string (C{lua}, C{sh}), or C{""}.
    @ivar text: Its content.
    """

    line: int
    language: str
    text: str


def _tokens(text: str) -> list[Token]:
    return MarkdownIt("commonmark").enable("table").parse(text)


def _inlineText(inline: Token) -> str:
    """
    The text of an inline run as GitHub takes it for an anchor: the words
    and code spans, without the markup around them.
    """
    return "".join(child.content for child in inline.children or ()
                   if child.type in ("text", "code_inline", "softbreak"))


def slug(heading: str) -> str:
    """
    The anchor GitHub gives a heading (before numbering repeats): lower
    case; letters, digits, marks, C{_} and C{-} kept, every other character
    dropped; each space a C{-}.
    """
    kept = [c for c in heading.lower()
            if c in " -_" or unicodedata.category(c)[0] in "LM" or unicodedata.category(c) in ("Nd", "Nl")]
    return "".join(kept).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """
    The anchors of a document's headings; a repeated one gets C{-1},
    C{-2}... as on GitHub.
    """
    found: set[str] = set()
    tokens = _tokens(text)
    for opening, inline in zip(tokens, tokens[1:]):
        if opening.type != "heading_open":
            continue
        base = anchor = slug(_inlineText(inline))
        count = 0
        while anchor in found:
            count += 1
            anchor = f"{base}-{count}"
        found.add(anchor)
    return found


def links(text: str) -> list[Link]:
    """
    The links of a document, in order (not those inside code).
    """
    found = []
    for token in _tokens(text):
        line = token.map[0] + 1 if token.map else 0
        for child in token.children or ():
            href = child.attrGet("href") if child.type == "link_open" else None
            if isinstance(href, str):
                found.append(Link(line, href))
            line += 1 if child.type in ("softbreak", "hardbreak") else 0
    return found


def codeBlocks(text: str) -> list[CodeBlock]:
    """
    The fenced code blocks of a document, in order.
    """
    return [CodeBlock(token.map[0] + 1 if token.map else 0, token.info.split()[0] if token.info.split() else "",
                      token.content)
            for token in _tokens(text) if token.type == "fence"]


def linkProblems(document: Path, root: Path = ROOT) -> list[str]:
    """
    What is wrong with a document's links inside the repository: a target
    outside it, or that is no file or directory, or an anchor (of this
    document or of another Markdown one) that no heading has.  Links with a
    scheme point elsewhere and are not followed.

    @return: One line per broken link, naming the document and its line.
    """
    problems = []
    root = root.resolve()
    for link in links(document.read_text()):
        if SCHEME.match(link.href):
            continue
        parts = urlsplit(link.href)
        target = (document.parent / unquote(parts.path)).resolve() if parts.path else document.resolve()
        where = f"{document.resolve().relative_to(root)}:{link.line}: {link.href}"
        if not target.is_relative_to(root):
            problems.append(f"{where}: outside the repository")
        elif not target.exists():
            problems.append(f"{where}: no such file")
        elif parts.fragment and target.suffix in MARKDOWN and unquote(parts.fragment) not in anchors(
                target.read_text()):
            problems.append(f"{where}: no such heading")
    return problems


def optionsNamed(text: str) -> set[str]:
    """
    The command-line options a document names (C{--state}, C{--no-kick}),
    without their dashes.
    """
    return set(OPTION.findall(text))


def _luaLines(text: str) -> list[str]:
    """
    Lua source without comments, each line without its white space, empty
    ones dropped: what an excerpt of a file must keep, in order.
    """
    text = re.sub(r"--\[(=*)\[.*?\]\1\]", "", text, flags=re.DOTALL)
    lines = (re.sub(r"\s+", "", re.sub(r"--.*", "", line)) for line in text.splitlines())
    return [line for line in lines if line]


def luaExcerptProblem(excerpt: str, whole: str) -> str | None:
    """
    Whether a Lua block is an excerpt of a file: each of its lines, comments
    and white space aside, appears in the file, in the same order (lines
    may be left out, and one line may join several of the file's).

    @return: The first line of the block that the file lacks, or L{None}.
    """
    flat = "".join(_luaLines(whole))
    position = 0
    for line in _luaLines(excerpt):
        found = flat.find(line, position)
        if found < 0:
            return line
        position = found + len(line)
    return None


def contains(whole: object, part: object) -> bool:
    """
    Whether parsed data (YAML, TOML) C{part} is an excerpt of C{whole}:
    each key of a table with a value it contains, each item of a list
    contained in one of the whole's items, any other value equal.
    """
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(key in whole and contains(whole[key], value)
                                               for key, value in part.items())
    if isinstance(part, list):
        return isinstance(whole, list) and all(any(contains(item, p) for item in whole) for p in part)
    return whole == part
