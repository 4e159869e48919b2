"""The benchmark harness: timing in alternating rotating rounds, the rows and the tables, and what the rows say.

A workload (``benchmarks/workloads/<name>.py``) builds its callables, times them together with `measure` (so
that drift of a shared machine hits them alike), checks that both sides compute the same thing (`max_diff`)
and names what each side really runs (`torch_runner`, `onnx_form`), then adds `Row`s to the `Report`.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import platform
import re
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
BENCH_SPECS = ROOT / "benchmarks" / "specs"


# --------------------------------------------------------------------------- configuration


@dataclass
class Config:
    """What a workload reads: repetitions, threads, and whether to use tiny sizes (the smoke test's)."""

    reps: int = 15
    warmup: int = 3
    threads: int = 1
    quick: bool = False
    tiny: bool = False  # tiny sizes and short builds: checks that every row runs, measures nothing
    compile: bool = False  # also torch.compile the peephole module (minutes)
    unroll_session_cap: int = 128

    def pick(self, full: Any, tiny: Any) -> Any:
        return tiny if self.tiny else full


# --------------------------------------------------------------------------- timing


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


def measure(fns: dict[str, Callable[[], object]], cfg: Config) -> dict[str, Stats]:
    """Time each of ``fns``: ``cfg.warmup`` calls each, then ``cfg.reps`` rounds of one call each, the order
    rotating. Runs under torch.no_grad(); a training step turns gradients on itself (`train_step`). Each
    result's ``others`` is the share of the machine's CPU time that other processes took meanwhile."""
    # gc.collect() runs before every timed call (so that no collection lands inside one); objects alive now are
    # moved out of the collector's sight first, else each collect walks torch's millions (0.3-0.7 s apiece)
    gc.collect()
    gc.freeze()
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(cfg.warmup):
                fn()
        names = list(fns)
        times: dict[str, list[float]] = {n: [] for n in names}
        with Others() as others:
            for r in range(cfg.reps):
                k = r % len(names)
                for name in names[k:] + names[:k]:
                    gc.collect()
                    t0 = time.perf_counter()
                    fns[name]()
                    times[name].append((time.perf_counter() - t0) * 1e3)
    return {n: Stats(t, others.share) for n, t in times.items()}


# --------------------------------------------------------------------------- training steps and parity

TRAINING_STEP = ("training step = forward + backward of loss = sum of the first output (every step's y), "
                 "gradients of all parameters set to None before each step, no optimizer step; "
                 "inputs do not require gradients")


def train_step(fn: Callable[..., Any], params: Sequence[torch.Tensor], *inputs: Any) -> Callable[[], None]:
    """One training step of ``fn`` (see TRAINING_STEP), gradients on even inside `measure`'s no_grad."""
    params = list(params)

    def step() -> None:
        with torch.enable_grad():
            for p in params:
                p.grad = None
            first(fn(*inputs)).sum().backward()

    return step


def input_grad(fn: Callable[..., Any], x: torch.Tensor, *rest: Any) -> torch.Tensor:
    """d(sum of the first output) / dx: the parity check of a training step (independent of parameter names)."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        first(fn(x, *rest)).sum().backward()
    return x.grad


def first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def max_diff(a: object, b: object) -> float:
    """Largest absolute difference between two (nested tuples of) tensors / arrays of the same structure."""
    if isinstance(a, (tuple, list)):
        return max(max_diff(x, y) for x, y in zip(a, b, strict=True))
    ta = torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a
    tb = torch.as_tensor(np.asarray(b)) if not isinstance(b, torch.Tensor) else b
    return float((ta.detach().float() - tb.detach().float()).abs().max())


# --------------------------------------------------------------------------- what a module really runs

_NATIVE_CALL = re.compile(r"\bnative_(\w+)\(")
_TORCH_KERNEL = re.compile(r"\btorch\.(lstm|gru|rnn_tanh|rnn_relu)\b")
RECURRENT_OPS = ("LSTM", "GRU", "RNN", "Scan", "Loop")


def torch_runner(net: nn.Module) -> str:
    """What the generated module runs for its recurrences, read from its source: 'torch.lstm' (etc.) where it
    calls a torch kernel, 'generic loop' where it loops over t itself."""
    source = "\n".join(inspect.getsource(type(m)) for m in net.modules() if type(m).__module__ != nn.Module.__module__
                       and not type(m).__module__.startswith("torch."))
    kernels = sorted({"torch." + k for k in _NATIVE_CALL.findall(source)} | {"torch." + k for k in
                                                                            _TORCH_KERNEL.findall(source)})
    loops = "for t in range(" in source
    parts = kernels + (["generic loop"] if loops or not kernels else [])
    return " + ".join(parts)


def onnx_form(proto: onnx.ModelProto) -> str:
    """The recurrent ops of an exported graph, e.g. 'LSTM op' or 'Scan (body 13 nodes)', and the node count."""
    found = []
    for node in proto.graph.node:
        if node.op_type in RECURRENT_OPS:
            if node.op_type in ("Scan", "Loop"):
                body = next(a.g for a in node.attribute if a.name == "body")
                found.append(f"{node.op_type} (body {len(body.node)} nodes)")
            else:
                found.append(f"{node.op_type} op")
    return (", ".join(found) or "no recurrent op") + f"; {len(proto.graph.node)} nodes"


# --------------------------------------------------------------------------- onnxruntime


def ort_session(proto: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    """A CPU-provider session with as many intra-op threads as torch uses (seqdsl.compilers.onnx_runtime.make_session
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


def onnx_model(model: Any, net: nn.Module, native_cells: bool | None = None) -> onnx.ModelProto:
    """``export(model)`` with ``net``'s weights: each block in the form ``seqdsl build`` chooses for it
    (native_cells None: `seqdsl.compilers.onnx_form`'s shipped table, no probe), or every block native / Scan."""
    from seqdsl.compilers.onnx_export import export, set_weights
    from seqdsl.compilers.onnx_form import choose

    if native_cells is None:
        native = {f.loop for f in choose(model, allow_probe=False).values() if f.form == "native"}
        proto = export(model, native_cells=native)
    else:
        proto = export(model, native_cells=native_cells)
    set_weights(proto, {k: v.detach().numpy() for k, v in net.state_dict().items()})
    return proto


def copy_named(dst: nn.Module, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        params = dict(dst.named_parameters())
        for k, v in values.items():
            params[k].copy_(v)


# --------------------------------------------------------------------------- rows and the report


@dataclass
class Row:
    workload: str
    ours: str
    reference: str
    ours_t: Stats
    ref_t: Stats
    target: float | None  # None: context only
    diff: float | None = None  # max |ours - reference| of the outputs (training: of d loss / d input)
    note: str = ""
    kind: str = "forward"  # forward | training step
    floor: Stats | None = None  # the GEMM-only floor of this cell, timed in the same rounds
    headline: str = ""  # the line of the top table, where this row is one of the targets

    @property
    def ratio(self) -> float:
        return self.ours_t.median / self.ref_t.median

    @property
    def min_ratio(self) -> float:
        """min(ours) / min(reference): less sensitive to other processes taking the CPU than the median."""
        return self.ours_t.min / self.ref_t.min

    @property
    def floor_ratio(self) -> float | None:
        return self.ours_t.median / self.floor.median if self.floor else None

    @property
    def verdict(self) -> str:
        """met / OPEN by the ratio of medians; a ``*`` when the ratio of mins says otherwise (within noise)."""
        if self.target is None:
            return "context"
        met = self.ratio <= self.target
        flag = "*" if met != (self.min_ratio <= self.target) else ""
        return ("met" if met else "OPEN") + flag

    def as_json(self) -> dict[str, Any]:
        def stats(s: Stats | None) -> dict[str, Any] | None:
            return None if s is None else {"median_ms": s.median, "iqr_ms": list(s.iqr), "min_ms": s.min,
                                           "times_ms": s.times, "others_cpu": s.others}

        return {"workload": self.workload, "kind": self.kind, "ours": self.ours, "reference": self.reference,
                "ours_t": stats(self.ours_t), "ref_t": stats(self.ref_t), "floor_t": stats(self.floor),
                "ratio": self.ratio, "min_ratio": self.min_ratio, "floor_ratio": self.floor_ratio,
                "target": self.target, "status": self.verdict, "max_abs_diff": self.diff, "note": self.note,
                "headline": self.headline}


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)  # extra tables
    notes: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)  # machine, versions, command, time, load

    def add(self, row: Row) -> None:
        self.rows.append(row)
        floor = f", {row.floor_ratio:.2f}x its GEMM floor" if row.floor else ""
        print(f"  {row.workload} [{row.kind}] | {row.ours}: {row.ours_t} ms | {row.reference}: {row.ref_t} ms | "
              f"ratio {row.ratio:.3f} (mins {row.min_ratio:.3f}) {row.verdict}{floor}; other processes took "
              f"{row.ours_t.others:.0%} of the CPU meanwhile", flush=True)

    def as_json(self) -> dict[str, Any]:
        return {"header": self.header, "rows": [r.as_json() for r in self.rows], "notes": self.notes,
                "tables": [{"title": t, "header": h, "lines": lines} for t, h, lines in self.tables]}

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=1) + "\n")


