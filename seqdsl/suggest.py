"""The one "did you mean" rule: the known name fewest edits away, where swapping two neighbouring characters is one
edit (optimal string alignment distance), as typing mistakes are: `stpe` is `step`, not `stop`.

Fifteen lines of dynamic programming, rather than a dependency (rapidfuzz has it, but nothing else here needs it).
The work is bounded, whatever the spec holds: names longer than `MAX_LENGTH` get and give no suggestion (nobody
mistypes one of 2,000 characters into another), a candidate whose length alone puts it beyond the limit is never
compared, a comparison fills only the band of its table within the limit of the diagonal and stops at the first
row beyond the limit, the limit falls to the best distance found so far, and one search fills at most `MAX_WORK`
cells.
"""

from __future__ import annotations

import os
from typing import Iterable


#: The longest name that is compared at all: a hint is for a typing mistake in a name a person types.
MAX_LENGTH = 64
#: The most cells of edit-distance tables one search fills (a few tenths of a second of CPU).
MAX_WORK = 1_000_000


def edit_distance(a: str, b: str, limit: int | None = None) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and adjacent transpositions. With
    ``limit``, any distance above it comes back as ``limit + 1``: only the cells within ``limit`` of the diagonal
    are computed (any other is beyond it), and the table stops at the first row with every cell beyond it."""
    far = len(a) + len(b) + 1 if limit is None else limit + 1
    band = far  # cells further than this from the diagonal are at least `far` edits away
    before, row = None, [j if j < band else far for j in range(len(b) + 1)]
    for i in range(1, len(a) + 1):
        current = [i if i < band else far] + [far] * len(b)
        for j in range(max(1, i - band + 1), min(len(b), i + band - 1) + 1):
            cost = a[i - 1] != b[j - 1]
            value = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + cost)
            if before is not None and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                value = min(value, before[j - 2] + 1)
            current[j] = min(value, far)
        # a cell is at least the least of the row above it or, through a swap, of the row two above plus one
        if limit is not None and min(current) > limit and min(row) > limit:
            return far
        before, row = row, current
    return row[-1]


def closest(name: str, candidates: Iterable[str], fold_case: bool = False) -> str | None:
    """The candidate nearest ``name``, or None when none is near: at most one edit per three characters (one at
    least), and fewer edits than the longer of the two has characters (`x` suggests nothing for `y`). Ties go to
    the same letters (a swap), then the nearer length, then the longer common start, then alphabetical order.
    With ``fold_case`` case differences are free."""
    def key(text: str) -> str:
        return text.casefold() if fold_case else text

    if len(name) > MAX_LENGTH:
        return None
    target, best, best_rank = key(name), None, None
    limit = max(1, len(name) // 3)
    work = 0
    # a length difference beyond the limit cannot be near: those are never compared
    for candidate in sorted({c for c in candidates if abs(len(c) - len(name)) <= limit and len(c) <= MAX_LENGTH}):
        reach = limit if best_rank is None else best_rank[0]  # a farther one than the best so far cannot win
        if abs(len(candidate) - len(name)) > reach:
            continue
        work += len(target) * min(len(candidate) + 1, 2 * reach + 1)  # the cells of the band, at most
        if work > MAX_WORK:
            break  # thousands of look-alike names: the best among the first is hint enough
        d = edit_distance(target, key(candidate), reach)
        if d <= reach and d < max(len(name), len(candidate)):
            rank = (d, sorted(target) != sorted(key(candidate)), abs(len(candidate) - len(name)),
                    -len(os.path.commonprefix([target, key(candidate)])))
            if best_rank is None or rank < best_rank:
                best, best_rank = candidate, rank
    return best
