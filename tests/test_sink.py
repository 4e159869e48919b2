"""The sinking pass: a decoder nothing feeds back, y(t) = Dec(z(t)), runs once after the loop."""

from __future__ import annotations

import numpy as np

import seqdsl
from seqdsl.compilers.build import example_inputs, run_torch
from seqdsl.compilers.onnx_export import export, set_weights
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_module import to_module
from seqdsl.ir import loop_of
from seqdsl.passes import sink

SPEC = """
sizes: {d: 3, h: 4, v: 5}
inputs: {x: [B, T, d]}
params: {W: [h, d], U: [h, h], W_y: [v, h], b_y: [v]}
recurrent:
  state: {h: [B, h]}
  step:
    h: tanh(W @ x + U @ h[t-1])
  decoder:
    y: log_softmax(W_y @ h + b_y)
outputs: {y: y, h_n: final(h)}
"""


def test_feed_forward_decoder_leaves_the_loop_with_the_same_numbers():
    model = seqdsl.loads(SPEC)
    sunk, changed = sink(model)
    assert changed
    loop = next(loop_of(n) for n in sunk.graph if n.op == "loop")
    assert not any(n.op in ("log_softmax", "linear") and "W_y" in str(n.inputs) for n in loop.body)
    assert [n.op for n in loop.body if n.op == "log_softmax"] == []  # computed once over (B, T, v) outside
    outside = sunk.graph[sunk.graph.outputs["y"]]
    assert outside.op == "log_softmax" and outside.shape == ("B", "T", 5)
    plain, fast = to_module(model, optimize=False), to_module(model)
    fast.load_state_dict(plain.state_dict())
    inputs = example_inputs(model, 3, 6)
    want = run_torch(plain, inputs)
    for name, value in run_torch(fast, inputs).items():
        np.testing.assert_allclose(value, want[name], atol=1e-6)
    proto = export(model, native_cells=False)
    set_weights(proto, {k: v.detach().numpy() for k, v in plain.state_dict().items()})
    for name, value in run(proto.SerializeToString(), inputs).outputs.items():
        np.testing.assert_allclose(value, want[name], atol=1e-5)


def test_values_fed_back_stay_in_the_loop():
    fed_back = (SPEC.replace("b_y: [v]}", "b_y: [v], V: [h, v]}")
                .replace("  state: {h: [B, h]}", "  state: {h: [B, h], y: [B, v]}")
                .replace("    h: tanh(W @ x + U @ h[t-1])", "    h: tanh(W @ x + U @ h[t-1] + V @ y[t-1])"))
    assert sink(seqdsl.loads(fed_back))[1] is False  # y(t-1) is read by the next step: it is G's, not Dec's
