"""Reading the docs' fenced code blocks and the shell commands in them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```(\S*)\s*$")
# Blanks, CSV commas, box drawing (rich tables, progress bars) and the bullet between
# progress fields.
_SEPARATORS = re.compile(r"[\s,\u2500-\u257f·]+")
_EDGE_PUNCTUATION = "()[]{}:,;'\"`"


@dataclass
class Block:
    """One fenced code block: its info string, text, and where it is."""

    doc: Path
    language: str
    text: str
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence
    before: str  # the doc's text between the previous block (or the top) and this one
    heading: str  # the title of the section holding the block

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


@dataclass
class Command:
    """A shell command as the doc writes it, and the output the doc shows for it."""

    text: str
    line: int
    output: list[str] = field(default_factory=list)

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0].strip()


def blocks(doc: Path, language: str | None = None) -> list[Block]:
    """The fenced blocks of `doc`, in order (only those of `language` when given)."""
    found: list[Block] = []
    lines = doc.read_text(encoding="utf-8").splitlines()
    index = after_previous = 0
    heading = ""
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            title = re.match(r"^#{1,6}\s+(.*?)\s*$", lines[index])
            heading = title.group(1) if title else heading
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        body = "\n".join(lines[index + 1 : end]) + "\n"
        before = "\n".join(lines[after_previous:index])
        found.append(Block(doc, opening.group(1), body, index + 1, end + 1, before, heading))
        index = after_previous = end + 1
    return [b for b in found if language is None or b.language == language]


def _open_quote_or_continuation(text: str) -> bool:
    """True while `text` ends inside a quoted string or with a line continuation."""
    quote: str | None = None
    index = 0
    while index < len(text):
        char = text[index]
        if quote == "'":
            if char == "'":
                quote = None
        elif quote == '"':
            if char == "\\":
                index += 1
            elif char == '"':
                quote = None
        elif char == "\\":
            if index == len(text) - 1:
                return True
            index += 1
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or text[index - 1].isspace()):
            newline = text.find("\n", index)
            if newline < 0:
                break
            index = newline
        index += 1
    return quote is not None


def sh_commands(block: Block) -> list[Command]:
    """The commands of an `sh` block.

    A command runs on over lines ending in a backslash or inside an open quote. Comment lines
    right after a command are the output the doc shows for it; comment lines before a command
    (or after a blank line) describe what follows and are not output.
    """
    commands: list[Command] = []
    pending: list[str] = []
    start = 0
    last: Command | None = None
    for number, line in enumerate(block.text.splitlines(), start=block.line + 1):
        if pending:
            pending.append(line)
        elif not line.strip():
            last = None
            continue
        elif line.lstrip().startswith("#"):
            if last is not None:
                last.output.append(line.lstrip()[1:])
            continue
        else:
            pending, start = [line], number
        text = "\n".join(pending)
        if not _open_quote_or_continuation(text):
            last = Command(text, start)
            commands.append(last)
            pending = []
    assert not pending, f"{block.where}: unterminated command {pending[0]!r}"
    return commands


def transcript_commands(block: Block) -> list[Command]:
    """`$ command` lines of a text block, each with the lines up to the next `$` as output."""
    commands: list[Command] = []
    for number, line in enumerate(block.text.splitlines(), start=block.line + 1):
        if line.startswith("$ "):
            commands.append(Command(line[2:], number))
        elif commands:
            commands[-1].output.append(line)
    return commands


def doc_commands(doc: Path) -> list[Command]:
    """The commands of the `sh` blocks of `doc`, in order.

    A `text` block right below an `sh` block (only blank lines between) shows the output of
    that block's last command.
    """
    commands: list[Command] = []
    found = blocks(doc)
    for block, following in zip(found, [*found[1:], None], strict=True):
        if block.language != "sh":
            continue
        own = sh_commands(block)
        if (
            own
            and following is not None
            and following.language == "text"
            and not is_transcript(following)
            and not following.before.strip()
        ):
            own[-1].output += following.text.splitlines()
        commands += own
    return commands


def is_transcript(block: Block) -> bool:
    return block.language == "text" and block.text.startswith("$ ")


def inline_comment(command: Command) -> str:
    """The trailing `# ...` of a one-line command ('' when there is none)."""
    match = re.search(r"\s#\s?(.*)$", command.text)
    return match.group(1) if match and "\n" not in command.text else ""


def key_words(lines: list[str]) -> list[str]:
    """The words of shown output that a real run must also print.

    Loose on purpose: numbers, dates, durations and token counts vary from run to run, so
    only words holding two letters in a row count (`2026-11-25T00:00:00Z` does not),
    compared without case and edge punctuation.
    """
    words: list[str] = []
    for line in lines:
        for raw in _SEPARATORS.split(line):
            word = raw.strip(_EDGE_PUNCTUATION)
            if re.search(r"[^\W\d_]{2}", word) and word not in words:
                words.append(word)
    return words


def missing_words(shown: list[str], printed: str) -> list[str]:
    """Key words of `shown` that `printed` lacks."""
    haystack = printed.lower()
    return [word for word in key_words(shown) if word.lower() not in haystack]
