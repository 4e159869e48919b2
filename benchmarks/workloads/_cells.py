"""What the recurrent-cell workloads share: the GEMM-only floor, torch.nn layers with the spec's outputs, and one
function that times a cell family forward and as a training step, in PyTorch and onnxruntime.

A family module describes its cell as a `Cell` (spec, hand-written or torch.nn reference, targets) and calls
`run_cell`. Every variant is timed in the same alternating rounds; the reference gets the spec module's
weights, so each row checks parity (max abs diff of the outputs; for a training step, of d loss / d x).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import seqdsl
from seqdsl.compilers.torch_module import to_module

from ..harness import (TRAINING_STEP, Config, Report, Row, input_grad, max_diff, measure, onnx_form,
                       onnx_model, ort_session, torch_runner, train_step)

FULL = {"B": 32, "T": 128, "d": 256, "h": 256}  # the sizes
TINY = {"B": 2, "T": 3, "d": 8, "h": 8}


class GemmFloor(nn.Module):
    """The matrix products of a recurrent step alone: the hoisted input projection as one GEMM, then T
    ``addmm(xw_t, h, Uᵀ)`` of (B, h) by (h, gates·h). ``h`` is a fixed parameter (no gates, no dependency
    between steps), so this is what the products cost when nothing else runs; its training step also pays
    d h and d U per step and d W once, as a cell's backward does. Where the recurrent product is wider than the
    input projection (``recurrent`` gates, e.g. a hypernetwork's h -> h·d weights), the step is ``h Uᵀ`` alone."""

    def __init__(self, d: int, h: int, gates: int, batch: int, recurrent: int | None = None):
        super().__init__()
        recurrent = recurrent or gates
        self.fused = recurrent == gates
        self.W = nn.Parameter(torch.randn(gates * h, d) / d**0.5)
        self.U = nn.Parameter(torch.randn(recurrent * h, h) / h**0.5)
        self.b = nn.Parameter(torch.zeros(gates * h))
        self.h = nn.Parameter(torch.randn(batch, h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xw = F.linear(x, self.W, self.b).transpose(0, 1)  # (T, B, g·h)
        Ut, T = self.U.t(), xw.shape[0]
        if not self.fused:
            if torch.is_grad_enabled():
                return torch.stack([self.h @ Ut for _ in range(T)]).sum() + xw.sum()
            out = xw.new_empty(T, *self.h.shape[:1], Ut.shape[1])
            for t in range(T):
                torch.mm(self.h, Ut, out=out[t])
            return out
        if not torch.is_grad_enabled():
            out = torch.empty_like(xw)
            for t in range(T):
                torch.addmm(xw[t], self.h, Ut, out=out[t])
            return out
        # unbind, not xw[t]: the backward of T selects would write T zero-filled (T, B, g·h) gradients
        return torch.stack([torch.addmm(xw_t, self.h, Ut) for xw_t in xw.unbind(0)])


class TorchCell(nn.Module):
    """A torch.nn recurrent layer (batch_first) returning what a cell spec returns: y, h_n (, c_n)."""

    def __init__(self, layer: nn.RNNBase):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, state = self.layer(x)
        states = state if isinstance(state, tuple) else (state,)
        return (y, *(s[0] for s in states))


@dataclass
class Cell:
    """One cell family: its spec and sizes, its reference, and the targets of its rows (None: context)."""

    name: str
    spec: Path
    gates: int  # width of the fused input and recurrent products, in h: 4 for an LSTM (the GEMM floor's)
    reference: str  # what the reference is, e.g. "hand-written fused-gates loop" or "torch.nn.RNN(relu)"
    make_reference: Callable[[nn.Module], nn.Module]  # the reference, with the spec module's weights
    full: dict[str, int] = field(default_factory=lambda: dict(FULL))
    tiny: dict[str, int] = field(default_factory=lambda: dict(TINY))
    # a torch.nn layer with the same GEMMs (not the same function: no parity), for the generic-path targets
    same_gemms: tuple[str, Callable[[int, int], nn.Module]] | None = None
    forward_target: float | None = None  # ours vs the reference
    same_target: float | None = None  # ours vs same_gemms, forward
    train_same_target: float | None = None  # ours vs same_gemms, training step
    onnx_target: float | None = None
    onnx_against_same: bool = False  # compare onnxruntime with same_gemms (else with the reference)
    recurrent_gates: Callable[[dict[str, int]], int] | None = None  # a wider recurrent product, from the sizes
    extra: dict[str, Callable[[seqdsl.ir.Model, nn.Module], nn.Module]] = field(default_factory=dict)
    input_scale: float = 1.0  # x ~ input_scale * N(0, 1): small enough that the dynamics are not chaotic


def sizes_label(s: dict[str, int]) -> str:
    return f"B={s['B']} T={s['T']} d={s['d']} h={s['h']}" if s["d"] != s["h"] else \
        f"B={s['B']} T={s['T']} d=h={s['h']}"


def run_cell(report: Report, cfg: Config, cell: Cell) -> None:
    """Forward and training step of ``cell``'s spec (to_module default) and its reference, the GEMM floor,
    torch.nn with the same GEMMs where given, and onnxruntime (export default, forward), in one set of rounds."""
    s = cfg.pick(cell.full, cell.tiny)
    torch.manual_seed(0)
    model = seqdsl.load(cell.spec, {"d": s["d"], "h": s["h"]})
    net = to_module(model).eval()
    ref = cell.make_reference(net).eval()
    recurrent = cell.recurrent_gates(s) if cell.recurrent_gates else cell.gates
    floor = GemmFloor(s["d"], s["h"], cell.gates, s["B"], recurrent)
    x = cell.input_scale * torch.randn(s["B"], s["T"], s["d"])
    fns: dict[str, Callable[[], object]] = {
        "ours": lambda: net(x), "ref": lambda: ref(x), "floor": lambda: floor(x),
        "ours_train": train_step(net, list(net.parameters()), x),
        "ref_train": train_step(ref, list(ref.parameters()), x),
        "floor_train": train_step(floor, list(floor.parameters()), x)}
    same = None
    if cell.same_gemms:
        torch.manual_seed(1)
        same = TorchCell(cell.same_gemms[1](s["d"], s["h"])).eval()
        fns["same"] = lambda: same(x)
        fns["same_train"] = train_step(same, list(same.parameters()), x)
    extras = {label: make(model, net).eval() for label, make in cell.extra.items()}
    for label, module in extras.items():
        fns[label] = lambda m=module: m(x)
    proto = onnx_model(model, net)
    session = ort_session(proto, cfg.threads)
    feed = {"x": x.numpy()}
    fns["onnx"] = lambda: session.run(None, feed)
    stats = measure(fns, cfg)

    with torch.no_grad():
        want = ref(x)
        diff = max_diff(net(x), want)
        onnx_diff = max_diff(tuple(session.run(None, feed)), want)
        extra_diff = {label: max_diff(m(x), want) for label, m in extras.items()}
    grad_diff = max_diff(input_grad(net, x), input_grad(ref, x))
    runner, form = torch_runner(net), onnx_form(proto)
    w = f"{cell.name} {sizes_label(s)}"
    ours = f"{cell.spec.name} to_module ({runner})"
    add = report.add
    add(Row(w, ours, cell.reference, stats["ours"], stats["ref"], cell.forward_target, diff,
            floor=stats["floor"], headline=f"{cell.name}, PyTorch ({runner}) vs {cell.reference}"))
    for label, module in extras.items():
        add(Row(w, label, cell.reference, stats[label], stats["ref"], None, extra_diff[label], floor=stats["floor"]))
    product = f"addmm (B x h)(h x {recurrent}h)" if recurrent == cell.gates else f"mm (B x h)(h x {recurrent}h)"
    add(Row(w, f"GEMM floor: x W ({cell.gates}h) once + T {product}", cell.reference, stats["floor"],
            stats["ref"], None, note="the step's matrix products alone"))
    add(Row(w, ours, cell.reference, stats["ours_train"], stats["ref_train"], None, grad_diff,
            kind="training step", floor=stats["floor_train"], note=TRAINING_STEP,
            headline=f"{cell.name}, PyTorch training step ({runner}) vs {cell.reference}"))
    add(Row(w, "GEMM floor (training step)", cell.reference, stats["floor_train"], stats["ref_train"], None,
            kind="training step"))
    if same is not None:
        label = cell.same_gemms[0] + " (same GEMMs, not the same cell)"
        add(Row(w, ours, label, stats["ours"], stats["same"], cell.same_target, floor=stats["floor"],
                headline=f"{cell.name}, PyTorch ({runner}) vs {cell.same_gemms[0]}"))
        add(Row(w, ours, label, stats["ours_train"], stats["same_train"], cell.train_same_target,
                kind="training step", floor=stats["floor_train"],
                headline=f"{cell.name}, PyTorch training step ({runner}) vs {cell.same_gemms[0]}'s"))
    onnx_vs = "same" if cell.onnx_against_same and same is not None else "ref"
    onnx_ref = cell.same_gemms[0] if onnx_vs == "same" else cell.reference
    add(Row(w, f"onnxruntime, as seqdsl build chooses ({form})", onnx_ref, stats["onnx"], stats[onnx_vs],
            cell.onnx_target, onnx_diff, floor=stats["floor"],
            headline=f"{cell.name}, onnxruntime ({form.split(';')[0]}) vs {onnx_ref}"))


def hand_copy(net: nn.Module) -> dict[str, torch.Tensor]:
    """The spec module's parameters by name, detached copies (for a hand-written reference)."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def stacked(p: dict[str, torch.Tensor], *names: str) -> nn.Parameter:
    return nn.Parameter(torch.cat([p[n] for n in names]))
