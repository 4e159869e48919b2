"""Standard cells (LSTM / GRU / Elman RNN): the spec's PyTorch module (recognised, generic, unoptimized) vs
torch.nn, forward and training step, with the GEMM-only floor of each cell."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import seqdsl
from seqdsl.compilers.interop import load_from_torch
from seqdsl.compilers.torch_module import to_module

from ..harness import SPECS, TRAINING_STEP, Config, Report, Row, input_grad, max_diff, measure, torch_runner, \
    train_step
from ._cells import FULL, TINY, GemmFloor, TorchCell, sizes_label

ORDER = 10
# name -> (spec, torch.nn class, the torch kernel a recognised module calls, native ONNX op, gates)
CELLS = {
    "LSTM": ("lstm.yaml", nn.LSTM, "torch.lstm", "LSTM", 4),
    "GRU": ("gru_torch.yaml", nn.GRU, "torch.gru", "GRU", 3),
    "RNN": ("rnn.yaml", nn.RNN, "torch.rnn_tanh", "RNN", 1),
}


def standard_cell(name: str, s: dict[str, int]) -> tuple[seqdsl.ir.Model, nn.Module, dict[str, nn.Module]]:
    """The spec, torch.nn's layer (returning the spec's outputs), and the spec's modules (default / generic /
    unoptimized), all with the same weights."""
    spec, cls, *_ = CELLS[name]
    torch.manual_seed(0)
    model = seqdsl.load(SPECS / spec, {"d": s["d"], "h": s["h"]})
    layer = cls(s["d"], s["h"], batch_first=True).eval()
    nets = {"default": to_module(model), "generic": to_module(model, native_cells=False),
            "unoptimized": to_module(model, optimize=False)}
    for net in nets.values():
        load_from_torch(net, layer)
        net.eval()
    return model, TorchCell(layer).eval(), nets


def run(report: Report, cfg: Config) -> None:
    s = cfg.pick(FULL, TINY)
    x = torch.randn(s["B"], s["T"], s["d"])
    for name, (spec, cls, marker, _, gates) in CELLS.items():
        _, ref, nets = standard_cell(name, s)
        floor = GemmFloor(s["d"], s["h"], gates, s["B"])
        fns: dict[str, Callable[[], object]] = {"ref": lambda: ref(x), "floor": lambda: floor(x)}
        fns.update({k: (lambda n=n: n(x)) for k, n in nets.items()})
        fns["ref_train"] = train_step(ref, list(ref.parameters()), x)
        fns["floor_train"] = train_step(floor, list(floor.parameters()), x)
        for k in ("default", "generic"):
            fns[k + "_train"] = train_step(nets[k], list(nets[k].parameters()), x)
        stats = measure(fns, cfg)
        with torch.no_grad():
            want = ref(x)
            diffs = {k: max_diff(n(x), want) for k, n in nets.items()}
        grad_want = input_grad(ref, x)
        grad_diffs = {k: max_diff(input_grad(nets[k], x), grad_want) for k in ("default", "generic")}
        runner = {k: torch_runner(nets[k]) for k in ("default", "generic")}
        w, nn_name = f"{name} {sizes_label(s)}", f"torch.nn.{cls.__name__}"
        recognised = marker in runner["default"]
        default = f"{spec} to_module (default: {runner['default']}{'' if recognised else ', NOT recognised'})"
        generic = f"{spec} native_cells=False ({runner['generic']})"
        is_lstm = name == "LSTM"
        report.add(Row(w, default, nn_name, stats["default"], stats["ref"], 1.05, diffs["default"],
                       floor=stats["floor"], headline=f"{name}, recognised, PyTorch vs {nn_name}"))
        report.add(Row(w, generic, nn_name, stats["generic"], stats["ref"], 1.5 if is_lstm else None,
                       diffs["generic"], floor=stats["floor"],
                       headline=f"{name} equations on the generic path vs {nn_name}"))
        report.add(Row(w, f"{spec} unoptimized (optimize=False: the equations)", nn_name, stats["unoptimized"],
                       stats["ref"], None, diffs["unoptimized"], floor=stats["floor"]))
        report.add(Row(w, f"GEMM floor: x W ({gates}h) once + T addmm (B x h)(h x {gates}h)", nn_name, stats["floor"],
                       stats["ref"], None, note="the step's matrix products alone",
                       headline=f"GEMM-only floor ({name} shape) vs {nn_name}" if is_lstm else ""))
        report.add(Row(w, default, nn_name, stats["default_train"], stats["ref_train"], None, grad_diffs["default"],
                       kind="training step", floor=stats["floor_train"], note=TRAINING_STEP,
                       headline=f"{name}, recognised, PyTorch training step vs {nn_name}'s"))
        report.add(Row(w, generic, nn_name, stats["generic_train"], stats["ref_train"], 1.5 if is_lstm else None,
                       grad_diffs["generic"], kind="training step", floor=stats["floor_train"], note=TRAINING_STEP,
                       headline=f"{name} equations on the generic path, training step vs {nn_name}'s"))
        report.add(Row(w, "GEMM floor (training step)", nn_name, stats["floor_train"], stats["ref_train"], None,
                       kind="training step",
                       headline=f"GEMM-only floor ({name} shape), training step vs {nn_name}'s" if is_lstm else ""))
