"""The functions people reach for (gelu, silu, softplus, elu, leaky_relu, log, abs, min, max, clamp, where), each in
both backends, against implementations we did not write: torch.nn.functional for the PyTorch module,
onnxruntime and onnx.reference for the ONNX file (both compared with the torch.nn.functional oracle)."""

from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx.reference import ReferenceEvaluator

import seqdsl
from seqdsl.compilers.onnx_export import ONNX_EMIT, export, set_weights
from seqdsl.compilers.onnx_runtime import make_session
from seqdsl.compilers.torch_codegen import TORCH_EMIT
from seqdsl.compilers.torch_module import to_module
from conftest import spec_error
from seqdsl.ops import OPS, USER_FUNCTIONS

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",  # onnx.reference's numpy
                                  "ignore:invalid value encountered:RuntimeWarning")
EXAMPLES = 200 if os.environ.get("SEQDSL_LONG_TESTS") else 25

# name: (the equation, the oracle on tensors x and m). x (B, T, 5) any real; m (B, T, 5) a 0/1 mask.
CASES: dict[str, tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "gelu": ("gelu(x)", lambda x, m: F.gelu(x)),
    "silu": ("silu(x)", lambda x, m: F.silu(x)),
    "softplus": ("softplus(x)", lambda x, m: F.softplus(x)),
    "elu": ("elu(x)", lambda x, m: F.elu(x)),
    "elu_alpha": ("elu(x, alpha=0.3)", lambda x, m: F.elu(x, alpha=0.3)),
    "leaky_relu": ("leaky_relu(x)", lambda x, m: F.leaky_relu(x)),
    "leaky_relu_slope": ("leaky_relu(x, 0.2)", lambda x, m: F.leaky_relu(x, negative_slope=0.2)),
    "log": ("log(abs(x) + 0.5)", lambda x, m: torch.log(torch.abs(x) + 0.5)),
    "abs": ("abs(x)", lambda x, m: torch.abs(x)),
    "min": ("min(x, m)", lambda x, m: torch.minimum(x, m)),
    "max": ("max(x, m)", lambda x, m: torch.maximum(x, m)),
    "min_number": ("min(x, 0.5)", lambda x, m: torch.clamp(x, max=0.5)),
    "max_number_first": ("max(0, x)", lambda x, m: F.relu(x)),
    "min_broadcast": ("min(x, c)", lambda x, m: torch.minimum(x, torch.linspace(-1, 1, 5))),
    "clamp": ("clamp(x, min=-1, max=0.5)", lambda x, m: torch.clamp(x, -1, 0.5)),
    "clamp_min": ("clamp(x, min=0)", lambda x, m: F.relu(x)),
    "clamp_max": ("clamp(x, max=-0.25)", lambda x, m: torch.clamp(x, max=-0.25)),
    "clamp_positional": ("clamp(x, -0.5, 0.5)", lambda x, m: F.hardtanh(x, -0.5, 0.5)),
    "where": ("where(m, x, -x)", lambda x, m: torch.where(m.bool(), x, -x)),
    "where_number": ("where(m, x, 2)", lambda x, m: torch.where(m.bool(), x, torch.full_like(x, 2.0))),
    "where_numbers": ("where(m, 1, -2)", lambda x, m: torch.where(m.bool(), 1.0, -2.0)),
}


def _spec(equation: str) -> str:
    return f"""
name: fn
inputs:
  x: [B, T, 5]
  m: [B, T, 5]
params:
  c: {{shape: [5], init: zeros}}
graph:
  y: {equation}
  keep: m + c        # every input and parameter is used
outputs:
  y: y
  keep: keep
"""


