"""The seeds' claim, measured: a vanilla RNN fails as the dependency grows, gated cells (LSTM, GRU) hold, and an
IRNN (ReLU, identity init, clipping) is a simple RNN that can learn long dependencies.

Trains Elman RNN, LSTM, GRU and IRNN specs (benchmarks/specs/) with `seqdsl.compilers.training.train` (what
`seqdsl train` runs) on the adding problem, LeCun's brackets task and the copy-memory task at growing lengths (for
copy: delays), one CPU thread each, the same steps, batch and optimiser for every cell of a task, and writes
``results.json``, ``long_dependencies.png`` and a Markdown table (``--table`` prints it from the results) into
``benchmarks/results/``; the data and each run's metrics and checkpoint go to a temporary folder (``--work``)::

    python benchmarks/long_dependencies.py                          # every task, the lengths below (~30 min)
    python benchmarks/long_dependencies.py --tasks adding --lengths 10 50 --steps 300
    python benchmarks/long_dependencies.py --tasks copy             # the copy task alone (~16 min)
    python benchmarks/long_dependencies.py --table

Copy is scored on its recall phase only (the data's ``target_mask``: the K = 10 steps after the delimiter), where
a model without memory guesses: accuracy 1/8, cross entropy ln 8.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import seqdsl  # noqa: E402
from seqdsl.compilers.training import TrainOptions, train  # noqa: E402
from seqdsl import tasks  # noqa: E402
from seqdsl.errors import SpecError  # noqa: E402

SPECS = Path(__file__).resolve().parent / "specs"
CELLS = ["rnn", "irnn", "gru", "lstm", "lstm_fb1"]  # lstm_fb1: copy only (forget-gate bias 1)
LABELS = {"rnn": "Elman RNN (tanh)", "irnn": "IRNN (ReLU, U = I)", "gru": "GRU", "lstm": "LSTM",
          "lstm_fb1": "LSTM, forget-gate bias 1"}
TASKS = ["adding", "brackets", "copy"]
DEFAULT_LENGTHS = {"adding": [10, 50, 100, 200], "brackets": [20, 60], "copy": [10, 20, 40]}
DEFAULT_STEPS = {"adding": 1500, "brackets": 1500, "copy": 2000}
DEFAULT_LR = {"adding": 1e-2, "brackets": 1e-2, "copy": 3e-3}
TITLES = {"adding": "adding problem", "brackets": "brackets (seed 003)", "copy": "copy memory (10 symbols)"}
TRAIN_EXAMPLES, VAL_EXAMPLES = 10_000, 1_000


def spec_path(task: str, cell: str) -> Path:
    """The spec of ``cell`` on ``task``: benchmarks/specs/, or the shipped specs/adding_lstm.yaml."""
    shipped = ROOT / "specs" / f"{task}_{cell}.yaml"
    return shipped if shipped.exists() else SPECS / f"{task}_{cell}.yaml"


def run_one(task: str, length: int, cell: str, steps: int, lr: float, data: Path, work: Path) -> dict:
    train_file, val_file = data / f"{task}_{length}_train.npz", data / f"{task}_{length}_val.npz"
    if not train_file.exists():
        tasks.save(tasks.generate(task, TRAIN_EXAMPLES, length, seed=0), str(train_file))
        tasks.save(tasks.generate(task, VAL_EXAMPLES, length, seed=1), str(val_file))
    spec = spec_path(task, cell)
    row = {"task": task, "length": length, "cell": cell, "steps": steps, "lr": lr, "batch_size": 32, "clip": 1.0,
           "seed": 0, "h": seqdsl.load(spec).sizes.get("h")}
    began = time.perf_counter()
    try:
        result = train(spec, train_file, work / f"{task}_{length}_{cell}", val=val_file,
                       options=TrainOptions(steps=steps, lr=lr, batch_size=32, clip=1.0, seed=0, threads=1,
                                            progress="quiet", build=False, eval_every=max(1, steps // 5),
                                            work_dir=work / f"{task}_{length}_{cell}.train", fresh=True))
    except SpecError as exc:
        if exc.code != "E0706":
            raise
        row.update(diverged=exc.message, seconds=time.perf_counter() - began)
        return row
    assert result.val is not None
    row.update(val_loss=result.val["loss"], val_accuracy=result.val.get("accuracy"), baseline=result.baseline,
               train_loss=result.train["loss"], seconds=result.seconds)
    if task == "copy":
        row["baseline_loss"] = memoryless_loss(train_file, val_file)
    return row


def memoryless_loss(train_file: Path, val_file: Path) -> float:
    """The cross entropy, on the validation's recalled symbols, of the best model without memory: the training
    data's class frequencies among the recalled symbols (≈ ln 8 ≈ 2.079)."""
    with np.load(train_file) as f:
        counts = np.bincount(f["target"][f["target_mask"]], minlength=tasks.COPY_VOCAB).astype(np.float64)
    with np.load(val_file) as f:
        recalled = f["target"][f["target_mask"]]
    return float(-np.log(counts[recalled] / counts.sum()).mean())


def variants(rows: list[dict]) -> list[tuple[str, float]]:
    """The (cell, learning rate) pairs in ``rows``, cells in `CELLS` order."""
    found = {(r["cell"], r["lr"]) for r in rows}
    return sorted(found, key=lambda v: (CELLS.index(v[0]), -v[1]))


