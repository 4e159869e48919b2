#!/usr/bin/env python
"""seqdsl benchmarks (issue 6): what the compiled specs cost against what a person would write by hand.

    python benchmarks/run.py                 # everything: about 2.5 minutes on a quiet 2-core CPU machine
    python benchmarks/run.py --quick         # smoke run: fewer repetitions, short builds only
    python benchmarks/run.py --only rnn      # one workload: rnn, peephole, onnx, seq2seq, transformer,
                                             # memory, compiler (several: --only rnn,onnx)
    python benchmarks/run.py --threads 1     # torch and onnxruntime intra-op threads (default: usable cores)
    python benchmarks/run.py --only peephole --compile   # also torch.compile the peephole module (~2 min)

Both sides of every comparison run in this one process, fp32, forward only under torch.no_grad(), modules in
eval mode, on the CPU. Each side is warmed up, then the variants of one workload are timed in alternation (one
call of each per round, the order rotating) so that drift of the machine hits them alike. The table gives the
median, the interquartile range and the min; ratio = median(ours) / median(reference), "met" when at or below
the target (``*``: the ratio of mins says otherwise, i.e. within noise). Every comparison checks that both
sides compute the same thing (max |difference| of the outputs), and reports how much of the CPU other
processes took while it was timed: on a shared machine, rerun when that is more than a few percent.
Results and analysis: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # compilers/ lives beside seqdsl/ at the repository root

import seqdsl  # noqa: E402
from compilers.build import build  # noqa: E402
from compilers.interop import load_from_torch  # noqa: E402
from compilers.onnx_export import export, set_weights  # noqa: E402
from compilers.torch_module import to_module  # noqa: E402
from seqdsl.passes import optimize, unroll  # noqa: E402

SPECS = ROOT / "specs"


# --------------------------------------------------------------------------- timing and reporting


@dataclass
class Stats:
    """Wall times of repeated calls, in milliseconds."""

    times: list[float]
    others: float = float("nan")  # share of the machine's CPU that other processes used while these were timed

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def iqr(self) -> tuple[float, float]:
        if len(self.times) < 4:
            return min(self.times), max(self.times)
        q = statistics.quantiles(self.times, n=4)
        return q[0], q[2]

    @property
    def min(self) -> float:
        return min(self.times)

    def __str__(self) -> str:
        lo, hi = self.iqr
        return f"{self.median:.1f} [{lo:.1f}-{hi:.1f}]"


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine since boot, in clock ticks (all CPUs)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process: torch's and onnxruntime's
    return usage.ru_utime + usage.ru_stime


class Others:
    """How much of the machine other processes used while timing: the honest caveat of a shared machine."""

    def __enter__(self) -> "Others":
        self.busy0, self.total0 = _cpu_ticks()
        self.own0 = _own_cpu_s()
        self.share = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = _cpu_ticks()
        hz = os.sysconf("SC_CLK_TCK")
        if total > self.total0:
            others = (busy - self.busy0) / hz - (_own_cpu_s() - self.own0)
            self.share = max(0.0, others / ((total - self.total0) / hz))


def measure(fns: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, Stats]:
    """Time each of ``fns``: ``warmup`` calls each, then ``reps`` rounds of one call each, the order rotating.
    Each result's ``others`` is the share of the machine's CPU time that other processes took meanwhile."""
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        names = list(fns)
        times: dict[str, list[float]] = {n: [] for n in names}
        with Others() as others:
            for r in range(reps):
                k = r % len(names)
                for name in names[k:] + names[:k]:
                    gc.collect()
                    t0 = time.perf_counter()
                    fns[name]()
                    times[name].append((time.perf_counter() - t0) * 1e3)
    return {n: Stats(t, others.share) for n, t in times.items()}


@dataclass
class Row:
    workload: str
    ours: str
    reference: str
    ours_t: Stats
    ref_t: Stats
    target: float | None  # None: context only
    diff: float | None = None  # max |ours - reference| of the outputs
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours_t.median / self.ref_t.median

    @property
    def min_ratio(self) -> float:
        """min(ours) / min(reference): less sensitive to other processes taking the CPU than the median."""
        return self.ours_t.min / self.ref_t.min

    @property
    def verdict(self) -> str:
        """met / OPEN by the ratio of medians; a ``*`` when the ratio of mins says otherwise (within noise)."""
        if self.target is None:
            return "context"
        met = self.ratio <= self.target
        flag = "*" if met != (self.min_ratio <= self.target) else ""
        return ("met" if met else "OPEN") + flag


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)  # extra tables
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.workload} | {row.ours}: {row.ours_t} ms | {row.reference}: {row.ref_t} ms | "
              f"ratio {row.ratio:.3f} (mins {row.min_ratio:.3f}) {row.verdict}; other processes took "
              f"{row.ours_t.others:.0%} of the CPU meanwhile", flush=True)


def max_diff(a: object, b: object) -> float:
    """Largest absolute difference between two (nested tuples of) tensors / arrays of the same structure."""
    if isinstance(a, (tuple, list)):
        return max(max_diff(x, y) for x, y in zip(a, b, strict=True))
    ta = torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a
    tb = torch.as_tensor(np.asarray(b)) if not isinstance(b, torch.Tensor) else b
    return float((ta.float() - tb.float()).abs().max())


def print_report(report: Report) -> None:
    print("\n## Results (fp32, forward, torch.no_grad(); ms: median [interquartile range], and min)\n")
    print("| workload | ours | reference | ours ms | reference ms | ratio (medians) | ratio (mins) | target | status "
          "| max abs diff | others' CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in report.rows:
        target = f"<= {r.target:.2f}" if r.target is not None else "-"
        diff = f"{r.diff:.1e}" if r.diff is not None else "-"
        print(f"| {r.workload} | {r.ours} | {r.reference} | {r.ours_t}, min {r.ours_t.min:.1f} | {r.ref_t}, min "
              f"{r.ref_t.min:.1f} | **{r.ratio:.2f}** | {r.min_ratio:.2f} | {target} | {r.verdict} | {diff} | "
              f"{r.ours_t.others:.0%} |")
    for title, header, lines in report.tables:
        print(f"\n## {title}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + " --- |" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    if report.notes:
        print("\nNotes:")
        for n in report.notes:
            print(f"- {n}")
    if any(r.verdict.endswith("*") for r in report.rows):
        print("\n\\* the ratio of mins falls on the other side of the target: the difference is within this "
              "machine's run-to-run noise; rerun (--only NAME --reps 41) before acting on it.")
    targets = [r for r in report.rows if r.target is not None]
    met = sum(r.verdict.startswith("met") for r in targets)
    open_ = [f"{r.workload} ({r.ours}: {r.ratio:.2f} > {r.target:.2f})"
             for r in targets if r.verdict.startswith("OPEN")]
    print(f"\nTargets met: {met} of {len(targets)}" + ("; open: " + "; ".join(open_) if open_ else ""))


# --------------------------------------------------------------------------- helpers


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {os.cpu_count()} logical cores ({usable} usable), {platform.system()} {platform.release()}"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def ort_session(proto: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    """A CPU-provider session with as many intra-op threads as torch uses (compilers.onnx_runtime.make_session
    chooses providers well but takes no thread count)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # onnxruntime's pool threads spin after a run by default and would steal the CPU from the torch call timed
    # next: stop them when Run() returns (they still spin during a run)
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnx_model(model: seqdsl.ir.Model, net: nn.Module, native_cells: bool) -> onnx.ModelProto:
    proto = export(model, native_cells=native_cells)
    set_weights(proto, {k: v.detach().numpy() for k, v in net.state_dict().items()})
    return proto


