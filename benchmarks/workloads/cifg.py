"""CIFG LSTM (coupled input-forget gate, f = 1 - i, ONNX's input_forget; specs/lstm_cifg.yaml): vs a hand-written
fused-gates loop and vs torch.nn.LSTM (one GEMM block more), forward and training step; onnxruntime."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..harness import SPECS, Config, Report
from ._cells import Cell, hand_copy, run_cell, stacked

ORDER = 21


class CifgByHand(nn.Module):
    """The CIFG LSTM written for speed: x W (+ b) for every step in one matmul, the three recurrent products in
    one matmul per step (gate order i, c, o)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        p = hand_copy(net)
        self.h = p["U_i"].shape[0]
        self.W = stacked(p, "W_i", "W_c", "W_o")
        self.U = stacked(p, "U_i", "U_c", "U_o")
        self.b = stacked(p, "b_i", "b_c", "b_o")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xw = F.linear(x, self.W, self.b)  # (B, T, 3h)
        h = x.new_zeros(x.shape[0], self.h)
        c = x.new_zeros(x.shape[0], self.h)
        ys = []
        for t in range(x.shape[1]):
            i, g, o = (xw[:, t] + F.linear(h, self.U)).chunk(3, dim=1)
            i = torch.sigmoid(i)
            c = (1 - i) * c + i * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys, 1), h, c


def run(report: Report, cfg: Config) -> None:
    run_cell(report, cfg, Cell(
        "CIFG LSTM", SPECS / "lstm_cifg.yaml", 3, "hand-written fused-gates loop", CifgByHand,
        same_gemms=("torch.nn.LSTM", lambda d, h: nn.LSTM(d, h, batch_first=True)),
        forward_target=1.10, same_target=1.5, train_same_target=1.5, onnx_target=1.10))
