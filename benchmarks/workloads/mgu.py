"""Minimal gated unit (benchmarks/specs/mgu.yaml) vs a hand-written loop and vs torch.nn.GRU (one gate more),
forward and training step; onnxruntime vs the hand-written loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..harness import BENCH_SPECS, Config, Report
from ._cells import Cell, hand_copy, run_cell, stacked

ORDER = 24


class MguByHand(nn.Module):
    """x W (+ b) for every step in one matmul; per step U_f h, then U_n (f h): two dependent matmuls."""

    def __init__(self, net: nn.Module):
        super().__init__()
        p = hand_copy(net)
        self.h = p["U_f"].shape[0]
        self.W = stacked(p, "W_f", "W_n")
        self.b = stacked(p, "b_f", "b_n")
        self.U_f, self.U_n = nn.Parameter(p["U_f"]), nn.Parameter(p["U_n"])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xf, xn = F.linear(x, self.W, self.b).chunk(2, dim=-1)  # (B, T, h) each
        h = x.new_zeros(x.shape[0], self.h)
        ys = []
        for t in range(x.shape[1]):
            f = torch.sigmoid(xf[:, t] + F.linear(h, self.U_f))
            n = torch.tanh(xn[:, t] + F.linear(f * h, self.U_n))
            h = (1 - f) * h + f * n
            ys.append(h)
        return torch.stack(ys, 1), h


def run(report: Report, cfg: Config) -> None:
    run_cell(report, cfg, Cell(
        "MGU", BENCH_SPECS / "mgu.yaml", 2, "hand-written loop", MguByHand,
        same_gemms=("torch.nn.GRU", lambda d, h: nn.GRU(d, h, batch_first=True)), forward_target=1.10))
