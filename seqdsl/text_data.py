"""`seqdsl data text`: a text file as next-token data for a character- or byte-level language model (numpy only).

The file is one stream of tokens: its characters (``level="char"``, strict UTF-8, a leading byte-order mark
dropped) or its bytes (``level="byte"``). The stream is split by position, not at random: the first
``1 - val_fraction`` of it trains, the rest validates, so no validation text is seen in training. Each part is cut
into windows of ``window`` tokens every ``stride`` tokens (no window crosses the split); ``x`` is a window and
``target`` the same window one token later (``target[i, t] = x[i, t + 1]``, and the last target is the token after
the window): int64 ``(N, window)`` both, what `seqdsl train` reads for a per-step cross entropy.

Token ids: 0 is reserved (padding, and a character of the validation part the training part never has: unknown);
``level="char"``: ids 1..V are the training part's distinct characters in code-point order; ``level="byte"``: id
``b + 1`` is byte ``b`` (257 ids). The `Vocabulary` is saved beside the data as JSON: ``tokens[i]`` is the text of id
``i`` (``null`` for 0; for bytes, the byte's value).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .datafiles import MAX_DATA_BYTES, shown, size_text

LEVELS = ("char", "byte")
MAX_VOCAB = 1024  # ``--max-vocab``: distinct characters beyond it are refused (a binary file, a mixed corpus)
PAD = 0
TOKEN_BYTES = 8  # int64 ids


class TextDataError(ValueError):
    """A text file or option that cannot make data; the message is one line (the CLI prints it, exit 2)."""


@dataclass(frozen=True)
class Vocabulary:
    level: str
    tokens: tuple[Any, ...]  # the text (char) or value (byte) of ids 1..V

    @property
    def size(self) -> int:
        """The number of ids, 0 included: the embedding table's and the output's size."""
        return len(self.tokens) + 1

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "size": self.size, "padding_id": PAD, "unknown_id": PAD,
                "tokens": [None, *self.tokens]}


@dataclass
class TextData:
    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray] | None
    vocabulary: Vocabulary
    tokens: int  # in the whole file
    unknown: int  # validation tokens that became id 0


def read_tokens(path: Path, level: str, max_bytes: int = MAX_DATA_BYTES) -> np.ndarray:
    """The file's tokens as code points (char) or byte values (byte), int64; reads at most ``max_bytes``."""
    if level not in LEVELS:
        raise TextDataError(f"--level must be char or byte, got {shown(level)!r}")
    file = shown(path)
    if not path.is_file():
        raise TextDataError(f"{file}: no such file" if not path.exists() else f"{file}: not a file")
    try:
        with path.open("rb") as fp:
            raw = fp.read(max_bytes // TOKEN_BYTES + 1)
    except OSError as exc:
        raise TextDataError(f"{file}: cannot read it ({shown(exc.strerror or str(exc))})") from None
    if len(raw) > max_bytes // TOKEN_BYTES:  # each token becomes 8 bytes of ids
        raise TextDataError(f"{file}: larger than {size_text(max_bytes // TOKEN_BYTES)}, whose tokens would fill "
                            f"--max-data {size_text(max_bytes)} (give a smaller file, or raise --max-data)")
    if not raw:
        raise TextDataError(f"{file}: empty: no text to make data from")
    if level == "byte":
        return np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise TextDataError(f"{file}:{line}:{col}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                            "--level char reads UTF-8 text (--level byte reads any file)") from None
    if not text:
        raise TextDataError(f"{file}: empty: no text to make data from")
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)


def windows(ids: np.ndarray, window: int, stride: int) -> dict[str, np.ndarray]:
    """``x`` and ``target`` (int64 ``(N, window)``) of the windows of ``ids``, one every ``stride`` tokens."""
    count = count_windows(len(ids), window, stride)
    view = np.lib.stride_tricks.sliding_window_view(ids, window + 1)[::stride][:count]
    return {"x": np.ascontiguousarray(view[:, :-1]), "target": np.ascontiguousarray(view[:, 1:])}


def count_windows(tokens: int, window: int, stride: int) -> int:
    return 0 if tokens < window + 1 else (tokens - window - 1) // stride + 1


def make(path: Path, level: str = "char", window: int = 64, stride: int | None = None, val_fraction: float = 0.1,
         max_vocab: int = MAX_VOCAB, max_bytes: int = MAX_DATA_BYTES) -> TextData:
    """The training and validation windows of the text file at ``path`` and their vocabulary (see the module
    docstring). Every bound is checked before the windows are made. Raises `TextDataError`."""
    stride = window if stride is None else stride
    if window < 1 or stride < 1:
        raise TextDataError("--window and --stride must be positive")
    if not 0 <= val_fraction < 1:
        raise TextDataError(f"--val-fraction must lie in [0, 1), got {val_fraction}")
    stream = read_tokens(path, level, max_bytes)
    file = shown(path)
    unit = "characters" if level == "char" else "bytes"
    n_val = int(round(len(stream) * val_fraction)) if val_fraction else 0
    parts = {"training": stream[: len(stream) - n_val]}
    if val_fraction:
        parts["validation"] = stream[len(stream) - n_val:]
    for part, tokens in parts.items():
        if len(tokens) < window + 1:
            share = f" (the last {val_fraction:g} of the file)" if part == "validation" else ""
            raise TextDataError(f"{file}: the {part} part{share} holds {len(tokens):,} {unit}, fewer than --window + 1 "
                                f"= {window + 1:,}; give a smaller --window"
                                + (" or a larger --val-fraction" if part == "validation" else "")
                                + (" or --val-fraction 0" if part == "training" and val_fraction else ""))
    total = sum(2 * count_windows(len(t), window, stride) * window * TOKEN_BYTES for t in parts.values())
    if total > max_bytes:
        raise TextDataError(f"{file}: the windows would take {size_text(total)}, above --max-data "
                            f"{size_text(max_bytes)}; give a larger --stride, a smaller --window, or raise --max-data")
    train_tokens = parts["training"]
    if level == "byte":
        vocab = Vocabulary("byte", tuple(range(256)))
        ids = {part: tokens + 1 for part, tokens in parts.items()}
        unknown = 0
    else:
        chars = np.unique(train_tokens)
        if len(chars) > max_vocab:
            raise TextDataError(f"{file}: {len(chars):,} distinct characters in the training part, above --max-vocab "
                                f"{max_vocab:,}; use --level byte, or raise --max-vocab")
        vocab = Vocabulary("char", tuple(chr(int(c)) for c in chars))
        ids, unknown = {}, 0
        for part, tokens in parts.items():
            at = np.minimum(np.searchsorted(chars, tokens), len(chars) - 1)
            known = chars[at] == tokens
            ids[part] = np.where(known, at + 1, PAD)
            unknown += int((~known).sum())
    train = windows(ids["training"], window, stride)
    val = windows(ids["validation"], window, stride) if "validation" in ids else None
    return TextData(train, val, vocab, len(stream), unknown)


__all__ = ["LEVELS", "MAX_VOCAB", "PAD", "TextData", "TextDataError", "Vocabulary", "count_windows", "make",
           "read_tokens", "windows"]
