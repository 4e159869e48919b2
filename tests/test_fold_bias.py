"""The bias-folding pass: ``W @ x + b`` as one linear map, same numbers."""

from __future__ import annotations

import numpy as np

import seqdsl
from seqdsl.compilers.build import example_inputs, run_torch
from seqdsl.compilers.torch_codegen import generate
from seqdsl.compilers.torch_module import to_module

def test_bias_folding_makes_one_linear_with_its_bias():
    from seqdsl.passes import fold_bias

    model = seqdsl.loads(
        "sizes: {d: 3, k: 4}\ninputs: {x: [B, T, d]}\nparams: {W: [k, d], V: [k, d], b: [k], c: [k]}\n"
        "graph:\n  y: W @ x + b\n  z: c + V @ x\n  w: W @ x + V @ x + b\noutputs: {y: y, z: z, w: w}\n")
    folded, changed = fold_bias(model)
    assert changed
    g = folded.graph
    assert g["y"].op == "linear" and [g[i].op for i in g["y"].inputs] == ["input", "param", "param"]
    assert g["z"].op == "linear" and g[g["z"].inputs[2]].attrs["name"] == "c"  # a commuted sum folds too
    assert g["w"].op == "add"  # (W x + V x) + b: the bias is added to a sum, not to one product
    plain, fast = to_module(model, optimize=False), to_module(model)
    fast.load_state_dict(plain.state_dict())
    inputs = example_inputs(model, 2, 3)
    want = run_torch(plain, inputs)
    for name, value in run_torch(fast, inputs).items():
        np.testing.assert_allclose(value, want[name], atol=1e-6)
    assert "F.linear(x, self.W, self.b)" in generate(folded)
