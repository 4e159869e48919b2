"""The classic long-dependency tasks as data generators (numpy only): what `seqdsl data` writes.

Each generator returns the arrays of one ``.npz`` file, keyed as `seqdsl train` reads them: ``x`` (the input a
spec declares), ``target``, and ``lengths`` (int64 ``(N,)``) when the sequences vary in length (``min_length``
below ``length``; positions at or after a sequence's length are padding, zero). The same seed gives the same
arrays on every machine (numpy's PCG64).

- `adding` (Hochreiter & Schmidhuber 1997, section 5.4; the form of Le et al. 2015): ``x`` float32 ``(N, T, 2)``,
  channel 0 a value in U(0, 1), channel 1 a marker, 1 at exactly two steps (one in each half of the sequence);
  ``target`` float32 ``(N, 1)`` the sum of the two marked values. Predicting the mean, 1, scores an MSE of
  Var(U1 + U2) = 1/6 ≈ 0.167: the trivial baseline.
- `copy_memory` (Hochreiter & Schmidhuber 1997, section 5.2; the form of Arjovsky et al. 2016): ``x`` int64
  ``(N, T + 2K)``: K symbols from 1..8, T - 1 blanks (0), the delimiter 9, K blanks; ``target`` int64 of the same
  shape: blanks, then the K symbols in the last K steps; ``target_mask`` bool of the same shape, True at the last
  K steps: `seqdsl train` scores the recall phase only. There a model with no memory guesses: a cross entropy of
  ln 8 ≈ 2.079 and an accuracy of 1/8 (over all T + 2K steps, with the blanks right, K·ln 8 / (T + 2K)).
- `brackets` (LeCun's example, seed 003: is a program's nesting of braces and parentheses correct?): ``x`` int64
  ``(N, T)`` of tokens ``( ) { }`` (1-4) and other characters (5-9); ``target`` int64 ``(N,)``, 1 when every
  bracket is closed by its own kind in order, 0 when one bracket of a correct sequence was replaced by another
  (which always breaks it: the counts no longer match). Classes are balanced: the trivial baseline is 1/2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .datafiles import write_npz

Arrays = dict[str, np.ndarray]

COPY_SYMBOLS = 8  # symbols 1..8; 0 is the blank, 9 the delimiter
COPY_VOCAB = COPY_SYMBOLS + 2
BRACKET_TOKENS = {"(": 1, ")": 2, "{": 3, "}": 4}
BRACKET_VOCAB = 10  # 0 padding, 1-4 brackets, 5-9 other characters
_OPEN_TO_CLOSE = {1: 2, 3: 4}


class TaskError(ValueError):
    """Arguments a task cannot make data from (the CLI turns it into one line and exit 2)."""


@dataclass(frozen=True)
class Task:
    make: Callable[..., Arrays]
    baseline: str  # what the trivial (memoryless) model scores, for people and plots
    variable_length: bool  # whether ``min_length`` may be below ``length``
    nbytes: Callable[[int, int, bool], int]  # (n, length, lengths written) -> the bytes of the arrays it returns


def adding(n: int, length: int, seed: int = 0, min_length: int | None = None) -> Arrays:
    """The adding problem at ``length`` steps (see the module docstring)."""
    _check(n, length, min_length, least=2)
    rng = np.random.default_rng(seed)
    lengths = _lengths(rng, n, length, min_length, least=2)
    x = np.zeros((n, length, 2), dtype=np.float32)
    steps = np.arange(length)
    valid = steps[None, :] < lengths[:, None]
    x[..., 0] = np.where(valid, rng.random((n, length), dtype=np.float32), 0)
    half = lengths // 2
    first = (rng.random(n) * half).astype(np.int64)  # in [0, n/2)
    second = half + (rng.random(n) * (lengths - half)).astype(np.int64)  # in [n/2, n)
    rows = np.arange(n)
    x[rows, first, 1] = 1
    x[rows, second, 1] = 1
    target = (x[rows, first, 0] + x[rows, second, 0])[:, None].astype(np.float32)
    return _with_lengths({"x": x, "target": target}, lengths, length, min_length)


def copy_memory(n: int, length: int, seed: int = 0, min_length: int | None = None, symbols: int = 10) -> Arrays:
    """The copy-memory task with a delay of ``length`` steps and ``symbols`` symbols to recall."""
    if min_length is not None and min_length != length:
        raise TaskError("copy: the delay is the task's difficulty and is the same for every sequence; "
                        "--min-length does not apply")
    _check(n, length, None, least=1)
    if symbols < 1:
        raise TaskError(f"copy: at least one symbol to recall, got {symbols}")
    rng = np.random.default_rng(seed)
    total = length + 2 * symbols
    x = np.zeros((n, total), dtype=np.int64)
    target = np.zeros((n, total), dtype=np.int64)
    data = rng.integers(1, COPY_SYMBOLS + 1, size=(n, symbols), dtype=np.int64)
    x[:, :symbols] = data
    x[:, symbols + length - 1] = COPY_SYMBOLS + 1
    target[:, -symbols:] = data
    recall = np.zeros((n, total), dtype=np.bool_)
    recall[:, -symbols:] = True
    return {"x": x, "target": target, "target_mask": recall}


def brackets(n: int, length: int, seed: int = 0, min_length: int | None = None) -> Arrays:
    """LeCun's counting example: is the nesting of ``( ) { }`` correct? (see the module docstring)."""
    _check(n, length, min_length, least=4)
    rng = np.random.default_rng(seed)
    lengths = _lengths(rng, n, length, min_length, least=4)
    x = np.zeros((n, length), dtype=np.int64)
    target = np.zeros(n, dtype=np.int64)
    for row, size in enumerate(lengths):
        pairs = int(rng.integers(1, size // 4 + 1))  # brackets fill at most half the characters
        seq = _balanced(rng, pairs)
        balanced = bool(rng.integers(0, 2))
        if not balanced:  # one bracket becomes one of the three others: a count no longer matches
            at = int(rng.integers(0, seq.size))
            seq[at] = rng.choice([t for t in BRACKET_TOKENS.values() if t != seq[at]])
        text = rng.integers(5, BRACKET_VOCAB, size=size, dtype=np.int64)
        where = np.sort(rng.choice(size, size=seq.size, replace=False))
        text[where] = seq
        x[row, :size] = text
        target[row] = int(balanced)
    return _with_lengths({"x": x, "target": target}, lengths, length, min_length)


def is_balanced(tokens: np.ndarray) -> bool:
    """Whether the brackets among ``tokens`` nest correctly (what `brackets` labels 1); other tokens are ignored."""
    stack: list[int] = []
    for token in tokens.tolist():
        if token in _OPEN_TO_CLOSE:
            stack.append(_OPEN_TO_CLOSE[token])
        elif token in (2, 4):
            if not stack or stack.pop() != token:
                return False
    return not stack


def _balanced(rng: np.random.Generator, pairs: int) -> np.ndarray:
    """A uniformly-chosen-at-each-step correct sequence of ``pairs`` pairs of brackets of two kinds."""
    out = np.empty(2 * pairs, dtype=np.int64)
    stack: list[int] = []
    for i in range(2 * pairs):
        remaining = 2 * pairs - i
        if stack and (len(stack) == remaining or rng.random() < 0.5):
            out[i] = stack.pop()
        else:
            opener = 1 if rng.random() < 0.5 else 3
            stack.append(_OPEN_TO_CLOSE[opener])
            out[i] = opener
    return out


def _check(n: int, length: int, min_length: int | None, least: int) -> None:
    if n < 1:
        raise TaskError(f"at least one sequence, got {n}")
    if length < least:
        raise TaskError(f"a length of at least {least} for this task, got {length}")
    if min_length is not None and not least <= min_length <= length:
        raise TaskError(f"--min-length must lie in [{least}, --length={length}], got {min_length}")


def _lengths(rng: np.random.Generator, n: int, length: int, min_length: int | None, least: int) -> np.ndarray:
    if min_length is None or min_length == length:
        return np.full(n, length, dtype=np.int64)
    return rng.integers(max(least, min_length), length + 1, size=n, dtype=np.int64)


def _with_lengths(arrays: Arrays, lengths: np.ndarray, length: int, min_length: int | None) -> Arrays:
    if min_length is not None and min_length != length:
        arrays["lengths"] = lengths
    return arrays


TASKS: dict[str, Task] = {
    "adding": Task(adding, "MSE 1/6 ≈ 0.167 (always predict 1)", variable_length=True,
                   nbytes=lambda n, t, vary: n * t * 2 * 4 + n * 4 + (n * 8 if vary else 0)),
    "copy": Task(copy_memory, "on the recalled symbols (target_mask): cross entropy ln 8 ≈ 2.079, accuracy 1/8",
                 variable_length=False, nbytes=lambda n, t, vary: n * (t + 2 * 10) * (8 + 8 + 1)),
    "brackets": Task(brackets, "accuracy 1/2 (balanced classes)", variable_length=True,
                     nbytes=lambda n, t, vary: n * t * 8 + n * 8 + (n * 8 if vary else 0)),
}

#: ``--seed``: what numpy's generator takes, bounded to 64 bits so that a seed is a plain number everywhere.
MAX_SEED = 2**64 - 1


def output_bytes(task: str, n: int, length: int, min_length: int | None = None) -> int:
    """The bytes of the arrays ``generate`` would return, computed without allocating anything."""
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    return TASKS[task].nbytes(n, length, min_length is not None and min_length != length)


def generate(task: str, n: int, length: int, seed: int = 0, min_length: int | None = None) -> Arrays:
    """The arrays of ``task`` (one of `TASKS`)."""
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    if not 0 <= seed <= MAX_SEED:
        raise TaskError(f"--seed must lie in [0, 2**64 - 1], got {seed}")
    return TASKS[task].make(n, length, seed=seed, min_length=min_length)


def save(arrays: Arrays, path: str) -> None:
    """Write ``arrays`` to an ``.npz`` file, atomically and marked as seqdsl's (`seqdsl.datafiles.write_npz`)."""
    write_npz(arrays, Path(path))


__all__ = ["TASKS", "Task", "TaskError", "MAX_SEED", "adding", "copy_memory", "brackets", "generate", "output_bytes",
           "save", "is_balanced"]
