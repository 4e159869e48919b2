"""What a run keeps: the metrics file and the loss/accuracy plot; and which progress view a run shows.

On a terminal the progress is Lightning's rich bar; when stderr is not a terminal, or under CI (``CI`` set), it is
one plain line per validation (`run`), which logs and CI keep readably. Metrics go to
``metrics.csv`` or ``metrics.jsonl`` (one row per logged step; validation columns empty between validations) and
the plot to ``metrics.png`` (matplotlib, Agg: no display needed).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

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
        with self.path.open("w", newline="") as f:
            if not self.jsonl:
                csv.writer(f).writerow(COLUMNS)
        for row in self.rows:
            self._append(row)

    def write(self, row: Row) -> None:
        row = {k: row.get(k) for k in COLUMNS}
        self.rows.append(row)
        self._append(row)

    def _append(self, row: Row) -> None:
        with self.path.open("a", newline="") as f:
            if self.jsonl:
                f.write(json.dumps(row) + "\n")
            else:
                csv.writer(f).writerow(["" if row[k] is None else row[k] for k in COLUMNS])

    def _read(self) -> list[Row]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as f:
            if self.jsonl:
                rows = [json.loads(line) for line in f if line.strip()]
            else:
                rows = [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()}
                        for r in csv.DictReader(f)]
        for row in rows:
            row["step"], row["epoch"] = int(row["step"]), int(row["epoch"])
        return rows


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
    fig.savefig(path, dpi=100)
    plt.close(fig)
