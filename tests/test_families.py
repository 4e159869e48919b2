"""Cell families: a spec that is any member of ONNX's LSTM / GRU / RNN families (peepholes, a coupled input-forget
gate, other activations, no bias, reversed) runs on the runtime's own op with the attributes that say so, and
computes what the spec's own equations compute: ONNX's op in onnxruntime and in onnx.reference (where the reference
implements the attribute: it ignores `activations` and `input_forget`) against the generic PyTorch module on the
same weights; torch's kernels (torch.lstm, torch.gru, torch.rnn_tanh, torch.rnn_relu) against torch.nn."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator

from conftest import ROOT

import seqdsl
from seqdsl.compilers.build import example_inputs, run_torch
from seqdsl.compilers.onnx_export import ONNX_CELLS, export, set_weights
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_codegen import torch_runs
from seqdsl.compilers.torch_module import to_module
from seqdsl.passes import recognize

EXAMPLES = 60 if os.environ.get("SEQDSL_LONG_TESTS") else 8
SIZES = {"d": 3, "h": 4}
#: a spec's activation call -> (the cell's slot function, ONNX's name, its alpha)
FUNCTIONS = {
    "sigmoid": (("sigmoid", None), "Sigmoid"), "tanh": (("tanh", None), "Tanh"), "relu": (("relu", None), "Relu"),
    "softplus": (("softplus", None), "Softplus"), "leaky_relu(%s, 0.2)": (("leaky_relu", 0.2), "LeakyRelu"),
    "elu(%s, alpha=0.5)": (("elu", 0.5), "Elu"),
}
DEFAULTS = {"lstm": ["sigmoid", "tanh", "tanh"], "gru": ["sigmoid", "tanh"], "gru_torch": ["sigmoid", "tanh"],
            "rnn": ["tanh"]}
#: what torch's kernels run: torch.lstm, torch.gru (PyTorch's form only), torch.rnn_tanh and torch.rnn_relu
TORCH_KERNELS = [("lstm", DEFAULTS["lstm"]), ("gru_torch", DEFAULTS["gru_torch"]), ("rnn", ["tanh"]), ("rnn", ["relu"])]
OP = {"lstm": "LSTM", "gru": "GRU", "gru_torch": "GRU", "rnn": "RNN"}


def call(fn: str, arg: str) -> str:
    return fn % arg if "%s" in fn else f"{fn}({arg})"


def spec(family: str, acts: list[str], bias: bool = True, peephole: bool = False, cifg: bool = False,
         reverse: bool = False) -> str:
    """A user's spec of one member of ``family``, written in the order a paper would (terms commuted here and
    there, gates in another order than ONNX's)."""
    b = (lambda g: f" + b_{g}".rstrip("_")) if bias else (lambda g: "")
    p = (lambda g, c: f" + {c} * p_{g}") if peephole else (lambda g, c: "")
    params = {"lstm": "W_f, W_i, W_o, W_c: [h, d]\n  U_f, U_i, U_o, U_c: [h, h]\n  b_f, b_i, b_o, b_c: [h]\n"
                      "  p_f, p_i, p_o: [h]",
              "gru": "W_z, W_r, W_h: [h, d]\n  U_z, U_r, U_h: [h, h]\n  b_z, b_r, b_h: [h]",
              "gru_torch": "W_r, W_z, W_n: [h, d]\n  U_r, U_z, U_n: [h, h]\n  b_ir, b_iz, b_in, b_hr, b_hz, b_hn: [h]",
              "rnn": "W: [h, d]\n  U: [h, h]\n  b: [h]"}[family]
    if family == "lstm":
        f, g, a = acts
        state = "    h: [B, h]\n    c: [B, h]"
        pre_i = "W_i @ x + U_i @ h[t-1]" + p("i", "c[t-1]") + b("i")
        pre_f = "U_f @ h[t-1] + W_f @ x" + p("f", "c[t-1]") + b("f")
        pre_c = "W_c @ x + U_c @ h[t-1]" + b("c")
        pre_o = "W_o @ x + U_o @ h[t-1]" + p("o", "c") + b("o")
        step = [f"i: {call(f, pre_i)}", "f: 1 - i" if cifg else f"f: {call(f, pre_f)}",
                f"c: c[t-1] * f + i * {call(g, pre_c)}", f"o: {call(f, pre_o)}", f"h: o * {call(a, 'c')}"]
        outputs = "  y: h\n  h_n: final(h)\n  c_n: final(c)"
    elif family == "gru":
        f, g = acts
        state = "    h: [B, h]"
        pre_z, pre_r = "W_z @ x + U_z @ h[t-1]" + b("z"), "W_r @ x + U_r @ h[t-1]" + b("r")
        pre_h = "W_h @ x + U_h @ (r * h[t-1])" + b("h")
        step = [f"z: {call(f, pre_z)}", f"r: {call(f, pre_r)}", f"h: (1 - z) * {call(g, pre_h)} + z * h[t-1]"]
        outputs = "  y: h\n  h_n: final(h)"
    elif family == "gru_torch":
        f, g = acts
        state = "    h: [B, h]"
        pre_r = "W_r @ x" + b("ir") + " + U_r @ h[t-1]" + b("hr")
        pre_z = "W_z @ x" + b("iz") + " + U_z @ h[t-1]" + b("hz")
        pre_n = "W_n @ x" + b("in") + " + r * (U_n @ h[t-1]" + b("hn") + ")"
        step = [f"r: {call(f, pre_r)}", f"z: {call(f, pre_z)}", f"n: {call(g, pre_n)}", "h: (1 - z) * n + z * h[t-1]"]
        outputs = "  y: h\n  h_n: final(h)\n  y_last: last(h)"
    else:
        (f,) = acts
        state = "    h: [B, h]"
        step = [f"h: {call(f, 'U @ h[t-1] + W @ x' + b(''))}"]
        outputs = "  y: h\n  h_n: final(h)"
    direction = "  direction: reverse\n" if reverse else ""
    return (f"name: {family}_member\nsizes: {{d: 3, h: 4}}\ninputs:\n  x: [B, T, d]\nparams:\n  {params}\n"
            f"recurrent:\n{direction}  state:\n{state}\n  step:\n" + "".join(f"    {s}\n" for s in step)
            + f"outputs:\n{outputs}\n")


