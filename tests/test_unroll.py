"""The unroll pass: T copies of the step sharing one set of parameters; same numbers as the loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SPECS

import seqdsl
from seqdsl.compilers.build import example_inputs, run_torch
from seqdsl.compilers.onnx_export import export, set_weights
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_module import to_module
from seqdsl.ir import loop_of
from seqdsl.passes import unroll


def _has_loop(path: Path) -> bool:
    return any(n.op == "loop" for n in seqdsl.load(path).graph)


@pytest.mark.parametrize("spec", [p for p in sorted(SPECS.glob("*.yaml")) if _has_loop(p)], ids=lambda p: p.stem)
def test_unrolled_graph_equals_the_loop(spec: Path):
    model = seqdsl.load(spec, {"h": 5} if "h" in seqdsl.load(spec).sizes else None)
    if any(n.op == "loop" and loop_of(n).stop is not None for n in model.graph):
        with pytest.raises(ValueError, match="cannot be unrolled"):
            unroll(model, 4)  # stops at an end token: a data-dependent number of steps
        return
    inputs = example_inputs(model, 3, 4)  # T = 4, other time axes longer: each loop unrolls to its own length
    lengths = {axis: inputs_axis for axis, inputs_axis in _axis_lengths(model, inputs).items()}
    unrolled, changed = unroll(model, lengths)
    assert changed
    assert all(n.op != "loop" for n in unrolled.graph)
    assert unrolled.params == model.params  # weights shared, not copied per step
    # one `param` node per parameter, read by every step
    assert sorted(n.attrs["name"] for n in unrolled.graph if n.op == "param") == sorted(model.params)
    looped, flat = to_module(model), to_module(unrolled)
    flat.load_state_dict(looped.state_dict())
    want = run_torch(looped, inputs)
    for name, value in run_torch(flat, inputs).items():
        np.testing.assert_allclose(value, want[name], atol=1e-6, rtol=0)
    proto = export(unrolled)
    set_weights(proto, {k: v.detach().numpy() for k, v in looped.state_dict().items()})
    for name, value in run(proto.SerializeToString(), inputs).outputs.items():
        np.testing.assert_allclose(value, want[name], atol=1e-5, rtol=0)


def _axis_lengths(model: seqdsl.Model, inputs: dict) -> dict[str, int]:
    lengths: dict[str, int] = {}
    for node in model.input_nodes():
        for dim, size in zip(node.shape, inputs[node.name].shape):
            if isinstance(dim, str) and dim != "B":
                lengths[dim] = size
    return lengths


def test_several_time_axes_need_a_length_each():
    model = seqdsl.load(SPECS / "seq2seq.yaml")
    with pytest.raises(ValueError, match="several time axes"):
        unroll(model, 4)


def test_unrolled_gradients_equal_the_loop():
    model = seqdsl.load(SPECS / "lstm.yaml", {"d": 3, "h": 4})
    unrolled, _ = unroll(model, 6)
    looped, flat = to_module(model), to_module(unrolled)
    flat.load_state_dict(looped.state_dict())
    x = torch.randn(2, 6, 3)
    for net in (looped, flat):
        sum(o.square().sum() for o in net(x)).backward()
    for (name, a), (_, b) in zip(looped.named_parameters(), flat.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=0, msg=name)


def test_unrolled_size_grows_with_t_while_the_loop_does_not():
    model = seqdsl.load(SPECS / "gru.yaml")
    small, big = unroll(model, 2)[0], unroll(model, 8)[0]
    assert big.graph.count() > 3 * small.graph.count() // 2
    assert len(export(model).graph.node) == len(export(seqdsl.load(SPECS / "gru.yaml", {"h": 64})).graph.node)


def test_reverse_direction_unrolls_in_reverse():
    text = (SPECS / "rnn.yaml").read_text().replace("recurrent:\n", "recurrent:\n  direction: reverse\n")
    model = seqdsl.loads(text + "  y_last: last(h)\n", file="rev.yaml")
    unrolled, _ = unroll(model, 5)
    looped, flat = to_module(model), to_module(unrolled)
    flat.load_state_dict(looped.state_dict())
    x = torch.randn(2, 5, 16)
    a, b = looped(x), flat(x)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    y, h_n, y_last = a
    torch.testing.assert_close(h_n, y[:, 0])  # the reverse pass ends at position 0
    torch.testing.assert_close(y_last, y[:, -1])
    proto = export(model)  # the looped (Scan) export, reversed
    set_weights(proto, {k: v.detach().numpy() for k, v in looped.state_dict().items()})
    got = run(proto.SerializeToString(), {"x": x.numpy()}).outputs
    for name, value in zip(looped.output_names, a):
        np.testing.assert_allclose(got[name], value.detach().numpy(), atol=1e-5, rtol=0)
