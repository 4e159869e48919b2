#!/usr/bin/env python
"""seqdsl benchmarks (issues 6 and 12): what the compiled specs cost against torch.nn and hand-written PyTorch.

    python benchmarks/run.py                 # everything: about 3.5 minutes on a quiet 2-core CPU machine
    python benchmarks/run.py --quick         # 1 warm-up, 3 rounds, short builds only (about a minute)
    python benchmarks/run.py --only rnn      # one workload (several: --only rnn,onnx); the list: --help
    python benchmarks/run.py --threads 1     # torch and onnxruntime intra-op threads (default: usable cores)
    python benchmarks/run.py --only peephole --compile   # also torch.compile the peephole module (~2 min)
    python benchmarks/run.py --tiny --reps 1 # tiny sizes: checks every row runs (the smoke test's), no timing

One workload is one module of benchmarks/workloads/ (a new row is one small file there); the timing, the rows
and the tables are benchmarks/harness.py. Both sides of every comparison run in this one process, fp32, on
the CPU, modules in eval mode. Forward rows run under torch.no_grad(); training-step rows run forward +
backward of loss = sum(first output), gradients cleared before each step, no optimizer step. Each variant is
warmed up, then the variants of one workload are timed in alternation (one call of each per round, the order
rotating) so that drift of the machine hits them alike. Tables give the median, the interquartile range and
the min; ratio = median(ours) / median(reference), "met" when at or below the target (``*``: the ratio of mins
says otherwise, i.e. within noise); "x GEMM floor" = median(ours) / median(the step's matrix products alone).
Every comparison checks that both sides compute the same thing (max |difference| of the outputs; for a
training step, of d loss / d input), says what each side really runs (torch kernel or generic loop, read from
the generated source; ONNX op or Scan, read from the graph), and reports how much of the CPU other processes
took while it was timed: on a shared machine, rerun when that is more than a few percent. The top table
(workload | now | target | status) is printed in Markdown, ready for BENCHMARKS.md; ``--json`` writes every
row and time.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # compilers/ and benchmarks/ live at the repository root

from benchmarks.harness import Config, Report, load_average, machine, print_report, usable_cores, \
    versions  # noqa: E402
from benchmarks.workloads import discover  # noqa: E402


def parse(argv: list[str] | None, names: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 warm-up, 3 rounds, short builds only")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes and builds: every row runs, nothing is "
                                                        "measured (the smoke test's configuration)")
    ap.add_argument("--only", help=f"comma-separated workloads among {', '.join(names)}")
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads "
                                                              "(default: the usable cores)")
    ap.add_argument("--reps", type=int, default=None, help="timed rounds (default 15; 3 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 3; 1 with --quick)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the generic peephole module")
    ap.add_argument("--unroll-session-cap", type=int, default=128,
                    help="longest unrolled T opened in onnxruntime and built (default 128; 512 takes minutes)")
    ap.add_argument("--json", type=Path, default=None, help="write every row (times, ratios, labels) here")
    args = ap.parse_args(argv)
    args.selected = names if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in args.selected if n not in names]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; choose among {names}")
    return args


def main(argv: list[str] | None = None) -> Report:
    workloads = discover()
    args = parse(argv, list(workloads))
    fast = args.quick or args.tiny
    cfg = Config(reps=args.reps if args.reps is not None else (3 if fast else 15),
                 warmup=args.warmup if args.warmup is not None else (1 if fast else 3),
                 threads=args.threads or usable_cores(), quick=args.quick, tiny=args.tiny, compile=args.compile,
                 unroll_session_cap=args.unroll_session_cap)
    torch.set_num_threads(cfg.threads)
    command = f"python benchmarks/run.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    started_at = datetime.datetime.now(datetime.timezone.utc)
    start_load = load_average()
    print(f"# seqdsl benchmarks, {started_at:%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")
    print(versions())
    print(f"threads: torch {torch.get_num_threads()}, onnxruntime intra_op {cfg.threads}, inter_op 1; "
          f"warm-up {cfg.warmup}, rounds {cfg.reps}{'; TINY sizes: not a measurement' if cfg.tiny else ''}")
    print(f"command: {command}")
    print(f"load average at start (1, 5, 15 min): {start_load}")
    report = Report()
    started = time.perf_counter()
    for name in args.selected:
        module = workloads[name]
        t0, cpu0 = time.perf_counter(), time.process_time()
        print(f"\n[{name}] {module.__doc__.strip().splitlines()[0]}", flush=True)
        module.run(report, cfg)
        print(f"  ({time.perf_counter() - t0:.0f} s, {time.process_time() - cpu0:.0f} s of this process's CPU; load "
              f"average now {load_average()})", flush=True)
    total = time.perf_counter() - started
    others = [r.ours_t.others for r in report.rows if r.ours_t.others == r.ours_t.others]
    report.header = [
        f"machine: {machine()}; {versions()}",
        f"threads: {cfg.threads} (torch and onnxruntime intra-op), fp32, CPU; warm-up {cfg.warmup}, "
        f"{cfg.reps} alternating rounds" + ("; TINY sizes: not a measurement" if cfg.tiny else ""),
        f"command: `{command}`, started {started_at:%Y-%m-%d %H:%M} UTC, took {total:.0f} s",
        f"load average (1, 5, 15 min) at start {start_load}, at end {load_average()}; other processes took "
        + (f"{min(others):.0%}-{max(others):.0%} of the CPU while rows were timed" if others else "unknown"),
        "ratio = median(ours) / median(reference) (ratio of mins in brackets); forward under no_grad; "
        "training step = forward + backward of sum(first output), no optimizer step",
    ]
    print_report(report)
    print(f"\nTotal {total:.0f} s")
    if args.json:
        report.write_json(args.json)
        print(f"rows written to {args.json}")
    return report


if __name__ == "__main__":
    main()
