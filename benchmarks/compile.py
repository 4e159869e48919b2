#!/usr/bin/env python
"""torch.compile of the generated modules against torch.nn's own modules under torch.compile (issue 10).

    python benchmarks/compile.py              # about a minute on a quiet 2-core CPU machine
    python benchmarks/compile.py --rounds 5   # fewer timed rounds; --threads N (default 1)

For each pair, in this one process: the time of the first call of ``torch.compile(module)`` (compilation
included), the time of the first call at another T and B (a recompilation would show here), how many graphs
dynamo compiled in all, and the median time of a compiled call, both sides called in alternation. fp32, forward
only under torch.no_grad(), eval mode, CPU, inductor (torch.compile's default backend). Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import seqdsl  # noqa: E402
from seqdsl.compilers.interop import load_from_torch  # noqa: E402
from seqdsl.compilers.torch_module import to_module  # noqa: E402

B, T, D, H = 32, 128, 256, 256  # the sizes of benchmarks/run.py
B2, T2 = 17, 150  # the second shape: a new batch size and a new length


def first_call(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def measure(name: str, ours: nn.Module, theirs: nn.Module, rounds: int) -> None:
    x, x2 = torch.randn(B, T, D), torch.randn(B2, T2, D)
    rows = {}
    for side, net in (("seqdsl", ours), ("torch.nn", theirs)):
        torch._dynamo.reset()
        before = compiled_graphs()
        compiled = torch.compile(net)
        with torch.no_grad():
            compile_s = first_call(lambda: compiled(x))
            second_s = first_call(lambda: compiled(x2))
            graphs = compiled_graphs() - before
            for _ in range(3):
                compiled(x)
        rows[side] = (compiled, compile_s, second_s, graphs)
    with torch.no_grad():
        diff = (rows["seqdsl"][0](x)[0] - rows["torch.nn"][0](x)[0]).abs().max().item()
        times: dict[str, list[float]] = {"seqdsl": [], "torch.nn": []}
        for r in range(rounds):
            for side in (("seqdsl", "torch.nn") if r % 2 == 0 else ("torch.nn", "seqdsl")):
                gc.collect()
                t0 = time.perf_counter()
                rows[side][0](x)
                times[side].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    for side in ("seqdsl", "torch.nn"):
        _, compile_s, second_s, graphs = rows[side]
        print(f"{name:<26} {side:<9} compile {compile_s:6.2f} s  new B,T {second_s:6.3f} s  graphs {graphs:2d}  "
              f"compiled call {med[side]:7.2f} ms (min {low[side]:6.2f})")
    print(f"{name:<26} ratio seqdsl / torch.nn: compiled call {med['seqdsl'] / med['torch.nn']:.2f} "
          f"(mins {low['seqdsl'] / low['torch.nn']:.2f}), first call {rows['seqdsl'][1] / rows['torch.nn'][1]:.1f}, "
          f"max abs diff {diff:.1e}")


def pairs() -> list[tuple[str, nn.Module, nn.Module]]:
    out = []
    for spec, cls in (("lstm.yaml", nn.LSTM), ("gru_torch.yaml", nn.GRU), ("rnn.yaml", nn.RNN)):
        torch.manual_seed(0)
        ref = cls(D, H, batch_first=True).eval()
        net = to_module(seqdsl.load(ROOT / "specs" / spec, {"d": D, "h": H})).eval()
        load_from_torch(net, ref)
        out.append((f"{spec} (recognised)", net, ref))
    torch.manual_seed(0)
    ref = nn.LSTM(D, H, batch_first=True).eval()
    net = to_module(seqdsl.load(ROOT / "specs" / "lstm.yaml", {"d": D, "h": H}), optimize=True,
                    native_cells=False).eval()
    load_from_torch(net, ref)
    out.append(("lstm.yaml (generic loop)", net, ref))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--small", action="store_true", help="B=16 T=64 d=h=64: where per-call overhead shows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.small:
        global B, T, D, H, B2, T2
        B, T, D, H, B2, T2 = 16, 64, 64, 64, 9, 97
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; B={B} T={T} d=h={D}, second shape B={B2} T={T2}")
    for name, ours, theirs in pairs():
        measure(name, ours, theirs, args.rounds)


if __name__ == "__main__":
    main()
