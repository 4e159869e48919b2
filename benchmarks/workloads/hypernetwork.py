"""Hypernetwork RNN (specs/hypernetwork_rnn.yaml: the input weights are a function of the state) vs a
hand-written loop, forward and training step; onnxruntime vs the hand-written loop. d=h=64: the weight tensor
U_w is h·d·h (16.7M floats at 256)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..harness import SPECS, Config, Report
from ._cells import Cell, hand_copy, run_cell

ORDER = 25


class HypernetworkByHand(nn.Module):
    """W(h) = U_w h as one matmul of (B, h) by (h, h·d), then a batched mat-vec with x_t; W_0 x (+ b) for every
    step in one matmul outside the loop."""

    def __init__(self, net: nn.Module):
        super().__init__()
        p = hand_copy(net)
        self.h, self.d = p["W_0"].shape
        self.U_w = nn.Parameter(p["U_w"].reshape(self.h * self.d, self.h))  # (h·d, h): row (i, j), column k
        self.W_0, self.U, self.b = nn.Parameter(p["W_0"]), nn.Parameter(p["U"]), nn.Parameter(p["b"])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xw = F.linear(x, self.W_0, self.b)  # (B, T, h)
        h = x.new_zeros(x.shape[0], self.h)
        ys = []
        for t in range(x.shape[1]):
            W_h = F.linear(h, self.U_w).view(-1, self.h, self.d)  # (B, h, d)
            h = torch.tanh(torch.bmm(W_h, x[:, t, :, None])[..., 0] + xw[:, t] + F.linear(h, self.U))
            ys.append(h)
        return torch.stack(ys, 1), h


def run(report: Report, cfg: Config) -> None:
    run_cell(report, cfg, Cell(
        "hypernetwork RNN", SPECS / "hypernetwork_rnn.yaml", 1, "hand-written loop", HypernetworkByHand,
        full={"B": 32, "T": 128, "d": 64, "h": 64}, tiny={"B": 2, "T": 3, "d": 4, "h": 4}, forward_target=1.10,
        recurrent_gates=lambda s: s["d"] + 1,  # U_w h (h -> h·d) and U h in one product
        # at x ~ N(0, 1) the multiplicative step is chaotic at default init: two correct implementations drift
        # apart from rounding alone (float64: 1e-15 at T=2, 1e-8 at T=32, 2.0 at T=128), so parity says nothing
        input_scale=0.1))
