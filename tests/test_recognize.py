"""Recognition of standard cells: what is recognised runs on the runtime's kernel with the same numbers; a cell
that differs in any way is left to the generic path, which still computes it correctly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SPECS

import seqdsl
from seqdsl.compilers.build import example_inputs, run_torch
from seqdsl.compilers.onnx_export import ONNX_CELLS, export, set_weights
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_codegen import torch_runs
from seqdsl.compilers.torch_module import to_module
from seqdsl.passes import recognize

LSTM = (SPECS / "lstm.yaml").read_text()
RNN = (SPECS / "rnn.yaml").read_text()


def _cells(model: seqdsl.Model, kinds=frozenset(ONNX_CELLS)) -> list[str]:
    out, _ = recognize(model, kinds)
    return [n.attrs["cell"] for n in out.graph if n.op == "cell"]


@pytest.mark.parametrize("spec, cell", [("rnn", "rnn"), ("lstm", "lstm"), ("gru", "gru"), ("gru_torch", "gru_torch"),
                                        ("classifier", "lstm"), ("lstm_gates", "lstm")])
def test_standard_cells_are_recognised(spec: str, cell: str):
    assert _cells(seqdsl.load(SPECS / f"{spec}.yaml", {"d": 5, "h": 7} if spec != "classifier" else None)) == [cell]


def test_cho_gru_has_no_torch_kernel():
    assert _cells(seqdsl.load(SPECS / "gru.yaml"), torch_runs) == []


@pytest.mark.parametrize("change, recognised", [
    (("U_f @ h[t-1] + b_f", "b_f + U_f @ h[t-1]"), True),        # grouped differently: (W x + b) + U h, the same sum
    (("W_f @ x + U_f @ h[t-1]", "U_f @ h[t-1] + W_f @ x"), True),  # a commuted sum is the same sum
    (("f * c[t-1]", "c[t-1] * f"), True),                          # so is a commuted product
    (("h: o * tanh(c)", "h: o * tanh(c) * 1"), False),             # anything extra
    (("h: o * tanh(c)", "h: o * abs(c)"), False),                  # a function no kernel has
    (("o: sigmoid(", "o: relu("), False),                          # ONNX has one function for all three gates
])
def test_variants_of_the_lstm(change: tuple[str, str], recognised: bool):
    model = seqdsl.loads(LSTM.replace(*change))
    assert (_cells(model) == ["lstm"]) is recognised


def test_another_activation_is_onnx_lstm_and_generic_in_torch():
    model = seqdsl.loads(LSTM.replace("h: o * tanh(c)", "h: o * relu(c)"))
    cell, _ = recognize(model, frozenset(ONNX_CELLS))
    assert [n.attrs["activations"] for n in cell.graph if n.op == "cell"] == [
        (("sigmoid", None), ("tanh", None), ("relu", None))]
    assert _cells(model, torch_runs) == []


def test_peephole_lstm_is_generic_in_torch_and_still_runs_right():
    model = seqdsl.load(SPECS / "lstm_peephole.yaml", {"d": 4, "h": 5})
    assert _cells(model, torch_runs) == [] and _cells(model) == ["lstm"]  # ONNX's LSTM has peepholes
    net = to_module(model)
    plain = to_module(model, optimize=False)
    plain.load_state_dict(net.state_dict())
    inputs = example_inputs(model, 2, 6)
    want = run_torch(plain, inputs)
    for name, value in run_torch(net, inputs).items():
        np.testing.assert_allclose(value, want[name], atol=1e-6)
    proto = export(model, native_cells=False)
    assert any(n.op_type == "Scan" for n in proto.graph.node)
    set_weights(proto, {k: v.detach().numpy() for k, v in net.state_dict().items()})
    for name, value in run(proto.SerializeToString(), inputs).outputs.items():
        np.testing.assert_allclose(value, want[name], atol=1e-5)


def test_returning_a_gate_keeps_the_generic_path():
    model = seqdsl.loads(LSTM.replace("  c_n: final(c)", "  c_n: final(c)\n  f: f"))
    assert _cells(model) == []


def _kernel_equals_generic(model: seqdsl.Model, prepare=None) -> None:
    """The recognised cell (torch's kernel, ONNX's op) computes what the generic path computes."""
    native, generic = to_module(model), to_module(model, native_cells=False)
    if prepare is not None:
        prepare(native)
    generic.load_state_dict(native.state_dict())
    inputs = example_inputs(model, 3, 5)
    want = run_torch(generic, inputs)
    for name, value in run_torch(native, inputs).items():
        np.testing.assert_allclose(value, want[name], atol=1e-6, err_msg=name)
    proto = export(model)
    set_weights(proto, {k: v.detach().numpy() for k, v in native.state_dict().items()})
    for name, value in run(proto.SerializeToString(), inputs).outputs.items():
        np.testing.assert_allclose(value, want[name], atol=1e-5, err_msg=name)


def test_states_in_another_order_map_to_the_kernel_correctly():
    swapped = LSTM.replace("    h: [B, h]\n    c: [B, h]", "    c: [B, h]\n    h: [B, h]")
    model = seqdsl.loads(swapped, {"d": 3, "h": 4})
    assert _cells(model) == ["lstm"]
    _kernel_equals_generic(model)


def test_reverse_and_learned_initial_state_on_the_kernel():
    text = RNN.replace("recurrent:\n", "recurrent:\n  direction: reverse\n").replace(
        "    h: [B, h]", "    h: {shape: [B, h], init: learned}") + "  y_last: last(h)\n"
    model = seqdsl.loads(text, {"d": 3, "h": 4})
    assert _cells(model) == ["rnn"]

    def learned_start(net: torch.nn.Module) -> None:
        with torch.no_grad():
            net.h_0.uniform_()  # zeros by default: make the initial state matter

    _kernel_equals_generic(model, learned_start)
