"""What a run keeps: the metrics file and the loss/accuracy plot; and which progress view a run shows.

On a terminal the progress is Lightning's rich bar; when stderr is not a terminal, or under CI (``CI`` set), it is
one plain line per validation (`run`), which logs and CI keep readably. Metrics go to
``metrics.csv`` or ``metrics.jsonl`` (one row per logged step; validation columns empty between validations) and
the plot to ``metrics.png`` (matplotlib, Agg: no display needed). Both are written by `seqdsl.files` (whole,
atomically, never through a link); a row is appended only to the plain file the log wrote (``O_NOFOLLOW``),
else the file is written whole again in place of what is there.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
import sys
from pathlib import Path
from typing import Any

from seqdsl import files

COLUMNS = ["step", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "grad_norm", "lr", "examples_per_s",
           "seconds"]
Row = dict[str, Any]


def progress_mode(asked: str) -> str:
    """``auto``: a bar on a terminal outside CI, lines otherwise."""
    if asked != "auto":
        return asked
    interactive = sys.stderr.isatty() and not os.environ.get("CI") and os.environ.get("TERM") != "dumb"
    return "bar" if interactive else "lines"


class MetricsLog:
    """``metrics.csv`` or ``metrics.jsonl``; on resume, the rows up to the checkpoint's step are kept."""

    def __init__(self, path: Path, keep_until: int | None = None) -> None:
        self.path = path
        self.jsonl = path.suffix == ".jsonl"
        self.rows: list[Row] = [r for r in self._read() if r["step"] <= keep_until] if keep_until is not None else []
        self._rewrite()

    def write(self, row: Row) -> None:
        row = {k: row.get(k) for k in COLUMNS}
        self.rows.append(row)
        self._append(row)

    def _rewrite(self) -> None:
        """The whole file, through seqdsl's one writer (a link at the path is replaced, never followed)."""
        header = "" if self.jsonl else _csv_line(COLUMNS)
        files.write_text(self.path, header + "".join(map(self._line, self.rows)))

    def _append(self, row: Row) -> None:
        """One row at the end of the file this log wrote; if something else is at the path now (a link, not a
        file), it is never opened: the file is written whole again in its place."""
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.path, flags)
        except OSError:  # ELOOP (a link), ENOENT (removed), ENXIO (a FIFO) and the like
            return self._rewrite()
        with os.fdopen(fd, "wb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                f.close()
                return self._rewrite()
            f.write(self._line(row).encode("utf-8"))

    def _line(self, row: Row) -> str:
        if self.jsonl:
            return json.dumps(row) + "\n"
        return _csv_line(["" if row[k] is None else row[k] for k in COLUMNS])

    def _read(self) -> list[Row]:
        try:  # only the file an earlier run wrote: never read through a link
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return []
        with open(fd, newline="", encoding="utf-8") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return []
            if self.jsonl:
                rows = [json.loads(line) for line in f if line.strip()]
            else:
                rows = [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()}
                        for r in csv.DictReader(f)]
        for row in rows:
            row["step"], row["epoch"] = int(row["step"]), int(row["epoch"])
        return rows


def _csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()


def plot(rows: list[Row], path: Path, title: str, loss_name: str, accuracy: bool, baseline: float | None) -> None:
    """Loss (and accuracy, for classification) against the step, training and validation; the trivial model's
    score as a dashed line (MSE of predicting the training mean, or the accuracy of the training data's most
    frequent class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if accuracy else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.8), squeeze=False)
    steps = [r["step"] for r in rows]

    def series(ax: Any, key: str, label: str) -> None:
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        if points:
            ax.plot(*zip(*points), label=label, marker="o" if key.startswith("val") and len(points) < 30 else None)

    ax = axes[0][0]
    series(ax, "loss", "train")
    series(ax, "val_loss", "validation")
    if baseline is not None and not accuracy:
        ax.axhline(baseline, linestyle="--", color="gray", label="predict the mean")
    ax.set_xlabel("step")
    ax.set_ylabel(loss_name)
    if loss_name == "MSE" and rows and all(r["loss"] > 0 for r in rows):
        ax.set_yscale("log")
    if accuracy:
        ax2 = axes[0][1]
        series(ax2, "accuracy", "train")
        series(ax2, "val_accuracy", "validation")
        if baseline is not None:
            ax2.axhline(baseline, linestyle="--", color="gray", label="most frequent training class")
        ax2.set_xlabel("step")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1)
        ax2.legend()
    ax.legend()
    fig.suptitle(title)
    if steps:
        fig.tight_layout()
    files.write(path, lambda f: fig.savefig(f, format="png", dpi=100))  # never through a link at the path
    plt.close(fig)