def cells(model: seqdsl.Model, kinds=frozenset(ONNX_CELLS)) -> list[dict]:
    out, _ = recognize(model, kinds)
    return [n.attrs for n in out.graph if n.op == "cell"]


def onnx_matches_generic(model: seqdsl.Model, reference: bool) -> None:
    """ONNX's native op (onnxruntime; the reference evaluator too when ``reference``) computes what the generic
    PyTorch module computes, on the same weights, at a sequence length of its own."""
    generic = to_module(model, native_cells=False)
    weights = {k: v.detach().numpy() for k, v in generic.state_dict().items()}
    inputs = example_inputs(model, 2, 5, seed=1)
    want = run_torch(generic, inputs)
    proto = export(model)
    set_weights(proto, weights)
    got = run(proto.SerializeToString(), inputs).outputs
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=f"onnxruntime {name}")
    if reference:
        outs = ReferenceEvaluator(proto).run(None, inputs)
        for (name, value), ref in zip(want.items(), outs):
            np.testing.assert_allclose(ref, value, rtol=1e-4, atol=1e-5, err_msg=f"onnx.reference {name}")


def torch_kernel_matches_generic(model: seqdsl.Model) -> None:
    native, generic = to_module(model), to_module(model, native_cells=False)
    generic.load_state_dict(native.state_dict())
    inputs = example_inputs(model, 2, 5, seed=2)
    want = run_torch(generic, inputs)
    for name, value in run_torch(native, inputs).items():
        np.testing.assert_allclose(value, want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def native_op(model: seqdsl.Model, family: str):
    nodes = [n for n in export(model).graph.node if n.op_type == OP[family]]
    assert len(nodes) == 1 and not any(n.op_type == "Scan" for n in export(model).graph.node)
    return nodes[0]


ACTS = st.sampled_from(sorted(FUNCTIONS))


@st.composite
def members(draw: st.DrawFn) -> tuple[str, list[str], bool, bool, bool, bool]:
    family = draw(st.sampled_from(sorted(DEFAULTS)))
    standard = draw(st.booleans())
    acts = DEFAULTS[family] if standard else draw(st.lists(ACTS, min_size=len(DEFAULTS[family]),
                                                           max_size=len(DEFAULTS[family])))
    lstm = family == "lstm"
    return (family, acts, draw(st.booleans()), lstm and draw(st.booleans()), lstm and draw(st.booleans()),
            draw(st.booleans()))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(member=members())
def test_every_family_member_runs_natively_with_the_right_numbers(member):
    family, acts, bias, peephole, cifg, reverse = member
    model = seqdsl.loads(spec(family, acts, bias, peephole, cifg, reverse), file="member.yaml")
    [attrs] = cells(model)
    slots = tuple(FUNCTIONS[a][0] for a in acts)
    assert (attrs["cell"], attrs["activations"], attrs["bias"], attrs["reverse"]) == (family, slots, bias, reverse)
    if family == "lstm":
        assert (attrs["peephole"], attrs["input_forget"]) == (peephole, cifg)
    op = native_op(model, family)
    got = {a.name: a for a in op.attribute}
    names = [FUNCTIONS[a][1] for a in acts]
    standard = acts == DEFAULTS[family]
    if standard:
        assert "activations" not in got
    else:
        assert [s.decode() for s in got["activations"].strings] == names
    assert (got["input_forget"].i if "input_forget" in got else 0) == cifg
    assert (op.input[3] != "") is bias and (len(op.input) > 7 and op.input[7] != "") is peephole
    # onnx.reference ignores `activations` and `input_forget`: it is an oracle only where it implements the cell
    onnx_matches_generic(model, reference=standard and not cifg)
    torch_kernel = not peephole and not cifg and (family, acts) in TORCH_KERNELS
    assert (cells(model, torch_runs) != []) is torch_kernel
    if torch_kernel:
        torch_kernel_matches_generic(model)


@pytest.mark.parametrize("family, acts", [("rnn", ["relu"]), ("rnn", ["tanh"]), ("lstm", DEFAULTS["lstm"]),
                                          ("gru_torch", DEFAULTS["gru_torch"])])
@pytest.mark.parametrize("bias", [True, False])
def test_torch_kernels_against_torch_nn(family: str, acts: list[str], bias: bool):
    """torch.rnn_relu (the IRNN), torch.rnn_tanh, torch.lstm and torch.gru, with and without bias, as torch.nn's
    RNN / LSTM / GRU with the same weights compute them."""
    model = seqdsl.loads(spec(family, acts, bias), file="member.yaml")
    net = to_module(model)
    w = {k: v.detach() for k, v in net.state_dict().items()}
    d, h = SIZES["d"], SIZES["h"]
    if family == "rnn":
        ref = torch.nn.RNN(d, h, nonlinearity=acts[0], bias=bias, batch_first=True)
        groups = (["W"], ["U"], ["b"])
    elif family == "lstm":
        ref = torch.nn.LSTM(d, h, bias=bias, batch_first=True)
        groups = (["W_i", "W_f", "W_c", "W_o"], ["U_i", "U_f", "U_c", "U_o"], ["b_i", "b_f", "b_c", "b_o"])
    else:
        ref = torch.nn.GRU(d, h, bias=bias, batch_first=True)
        groups = (["W_r", "W_z", "W_n"], ["U_r", "U_z", "U_n"], ["b_ir", "b_iz", "b_in"], ["b_hr", "b_hz", "b_hn"])
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.cat([w[n] for n in groups[0]]))
        ref.weight_hh_l0.copy_(torch.cat([w[n] for n in groups[1]]))
        if bias:
            ref.bias_ih_l0.copy_(torch.cat([w[n] for n in groups[2]]))
            ref.bias_hh_l0.copy_(torch.cat([w[n] for n in groups[3]]) if len(groups) > 3 else 0)
    x = torch.from_numpy(example_inputs(model, 3, 6)["x"])
    want, _ = ref(x)
    with torch.no_grad():
        got = net(x)
    got = got[0] if isinstance(got, tuple) else got
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