def op_types(proto: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in proto.graph.node}


def uses(net: nn.Module, text: str) -> bool:
    """Whether the generated source of ``net`` contains ``text`` (e.g. 'torch.lstm': recognised)."""
    return text in inspect.getsource(type(net))


def copy_named(dst: nn.Module, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        params = dict(dst.named_parameters())
        for k, v in values.items():
            params[k].copy_(v)


# --------------------------------------------------------------------------- 1 & 2: standard cells


B, T, D, H = 32, 128, 256, 256
CELLS = {  # name -> (spec, torch.nn class, generated-code marker of the torch kernel, native ONNX op)
    "LSTM": ("lstm.yaml", nn.LSTM, "torch.lstm", "LSTM"),
    "GRU": ("gru_torch.yaml", nn.GRU, "torch.gru", "GRU"),
    "RNN": ("rnn.yaml", nn.RNN, "torch.rnn_tanh", "RNN"),
}


def standard_cell(name: str) -> tuple[seqdsl.ir.Model, nn.Module, dict[str, nn.Module]]:
    """The spec, the torch.nn layer, and the spec's modules (default / generic / unoptimized), same weights."""
    spec, cls, _, _ = CELLS[name]
    torch.manual_seed(0)
    model = seqdsl.load(SPECS / spec, {"d": D, "h": H})
    ref = cls(D, H, batch_first=True).eval()
    nets = {"default": to_module(model), "generic": to_module(model, native_cells=False),
            "unoptimized": to_module(model, optimize=False)}
    for net in nets.values():
        load_from_torch(net, ref)
        net.eval()
    return model, ref, nets


def bench_rnn(report: Report, cfg: argparse.Namespace) -> None:
    """1. LSTM / GRU / Elman RNN: the spec's PyTorch module vs torch.nn (B=32, T=128, d=h=256)."""
    x = torch.randn(B, T, D)
    for name, (spec, cls, marker, _) in CELLS.items():
        _, ref, nets = standard_cell(name)
        recognised = uses(nets["default"], marker)
        fns = {"ref": lambda: ref(x), **{k: (lambda n=n: n(x)) for k, n in nets.items()}}
        stats = measure(fns, cfg.reps, cfg.warmup)
        with torch.no_grad():
            want = ref(x)
            want = (want[0], *want[1]) if name == "LSTM" else (want[0], want[1][0])
            diffs = {k: max_diff(n(x), want) for k, n in nets.items()}
        w = f"{name} B={B} T={T} d=h={H}"
        report.add(Row(w, f"{spec} to_module (default{', ' + marker if recognised else ', NOT recognised'})",
                       f"torch.nn.{cls.__name__}", stats["default"], stats["ref"], 1.05, diffs["default"]))
        report.add(Row(w, f"{spec} generic (native_cells=False: fused + hoisted loop)", f"torch.nn.{cls.__name__}",
                       stats["generic"], stats["ref"], None, diffs["generic"]))
        report.add(Row(w, f"{spec} unoptimized (optimize=False: the equations)", f"torch.nn.{cls.__name__}",
                       stats["unoptimized"], stats["ref"], None, diffs["unoptimized"]))


class PeepholeByHand(nn.Module):
    """The peephole LSTM as one would write it for speed: the input projection of every step (and the biases) in
    one matmul outside the loop, the four recurrent projections in one matmul per step (gate order f, i, c, o)."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.h = h
        self.W = nn.Parameter(torch.empty(4 * h, d))
        self.U = nn.Parameter(torch.empty(4 * h, h))
        self.b = nn.Parameter(torch.empty(4 * h))
        self.p_f, self.p_i, self.p_o = (nn.Parameter(torch.empty(h)) for _ in range(3))

    def load_spec(self, net: nn.Module) -> None:
        with torch.no_grad():
            self.W.copy_(torch.cat([net.W_f, net.W_i, net.W_c, net.W_o]))
            self.U.copy_(torch.cat([net.U_f, net.U_i, net.U_c, net.U_o]))
            self.b.copy_(torch.cat([net.b_f, net.b_i, net.b_c, net.b_o]))
            for p in ("p_f", "p_i", "p_o"):
                getattr(self, p).copy_(getattr(net, p))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xw = F.linear(x, self.W, self.b)  # (B, T, 4h)
        h = x.new_zeros(x.shape[0], self.h)
        c = x.new_zeros(x.shape[0], self.h)
        ys = []
        for t in range(x.shape[1]):
            f, i, g, o = (xw[:, t] + F.linear(h, self.U)).chunk(4, dim=1)
            f = torch.sigmoid(f + self.p_f * c)
            i = torch.sigmoid(i + self.p_i * c)
            c = f * c + i * torch.tanh(g)
            o = torch.sigmoid(o + self.p_o * c)
            h = o * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys, 1), h, c


def bench_peephole(report: Report, cfg: argparse.Namespace) -> None:
    """1b. A non-standard cell (peephole LSTM): the spec's generic module vs a hand-written fused-gates loop."""
    torch.manual_seed(0)
    model = seqdsl.load(SPECS / "lstm_peephole.yaml", {"d": D, "h": H})
    net = to_module(model).eval()
    unopt = to_module(model, optimize=False).eval()
    unopt.load_state_dict(net.state_dict())
    ref = PeepholeByHand(D, H).eval()
    ref.load_spec(net)
    x = torch.randn(B, T, D)
    fns = {"ours": lambda: net(x), "ref": lambda: ref(x), "unopt": lambda: unopt(x)}
    compiled_note = ""
    if cfg.compile:
        compiled = torch.compile(net)
        t0 = time.perf_counter()
        with torch.no_grad():
            compiled(x)
        compile_s = time.perf_counter() - t0
        fns["compiled"] = lambda: compiled(x)
        compiled_note = f"first call (compile) {compile_s:.1f} s"
    stats = measure(fns, cfg.reps, cfg.warmup)
    with torch.no_grad():
        want = ref(x)
        d = {k: max_diff(fn(), want) for k, fn in fns.items() if k != "ref"}
    w = f"peephole LSTM B={B} T={T} d=h={H}"
    report.add(Row(w, "lstm_peephole.yaml to_module (fused + hoisted loop)", "hand-written fused-gates loop",
                   stats["ours"], stats["ref"], 1.10, d["ours"]))
    report.add(Row(w, "lstm_peephole.yaml unoptimized (optimize=False)", "hand-written fused-gates loop",
                   stats["unopt"], stats["ref"], None, d["unopt"]))
    if cfg.compile:
        report.add(Row(w, "torch.compile(lstm_peephole to_module)", "hand-written fused-gates loop",
                       stats["compiled"], stats["ref"], None, d["compiled"], compiled_note))
        report.notes.append(f"torch.compile of the peephole module: {compiled_note}.")


def bench_onnx(report: Report, cfg: argparse.Namespace) -> None:
    """2. The same three cells exported to ONNX (native op, and Scan), in onnxruntime's CPU provider, vs torch.nn."""
    x = torch.randn(B, T, D)
    feed = {"x": x.numpy()}
    for name, (spec, cls, _, native_op) in CELLS.items():
        model, ref, nets = standard_cell(name)
        native = onnx_model(model, nets["default"], native_cells=True)
        scan = onnx_model(model, nets["default"], native_cells=False)
        found_native, found_scan = native_op in op_types(native), "Scan" in op_types(scan)
        s_native, s_scan = ort_session(native, cfg.threads), ort_session(scan, cfg.threads)
        fns = {"ref": lambda: ref(x), "native": lambda: s_native.run(None, feed),
               "scan": lambda: s_scan.run(None, feed)}
        stats = measure(fns, cfg.reps, cfg.warmup)
        with torch.no_grad():
            want = ref(x)
            want = (want[0], *want[1]) if name == "LSTM" else (want[0], want[1][0])
        w = f"{name} B={B} T={T} d=h={H}"
        report.add(Row(w, f"onnxruntime, native {native_op} op ({len(native.graph.node)} nodes"
                          f"{'' if found_native else ', NO native op'})",
                       f"torch.nn.{cls.__name__}", stats["native"], stats["ref"], 1.10,
                       max_diff(tuple(s_native.run(None, feed)), want)))
        report.add(Row(w, f"onnxruntime, Scan ({len(scan.graph.node)} nodes{'' if found_scan else ', NO Scan'})",
                       f"torch.nn.{cls.__name__}", stats["scan"], stats["ref"], 1.10,
                       max_diff(tuple(s_scan.run(None, feed)), want)))


# --------------------------------------------------------------------------- 3: seq2seq with attention

S2S_SIZES = {"d": 256, "h": 256, "a": 256, "m": 256, "vocab": 1024}
S2S_B, S2S_S, S2S_T = 32, 64, 32


class Seq2seqByHand(nn.Module):
    """Bahdanau's seq2seq as in specs/seq2seq_attention.yaml, written by hand for speed. The spec's encoder is a
    GRU in Cho's form (reset gate before U_h), which torch.nn.GRU does not compute, so the encoder is a hand loop:
    input projections of all steps in one matmul outside the loop, U_z and U_r in one matmul per step. The
    decoder precomputes U_a h_j once, and the output layer log_softmax(W_o s_t + C_o c_t + b_o) runs once over
    all steps after the loop."""

    def __init__(self, net: nn.Module):
        super().__init__()
        p = {k: v.detach().clone() for k, v in net.state_dict().items()}
        cat = lambda *names: nn.Parameter(torch.cat([p[n] for n in names]))  # noqa: E731
        self.h = p["W_s"].shape[0]
        self.E, self.W_s = nn.Parameter(p["E"]), nn.Parameter(p["W_s"])
        for side in ("fw", "bw"):
            q = f"enc.{side}."
            setattr(self, f"{side}_W", cat(q + "W_z", q + "W_r", q + "W_h"))
            setattr(self, f"{side}_b", cat(q + "b_z", q + "b_r", q + "b_h"))
            setattr(self, f"{side}_Uzr", cat(q + "U_z", q + "U_r"))
            setattr(self, f"{side}_Uh", nn.Parameter(p[q + "U_h"]))
        self.W = cat("dec.W_z", "dec.W_r", "dec.W_h")
        self.b = cat("dec.b_z", "dec.b_r", "dec.b_h")
        self.Uzr = cat("dec.U_z", "dec.U_r")
        self.Uh = nn.Parameter(p["dec.U_h"])
        self.C = cat("dec.C_z", "dec.C_r", "dec.C_h")
        self.W_a, self.U_a, self.v_a = (nn.Parameter(p["dec." + n]) for n in ("W_a", "U_a", "v_a"))
        self.W_o, self.C_o, self.b_o = (nn.Parameter(p["dec." + n]) for n in ("W_o", "C_o", "b_o"))

    def gru(self, x: torch.Tensor, side: str, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        W, b, Uzr, Uh = (getattr(self, f"{side}_{n}") for n in ("W", "b", "Uzr", "Uh"))
        xw = F.linear(x, W, b)
        h = x.new_zeros(x.shape[0], self.h)
        ys = []
        for t in (range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])):
            xz, xr, xh = xw[:, t].chunk(3, dim=1)
            hz, hr = F.linear(h, Uzr).chunk(2, dim=1)
            z = torch.sigmoid(xz + hz)
            r = torch.sigmoid(xr + hr)
            h = z * h + (1 - z) * torch.tanh(xh + F.linear(r * h, Uh))
            ys.append(h)
        if reverse:
            ys.reverse()
        return torch.stack(ys, 1), h

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fw, _ = self.gru(src, "fw", False)
        bw, bw_1 = self.gru(src, "bw", True)
        hs = torch.cat([fw, bw], dim=-1)  # (B, S, 2h)
        s = torch.tanh(F.linear(bw_1, self.W_s))
        yw = F.linear(F.embedding(tgt, self.E), self.W, self.b)  # (B, T, 3h)
        Uh_s = F.linear(hs, self.U_a)  # (B, S, a)
        ss, cs, alphas = [], [], []
        for t in range(tgt.shape[1]):
            e = (torch.tanh(F.linear(s, self.W_a).unsqueeze(1) + Uh_s) @ self.v_a)  # (B, S)
            alpha = torch.softmax(e, dim=-1)
            c = (alpha.unsqueeze(1) @ hs).squeeze(1)  # (B, 2h)
            yz, yr, yh = yw[:, t].chunk(3, dim=1)
            cz, cr, ch = F.linear(c, self.C).chunk(3, dim=1)
            sz, sr = F.linear(s, self.Uzr).chunk(2, dim=1)
            z = torch.sigmoid(yz + sz + cz)
            r = torch.sigmoid(yr + sr + cr)
            s = (1 - z) * s + z * torch.tanh(yh + F.linear(r * s, self.Uh) + ch)
            ss.append(s)
            cs.append(c)
            alphas.append(alpha)
        logits = F.linear(torch.stack(ss, 1), self.W_o) + F.linear(torch.stack(cs, 1), self.C_o, self.b_o)
        return torch.log_softmax(logits, dim=-1), torch.stack(alphas, 1)


