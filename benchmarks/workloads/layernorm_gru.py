"""Layer-norm GRU (benchmarks/specs/layernorm_gru.yaml) vs a hand-written loop (F.layer_norm per gate) and vs
torch.nn.GRU (same GEMMs, no norms), forward and training step; onnxruntime vs the hand-written loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..harness import BENCH_SPECS, Config, Report
from ._cells import Cell, hand_copy, run_cell, stacked

ORDER = 23


class LayerNormGruByHand(nn.Module):
    """x W for every step in one matmul; per step U_r, U_z (one matmul) and U_n (one matmul) on h, a layer norm
    per gate over its h units."""

    def __init__(self, net: nn.Module):
        super().__init__()
        p = hand_copy(net)
        self.h = p["U_r"].shape[0]
        self.W = stacked(p, "W_r", "W_z", "W_n")
        self.U = stacked(p, "U_r", "U_z", "U_n")
        self.g = nn.ParameterList(nn.Parameter(p[n]) for n in ("g_r", "g_z", "g_n"))
        self.s = nn.ParameterList(nn.Parameter(p[n]) for n in ("s_r", "s_z", "s_n"))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xr, xz, xn = F.linear(x, self.W).chunk(3, dim=-1)  # (B, T, h) each
        h = x.new_zeros(x.shape[0], self.h)
        ys, shape = [], (self.h,)
        for t in range(x.shape[1]):
            hr, hz, hn = F.linear(h, self.U).chunk(3, dim=1)
            r = torch.sigmoid(F.layer_norm(xr[:, t] + hr, shape, self.g[0], self.s[0]))
            z = torch.sigmoid(F.layer_norm(xz[:, t] + hz, shape, self.g[1], self.s[1]))
            n = torch.tanh(F.layer_norm(xn[:, t] + r * hn, shape, self.g[2], self.s[2]))
            h = (1 - z) * n + z * h
            ys.append(h)
        return torch.stack(ys, 1), h


def run(report: Report, cfg: Config) -> None:
    run_cell(report, cfg, Cell(
        "layer-norm GRU", BENCH_SPECS / "layernorm_gru.yaml", 3, "hand-written fused-gates loop",
        LayerNormGruByHand, same_gemms=("torch.nn.GRU", lambda d, h: nn.GRU(d, h, batch_first=True)),
        forward_target=1.10))