LSTM = spec("lstm", DEFAULTS["lstm"], peephole=True)


@pytest.mark.parametrize("change", [
    ("+ c * p_o", "+ c[t-1] * p_o"),                       # ONNX's output peephole looks at the new cell state
    ("+ c[t-1] * p_f", "+ h[t-1] * p_f"),                  # a peephole on the hidden state
    ("+ c[t-1] * p_i", ""),                                # peepholes on only some gates
    ("+ b_f", ""),                                         # a bias on only some gates
    ("f: sigmoid(", "f: tanh("),                           # another function on one gate only
    ("h: o * tanh(c)", "h: o * tanh(clamp(c, min=-3, max=3))"),  # a clipped cell state
    ("tanh(W_c @ x + U_c @ h[t-1] + b_c)", "tanh(clamp(W_c @ x + U_c @ h[t-1] + b_c, min=-3, max=3))"),  # clip
])
def test_near_misses_of_the_lstm_family_stay_generic(change: tuple[str, str]):
    text = LSTM.replace(*change)
    assert text != LSTM
    model = seqdsl.loads(text, file="near.yaml")
    assert cells(model) == []


def test_coupled_gate_the_other_way_is_no_onnx_lstm():
    """ONNX couples f = 1 - i; a cell with i = 1 - f is another cell (it keeps what ONNX's forgets)."""
    text = spec("lstm", DEFAULTS["lstm"], cifg=True).replace(
        "i: sigmoid(W_i @ x + U_i @ h[t-1] + b_i)", "i: 1 - f").replace(
        "f: 1 - i", "f: sigmoid(W_f @ x + U_f @ h[t-1] + b_f)")
    assert "i: 1 - f" in text and "f: sigmoid" in text
    assert cells(seqdsl.loads(text, file="other_way.yaml")) == []