def bench_seq2seq(report: Report, cfg: argparse.Namespace) -> None:
    """3. Bahdanau seq2seq (bidirectional GRU encoder, GRU decoder, additive attention) vs hand-written PyTorch."""
    torch.manual_seed(0)
    model = seqdsl.load(SPECS / "seq2seq_attention.yaml", S2S_SIZES)
    net = to_module(model).eval()
    ref = Seq2seqByHand(net).eval()
    src = torch.randn(S2S_B, S2S_S, S2S_SIZES["d"])
    tgt = torch.randint(0, S2S_SIZES["vocab"], (S2S_B, S2S_T))
    stats = measure({"ours": lambda: net(src, tgt), "ref": lambda: ref(src, tgt)}, cfg.reps, cfg.warmup)
    with torch.no_grad():
        diff = max_diff(net(src, tgt), ref(src, tgt))
    sizes = ", ".join(f"{k}={v}" for k, v in S2S_SIZES.items())
    report.add(Row(f"seq2seq+attention B={S2S_B} S={S2S_S} T={S2S_T} ({sizes})",
                   "seq2seq_attention.yaml to_module", "hand-written (hand-loop Cho GRU encoder)",
                   stats["ours"], stats["ref"], 1.10, diff))


# --------------------------------------------------------------------------- 4: transformer encoder block

