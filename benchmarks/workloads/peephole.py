"""Peephole LSTM (specs/lstm_peephole.yaml): the generic path vs a hand-written fused-gates loop and vs
torch.nn.LSTM (same GEMMs), forward and training step; onnxruntime vs torch.nn.LSTM."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from seqdsl.compilers.torch_module import to_module

from ..harness import SPECS, Config, Report
from ._cells import Cell, hand_copy, run_cell, stacked

ORDER = 20


class PeepholeByHand(nn.Module):
    """The peephole LSTM as one would write it for speed: the input projection of every step (and the biases) in
    one matmul outside the loop, the four recurrent projections in one matmul per step (gate order f, i, c, o)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        p = hand_copy(net)
        self.h = p["U_f"].shape[0]
        self.W = stacked(p, "W_f", "W_i", "W_c", "W_o")
        self.U = stacked(p, "U_f", "U_i", "U_c", "U_o")
        self.b = stacked(p, "b_f", "b_i", "b_c", "b_o")
        self.p_f, self.p_i, self.p_o = (nn.Parameter(p[n]) for n in ("p_f", "p_i", "p_o"))

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


def unoptimized(model, net: nn.Module) -> nn.Module:
    module = to_module(model, optimize=False)
    module.load_state_dict(net.state_dict())
    return module


def compiled(model, net: nn.Module) -> nn.Module:
    """torch.compile of the default module, compiled by one call before timing (its time printed)."""
    module = torch.compile(net)
    t0 = time.perf_counter()
    with torch.no_grad():
        module(torch.randn(2, 3, net.W_f.shape[1]))
    print(f"  torch.compile of the peephole module: first call {time.perf_counter() - t0:.1f} s", flush=True)
    return module


def run(report: Report, cfg: Config) -> None:
    extra = {"lstm_peephole.yaml unoptimized (optimize=False)": unoptimized}
    if cfg.compile:
        extra["torch.compile(lstm_peephole to_module)"] = compiled
    run_cell(report, cfg, Cell(
        "peephole LSTM", SPECS / "lstm_peephole.yaml", 4, "hand-written fused-gates loop", PeepholeByHand,
        same_gemms=("torch.nn.LSTM", lambda d, h: nn.LSTM(d, h, batch_first=True)),
        forward_target=1.10, same_target=1.5, train_same_target=1.5, onnx_target=1.10, onnx_against_same=True,
        extra=extra))