def _target(r: Row) -> str:
    return f"<= {r.target:.2f}" if r.target is not None else "-"


def top_table(report: Report) -> list[str]:
    """The issue's table (workload | now | target | status), one line per headline row, in Markdown; the last
    column says how far the row is from its GEMM-only floor (median / the floor's median), where it has one."""
    lines = ["| workload | now | target | status | x GEMM floor |", "| --- | --- | --- | --- | --- |"]
    for r in report.rows:
        if r.headline:
            target = f"<= {r.target:.2f}x" if r.target is not None else "measured"
            status = r.verdict if r.target is not None else "-"
            floor = f"{r.floor_ratio:.2f}x" if r.floor else "-"
            lines.append(f"| {r.headline} | {r.ratio:.2f}x (mins {r.min_ratio:.2f}x) | {target} | {status} | {floor} |")
    return lines


def print_report(report: Report) -> None:
    print("\n## Top table (paste into BENCHMARKS.md)\n")
    for line in report.header:
        print(f"- {line}")
    print()
    print("\n".join(top_table(report)))
    print("\n## All rows (fp32, CPU; ms: median [interquartile range], and min)\n")
    print("| workload | kind | ours | reference | ours ms | reference ms | ratio (medians) | ratio (mins) | target "
          "| status | x GEMM floor | max abs diff | others' CPU |")
    print("|" + " --- |" * 13)
    for r in report.rows:
        diff = f"{r.diff:.1e}" if r.diff is not None else "-"
        floor = f"{r.floor_ratio:.2f}" if r.floor else "-"
        print(f"| {r.workload} | {r.kind} | {r.ours} | {r.reference} | {r.ours_t}, min {r.ours_t.min:.1f} | "
              f"{r.ref_t}, min {r.ref_t.min:.1f} | **{r.ratio:.2f}** | {r.min_ratio:.2f} | {_target(r)} | "
              f"{r.verdict} | {floor} | {diff} | {r.ours_t.others:.0%} |")
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
    open_ = [f"{r.workload} [{r.kind}] ({r.ours}: {r.ratio:.2f} > {r.target:.2f})"
             for r in targets if r.verdict.startswith("OPEN")]
    print(f"\nTargets met: {met} of {len(targets)}" + ("; open: " + "; ".join(open_) if open_ else ""))


# --------------------------------------------------------------------------- the machine


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    return f"{cpu}, {os.cpu_count()} logical cores ({usable_cores()} usable), {platform.system()} {platform.release()}"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def versions() -> str:
    return (f"python {platform.python_version()}, torch {torch.__version__}, onnx {onnx.__version__}, "
            f"onnxruntime {ort.__version__} (CPUExecutionProvider)")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