TF_B, TF_T, TF_D, TF_HEADS, TF_FFN = 32, 128, 256, 4, 1024
BLOCK_SPEC = """
name: bench_block
imports:
  MultiHead: lib/attention.yaml#MultiHead
  EncoderBlock: transformer_encoder.yaml#EncoderBlock
sizes: {d: 256, heads: 4, ffn: 1024}
inputs:
  x: [B, T, d]
params:
  W_1: [ffn, d]
  b_1: [ffn]
  W_2: [d, ffn]
  b_2: [d]
  gamma_1, gamma_2: {shape: [d], init: ones}
  beta_1, beta_2: {shape: [d], init: zeros}
graph:                                   # transformer_encoder.yaml's EncoderBlock without the padding mask
  attn: MultiHead(x, x, x, heads=heads)
  a: layer_norm(x + dropout(attn), gamma_1, beta_1)
  f: W_2 @ dropout(relu(W_1 @ a + b_1)) + b_2
  y: layer_norm(a + dropout(f), gamma_2, beta_2)
outputs:
  y: y
"""
MASKED_BLOCK_SPEC = """
name: bench_masked_block
imports:
  EncoderBlock: transformer_encoder.yaml#EncoderBlock
sizes: {d: 256, heads: 4, ffn: 1024}
inputs:
  x: [B, T, d]
  keep: [B, T]
graph:
  block: EncoderBlock(x, keep, heads=heads, ffn=ffn)
outputs:
  y: block
"""


