"""Threads: 1 against 2 for a training step of a spec's module, by model size, on the machine as found and loaded.

    python benchmarks/threads.py                 # the table for BENCHMARKS.md ("Threads")
    python benchmarks/threads.py --json out.json --reps 5 --loads as-is

Each row is a forward and backward pass over T steps of ``to_module`` (a recognised LSTM, which runs torch's own
kernel, and the peephole LSTM, a generic loop of small ops), timed with 1 and 2 threads in alternating rounds in
one process, so that drift of a shared machine hits both sides alike. "as-is" is the machine as found (its load
average is printed: a shared machine is not quiet); "loaded" adds one busy-loop process per core (at the
benchmark's own priority), the situation of the issue's report. The work of a row is what
`seqdsl.compilers.threads.step_work` counts: 2 · parameters · batch FLOP per step. The rule in
`seqdsl.compilers.threads` is read off these rows: the smallest work at which 2 threads were faster.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import seqdsl  # noqa: E402
from seqdsl.compilers.threads import step_work  # noqa: E402
from seqdsl.compilers.torch_module import to_module  # noqa: E402

SPECS = {"lstm (torch.lstm)": ROOT / "specs" / "lstm.yaml",
         "peephole (generic loop)": ROOT / "specs" / "lstm_peephole.yaml"}
HIDDEN = (16, 64, 256, 1024)
BATCH = (1, 8, 64)
TARGET_FLOP = 2e9  # per timed call: T is chosen so that a call does about this much work (3 to 50 steps)


def _busy() -> None:
    while True:
        pass


def _timed(net: torch.nn.Module, x: torch.Tensor, at_least: float = 0.1) -> float:
    """Seconds per call, over as many calls as take ``at_least`` seconds."""
    calls, start = 0, time.perf_counter()
    while True:
        out = net(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= at_least:
            return elapsed / calls


def row(spec: Path, hidden: int, batch: int, reps: int) -> dict[str, float]:
    model = seqdsl.load(spec, sizes={"d": hidden, "h": hidden})
    net = to_module(model)
    work = step_work(model.param_count, batch)
    steps = int(min(50, max(3, TARGET_FLOP / (3 * work))))  # forward and backward: about 3x the forward's work
    x = torch.randn(batch, steps, hidden)
    times: dict[int, list[float]] = {1: [], 2: []}
    for threads in (1, 2):  # warm-up
        torch.set_num_threads(threads)
        _timed(net, x, 0.0)
    for _ in range(reps):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            times[threads].append(_timed(net, x) / steps)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    return {"hidden": hidden, "batch": batch, "steps": steps, "mflop_per_step": work / 1e6,
            "ms_per_step_1": one * 1e3, "ms_per_step_2": two * 1e3, "two_over_one": two / one}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--loads", default="as-is,loaded", help="as-is, loaded or both (default)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"# {cores} cores; torch {torch.__version__}; load average before: {os.getloadavg()[0]:.1f}")
    rows = []
    for load in args.loads.split(","):
        busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(cores if load == "loaded" else 0)]
        for p in busy:
            p.start()
        try:
            for name, spec in SPECS.items():
                for hidden in HIDDEN:
                    for batch in BATCH:
                        r = {"load": load, "spec": name, **row(spec, hidden, batch, args.reps),
                             "loadavg": os.getloadavg()[0]}
                        rows.append(r)
                        print(f"{load:7} {name:24} h={hidden:<5} B={batch:<3} {r['mflop_per_step']:9.2f} MFLOP/step  "
                              f"1 thread {r['ms_per_step_1']:8.3f} ms  2 threads {r['ms_per_step_2']:8.3f} ms  "
                              f"2/1 = {r['two_over_one']:.2f}  (load {r['loadavg']:.1f})", flush=True)
        finally:
            for p in busy:
                p.terminate()
                p.join()
    for load in args.loads.split(","):
        faster = [r["mflop_per_step"] for r in rows if r["load"] == load and r["two_over_one"] < 0.9]
        slower = [r["mflop_per_step"] for r in rows if r["load"] == load and r["two_over_one"] >= 0.9]
        print(f"# {load}: 2 threads >10% faster from {min(faster, default=float('nan')):.2f} MFLOP/step; "
              f"not faster up to {max(slower, default=float('nan')):.2f} MFLOP/step")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
