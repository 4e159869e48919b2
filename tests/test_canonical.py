"""Canonical sums (seqdsl.passes.canonical): a standard cell whose sums are grouped, ordered or signed otherwise
(``W x + (U h + b)``, ``b + U h + W x``, ``W x - (-U h) + b``) is still recognised — torch's kernel in model.py,
ONNX's own op — and computes what the generic path computes; a sum that really differs (a term more, a term
less, a sign) stays generic; the pass keeps every value, shape, location and equation name, and is idempotent.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path
from typing import Union

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from networkx.algorithms.isomorphism import DiGraphMatcher

from conftest import SPECS
from test_properties import random_cells

import seqdsl
from seqdsl.compilers.build import example_inputs, run_torch
from seqdsl.compilers.onnx_export import export, set_weights
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_module import module_class, to_module
from seqdsl.ir import Graph, Model, all_nodes, loop_of
from seqdsl.ops import broadcast
from seqdsl.passes import fold_bias, recognize
from seqdsl.passes.canonical import ACTIVATIONS, KIND, canonical_body, canonicalise

LONG = os.environ.get("SEQDSL_LONG_TESTS") == "1"
SIZES = {"d": 3, "h": 4}

# The standard cells' step equations as sums of terms (a "-" term is subtracted); a term is text or a
# (format, sum) pair for a sum inside a call or product.
Term = Union[str, tuple[str, list["Term"]]]
STEPS: dict[str, list[tuple[str, str, list[Term]]]] = {
    "rnn": [("h", "tanh({})", ["W @ x", "U @ h[t-1]", "b"])],
    "lstm": [(g, "sigmoid({})", [f"W_{g} @ x", f"U_{g} @ h[t-1]", f"b_{g}"]) for g in "fio"] + [
        ("c", "{}", ["f * c[t-1]", ("i * tanh({})", ["W_c @ x", "U_c @ h[t-1]", "b_c"])]),
        ("h", "o * tanh(c)", [])],
    "gru": [(g, "sigmoid({})", [f"W_{g} @ x", f"U_{g} @ h[t-1]", f"b_{g}"]) for g in "zr"] + [
        ("h", "{}", ["z * h[t-1]", ("({}) * tanh(W_h @ x + U_h @ (r * h[t-1]) + b_h)", ["1", "-z"])])],
    "gru_torch": [(g, "sigmoid({})", [f"W_{g} @ x", f"b_i{g}", f"U_{g} @ h[t-1]", f"b_h{g}"]) for g in "rz"] + [
        ("n", "tanh({})", ["W_n @ x", "b_in", ("r * ({})", ["U_n @ h[t-1]", "b_hn"])]),
        ("h", "{}", [("({}) * n", ["1", "-z"]), "z * h[t-1]"])],
}
TORCH_CALL = {"rnn": "torch.rnn_tanh(", "lstm": "torch.lstm(", "gru": None, "gru_torch": "torch.gru("}
ONNX_OP = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU", "gru_torch": "GRU"}


# --------------------------------------------------------------------------------------------- drawing sums


@st.composite
def sums(draw: st.DrawFn, terms: list[Term], negate: bool = False) -> str:
    """Text for the sum of ``terms`` (its negation with ``negate``), in a random order and grouping: ``a + b``,
    ``a - (-b)``, ``-(-a - b)`` all occur. Numbers are positive terms and stay so (the loader folds ``-(1)`` into
    the number -1, another constant): a group holding one is never negated."""
    terms = draw(st.permutations(terms))
    if len(terms) == 1:
        term = terms[0]
        positive = not term.startswith("-") if isinstance(term, str) else True
        text = term.lstrip("-") if isinstance(term, str) else term[0].format(draw(sums(term[1])))
        return f"({text})" if positive != negate else f"(-({text}))"
    form = draw(st.sampled_from(["add", "sub"] if _numbers(terms) else ["add", "sub", "neg"]))
    if form == "neg":
        return f"(-{draw(sums(terms, not negate))})"
    cut = draw(st.integers(1, len(terms) - 1))
    left = draw(sums(terms[:cut], negate))
    if form == "add" or _numbers(terms[cut:]):  # never negate a group with a number in it (see above)
        return f"({left} + {draw(sums(terms[cut:], negate))})"
    return f"({left} - {draw(sums(terms[cut:], not negate))})"


def _numbers(terms: list[Term]) -> bool:
    return any(isinstance(t, str) and t.lstrip("-")[:1].isdigit() for t in terms)


def _step_text(cell: str, draw: st.DrawFn, change: int | None = None) -> str:
    """The cell's spec with its step drawn anew; ``change`` spoils the sum of that equation (near misses)."""
    lines = []
    for i, (name, fmt, terms) in enumerate(STEPS[cell]):
        terms = list(terms)
        if i == change:
            how = draw(st.sampled_from(["extra", "drop", "sign"]))
            at = draw(st.sampled_from([k for k, t in enumerate(terms) if not (isinstance(t, str) and "b" in t[:1])]))
            term = terms[at]
            if how == "extra":
                terms.append(term)
            elif how == "drop":
                del terms[at]
            else:
                terms[at] = ("-" + term if not term.startswith("-") else term[1:]) if isinstance(term, str) \
                    else (term[0].replace("{}", "(-({}))"), term[1])
        lines.append(f"    {name}: {fmt.format(draw(sums(terms))) if terms else fmt}")
    text = (SPECS / f"{cell}.yaml").read_text()
    return re.sub(r"(  step:\n)(    .*\n)+", lambda m: m.group(1) + "\n".join(lines) + "\n", text)