def torch_layer_weights(layer: nn.TransformerEncoderLayer, prefix: str = "") -> dict[str, torch.Tensor]:
    """nn.TransformerEncoderLayer's weights under the spec's parameter names."""
    W_q, W_k, W_v = layer.self_attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = layer.self_attn.in_proj_bias.chunk(3)
    a = prefix + "attn."
    return {a + "W_q": W_q, a + "W_k": W_k, a + "W_v": W_v, a + "b_q": b_q, a + "b_k": b_k, a + "b_v": b_v,
            a + "W_o": layer.self_attn.out_proj.weight, a + "b_o": layer.self_attn.out_proj.bias,
            prefix + "W_1": layer.linear1.weight, prefix + "b_1": layer.linear1.bias,
            prefix + "W_2": layer.linear2.weight, prefix + "b_2": layer.linear2.bias,
            prefix + "gamma_1": layer.norm1.weight, prefix + "beta_1": layer.norm1.bias,
            prefix + "gamma_2": layer.norm2.weight, prefix + "beta_2": layer.norm2.bias}


def bench_transformer(report: Report, cfg: argparse.Namespace) -> None:
    """4. One post-norm encoder block vs nn.TransformerEncoderLayer (eval: torch's fast path; train, dropout=0)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(TF_D, TF_HEADS, TF_FFN, dropout=0.0, batch_first=True).eval()
    sizes = {"d": TF_D, "heads": TF_HEADS, "ffn": TF_FFN}
    net = to_module(seqdsl.loads(BLOCK_SPEC, sizes, file=str(SPECS / "_bench.yaml"))).eval()
    copy_named(net, torch_layer_weights(layer))
    masked = to_module(seqdsl.loads(MASKED_BLOCK_SPEC, sizes, file=str(SPECS / "_bench.yaml"))).eval()
    copy_named(masked, torch_layer_weights(layer, "block."))
    train_layer = nn.TransformerEncoderLayer(TF_D, TF_HEADS, TF_FFN, dropout=0.0, batch_first=True)
    train_layer.load_state_dict(layer.state_dict())
    train_layer.train()  # no fast path; dropout=0 so the same numbers
    x = torch.randn(TF_B, TF_T, TF_D)
    keep = torch.ones(TF_B, TF_T)
    pad = torch.zeros(TF_B, TF_T, dtype=torch.bool)  # torch's key padding mask: True = padding
    fns = {"ours": lambda: net(x), "eval": lambda: layer(x), "train": lambda: train_layer(x),
           "ours_masked": lambda: masked(x, keep), "eval_masked": lambda: layer(x, src_key_padding_mask=pad)}
    stats = measure(fns, cfg.reps, cfg.warmup)
    with torch.no_grad():
        want = layer(x)
        d = {k: max_diff(fns[k](), want) for k in ("ours", "train", "ours_masked", "eval_masked")}
    w = f"transformer block B={TF_B} T={TF_T} d={TF_D} heads={TF_HEADS} ffn={TF_FFN}"
    report.add(Row(w, "EncoderBlock (no mask) to_module", "nn.TransformerEncoderLayer eval (fast path)",
                   stats["ours"], stats["eval"], 1.10, d["ours"]))
    report.add(Row(w, "EncoderBlock (no mask) to_module", "nn.TransformerEncoderLayer train mode, dropout=0",
                   stats["ours"], stats["train"], None, d["train"]))
    report.add(Row(w, "transformer_encoder.yaml#EncoderBlock, keep=1", "nn.TransformerEncoderLayer eval, "
                   "src_key_padding_mask=False", stats["ours_masked"], stats["eval_masked"], None, d["ours_masked"]))


# --------------------------------------------------------------------------- 5: memory network

MEM_B, MEM_N, MEM_H, MEM_K = 32, 1024, 256, 3
HOPS_SPEC = """
name: bench_hops
imports:
  Hops: memory_network.yaml#Hops
