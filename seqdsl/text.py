"""Spec text that is copied into what a build writes as *data* (ONNX doc strings and metadata, build.json):
the one place that makes it plain, printable and bounded.

Spec text is untrusted. Here it never becomes source code (``model.py`` takes names only as checked identifiers
and other text only through `seqdsl.naming.escape`),
but a doc string is shown by tools such as Netron and onnx's printer: control and bidirectional-override
characters could make it display something other than what it holds, and an unbounded one would bloat the file.

Text that reaches the *terminal* (every error and warning) goes through `printable` instead, which keeps every
character visible as an escape rather than dropping it: `seqdsl.errors` renders each part of a message with it, and
the command line prints every message through `terminal_text`.
"""

from __future__ import annotations

import unicodedata

MAX_DOC_CHARS = 4000

# Unicode categories dropped: controls (but \n and \t), format characters (bidi overrides, zero-width),
# surrogates, private use and unassigned code points.
_DROPPED = {"Cc", "Cf", "Cs", "Co", "Cn"}


def plain_text(value: str, limit: int = MAX_DOC_CHARS) -> str:
    """``value`` NFC-normalised, with every control or invisible formatting character removed (newlines and tabs
    kept; CR LF becomes LF), trailing spaces of each line dropped, and cut to ``limit`` characters (marked `…`)."""
    text = unicodedata.normalize("NFC", value.replace("\r\n", "\n").replace("\r", "\n"))
    kept = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in _DROPPED)
    kept = "\n".join(line.rstrip() for line in kept.strip().split("\n"))
    return kept if len(kept) <= limit else kept[: limit - 1] + "…"


# -- text for the terminal: every message seqdsl prints

#: What a terminal could take for an instruction, or that would show something other than what is there: controls
#: (C0 with \n \t \r, DEL, C1), format characters (bidi overrides, zero-width), line and paragraph separators,
#: surrogates, private use and unassigned code points.
_UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` with every character of `_UNSAFE` written as its Python escape (``\\x1b``, ``\\n``, ``\\u202e``):
    what reaches the terminal shows what the file holds and can drive nothing. Other text (``é``, ``→``) is kept."""
    if text.isprintable():  # the common case: no character to look at
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _UNSAFE else c for c in text)


def _escape(c: str) -> str:
    o = ord(c)
    return _NAMED.get(c) or (f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")


def terminal_text(message: str) -> str:
    """A message as the command line prints it: `printable`, except the newlines that begin one of its own
    continuation lines (indented: ``   = help: ...``, `` 12 | ...``). Every message seqdsl renders keeps its lines
    after the first indented, so a newline quoted from a file (which would start a line such as a forged
    ``fake.yaml:9:9: error``) is written ``\\n`` instead."""
    first, *rest = message.split("\n")
    out = [printable(first)]
    for line in rest:
        out.append(("\n" if line.startswith(" ") else "\\n") + printable(line))
    return "".join(out)
