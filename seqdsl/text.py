"""Spec text that is copied into what a build writes as *data* (ONNX doc strings and metadata, build.json):
the one place that makes it plain, printable and bounded.

Spec text is untrusted. Here it never becomes source code (``model.py`` takes names only as checked identifiers
and other text only through `seqdsl.naming.escape`),
but a doc string is shown by tools such as Netron and onnx's printer: control and bidirectional-override
characters could make it display something other than what it holds, and an unbounded one would bloat the file.
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
