"""Parameter counts of the standard cells equal the seeds' formulas (one bias vector per gate)."""

from __future__ import annotations

import pytest

from conftest import SPECS

import seqdsl
from seqdsl.summary import params_by_module


@pytest.mark.parametrize("d, h", [(16, 32), (5, 7), (1, 1)])
def test_standard_cells_match_the_seeds_formulas(d: int, h: int):
    sizes = {"d": d, "h": h}
    assert seqdsl.load(SPECS / "rnn.yaml", sizes).param_count == (d * h) + (h * h) + h
    assert seqdsl.load(SPECS / "lstm.yaml", sizes).param_count == 4 * ((d * h) + (h * h) + h)
    assert seqdsl.load(SPECS / "gru.yaml", sizes).param_count == 3 * ((d * h) + (h * h) + h)
    # PyTorch's GRU keeps two bias vectors per gate, as torch.nn.GRU does
    assert seqdsl.load(SPECS / "gru_torch.yaml", sizes).param_count == 3 * ((d * h) + (h * h) + 2 * h)


def test_counts_group_by_called_module():
    model = seqdsl.load(SPECS / "classifier.yaml", {"h": 8})
    groups = {g.module: g.count for g in params_by_module(model)}
    assert groups == {"": 100 * 16 + 5 * 8 + 5, "lstm": 4 * (16 * 8 + 8 * 8 + 8)}
    assert sum(groups.values()) == model.param_count
