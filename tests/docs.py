"""Reading README.md and docs/*.md: runnable examples, links and anchors.

An example is a fenced block preceded by a marker line::

    <!-- example: NAME -->
    ```sh
    ...
    ```

`sh` blocks run with bash, `python` blocks with the virtualenv's python, `toml`
blocks are parsed (and, marked ``<!-- example: NAME config -->``, checked with
``sms-router check-config`` as a whole file). Blocks without a marker are not run.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MARKER = re.compile(r"^<!--\s*example:\s*(?P<name>[\w.-]+)(?P<flags>(?:\s+[\w-]+)*)\s*-->\s*$")
FENCE = re.compile(r"^(?P<fence>`{3,})(?P<lang>[\w-]*)\s*$")
LINK = re.compile(r"(?<!!)\[(?:[^\]]|\][^(])*?\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(?P<title>.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Example:
    """One marked fenced block."""

    path: Path
    line: int  # 1-based line of the opening fence
    name: str
    lang: str
    flags: frozenset[str]
    code: str

    @property
    def where(self) -> str:
        return f"{_shown(self.path)}:{self.line} ({self.name})"


def _shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def markdown_files() -> list[Path]:
    """README.md and every docs/*.md, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def fenced(lines: list[str]) -> list[tuple[int, int, str]]:
    """(opening index, closing index, language) of each fenced block of a file's lines."""
    blocks: list[tuple[int, int, str]] = []
    start: int | None = None
    fence = lang = ""
    for index, line in enumerate(lines):
        match = FENCE.match(line)
        if start is None and match:
            start, fence, lang = index, match["fence"], match["lang"]
        elif start is not None and line.strip() == fence:
            blocks.append((start, index, lang))
            start = None
    if start is not None:
        raise ValueError(f"line {start + 1}: fenced block never closed")
    return blocks


def examples(path: Path) -> list[Example]:
    """The marked examples of one Markdown file; a marker not followed by a block is an error."""
    lines = path.read_text(encoding="utf-8").split("\n")
    found: list[Example] = []
    blocks = {start: (end, lang) for start, end, lang in fenced(lines)}
    for index, line in enumerate(lines):
        match = MARKER.match(line)
        if not match:
            continue
        nxt = index + 1
        while nxt < len(lines) and not lines[nxt].strip():
            nxt += 1
        if nxt not in blocks:
            raise ValueError(f"{path}:{index + 1}: example marker not followed by a fenced block")
        end, lang = blocks[nxt]
        found.append(
            Example(
                path=path,
                line=nxt + 1,
                name=match["name"],
                lang=lang,
                flags=frozenset(match["flags"].split()),
                code="\n".join(lines[nxt + 1 : end]) + "\n",
            )
        )
    return found


def _outside_code(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, line) of the lines outside fenced blocks."""
    lines = path.read_text(encoding="utf-8").split("\n")
    inside: set[int] = set()
    for start, end, _ in fenced(lines):
        inside.update(range(start, end + 1))
    return [(i + 1, line) for i, line in enumerate(lines) if i not in inside]


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`|\*", "", title)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    kept = [ch for ch in text.lower() if ch in " -_" or unicodedata.category(ch)[0] in "LN"]
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeats get -1, -2 … as on GitHub)."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in _outside_code(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match["title"])
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(path: Path) -> list[str]:
    """Each relative link or anchor of `path` that points at nothing, with its line."""
    problems: list[str] = []
    for number, line in _outside_code(path):
        for match in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            target = match["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{_shown(path)}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
                problems.append(f"{where}: no heading #{anchor} in {dest.name}")
    return problems