def test_shipped_family_specs_are_recognised():
    want = {"lstm_cifg.yaml": ("lstm", {"input_forget": True, "peephole": False}),
            "lstm_peephole.yaml": ("lstm", {"input_forget": False, "peephole": True}),
            "irnn.yaml": ("rnn", {"activations": (("relu", None),)})}
    for name, (family, attrs) in want.items():
        [got] = cells(seqdsl.load(ROOT / "specs" / name))
        assert got["cell"] == family and {k: got[k] for k in attrs} == attrs, name
    assert [a["cell"] for a in cells(seqdsl.load(ROOT / "specs" / "irnn.yaml"), torch_runs)] == ["rnn"]


@pytest.mark.parametrize("product", ["i * sigmoid(W_c @ x + U_c @ h[t-1] + b_c)",
                                     "sigmoid(W_c @ x + U_c @ h[t-1] + b_c) * i"])
def test_gate_and_candidate_are_told_apart_by_their_functions(product: str):
    """In c = f c + i g, the gate i and the candidate g have the same shape of graph: only the functions (one f
    for every gate) say which is which, whichever way the product is written."""
    text = spec("lstm", ["relu", "tanh", "tanh"]).replace("i * tanh(W_c @ x + U_c @ h[t-1] + b_c)", product)
    assert product in text
    model = seqdsl.loads(text, file="swapped.yaml")
    [attrs] = cells(model)
    assert attrs["activations"] == (("relu", None), ("sigmoid", None), ("tanh", None))
    onnx_matches_generic(model, reference=False)


@pytest.mark.parametrize("text", [
    spec("gru", ["sigmoid", "tanh"]).replace("r: sigmoid(", "r: tanh("),          # z and r share ONNX's f
    spec("gru_torch", ["sigmoid", "tanh"]).replace("+ b_hn", ""),                   # one bias missing
    spec("rnn", ["tanh"]).replace("h: tanh(", "h: abs("),                           # no ONNX activation is abs
    spec("rnn", ["tanh"]).replace("+ W @ x + b)", "+ W @ x + b) + 0.5 * h[t-1]"),  # a leaky RNN
], ids=["gru-two-gate-functions", "gru_torch-bias-missing", "rnn-abs", "rnn-leaky"])
def test_near_misses_of_the_gru_and_rnn_families_stay_generic(text: str):
    assert "member" in text and cells(seqdsl.loads(text, file="near.yaml")) == []
