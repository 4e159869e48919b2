"""Which ONNX form each recurrent block gets: ONNX's own cell op (``native``: LSTM / GRU / RNN) or a ``scan`` of
the step graph, whichever is faster in the installed onnxruntime for that cell.

Reproducible first: the same spec with the same onnxruntime gives the same file. So the choice comes from
`TABLE`, figures measured by benchmarks and shipped here, keyed by onnxruntime's ``major.minor`` and the cell.
Only where the table has no entry (another onnxruntime, a cell it does not list) is the choice measured at build
time, by a short probe (`PROBE_BUDGET_S` per block) at the check run's B and T, and never under CI (``CI`` set:
timings there say little and builds must not flip): then each block keeps the `DEFAULT` form. Either way a form
other than the default must be faster by `MARGIN`, so that noise cannot flip a near tie. ``--onnx-form`` forces
a form (for every block, or ``BLOCK=FORM`` for one). Blocks that are no standard cell, and builds without the
optimisation passes, have one form only: the Scan (a Loop for a fixed step count). The unrolled form is not a
candidate: it fixes the sequence length of the file, which a speed choice must never do; ``--unroll`` asks for it.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from seqdsl.ir import Model, loop_of
from seqdsl.text import plain_text

if TYPE_CHECKING:
    import numpy as np

FORMS = ("native", "scan")
DEFAULT = "native"  # where the table says nothing and nothing was measured: ONNX's own op, one node
MARGIN = 0.10  # another form must be at least this much faster than the default to replace it
PROBE_BUDGET_S = 0.8  # wall time a probe may take per block, all candidates together (sessions included)

#: onnxruntime major.minor -> cell -> form -> median time relative to torch.nn's module of the same size (lower is
#: faster; for Cho's ``gru``, which torch.nn does not compute, relative to torch.nn.GRU): B=32 T=128 d=h=256, CPU,
#: 1 thread, every form and torch.nn timed in one process in alternating rounds (onnxruntime 1.31.1, torch 2.13,
#: 2-core AMD EPYC, 2026-12-02). Measure again with benchmarks/run.py when onnxruntime changes.
TABLE: dict[str, dict[str, dict[str, float]]] = {
    "1.31": {
        "lstm": {"native": 1.15, "scan": 1.24},
        "gru": {"native": 0.76, "scan": 0.89},
        "gru_torch": {"native": 0.80, "scan": 0.90},
        "rnn": {"native": 1.30, "scan": 0.59},
    },
}
TABLE_UNIT = "time relative to torch.nn (shipped table: B=32 T=128 d=h=256, CPU, 1 thread)"


TOP_BLOCK = "recurrent"  # the label of the spec's own `recurrent:` block; called ones are named by their call


def block_label(loop_name: str) -> str:
    """``enc.loop`` -> ``enc`` (the call that owns the block), ``loop`` -> `TOP_BLOCK`: the name ``--onnx-form
    BLOCK=FORM`` and build.json use for a recurrent block."""
    owner = loop_name.rsplit(".", 1)[0] if "." in loop_name else ""
    return owner or TOP_BLOCK


@dataclass
class BlockForm:
    """What one recurrent block became and why, as build.json records it (``onnx_choice``)."""

    loop: str  # the IR loop's name (``enc.loop``)
    form: str  # native, scan or unrolled
    reason: str  # table, probe, default, forced, only form
    cell: str | None = None  # the standard cell it is (lstm, gru, gru_torch, rnn), if it is one
    candidates: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)  # per candidate: table ratio, or probe ms (median)
    unit: str = ""  # "ratio to torch.nn (table)" or "ms per run (probe at B=.., T=..)"
    onnxruntime: str = ""
    note: str = ""

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"form": self.form, "reason": self.reason, "candidates": self.candidates,
                               "onnxruntime": self.onnxruntime}
        if self.cell:
            out["cell"] = self.cell
        if self.figures:
            out["figures"] = {k: round(v, 4) for k, v in self.figures.items()}
            out["unit"] = self.unit
        if self.note:
            out["note"] = self.note
        return out


class FormError(ValueError):
    """A forced form that does not fit the spec (a block it has not, native for a block that is no standard cell)."""


def parse_forced(values: list[str] | None) -> tuple[str | None, dict[str, str]]:
    """``--onnx-form`` values: ``FORM`` for every block and ``BLOCK=FORM`` for one; ``auto`` is no forcing."""
    every: str | None = None
    per_block: dict[str, str] = {}
    for value in values or []:
        block, _, form = value.rpartition("=")
        form = form.strip()
        if form not in (*FORMS, "auto"):
            raise FormError(f"--onnx-form {plain_text(value)}: a form is one of auto, {', '.join(FORMS)}")
        if block:
            per_block[block.strip()] = form
        else:
            every = None if form == "auto" else form
    return every, per_block  # a block's ``auto`` stays: it overrides a form given for every block


def standard_cells(model: Model) -> dict[str, str | None]:
    """Each top-level recurrent loop of ``model`` -> the standard cell ONNX has an op for, or None."""
    from seqdsl.passes import recognize

    from .onnx_export import ONNX_CELLS

    recognised, _ = recognize(model, frozenset(ONNX_CELLS))
    loops = {n.name: None for n in model.graph if n.op == "loop"}
    return {**loops, **{n.name: n.attrs["cell"] for n in recognised.graph if n.op == "cell" and n.name in loops}}


def runtime_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def choose(model: Model, forced: list[str] | None = None, optimize: bool = True, unroll: bool = False,
           probe_inputs: "dict[str, np.ndarray] | None" = None, table: dict[str, Any] | None = None,
           allow_probe: bool | None = None, budget_s: float = PROBE_BUDGET_S) -> dict[str, BlockForm]:
    """The form of every recurrent block of ``model`` (keyed by its label in build.json: ``recurrent``, ``enc``).

    ``forced`` are the ``--onnx-form`` values; ``probe_inputs`` the check run's inputs (the probe times these);
    ``allow_probe`` None means: unless the ``CI`` environment variable is set."""

    table = TABLE if table is None else table
    version = runtime_version()
    every, per_block = parse_forced(forced)
    cells = standard_cells(model) if optimize else {n.name: None for n in model.graph if n.op == "loop"}
    labels = {block_label(loop): loop for loop in cells}
    unknown = sorted(set(per_block) - set(labels))
    if unknown:
        have = ", ".join(sorted(labels)) or "none"
        raise FormError(f"--onnx-form {plain_text(unknown[0])}=...: the model has no recurrent block "
                        f"`{plain_text(unknown[0])}`; its blocks: "
                        f"{have}")
    if allow_probe is None:
        allow_probe = not os.environ.get("CI")
    out: dict[str, BlockForm] = {}
    for label, loop in labels.items():
        cell = cells[loop]
        candidates = ["native", "scan"] if cell else ["scan"]
        steps_loop = _fixed_steps(model, loop)
        one = "loop" if steps_loop else "scan"
        choice = BlockForm(loop, one, "only form", cell, candidates if cell else [one], onnxruntime=version)
        if unroll:
            choice.form, choice.reason, choice.candidates = "unrolled", "forced", ["unrolled"]
            choice.note = "--unroll"
        elif not optimize:
            choice.note = "--as-written: no recognition, the spec's equations as a Scan"
        elif per_block.get(label, every) not in (None, "auto"):
            want = per_block.get(label, every)
            if want == "native" and not cell:
                if label in per_block:
                    raise FormError(f"--onnx-form {label}=native: block `{label}` is no standard cell ONNX has an "
                                    "op for (LSTM, GRU, RNN); it can only be a Scan")
                choice.note = "--onnx-form native: no standard cell, so a Scan"
            else:
                choice.form, choice.reason = (one if want == "scan" else want), "forced"  # type: ignore[assignment]
        elif cell:
            _auto(choice, cell, table.get(_minor(version), {}).get(cell), model, cells, probe_inputs,
                  allow_probe, budget_s)
        out[label] = choice
    return out


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _fixed_steps(model: Model, loop: str) -> bool:
    return loop_of(model.graph[loop]).steps is not None


def _pick(figures: dict[str, float]) -> str:
    """The fastest form, unless the default is within `MARGIN` of it."""
    best = min(sorted(figures), key=lambda f: figures[f])
    if DEFAULT in figures and figures[best] > (1 - MARGIN) * figures[DEFAULT]:
        return DEFAULT
    return best


def _auto(choice: BlockForm, cell: str, row: dict[str, float] | None, model: Model, cells: dict[str, str | None],
          probe_inputs: "dict[str, np.ndarray] | None", allow_probe: bool, budget_s: float) -> None:
    if row and all(f in row for f in choice.candidates):
        choice.figures = {f: row[f] for f in choice.candidates}
        choice.form, choice.reason = _pick(choice.figures), "table"
        choice.unit = TABLE_UNIT
        return
    choice.form, choice.reason = DEFAULT, "default"
    if not allow_probe or probe_inputs is None:
        choice.note = (f"no table entry for onnxruntime {_minor(choice.onnxruntime)} and cell `{cell}`; not "
                       "measured" + (" (CI)" if os.environ.get("CI") else ""))
        return
    figures = probe(model, choice.loop, cells, probe_inputs, budget_s)
    if len(figures) == len(choice.candidates):
        shape = ", ".join(f"{k}={v.shape}" for k, v in probe_inputs.items())
        choice.figures, choice.form, choice.reason = figures, _pick(figures), "probe"
        choice.unit = f"ms per run, median (probe, inputs {shape})"
    else:
        choice.note = "probe ran out of its time budget before every form was measured"


def probe(model: Model, loop: str, cells: dict[str, str | None], inputs: "dict[str, np.ndarray]",
          budget_s: float = PROBE_BUDGET_S) -> dict[str, float]:
    """Median ms of one run of ``model`` with block ``loop`` native and as a Scan (every other block native where
    it can be), measured in alternating rounds within ``budget_s``; a form missing ran out of time."""
    import onnxruntime as ort

    from .onnx_export import export

    start = time.perf_counter()
    others = {name for name, cell in cells.items() if cell and name != loop}
    sessions: dict[str, Any] = {}
    for form in FORMS:
        proto = export(model, native_cells=others | ({loop} if form == "native" else set()))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.force_spinning_stop", "1")  # no spinning into the next timing
        sessions[form] = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        if time.perf_counter() - start > budget_s:
            return {}
    times: dict[str, list[float]] = {f: [] for f in sessions}
    for form, session in sessions.items():
        session.run(None, inputs)  # warm-up
    rounds = 0
    while rounds < 3 or time.perf_counter() - start < budget_s and rounds < 15:
        for form in (FORMS if rounds % 2 == 0 else FORMS[::-1]):
            t = time.perf_counter()
            sessions[form].run(None, inputs)
            times[form].append((time.perf_counter() - t) * 1e3)
        rounds += 1
        if time.perf_counter() - start > 4 * budget_s:  # three rounds at least, even when one round is slow
            break
    return {f: statistics.median(v) for f, v in times.items()}