class Compiled:
    """One function's spec in both backends: the live PyTorch module, onnxruntime and onnx.reference."""

    def __init__(self, equation: str):
        self.model = seqdsl.loads(_spec(equation))
        self.net = to_module(self.model).eval()
        with torch.no_grad():
            self.net.c.copy_(torch.linspace(-1, 1, 5))
        self.proto = export(self.model)
        set_weights(self.proto, {k: v.detach().numpy() for k, v in self.net.state_dict().items()})
        self.session, _ = make_session(self.proto.SerializeToString(), "cpu")
        self.reference = ReferenceEvaluator(self.proto)

    def torch(self, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net(torch.from_numpy(x), torch.from_numpy(m))[0].numpy()

    def onnxruntime(self, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        return self.session.run(["y"], {"x": x, "m": m})[0]

    def onnx_reference(self, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        return self.reference.run(["y"], {"x": x, "m": m})[0]


_COMPILED: dict[str, Compiled] = {}


def compiled(case: str) -> Compiled:
    if case not in _COMPILED:
        _COMPILED[case] = Compiled(CASES[case][0])
    return _COMPILED[case]


def _inputs(seed: int, batch: int = 3, steps: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((batch, steps, 5)) * 3).astype(np.float32)
    x.flat[:6] = [0.0, -0.0, 25.0, -25.0, 90.0, -90.0]  # zero, both signs, softplus' threshold, exp's overflow
    m = (rng.random((batch, steps, 5)) > 0.5).astype(np.float32)
    return x, m


def _close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert (got.dtype, got.shape) == (np.float32, want.shape), what
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=what)


@pytest.mark.parametrize("case", sorted(CASES))
def test_function_matches_torch_functional_in_both_backends(case: str):
    x, m = _inputs(seed=len(case))
    want = CASES[case][1](torch.from_numpy(x), torch.from_numpy(m)).numpy()
    c = compiled(case)
    _close(c.torch(x, m), want, f"{case}: PyTorch module vs torch.nn.functional")
    _close(c.onnxruntime(x, m), want, f"{case}: onnxruntime vs torch.nn.functional")
    _close(c.onnx_reference(x, m), want, f"{case}: onnx.reference vs torch.nn.functional")


@pytest.mark.parametrize("case", ["gelu", "silu", "softplus", "elu_alpha", "leaky_relu_slope", "log", "min", "clamp",
                                  "where"])
def test_function_gradients_match_torch_functional(case: str):
    x, m = _inputs(seed=7)
    x.flat[:6] = 0.3  # no ties or kinks, where a subgradient is a convention
    mine, theirs = torch.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    compiled(case).net(mine, torch.from_numpy(m))[0].sum().backward()
    CASES[case][1](theirs, torch.from_numpy(m)).sum().backward()
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-6)


@settings(max_examples=EXAMPLES, deadline=None)
@given(case=st.sampled_from(sorted(CASES)),
       x=hnp.arrays(np.float32, (2, 3, 5), elements=st.floats(-60, 60, width=32)),
       bits=hnp.arrays(np.bool_, (2, 3, 5)))
def test_backends_agree_on_any_input(case: str, x: np.ndarray, bits: np.ndarray):
    m = bits.astype(np.float32)
    want = CASES[case][1](torch.from_numpy(x), torch.from_numpy(m)).numpy()
    c = compiled(case)
    _close(c.torch(x, m), want, f"{case}: PyTorch module")
    _close(c.onnxruntime(x, m), want, f"{case}: onnxruntime")


def test_functions_inside_a_recurrent_step_agree_with_a_hand_written_loop():
    """In a Scan body too (numbers reach the body from the outer scope), against torch.nn.functional in a loop."""
    model = seqdsl.loads("""
sizes: {d: 3, h: 4}
inputs:
  x: [B, T, d]
  keep: {shape: [B, T], dtype: int64}
params:
  W: [h, d]
  U: [h, h]
recurrent:
  state: {h: [B, h]}
  step:
    a: W @ x + U @ h[t-1]
    g: clamp(gelu(a) - silu(a) + softplus(-a), min=-2, max=2)
    h: where(unsqueeze(keep, -1), min(max(elu(g, alpha=0.5), -1), leaky_relu(g, 0.1) + abs(a)), h[t-1])
outputs:
  y: h
""")
    net = to_module(model).eval()
    proto = export(model)
    set_weights(proto, {k: v.detach().numpy() for k, v in net.state_dict().items()})
    assert {n.op_type for n in proto.graph.node} >= {"Scan"}
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    keep = rng.integers(0, 2, (2, 6)).astype(np.int64)
    W, U = net.W.detach(), net.U.detach()
    h = torch.zeros(2, 4)
    steps = []
    for t in range(6):
        a = F.linear(torch.from_numpy(x[:, t]), W) + F.linear(h, U)
        g = torch.clamp(F.gelu(a) - F.silu(a) + F.softplus(-a), -2, 2)
        new = torch.minimum(torch.clamp(F.elu(g, 0.5), min=-1), F.leaky_relu(g, 0.1) + a.abs())
        h = torch.where(torch.from_numpy(keep[:, t, None]).bool(), new, h)
        steps.append(h)
    want = torch.stack(steps, 1).numpy()
    with torch.no_grad():
        _close(net(torch.from_numpy(x), torch.from_numpy(keep)).numpy(), want, "PyTorch module")
    session, _ = make_session(proto.SerializeToString(), "cpu")
    _close(session.run(["y"], {"x": x, "keep": keep})[0], want, "onnxruntime")


def test_functions_of_numbers_are_computed_once():
    model = seqdsl.loads("""
sizes: {d: 4}
inputs: {x: [B, d]}
graph:
  y: x * (log(d) + abs(-2) + min(3, d) + max(1, 2) + clamp(7, max=5) + gelu(1) + softplus(0) + where(0, 1, 2))
outputs: {y: y}
""")
    consts = [n.attrs["value"] for n in model.graph if n.op == "const" and model.graph.users().get(n.name)]
    gelu1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert consts == [pytest.approx(math.log(4) + 2 + 3 + 2 + 5 + gelu1 + math.log(2) + 2)]


@pytest.mark.parametrize("equation, message, col", [
    ("clamp(x)", "needs a bound", 6),
    ("x + clamp(3)", "needs a bound", 10),
    ("x + log(0)", "cannot compute `log`", 10),
    ("clamp(x, min=1, max=0)", "min (1) is above its max (0)", 6),
    ("min(x, v)", "do not match on axis -1", 6),
    ("where(1, x, x)", "always picks the same side", 6),
    ("gelu(ids)", "needs floating-point values", 6),
    ("leaky_relu(x, slope=0.1)", "takes no argument `slope`", 26),
    ("max(x)", "takes 2 argument(s), got 1", 6),
    ("softplus(x, 2)", "takes at most 1 arguments", 6),
])
def test_function_misuse_is_one_located_error(equation: str, message: str, col: int):
    err = spec_error(f"""
inputs:
  x: [B, 5]
  v: [B, 3]
  ids: {{shape: [B, 5], dtype: int64}}
graph:
  y: {equation}
outputs: {{y: y}}
""")
    assert message in err.format(), err.format()
    assert (err.loc.line, err.loc.col) == (7, col), err.format()


def test_every_user_function_has_an_entry_in_each_table_and_a_doc():
    missing = {name: [t for t, table in (("TORCH_EMIT", TORCH_EMIT), ("ONNX_EMIT", ONNX_EMIT)) if name not in table]
               for name in USER_FUNCTIONS}
    assert not {k: v for k, v in missing.items() if v}
    assert all(OPS[name].doc for name in USER_FUNCTIONS)
    assert {"gelu", "silu", "softplus", "elu", "leaky_relu", "log", "abs", "exp", "min", "max", "clamp",
            "where"} <= USER_FUNCTIONS