@st.composite
def variants(draw: st.DrawFn, cell: str) -> str:
    return _step_text(cell, draw)


@st.composite
def near_misses(draw: st.DrawFn, cell: str) -> str:
    spoilable = [i for i, (_, _, terms) in enumerate(STEPS[cell]) if terms]
    return _step_text(cell, draw, draw(st.sampled_from(spoilable)))


def _cells(model: Model) -> list[str]:
    out, _ = recognize(model)
    return [n.attrs["cell"] for n in out.graph if n.op == "cell"]


def _only_loop(model: Model):
    return loop_of(next(n for n in model.graph if n.op == "loop"))


FAST = settings(max_examples=200 if LONG else 25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40 if LONG else 3, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------- recognition


@pytest.mark.parametrize("cell", sorted(STEPS))
@FAST
@given(data=st.data())
def test_any_grouping_of_a_standard_cell_is_recognised(cell: str, data: st.DataObject):
    text = data.draw(variants(cell))
    assert _cells(seqdsl.loads(text, SIZES)) == [cell], text


@pytest.mark.parametrize("cell", sorted(STEPS))
@FAST
@given(data=st.data())
def test_a_sum_that_really_differs_stays_generic(cell: str, data: st.DataObject):
    text = data.draw(near_misses(cell))
    assert _cells(seqdsl.loads(text, SIZES)) == [], text


@pytest.mark.parametrize("cell", sorted(STEPS))
@SLOW
@given(data=st.data())
def test_a_regrouped_cell_runs_on_the_kernel_with_the_generic_numbers(cell: str, data: st.DataObject):
    model = seqdsl.loads(data.draw(variants(cell)), SIZES)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "model.py"
        native = module_class(model, source)()
        calls = source.read_text()
    if TORCH_CALL[cell] is None:
        assert "torch.gru(" not in calls  # Cho's GRU has no torch kernel
    else:
        assert TORCH_CALL[cell] in calls
    generic = to_module(model, native_cells=False)
    with torch.no_grad():
        for p in native.parameters():
            p.uniform_(-0.5, 0.5)
    generic.load_state_dict(native.state_dict())
    inputs = example_inputs(model, 3, 5)
    want = run_torch(generic, inputs)
    for name, value in run_torch(native, inputs).items():
        np.testing.assert_allclose(value, want[name], atol=1e-5, err_msg=name)
    proto = export(model)
    assert ONNX_OP[cell] in {n.op_type for n in proto.graph.node}
    set_weights(proto, {k: v.detach().numpy() for k, v in native.state_dict().items()})
    for name, value in run(proto.SerializeToString(), inputs).outputs.items():
        np.testing.assert_allclose(value, want[name], atol=1e-5, err_msg=name)


def _same_form(a: Graph, b: Graph, activations: bool = True) -> bool:
    """Whether two step graphs are the same with every operand in its place (no commuting): the same form, not
    only the same function (with ``activations`` off, any activation stands for any other)."""
    def labelled(body: Graph) -> nx.DiGraph:
        g = nx.DiGraph()
        for n in body:
            extra = n.attrs.get("value", n.attrs.get("index")) if n.op in ("const", "state", "step_input") else n.shape
            op = n.op if activations or n.op not in ACTIVATIONS else "activation"
            g.add_node(n.name, label=(op, extra))
            for port, i in enumerate(n.inputs):
                g.add_edge(i, n.name, ports=g.edges[i, n.name]["ports"] + (port,) if g.has_edge(i, n.name) else (port,))
        return g

    return DiGraphMatcher(labelled(a), labelled(b), node_match=lambda x, y: x["label"] == y["label"],
                          edge_match=lambda x, y: x["ports"] == y["ports"]).is_isomorphic()


@pytest.mark.parametrize("cell", sorted(STEPS))
@FAST
@given(data=st.data())
def test_every_grouping_has_one_canonical_form(cell: str, data: st.DataObject):
    loop = _only_loop(seqdsl.loads(data.draw(variants(cell)), SIZES))
    as_written = repr(loop.body)
    drawn = canonical_body(loop)
    assert repr(loop.body) == as_written  # a copy: the loop itself is left as it is
    assert _same_form(drawn, canonical_body(_only_loop(seqdsl.load(SPECS / f"{cell}.yaml", SIZES))))
    assert repr(canonical_body(dataclasses.replace(loop, body=drawn))) == repr(drawn)  # idempotent


# --------------------------------------------------------------------------------------------- the pass itself


def _check(before: Model, after: Model) -> None:
    """What the pass keeps: the model verifies, equations keep their names and locations, every sum's shape is
    its operands' broadcast, and every node is one the spec made (no new name, no location lost)."""
    after.verify()
    eqs = lambda m: {(n.name, n.loc, n.shape) for n in all_nodes(m.graph) if n.attrs.get("eq_root")}  # noqa: E731
    assert eqs(after) == eqs(before)
    pairs = [(before.graph, after.graph)]
    while pairs:
        old, new = pairs.pop()
        locs = {o.loc for o in old}
        for n in new:
            assert n.name in old.nodes and n.loc in locs and n.dtype == old[n.name].dtype
            if n.op in KIND:
                shape = new[n.inputs[0]].shape
                for i in n.inputs[1:]:
                    shape = broadcast(shape, new[i].shape)
                assert n.shape == shape
            elif n.op == "loop":
                pairs.append((loop_of(old[n.name]).body, loop_of(n).body))


def _same_numbers(before: Model, after: Model) -> None:
    """``after`` as written computes what ``before`` as written does, on the same weights."""
    want_net, got_net = to_module(before, optimize=False), to_module(after, optimize=False)
    got_net.load_state_dict(want_net.state_dict())
    inputs = example_inputs(before, 2, 3)
    want = run_torch(want_net, inputs)
    for name, value in run_torch(got_net, inputs).items():
        np.testing.assert_allclose(value, want[name], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("spec", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_keeps_its_values_and_the_pass_is_idempotent(spec: Path):
    model = seqdsl.load(spec)
    once, _ = canonicalise(model)
    _check(model, once)
    twice, changed = canonicalise(once)
    assert not changed and repr(twice.graph) == repr(once.graph)


@settings(max_examples=60 if LONG else 8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=random_cells())
def test_random_cells_compute_the_same_in_canonical_form(text: str):
    model = seqdsl.loads(text)
    once, _ = canonicalise(model)
    _check(model, once)
    _same_numbers(model, once)
    assert not canonicalise(once)[1]


BROADCAST = """
name: sums
sizes: {{d: 3, h: 4}}
inputs:
  x: [B, T, h]
params:
  W: [h, h]
  U: [h, h]
  b: [h]
  s: [1]
recurrent:
  state:
    h: [B, h]
  step:
    h: {}
outputs:
  y: h
"""


@settings(max_examples=60 if LONG else 10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_sums_of_broadcast_terms_keep_their_shapes_and_numbers(data: st.DataObject):
    batched = ["W @ x", "-U @ h[t-1]", "x * b", "-h[t-1]", "s * x"]  # (B, h)
    pool = batched + ["b", "-s", "2", "0.5 * (b * s)"]  # and (h), (1), a number
    terms = [data.draw(st.sampled_from(batched))] + data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=5))
    model = seqdsl.loads(BROADCAST.format(f"tanh({data.draw(sums(terms))})"))
    once, _ = canonicalise(model)
    _check(model, once)
    _same_numbers(model, once)
    assert not canonicalise(once)[1]


def test_products_are_regrouped_too():
    forms = [canonical_body(_only_loop(seqdsl.loads(BROADCAST.format(f"tanh({e})")))) for e in
             ("(x * h[t-1]) * b + s", "s + x * (b * h[t-1])", "s + (b * x) * h[t-1]")]
    assert _same_form(forms[0], forms[1]) and _same_form(forms[0], forms[2])
    assert sum(n.op == "mul" for n in forms[0]) == 2


def test_the_order_of_terms_does_not_depend_on_the_activations():
    """A family template's activation slot takes any activation: terms that differ only there sort alike."""
    peephole = (SPECS / "lstm_peephole.yaml").read_text()
    bodies = [canonical_body(_only_loop(seqdsl.loads(peephole.replace("tanh(", f"{act}("), SIZES)))
              for act in ("tanh", "relu", "softplus")]
    assert _same_form(bodies[0], bodies[1], activations=False) and _same_form(bodies[0], bodies[2], activations=False)


def test_named_partial_sums_are_kept_in_the_model_but_not_in_the_way_of_recognition():
    text = (SPECS / "lstm.yaml").read_text().replace(
        "    f: sigmoid(W_f @ x + U_f @ h[t-1] + b_f)", "    pre: U_f @ h[t-1] + b_f\n    f: sigmoid(W_f @ x + pre)")
    model = seqdsl.loads(text, SIZES)
    once, _ = canonicalise(model)
    assert "pre" in _only_loop(once).body.nodes  # an equation's result stays, for model.py to name
    assert _cells(model) == ["lstm"]


def test_the_canonical_order_lets_fold_bias_fold_every_input_projection():
    """``(W x + b) + U h``: each gate's bias joins its input projection (then hoisted out of the loop with it)."""
    folded = lambda m: sum(n.op == "linear" and len(n.inputs) == 3 for n in all_nodes(m.graph))  # noqa: E731
    model = seqdsl.load(SPECS / "lstm.yaml", SIZES)
    assert folded(fold_bias(model)[0]) == 0  # as written, (W x + U h) + b: no linear map reads its bias
    assert folded(fold_bias(canonicalise(model)[0])[0]) == 4
