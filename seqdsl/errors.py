"""One exception family for every mistake a user can make in a spec.

A `SpecError` carries where (file, line, column, and the spec path such as ``recurrent.step.c``), what,
an expected-vs-found pair where there is one, and a hint. `format()` renders it the way a compiler does::

    specs/x.yaml:12:5: error[E0301]: unknown name `hiden`
       12 |     h: o * tanh(hiden)
          |                 ^^^^^
      = expected: a size, input, parameter, state or earlier equation
      = found: `hiden`
      = help: did you mean `hidden`?

Text from a spec (names, strings, the source line, the file name) never drives the terminal: `format` writes every
part through `seqdsl.text.printable` (``\x1b``, ``\n``, ``\u202e`` for controls, bidi overrides and line breaks),
so the only newlines in what it renders are its own, each followed by an indented line.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .suggest import closest
from .text import printable


@dataclass(frozen=True)
class Location:
    """A place in a spec file. Lines and columns are 1-based; ``length`` is how many characters to underline."""

    file: str = "<spec>"
    line: int = 0
    col: int = 0
    path: str = ""
    length: int = 1

    def shifted(self, col_offset: int, length: int = 1) -> Location:
        """The location ``col_offset`` characters to the right on the same line (for sub-expressions)."""
        return Location(self.file, self.line, self.col + col_offset, self.path, max(1, length))

    def at_path(self, path: str) -> Location:
        return Location(self.file, self.line, self.col, path, self.length)

    def __str__(self) -> str:
        if self.line:
            return f"{printable(self.file)}:{self.line}:{self.col}"
        return printable(self.file)


UNKNOWN = Location()


@dataclass
class SpecError(Exception):
    """A mistake in user input. ``code`` is stable (``E0xxx``) and documented in `seqdsl.codes`."""

    code: str
    message: str
    loc: Location = UNKNOWN
    expected: str | None = None
    found: str | None = None
    hint: str | None = None
    notes: list[tuple[Location, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # copy and pickle with every field
        return (type(self), (self.code, self.message, self.loc, self.expected, self.found, self.hint, self.notes))

    def __str__(self) -> str:
        return self.format()

    @property
    def severity(self) -> str:
        return "warning" if self.code.startswith("W") else "error"

    def format(self, source: str | None = None) -> str:
        lines = [f"{self.loc}: {self.severity}[{printable(self.code)}]: {printable(self.message)}"]
        lines += _excerpt(self.loc, source)
        if self.loc.path:
            lines.append(f"   = in: {printable(self.loc.path)}")
        if self.expected is not None:
            lines.append(f"   = expected: {printable(self.expected)}")
        if self.found is not None:
            lines.append(f"   = found: {printable(self.found)}")
        for note_loc, note in self.notes:
            lines.append(f"   = note: {note_loc}: {printable(note)}")
        if self.hint:
            lines.append(f"   = help: {printable(self.hint)}")
        return "\n".join(lines)


class SpecErrors(Exception):
    """Several independent spec errors found in one pass (the CLI prints them all)."""

    def __init__(self, errors: list[SpecError]):
        super().__init__("\n\n".join(e.format() for e in errors))
        self.errors = errors


_EXCERPT_BYTES = 1_000_001


def _excerpt(loc: Location, source: str | None) -> list[str]:
    """The offending line with a caret under the column, read from ``source`` or the file itself."""
    if not loc.line:
        return []
    if source is None:
        try:
            text_lines = _file_lines(loc.file, _stamp(Path(loc.file).stat()))
        except (OSError, ValueError):  # unreadable, a directory, a NUL in the name
            return []
    else:
        text_lines = source.splitlines()
    if not 1 <= loc.line <= len(text_lines):
        return []
    raw = text_lines[loc.line - 1].replace("\t", " ")
    if len(raw) > 160:
        return []
    start = max(0, loc.col - 1)
    end = start + max(1, min(loc.length, len(raw) - loc.col + 1))
    text = printable(raw)  # the caret moves with the escapes before and under it
    before, under = len(printable(raw[:start])), len(printable(raw[start:end])) if end > start else 1
    gutter = str(loc.line)
    pad = " " * len(gutter)
    caret = " " * before + "^" * max(1, under)
    return [f" {gutter} | {text}", f" {pad} | {caret}"]


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_lines(file: str, stamp: tuple[int, ...]) -> list[str]:
    """The lines of ``file`` as it is now (``stamp``): read once for the thousands of warnings a large spec can
    have, not once per warning. A spec is at most 1 MB: no more is read of a file an error is about (it may be
    the too-large one)."""
    with Path(file).open("rb") as f:
        return f.read(_EXCERPT_BYTES).decode("utf-8", errors="replace").splitlines()


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A ``did you mean `x`?`` hint for a misspelt name, or None when nothing is close."""
    close = closest(name, candidates)  # the one rule (seqdsl.suggest): a transposition is one edit
    return f"did you mean `{close}`?" if close is not None else None
