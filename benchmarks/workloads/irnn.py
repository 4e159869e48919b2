"""IRNN (ReLU RNN, identity init; benchmarks/specs/irnn.yaml) vs torch.nn.RNN(nonlinearity='relu'), forward
and training step; onnxruntime vs torch.nn.RNN(relu)."""

from __future__ import annotations

import torch
from torch import nn

from ..harness import BENCH_SPECS, Config, Report
from ._cells import Cell, TorchCell, run_cell

ORDER = 22


def relu_rnn(net: nn.Module) -> nn.Module:
    """nn.RNN(relu) computing the spec module: weight_ih = W, weight_hh = U, bias_ih = b, bias_hh = 0."""
    h, d = net.W.shape
    layer = nn.RNN(d, h, nonlinearity="relu", batch_first=True)
    with torch.no_grad():
        layer.weight_ih_l0.copy_(net.W)
        layer.weight_hh_l0.copy_(net.U)
        layer.bias_ih_l0.copy_(net.b)
        layer.bias_hh_l0.zero_()
    return TorchCell(layer)


def run(report: Report, cfg: Config) -> None:
    run_cell(report, cfg, Cell(
        "IRNN", BENCH_SPECS / "irnn.yaml", 1, "torch.nn.RNN(relu)", relu_rnn,
        forward_target=1.05, onnx_target=1.0))