sizes: {h: 256, K: 3}
inputs:
  m: [B, N, h]
  c: [B, N, h]
  u: [B, h]
graph:
  hops: Hops(m, c, u, K=K)
outputs:
  u_K: hops.u_K
  p: hops.p
"""


def hops_by_hand(m: torch.Tensor, c: torch.Tensor, u: torch.Tensor, H: torch.Tensor, hops: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """p = softmax(m u), o = Σ_i p_i c_i, u = H u + o, ``hops`` times."""
    ps = []
    for _ in range(hops):
        p = torch.softmax(torch.bmm(m, u.unsqueeze(-1)).squeeze(-1), dim=-1)
        o = torch.bmm(p.unsqueeze(1), c).squeeze(1)
        u = F.linear(u, H) + o
        ps.append(p)
    return u, torch.stack(ps, 1)


def bench_memory(report: Report, cfg: argparse.Namespace) -> None:
    """5. Memory network hops (memory_network.yaml#Hops) vs hand-written matmul/softmax."""
    torch.manual_seed(0)
    net = to_module(seqdsl.loads(HOPS_SPEC, {"h": MEM_H, "K": MEM_K}, file=str(SPECS / "_bench.yaml"))).eval()
    m, c = torch.randn(MEM_B, MEM_N, MEM_H) / 16, torch.randn(MEM_B, MEM_N, MEM_H)
    u = torch.randn(MEM_B, MEM_H)
    H = net.hops.H.detach()
    stats = measure({"ours": lambda: net(m, c, u), "ref": lambda: hops_by_hand(m, c, u, H, MEM_K)},
                    cfg.reps, cfg.warmup)
    with torch.no_grad():
        diff = max_diff(net(m, c, u), hops_by_hand(m, c, u, H, MEM_K))
    report.add(Row(f"memory network B={MEM_B} slots={MEM_N} d={MEM_H} hops={MEM_K}", "memory_network.yaml#Hops "
                   "to_module", "hand-written bmm/softmax", stats["ours"], stats["ref"], 1.05, diff))


# --------------------------------------------------------------------------- 6: cost of the compiler


def bench_compiler(report: Report, cfg: argparse.Namespace) -> None:
    """6. Build time and model.onnx size vs T for specs/lstm.yaml at d=h=64: unrolled vs looped (Scan, native);
    and the build time of a 24-block transformer encoder."""
    spec, sizes = SPECS / "lstm.yaml", {"d": 64, "h": 64}
    lengths = [16, 128] if cfg.quick else [16, 128, 512, 2048]
    # onnxruntime takes ~quadratic time to open an unrolled graph (5 s at T=128, 80 s at T=512 on 2 cores), and
    # build() opens one for its parity check: above this T the unrolled form is exported and measured, not opened
    session_cap = min(cfg.unroll_session_cap, 16) if cfg.quick else cfg.unroll_session_cap
    model = seqdsl.load(spec, sizes)
    weights = {k: v.detach().numpy() for k, v in to_module(model).state_dict().items()}
    lines: list[list[str]] = []
    sizes_of: dict[str, dict[int, int]] = {"native": {}, "scan": {}, "unrolled": {}}
    tmp = Path(tempfile.mkdtemp(prefix="seqdsl-bench-"))
    x = np.random.default_rng(0).standard_normal((3, max(lengths), 64)).astype(np.float32)
    try:
        for steps in lengths:
            for form in ("native", "scan", "unrolled"):
                # export alone, for every form (build() has no switch for the Scan form)
                t0 = time.perf_counter()
                m = unroll(optimize(model), steps)[0] if form == "unrolled" else model
                proto = export(m, native_cells=(form == "native"))
                set_weights(proto, weights)
                path = tmp / f"{form}_{steps}.onnx"
                onnx.save(proto, str(path))
                export_s = time.perf_counter() - t0
                nbytes = path.stat().st_size
                sizes_of[form][steps] = nbytes
                session_s = run_ms = build_s = "-"
                if form != "unrolled" or steps <= session_cap:
                    t0 = time.perf_counter()
                    session = ort_session(proto, cfg.threads)
                    session_s = f"{time.perf_counter() - t0:.2f}"
                    t0 = time.perf_counter()
                    session.run(None, {"x": x[:, :steps]})
                    run_ms = f"{(time.perf_counter() - t0) * 1e3:.1f}"
                    # the whole `build` (model.py, weights, export, onnx.checker, onnxruntime vs torch check)
                    if form != "scan":
                        t0 = time.perf_counter()
                        out = tmp / f"build_{form}_{steps}"
                        result = build(spec, out, sizes, steps=steps, batch=3, unroll=(form == "unrolled"))
                        build_s = f"{time.perf_counter() - t0:.2f}"
                        assert (result.onnx_form == "unrolled") == (form == "unrolled"), result.onnx_form
                        assert abs((out / "model.onnx").stat().st_size - nbytes) <= 1024, (form, steps)
                        shutil.rmtree(out)
                note = f"{len(proto.graph.node)} nodes"
                if form == "unrolled" and steps > session_cap:
                    note += f"; not opened in onnxruntime (T > --unroll-session-cap {session_cap})"
                lines.append([str(steps), form, build_s, f"{export_s:.2f}", session_s, run_ms,
                              f"{nbytes / 1024:.1f}", note])
                print(f"  lstm d=h=64 T={steps} {form}: build {build_s} s, export {export_s:.2f} s, session "
                      f"{session_s} s, {nbytes / 1024:.1f} KiB, {note}", flush=True)
                del proto
        for form in ("native", "scan"):  # the looped forms do not grow with T
            assert len(set(sizes_of[form].values())) == 1, f"{form} export grows with T: {sizes_of[form]}"
        report.notes.append(f"Looped exports (native and Scan) have the same size at every T in {lengths}: asserted.")
        report.tables.append(("Cost of the compiler: specs/lstm.yaml, d=h=64 (build: B=3, parity check at T)",
                              ["T", "ONNX form", "build() s", "export + save s", "ort session s",
                               "first ort run ms (B=3)", "model.onnx KiB", "graph"], lines))
        # a 24-block transformer encoder
        tf_sizes = {"vocab": 1000, "d": 256, "heads": 4, "ffn": 1024, "N": 24}
        t0 = time.perf_counter()
        loaded = seqdsl.load(SPECS / "transformer_encoder.yaml", tf_sizes)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tf_net = to_module(loaded)
        module_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tf_proto = export(loaded)
        export_s = time.perf_counter() - t0
        del tf_net, tf_proto
        t0 = time.perf_counter()
        result = build(SPECS / "transformer_encoder.yaml", tmp / "tf24", tf_sizes, steps=16, batch=3)
        tf_s = time.perf_counter() - t0
        onnx_mib = (tmp / "tf24" / "model.onnx").stat().st_size / 2**20
        report.tables.append((
            "Cost of the compiler: 24-block transformer encoder (vocab=1000, d=256, 4 heads, ffn=1024)",
            ["step", "s", "parameters", "ONNX nodes", "model.onnx MiB"],
            [["seqdsl.load (parse, check, lower)", f"{load_s:.2f}", f"{loaded.param_count:,}", "-", "-"],
             ["to_module (codegen, import, init)", f"{module_s:.2f}", "-", "-", "-"],
             ["export (ONNX proto, zero weights)", f"{export_s:.2f}", "-", "-", "-"],
             ["build() in all (B=3, T=16: model.py, weights, ONNX, checker, onnxruntime parity)", f"{tf_s:.2f}",
              f"{result.param_count:,}", str(result.onnx_nodes), f"{onnx_mib:.1f}"]]))
        print(f"  transformer encoder N=24: load {load_s:.2f} s, to_module {module_s:.2f} s, export {export_s:.2f} s, "
              f"build {tf_s:.2f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- main

WORKLOADS: dict[str, Callable[[Report, argparse.Namespace], None]] = {
    "rnn": bench_rnn, "peephole": bench_peephole, "onnx": bench_onnx, "seq2seq": bench_seq2seq,
    "transformer": bench_transformer, "memory": bench_memory, "compiler": bench_compiler,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 warm-up, 3 rounds, short builds only")
    ap.add_argument("--only", help=f"comma-separated workloads among {', '.join(WORKLOADS)}")
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads "
                                                              "(default: the usable cores)")
    ap.add_argument("--reps", type=int, default=None, help="timed rounds (default 21; 3 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 3; 1 with --quick)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the generic peephole module")
    ap.add_argument("--unroll-session-cap", type=int, default=128,
                    help="longest unrolled T opened in onnxruntime and built (default 128; 512 takes minutes)")
    cfg = ap.parse_args()
    cfg.reps = cfg.reps or (3 if cfg.quick else 21)
    cfg.warmup = cfg.warmup or (1 if cfg.quick else 3)
    cfg.threads = cfg.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    names = list(WORKLOADS) if not cfg.only else [n.strip() for n in cfg.only.split(",")]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; choose among {list(WORKLOADS)}")

    torch.set_num_threads(cfg.threads)
    print(f"# seqdsl benchmarks, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {machine()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__} (CPUExecutionProvider)")
    print(f"threads: torch.get_num_threads() = {torch.get_num_threads()}, onnxruntime intra_op_num_threads = "
          f"{cfg.threads}, inter_op = 1; warm-up {cfg.warmup}, rounds {cfg.reps}")
    print(f"command: python benchmarks/run.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"load average at start (1, 5, 15 min): {load_average()}: other processes on the machine skew timings; "
          "compare the medians with the mins")
    report = Report()
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        print(f"\n[{name}] {WORKLOADS[name].__doc__.strip().splitlines()[0]}", flush=True)
        WORKLOADS[name](report, cfg)
        print(f"  ({time.perf_counter() - t0:.0f} s; load average now {load_average()})", flush=True)
    print_report(report)
    print(f"\nTotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
