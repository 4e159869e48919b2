"""The one "did you mean" rule: the known name fewest edits away, where swapping two neighbouring characters is one
edit (optimal string alignment distance), as typing mistakes are: `stpe` is `step`, not `stop`.

Fifteen lines of dynamic programming, rather than a dependency (rapidfuzz has it, but nothing else here needs it).
"""

from __future__ import annotations

import os
from typing import Iterable


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and adjacent transpositions."""
    before, row = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            current[j] = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + cost)
            if before is not None and i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
        before, row = row, current
    return row[-1]


def closest(name: str, candidates: Iterable[str], fold_case: bool = False) -> str | None:
    """The candidate nearest ``name``, or None when none is near: at most one edit per three characters (one at
    least), and fewer edits than the longer of the two has characters (`x` suggests nothing for `y`). Ties go to
    the same letters (a swap), then the nearer length, then the longer common start, then alphabetical order.
    With ``fold_case`` case differences are free."""
    def key(text: str) -> str:
        return text.casefold() if fold_case else text

    target, best, best_rank = key(name), None, None
    limit = max(1, len(name) // 3)
    for candidate in sorted(set(candidates)):
        if abs(len(candidate) - len(name)) > limit:
            continue  # cannot be near: skip the table
        d = edit_distance(target, key(candidate))
        if d <= limit and d < max(len(name), len(candidate)):
            rank = (d, sorted(target) != sorted(key(candidate)), abs(len(candidate) - len(name)),
                    -len(os.path.commonprefix([target, key(candidate)])))
            if best_rank is None or rank < best_rank:
                best, best_rank = candidate, rank
    return best