def label(cell: str, lr: float, rows: list[dict]) -> str:
    """The cell's name, with its learning rate when the results hold several for it."""
    several = len({r["lr"] for r in rows if r["cell"] == cell}) > 1
    return f"{LABELS[cell]}, lr {lr:g}" if several else LABELS[cell]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    task_names = [t for t in TASKS if any(r["task"] == t for r in rows)]
    colours = {cell: f"C{i}" for i, cell in enumerate(CELLS)}  # one colour per cell in every panel
    fig, axes = plt.subplots(1, len(task_names), figsize=(6 * len(task_names), 4.2), squeeze=False)
    for ax, task in zip(axes[0], task_names):
        mine = [r for r in rows if r["task"] == task]
        lengths = sorted({r["length"] for r in mine})
        key = "val_loss" if task == "adding" else "val_accuracy"
        drawn: set[str] = set()
        for cell, lr in variants(mine):
            points = sorted((r["length"], r[key]) for r in mine
                            if (r["cell"], r["lr"]) == (cell, lr) and r.get(key) is not None)
            if points:  # a cell's second learning rate: the same colour, dotted
                ax.plot(*zip(*points), marker="o", color=colours[cell], linestyle=":" if cell in drawn else "-",
                        label=label(cell, lr, mine))
                drawn.add(cell)
        base = [(r["length"], r["baseline"]) for r in mine if r.get("baseline") is not None]
        if base:
            best = {length: value for length, value in sorted(base)}
            ax.plot(list(best), list(best.values()), "k--", label="trivial baseline")
        ax.set_xscale("log")
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("delay T" if task == "copy" else "sequence length T")
        ax.set_title(TITLES[task])
        if task == "adding":
            ax.set_yscale("log")
            ax.set_ylabel("validation MSE (lower is better)")
        elif task == "copy":
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("validation accuracy on the recalled symbols")
        else:
            ax.set_ylim(0.4, 1.02)
            ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: list[dict]) -> str:
    out = []
    metrics = {"adding": "validation MSE (baseline: predict the mean)",
               "brackets": "validation accuracy (baseline: majority class)",
               "copy": "validation accuracy / cross entropy on the recalled symbols (baseline: no memory)"}
    for task in TASKS:
        mine = [r for r in rows if r["task"] == task]
        if not mine:
            continue
        lengths = sorted({r["length"] for r in mine})
        out.append(f"**{task}**, {metrics[task]}; steps {mine[0]['steps']}, seconds per run in brackets\n")
        out.append("| cell | " + " | ".join(f"T={n}" for n in lengths) + " |")
        out.append("| --- |" + " --- |" * len(lengths))
        for cell, lr in variants(mine):
            cells = []
            for n in lengths:
                r = next((r for r in mine if (r["cell"], r["lr"]) == (cell, lr) and r["length"] == n), None)
                if r is None:
                    cells.append("")
                elif "diverged" in r:
                    cells.append(f"diverged ({r['seconds']:.0f} s)")
                elif task == "copy":
                    cells.append(f"{r['val_accuracy']:.4f} / {r['val_loss']:.3f} ({r['seconds']:.0f} s)")
                else:
                    value = r["val_loss"] if task == "adding" else r["val_accuracy"]
                    cells.append(f"{value:.4f} ({r['seconds']:.0f} s)")
            out.append(f"| {label(cell, lr, mine)} | " + " | ".join(cells) + " |")
        base = {r["length"]: _baseline(r) for r in mine if r.get("baseline") is not None}
        out.append("| trivial baseline | " + " | ".join(base.get(n, "") for n in lengths) + " |")
        out.append("")
    return "\n".join(out)


def _baseline(row: dict) -> str:
    if row["task"] == "copy":
        return f"{row['baseline']:.4f} / {row.get('baseline_loss', math.nan):.3f}"
    return f"{row['baseline']:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--lengths", nargs="+", type=int, help="the lengths (default: per task, see the top)")
    parser.add_argument("--cells", nargs="+", default=CELLS[:4], choices=CELLS)
    parser.add_argument("--steps", type=int, help="optimiser steps per run (default: per task)")
    parser.add_argument("--lr", type=float,
                        help="Adam's learning rate, the same for every cell (default: per task, see the top)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "seqdsl-long-dependencies",
                        help="where the generated data and each run's metrics and checkpoint go")
    parser.add_argument("--table", action="store_true",
                        help="print the Markdown table of --out/results.json and redraw its plot (no training)")
    args = parser.parse_args()
    results = args.out / "results.json"
    if args.table:
        runs = json.loads(results.read_text())["runs"]
        plot(runs, args.out / "long_dependencies.png")
        print(table(runs))
        return
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    data, work = args.work / "data", args.work / "runs"
    data.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = json.loads(results.read_text())["runs"] if results.exists() else []
    machine = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or
               platform.machine(), "threads": 1, "command": " ".join(sys.argv)}
    for task in args.tasks:
        for length in args.lengths or DEFAULT_LENGTHS[task]:
            for cell in args.cells:
                lr = args.lr or DEFAULT_LR[task]
                row = run_one(task, length, cell, args.steps or DEFAULT_STEPS[task], lr, data, work)
                key = (task, length, cell, lr)
                runs = [r for r in runs if (r["task"], r["length"], r["cell"], r["lr"]) != key] + [row]
                results.write_text(json.dumps({"machine": machine, "runs": runs}, indent=1) + "\n")
                print(json.dumps(row), flush=True)
    plot(runs, args.out / "long_dependencies.png")
    print(table(runs))


if __name__ == "__main__":
    main()
