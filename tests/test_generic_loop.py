"""The generic recurrent loop (a cell no kernel has, or native_cells=False) in the form that runs fastest on the
CPU: per step one ``torch.addmm`` onto the hoisted input projection, one activation call per run of adjacent
gates, and an autograd graph that is linear in T (issue 12, part 2).

Numbers are checked against torch.nn.LSTM (which we did not write) and against the unoptimized equations.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import seqdsl
from seqdsl.compilers.interop import load_from_torch
from seqdsl.compilers.torch_codegen import generate
from seqdsl.compilers.torch_module import module_class
from seqdsl import passes

ROOT = Path(__file__).resolve().parents[1]
FEW = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ACTIVATIONS = ("sigmoid", "tanh", "relu")


def _step_source(source: str) -> str:
    """The statements of the loop's step (the body of ``for t in ...``) in a generated model.py."""
    body = source.split("        for t in range(T):\n", 1)[1]
    return body.split("        return ", 1)[0]


def _generic_source(model: seqdsl.Model) -> str:
    return generate(passes.optimize(model, cells=frozenset()))


def test_lstm_step_is_one_addmm_and_one_sigmoid_over_three_gates():
    source = _generic_source(seqdsl.load(ROOT / "specs/lstm.yaml", {"d": 5, "h": 6}))
    step = _step_source(source)
    assert step.count("torch.addmm(") == 1  # U h + (W x + b), the hoisted projection as addmm's addend
    assert "F.linear" not in step and "torch.cat" not in step and "self.b_" not in step  # bias folded outside
    assert step.count("torch.sigmoid(") == 1 and "[..., 0:18]" in step  # f, i, o: adjacent, one call
    assert step.count("torch.tanh(") == 2  # the candidate and tanh(c)
    assert step.count(" + ") == 1  # only f * c[t-1] + i * g is left of the sums
    # the whole-sequence projection is unbound into steps once, outside the loop
    assert re.search(r"= \w+\.transpose\(0, 1\)\.contiguous\(\)\.unbind\(0\)", source.split("for t in")[0])


def _grad_fn_names(output: torch.Tensor) -> list[str]:
    seen, stack, names = set(), [output.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        stack += [nxt for nxt, _ in fn.next_functions]
    return names


def test_backward_graph_selects_no_step_out_of_a_whole_sequence():
    """x_by_t[t] on a (T, B, n) tensor would put T SelectBackwards in the graph, each of which fills a zero
    tensor of the whole sequence in the backward pass (O(T^2)); one UnbindBackward stacks the T gradients."""
    net = module_class(seqdsl.load(ROOT / "specs/lstm.yaml", {"d": 4, "h": 3}), native_cells=False)()
    y, h_n, c_n = net(torch.randn(2, 9, 4))
    names = _grad_fn_names(y)
    assert "SelectBackward0" not in names
    assert names.count("UnbindBackward0") == 1
    assert names.count("AddmmBackward0") == 9 + 1  # one per step, and F.linear(x, W, b) over the sequence


@FEW
@given(d=st.integers(1, 6), h=st.integers(1, 6), B=st.integers(1, 4), T=st.integers(1, 9), seed=st.integers(0, 99))
def test_generic_lstm_matches_torch_lstm_forward_and_gradients(d: int, h: int, B: int, T: int, seed: int):
    torch.manual_seed(seed)
    cls = module_class(seqdsl.load(ROOT / "specs/lstm.yaml", {"d": d, "h": h}), native_cells=False)
    assert "torch.addmm(" in inspect.getsource(cls) and "torch.lstm" not in inspect.getsource(cls)
    net, layer = cls(), nn.LSTM(d, h, batch_first=True)
    load_from_torch(net, layer)
    x = torch.randn(B, T, d)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = net(x_ours)
    y, (h_n, c_n) = layer(x_theirs)
    theirs = (y, h_n[0], c_n[0])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    probes = [torch.randn_like(o) for o in ours]
    sum((o * p).sum() for o, p in zip(ours, probes)).backward()
    sum((o * p).sum() for o, p in zip(theirs, probes)).backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-5, rtol=1e-5)
    grads = dict(net.named_parameters())
    for theirs_name, gates in (("weight_ih_l0", "W"), ("weight_hh_l0", "U"), ("bias_ih_l0", "b")):
        stacked = torch.cat([grads[f"{gates}_{g}"].grad for g in "ifco"])  # torch.nn's gate order: i, f, g, o
        torch.testing.assert_close(stacked, getattr(layer, theirs_name).grad, atol=1e-5, rtol=1e-5)


def _gated_cell(acts: list[str], order: list[int]) -> str:
    """A cell of len(acts) gates, gate k = acts[k](W_k x + U_k h[t-1] + b_k), equations in ``order``."""
    gates = [f"    g{k}: {acts[k]}(W_{k} @ x + U_{k} @ h[t-1] + b_{k})" for k in order]
    return "\n".join([
        "sizes: {d: 3, h: 4}",
        "inputs:",
        "  x: [B, T, d]",
        "params:",
        *[f"  W_{k}: [h, d]\n  U_{k}: [h, h]\n  b_{k}: [h]" for k in range(len(acts))],
        "recurrent:",
        "  state:",
        "    h: [B, h]",
        "  step:",
        *gates,
        "    h: 0.5 * (" + " + ".join(f"g{k}" for k in range(len(acts))) + ")",
        "outputs:",
        "  y: h",
    ]) + "\n"


@FEW
@given(acts=st.lists(st.sampled_from(ACTIVATIONS), min_size=2, max_size=5), data=st.data())
def test_adjacent_gates_share_one_activation_call_and_the_numbers_stay(acts: list[str], data: st.DataObject):
    order = data.draw(st.permutations(range(len(acts))))
    model = seqdsl.loads(_gated_cell(acts, order), file="gated.yaml")
    step = _step_source(_generic_source(model))
    # gates are fused in the order the equations come; each run of equal activations is one call
    in_order = [acts[k] for k in order]
    runs = [a for i, a in enumerate(in_order) if i == 0 or in_order[i - 1] != a]
    for act in ACTIVATIONS:
        assert step.count(f"torch.{act}(") == runs.count(act), step
    assert step.count("torch.addmm(") == 1 and "F.linear" not in step
    torch.manual_seed(0)
    plain = module_class(model, optimize=False, native_cells=False)()
    fast = module_class(model, native_cells=False)()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(3, 5, 3)
    x_plain, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_plain, y_fast = plain(x_plain), fast(x_fast)  # one output: the tensor itself
    torch.testing.assert_close(y_fast, y_plain, atol=1e-6, rtol=1e-6)
    y_plain.sum().backward()
    y_fast.sum().backward()
    torch.testing.assert_close(x_fast.grad, x_plain.grad, atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_regrouping_moves_the_bias_of_w_x_plus_u_h_plus_b_out_of_the_loop():
    rnn = module_class(seqdsl.load(ROOT / "specs/rnn.yaml", {"d": 3, "h": 4}), native_cells=False)
    source = inspect.getsource(rnn)
    assert "F.linear(x, self.W, self.b)" in source  # (W x + b) folded, once over the whole sequence
    step = _step_source(source)
    assert "self.b" not in step and step.count("torch.addmm(") == 1
