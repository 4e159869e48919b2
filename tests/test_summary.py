"""`seqdsl inspect`'s summary against hand counts: parameters (seed 004), MACs and FLOPs of the standard cells.

Convention (seqdsl.cost): a MAC is one multiply-accumulate of a matrix product; FLOPs count a MAC as 2 and every
other arithmetic op as 1 per element it writes. So one step of a cell over x (B, d) with state h (B, h) is
  Elman  h = tanh(W x + U h + b):  B·h·(d+h) MACs, 2·B·h·(d+h) FLOPs in products  + 3·B·h elementwise
  GRU    (Cho's form, gru.yaml):  3·B·h·(d+h) MACs, 6·B·h·(d+h) FLOPs in products + 14·B·h elementwise
  LSTM                           4·B·h·(d+h) MACs, 8·B·h·(d+h) FLOPs in products + 17·B·h elementwise
(elementwise: per gate two adds and σ; GRU's candidate r⊙h, +, +b, tanh and z⊙h + (1−z)⊙h̃; LSTM's
f⊙c + i⊙tanh(·) and o⊙tanh(c)).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SPECS
from test_properties import random_cells
from typer.testing import CliRunner

from seqdsl import cli as seqdsl_cli

import seqdsl
from seqdsl.cost import COSTS, node_cost
from seqdsl.ir import Node
from seqdsl.ops import OPS
from seqdsl.summary import summarize

def cli(*args: str) -> Any:
    """The command line, in this process."""
    result = CliRunner().invoke(seqdsl_cli.app, list(args))
    result.returncode = result.exit_code
    return result


CELLS = {  # spec: (gates, elementwise FLOPs per B·h)
    "rnn.yaml": (1, 3),
    "gru.yaml": (3, 14),
    "lstm.yaml": (4, 17),
}


@settings(max_examples=25, deadline=None)
@given(spec=st.sampled_from(sorted(CELLS)), d=st.integers(1, 64), h=st.integers(1, 64), batch=st.integers(1, 16),
       seq_len=st.integers(1, 50))
def test_standard_cells_match_hand_counts(spec: str, d: int, h: int, batch: int, seq_len: int):
    gates, elementwise = CELLS[spec]
    model = seqdsl.load(SPECS / spec, {"d": d, "h": h})
    total = summarize(model, batch, seq_len).total
    assert total.macs_per_step == gates * batch * h * (d + h)
    assert total.flops_per_step == 2 * gates * batch * h * (d + h) + elementwise * batch * h
    assert (total.macs, total.flops) == (seq_len * total.macs_per_step, seq_len * total.flops_per_step)
    assert total.params == model.param_count == gates * (d * h + h * h + h)  # seed 004's formulas


def test_lstm_activation_memory_is_every_value_of_every_step():
    """25 values per step (per gate 2 products, 2 sums, σ; the cell 2 products, 2 sums, tanh, 2 ×, +; h: tanh, ×),
    all (B, h) float32, kept for each of the T steps; plus y (B, T, h), h_n, c_n and the two zero states."""
    b, t, h = 3, 11, 32
    total = summarize(seqdsl.load(SPECS / "lstm.yaml"), b, t).total
    assert total.activation_bytes == 4 * (25 * b * h * t + b * t * h + 2 * b * h + 2 * b * h)


def test_deep_lstm_rows_nest_and_sutskevers_32m_recurrent_parameters():
    """Seed 003: 4 layers of 1000 cells, "32M [parameters] for the encoder LSTM" (its recurrent connections)."""
    model = seqdsl.load(SPECS / "deep_lstm.yaml", {"d": 1000, "h": 1000})
    summary = summarize(model, 1, 1)
    rows = {m.path: m for m in summary.modules}
    assert list(rows) == ["", "layers", "layers.0", "layers.1", "layers.2", "layers.3"]
    assert rows["layers"].module == "LSTM ×4" and rows["layers.2"].module == "layer 2"
    assert [rows[f"layers.{i}"].depth for i in range(4)] == [2, 2, 2, 2]
    assert all(rows[f"layers.{i}"].params == 4 * (1000 * 1000 + 1000 * 1000 + 1000) for i in range(4))
    assert rows["layers"].params == model.param_count == 32_016_000
    for key in ("params", "macs", "flops", "flops_per_step", "activation_bytes"):
        assert getattr(rows["layers"], key) == sum(getattr(rows[f"layers.{i}"], key) for i in range(4))
    assert rows["layers.3"].outputs == {"y": "[B, T, 1000]", "h_n": "[B, 1000]", "c_n": "[B, 1000]"}


def test_bidirectional_and_seq2seq_rows():
    rows = {m.path: m for m in summarize(seqdsl.load(SPECS / "seq2seq_attention.yaml"), 2, 9).modules}
    assert rows["enc"].module == "GRU (both directions)" and rows["enc.bw"].module == "backward"
    assert rows["enc.fw"].flops == rows["enc.bw"].flops and rows["enc.fw"].params == 360
    assert rows["enc"].outputs == {"y": "[B, S, 16]", "h_n": "[B, 16]"}
    assert rows["dec"].outputs == {"logp": "[B, T, 11]", "alpha": "[B, T, S]"}
    # the top level's own work (W_s, tanh, the embedding) is in the total, and only there
    assert rows[""].flops > rows["enc"].flops + rows["dec"].flops


@pytest.mark.parametrize("spec", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_summarises(spec):
    model = seqdsl.load(spec)
    summary = summarize(model, 2, 5)
    assert summary.total.params == model.param_count
    assert summary.total.flops > 0 and summary.total.activation_bytes > 0
    recurrent = any(n.op == "loop" for n in seqdsl.ir.all_nodes(model.graph))
    assert (summary.total.flops_per_step > 0) == recurrent
    for row in summary.modules[1:]:
        assert row.params <= summary.total.params and row.flops <= summary.total.flops


def test_transformer_costs_grow_with_the_sequence_as_attention_does():
    model = seqdsl.load(SPECS / "transformer_encoder.yaml")
    a, b = summarize(model, 1, 10).total, summarize(model, 1, 20).total
    assert a.flops_per_step == 0
    assert b.flops > 2 * a.flops  # the T×T scores: more than linear in T


def test_every_op_has_a_cost_and_a_missing_one_is_named():
    assert set(OPS) <= set(COSTS)
    with pytest.raises(KeyError, match="`warp`.*COSTS"):
        node_cost(Node("n", "warp"), (), [])


def test_inspect_json_and_table():
    r = cli("inspect", str(SPECS / "lstm.yaml"), "--json", "--batch", "4", "--seq-len", "10")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert (data["batch"], data["seq_len"]) == (4, 10) and "MACs" in data["convention"]
    assert data["total"]["macs_per_step"] == 4 * 4 * 32 * (16 + 32)
    assert data["total"]["flops"] == 10 * (8 * 4 * 32 * 48 + 17 * 4 * 32)
    r = cli("inspect", str(SPECS / "bilstm.yaml"), "--batch", "2", "--seq-len", "8")
    assert r.returncode == 0, r.stderr
    assert "bi: LSTM (both directions)" in r.stdout and "backward" in r.stdout and "FLOPs/step" in r.stdout
    assert "costs at B=2, T=8" in r.stdout


@settings(max_examples=25, deadline=None)
@given(spec=random_cells(), batch=st.integers(1, 8), seq_len=st.integers(1, 9))
def test_random_cells_cost_one_mac_per_weight_per_row_and_step(spec: str, batch: int, seq_len: int):
    """In a cell that applies each of its matrices once per step, a step is B MACs per matrix entry."""
    model = seqdsl.loads(spec)
    entries = sum(p.size for p in model.params.values() if len(p.shape) == 2)
    total = summarize(model, batch, seq_len).total
    assert total.macs_per_step == batch * entries and total.macs == seq_len * batch * entries
    assert total.flops_per_step >= 2 * total.macs_per_step
