"""The optimization passes (seqdsl.passes): every rewrite rule of fuse.py and hoist.py on a small spec, checked on
the IR; then the numbers: every shipped spec computes the same with and without the passes (outputs and gradients
in PyTorch, and the optimized ONNX export), and so do random recurrent cells.

Every pass run here goes through `_apply`, which also checks that the result verifies (with the loop leaves
matching the loop node's inputs) and that the pass left its input model untouched.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SPECS
from test_properties import random_cells

import seqdsl
from seqdsl.compilers.build import example_inputs, run_torch
from seqdsl.compilers.onnx_export import export, set_weights
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_module import to_module
from seqdsl.ir import Graph, Model, Node, all_nodes, loop_of
from seqdsl.passes import DEFAULT_PIPELINE, fuse_linears, hoist, optimize

ALL_SPECS = sorted(SPECS.glob("*.yaml"))
SHAPES = [(2, 1), (3, 5)]  # (B, T): one step, and several


# --------------------------------------------------------------------------------------------- helpers


def _spec(text: str) -> Model:
    return seqdsl.loads(textwrap.dedent(text), file="x.yaml")


def _apply(one_pass, model: Model) -> tuple[Model, bool]:
    """``one_pass(model)``, checking that the result is well-formed and that ``model`` did not change."""
    before, params = repr(model.graph), dict(model.params)
    out, changed = one_pass(model)
    assert repr(model.graph) == before, f"{one_pass.__name__} changed its input model"
    assert model.params == params
    model.verify()
    out.verify()
    _check_loops(out.graph)
    assert out.params == model.params, "a pass must not add, drop or rename parameters"
    return out, changed


def _check_loops(graph: Graph) -> None:
    """What `Graph.verify` does not check: each loop's leaves match the loop node's inputs, one leaf per input,
    with the shapes and dtypes of the values they stand for."""
    for node in graph:
        if node.op != "loop":
            continue
        loop = loop_of(node)
        n_s, n_q = loop.n_states, loop.n_sequences
        inits, seqs, caps = node.inputs[:n_s], node.inputs[n_s:n_s + n_q], node.inputs[n_s + n_q:]
        for op, args in (("state", inits), ("step_input", seqs), ("capture", caps)):
            assert sorted(b.attrs["index"] for b in loop.body if b.op == op) == list(range(len(args))), \
                f"loop `{node.name}`: {op} leaves do not match its inputs"
        assert len({graph[s].shape[1] for s in seqs}) <= 1, f"loop `{node.name}`: sequences of different lengths"
        for b in loop.body:
            if b.op == "state":
                assert graph[inits[b.attrs["index"]]].shape == b.shape
            elif b.op == "step_input":
                outer = graph[seqs[b.attrs["index"]]]
                assert (outer.shape[0], *outer.shape[2:]) == b.shape and outer.dtype == b.dtype, (b, outer)
            elif b.op == "capture":
                outer = graph[caps[b.attrs["index"]]]
                assert outer.shape == b.shape and outer.dtype == b.dtype, (b, outer)
        for name in loop.updates + [r.node for r in loop.returns]:
            assert name in loop.body.nodes
        _check_loops(loop.body)


def _optimize(model: Model) -> Model:
    """`optimize`, with every pass of the pipeline checked by `_apply` on the way."""
    for one in DEFAULT_PIPELINE:
        for _ in range(8):  # as `optimize`, which stops there
            model, changed = _apply(one, model)
            if not changed:
                break
        else:
            raise AssertionError(f"{one.__name__} still changes the model after 8 rounds")
    return model


def _loop(graph: Graph, n: int = 0) -> Node:
    return [node for node in graph if node.op == "loop"][n]


def _ops(graph: Graph, op: str) -> list[Node]:
    return [n for n in graph if n.op == op]


def _param_names(graph: Graph, nodes: list[str]) -> list[str]:
    return [graph[n].attrs["name"] for n in nodes]


def _reads_param(graph: Graph, name: str) -> bool:
    return any(n.op == "param" and n.attrs["name"] == name for n in graph)


def _modules(model: Model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The unoptimized and the optimized module of ``model``, with the same weights."""
    torch.manual_seed(0)
    plain, fast = to_module(model, optimize=False), to_module(model, optimize=True)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def _same_outputs(model: Model, shapes=SHAPES, onnx: bool = False) -> None:
    plain, fast = _modules(model)
    proto = None
    if onnx:
        proto = export(model)
        set_weights(proto, {k: v.detach().numpy() for k, v in plain.state_dict().items()})
        proto = proto.SerializeToString()
    for batch, steps in shapes:
        inputs = example_inputs(model, batch, steps)
        want = run_torch(plain, inputs)
        got = run_torch(fast, inputs)
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-6, rtol=1e-6,
                                       err_msg=f"{name} B={batch} T={steps}")
        if proto is not None:
            for name, value in run(proto, inputs).outputs.items():
                np.testing.assert_allclose(value, want[name], atol=1e-5, rtol=0, err_msg=f"onnx {name}")


# --------------------------------------------------------------------------------------------- fusion

FOUR_GATES = """
sizes: {d: 3, h: 4}
inputs:
  x: [B, T, d]
params:
  W_f, W_i, W_o, W_c: [h, d]
graph:
  f: W_f @ x
  i: W_i @ x
  o: W_o @ x
  c: W_c @ x
  y: sigmoid(f) * tanh(c) + i * o
outputs:
  y: y
"""


def test_fusion_turns_four_sibling_linears_into_concat_linear_and_slices():
    model = _spec(FOUR_GATES)
    fused, changed = _apply(fuse_linears, model)
    assert changed
    (linear,) = _ops(fused.graph, "linear")
    (cat,) = _ops(fused.graph, "concat")
    assert linear.inputs == ["x", cat.name] and linear.shape == ("B", "T", 16)
    assert _param_names(fused.graph, cat.inputs) == ["W_f", "W_i", "W_o", "W_c"]  # the spec's parameters, in order
    assert cat.attrs["axis"] == 0 and cat.shape == (16, 3)
    # each sibling is now a slice of the product, under its own name, so every reader is unchanged
    for k, name in enumerate(["f", "i", "o", "c"]):
        node = fused.graph[name]
        assert node.op == "slice" and node.inputs == [linear.name]
        assert (node.attrs["axis"], node.attrs["start"], node.attrs["stop"]) == (-1, 4 * k, 4 * k + 4)
        assert node.shape == model.graph[name].shape
    for node in model.graph:
        if node.op not in ("linear", "param"):
            assert fused.graph[node.name].inputs == node.inputs
    assert fused.graph.outputs == model.graph.outputs
    assert _apply(fuse_linears, fused)[1] is False  # a fixpoint: the product's weight is no parameter
    _same_outputs(model)


def test_fusion_slices_rows_of_different_sizes():
    model = _spec("""
        sizes: {d: 3}
        inputs:
          x: [B, T, d]
        params:
          W_a: [2, d]
          W_b: [5, d]
          W_c: [1, d]
        graph:
          a: W_a @ x
          b: W_b @ x
          c: W_c @ x
        outputs:
          y: concat(c, a, b)
        """)
    fused, changed = _apply(fuse_linears, model)
    assert changed
    (cat,) = [n for n in _ops(fused.graph, "concat") if fused.graph[n.inputs[0]].op == "param"]
    assert _param_names(fused.graph, cat.inputs) == ["W_a", "W_b", "W_c"] and cat.shape == (8, 3)
    assert [(fused.graph[n].attrs["start"], fused.graph[n].attrs["stop"]) for n in "abc"] == [(0, 2), (2, 7), (7, 8)]
    assert [fused.graph[n].shape for n in "abc"] == [("B", "T", 2), ("B", "T", 5), ("B", "T", 1)]
    _same_outputs(model)


def test_fusion_leaves_linears_with_different_inputs_alone():
    model = _spec("""
        sizes: {d: 3, e: 5, h: 4}
        inputs:
          x: [B, T, d]
          z: [B, T, d]
          u: [B, T, e]
        params:
          W_1, W_2: [h, d]
          W_3: [h, e]
        graph:
          a: W_1 @ x      # same input width as b, another input
          b: W_2 @ z
          c: W_3 @ u      # another input width
        outputs:
          y: a + b + c
        """)
    fused, changed = _apply(fuse_linears, model)
    assert changed is False
    assert repr(fused.graph) == repr(model.graph)
    assert len(_ops(fused.graph, "linear")) == 3 and not _ops(fused.graph, "concat")


def test_fusion_inside_loop_bodies():
    model = seqdsl.load(SPECS / "lstm.yaml", {"d": 3, "h": 4})
    fused, changed = _apply(fuse_linears, model)
    assert changed
    body = loop_of(_loop(fused.graph)).body
    by_weight = {body[n.inputs[1]].name: n for n in _ops(body, "linear")}
    assert len(by_weight) == 2  # one product with x, one with h[t-1]
    cats = {tuple(_param_names(body, c.inputs)): c for c in _ops(body, "concat")}
    assert set(cats) == {("W_f", "W_i", "W_o", "W_c"), ("U_f", "U_i", "U_o", "U_c")}
    x_product = by_weight[cats[("W_f", "W_i", "W_o", "W_c")].name]
    h_product = by_weight[cats[("U_f", "U_i", "U_o", "U_c")].name]
    assert body[x_product.inputs[0]].op == "step_input" and body[h_product.inputs[0]].op == "state"
    assert len([n for n in _ops(body, "slice") if n.inputs in ([x_product.name], [h_product.name])]) == 8
    assert not _ops(fused.graph, "concat")  # nothing happens outside the body: there is nothing to fuse there
    _same_outputs(model)


def test_fused_parameters_keep_their_spec_names():
    model = seqdsl.load(SPECS / "lstm.yaml", {"d": 3, "h": 4})
    optimized = _optimize(model)
    assert optimized.params == model.params
    plain, fast = _modules(model)
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert sorted(dict(fast.named_parameters())) == sorted(model.params)
    names = sorted(i.name for i in export(model).graph.initializer if "#" not in i.name)
    assert names == sorted(model.params)


# --------------------------------------------------------------------------------------------- hoisting

RNN = """
sizes: {d: 3, h: 4}
inputs:
  x: [B, T, d]
params:
  W: [h, d]
  U: [h, h]
  b: [h]
recurrent:
  state:
    h: [B, h]
  step:
    h: tanh(W @ x + U @ h[t-1] + b)
outputs:
  y: h
  h_n: final(h)
"""


def test_hoisting_moves_the_input_projection_out_as_a_step_input():
    model = _spec(RNN)
    out, changed = _apply(hoist, model)
    assert changed
    w_x = out.graph["W_x"]  # named as the paper writes W x_t
    assert w_x.op == "linear" and w_x.shape == ("B", "T", 4)
    assert w_x.inputs[0] == "x" and out.graph[w_x.inputs[1]].attrs["name"] == "W"
    node = _loop(out.graph)
    loop = loop_of(node)
    assert node.inputs == ["h_init", "W_x"] and (loop.n_sequences, loop.n_captures) == (1, 0)  # x is not sliced
    leaf = loop.body["W_x"]
    assert leaf.op == "step_input" and leaf.attrs["index"] == 0 and leaf.shape == ("B", 4)
    assert not _reads_param(loop.body, "W") and "x" not in loop.body.nodes
    (recurrent,) = _ops(loop.body, "linear")  # U @ h[t-1] stays: it reads the state
    assert loop.body[recurrent.inputs[0]].op == "state" and loop.body[recurrent.inputs[1]].attrs["name"] == "U"
    assert _reads_param(loop.body, "b")  # added after U @ h[t-1]: stays
    assert _apply(hoist, out)[1] is False
    _same_outputs(model, onnx=True)


def test_hoisting_moves_chains_whole():
    model = _spec(RNN.replace("W @ x + U @ h[t-1] + b", "W @ x + b + U @ h[t-1]"))  # W x_t + b, then U h_{t-1}
    out, changed = _apply(hoist, model)
    assert changed
    node = _loop(out.graph)
    loop = loop_of(node)
    (seq,) = node.inputs[loop.n_states:]
    chain = out.graph[seq]
    assert chain.op == "add" and chain.shape == ("B", "T", 4)
    assert out.graph[chain.inputs[0]].op == "linear" and out.graph[chain.inputs[1]].attrs["name"] == "b"
    # only the chain's end comes back into the body; W @ x, W and b are gone from it
    assert [n.name for n in _ops(loop.body, "step_input")] == [seq]
    assert not _reads_param(loop.body, "W") and not _reads_param(loop.body, "b")
    assert len(_ops(loop.body, "linear")) == 1 and len(_ops(loop.body, "add")) == 1
    _same_outputs(model, onnx=True)


def test_hoisting_moves_time_work_that_reads_hoisted_invariants():
    model = _spec(RNN.replace("W @ x + U @ h[t-1] + b", "W @ x * sigmoid(b) + U @ h[t-1]"))
    out, changed = _apply(hoist, model)
    assert changed
    node = _loop(out.graph)
    loop = loop_of(node)
    assert (loop.n_sequences, loop.n_captures) == (1, 0)  # sigmoid(b) only fed the moved product: no capture
    (seq,) = node.inputs[loop.n_states:]
    assert out.graph[seq].op == "mul" and out.graph[seq].shape == ("B", "T", 4)
    assert _ops(out.graph, "sigmoid") and not _ops(loop.body, "sigmoid")
    _same_outputs(model)


ATTENTION = """
sizes: {m: 3, k: 5, h: 4, a: 6}
inputs:
  y: [B, T, m]
  hs: [B, S, k]
params:
  W_a: [a, h]
  U_a: [a, k]
  v_a: [a]
  W: [h, m]
  U: [h, h]
  C: [h, k]
recurrent:
  over: [y]
  state:
    s: [B, h]
  step:
    e: sum(v_a * tanh(W_a @ unsqueeze(s[t-1], 1) + U_a @ hs), axis=-1)
    alpha: softmax(e, axis=-1)
    c: transpose(hs) @ alpha
    s: tanh(W @ y + U @ s[t-1] + C @ c)
outputs:
  out: s
  attention: alpha
"""


def test_hoisting_turns_invariant_work_on_a_capture_into_a_capture():
    model = _spec(ATTENTION)
    out, changed = _apply(hoist, model)
    assert changed
    u_hs = out.graph["U_a_hs"]  # U_a h_j for every j, once per sequence instead of once per step
    assert u_hs.op == "linear" and u_hs.inputs[0] == "hs" and u_hs.shape == ("B", "S", 6)
    assert out.graph[u_hs.inputs[1]].attrs["name"] == "U_a"
    node = _loop(out.graph)
    loop = loop_of(node)
    captures = node.inputs[loop.n_states + loop.n_sequences:]
    assert "hs" not in node.inputs  # transpose(hs), invariant as well, left too: the loop reads only these two
    assert sorted(captures) == ["U_a_hs", "c_transpose"] and out.graph["c_transpose"].inputs == ["hs"]
    leaf = loop.body["U_a_hs"]
    assert leaf.op == "capture" and leaf.shape == ("B", "S", 6)
    assert not _reads_param(loop.body, "U_a") and not _reads_param(loop.body, "W")  # W @ y left as well
    assert node.inputs[loop.n_states:loop.n_states + loop.n_sequences] == ["W_y"]
    # the score mixes the state with the capture: it stays, and so does everything after it
    assert _reads_param(loop.body, "W_a") and _reads_param(loop.body, "v_a")
    assert _ops(loop.body, "softmax") and _ops(loop.body, "matvec")
    _same_outputs(model, onnx=True)


def test_hoisting_keeps_nodes_mixing_a_step_input_with_a_batch_capture():
    model = _spec("""
        sizes: {d: 3, h: 4}
        inputs:
          x: [B, T, d]
          c: [B, d]
        params:
          W, V: [h, d]
          U: [h, h]
        recurrent:
          over: [x]
          state:
            h: [B, h]
          step:
            h: tanh(W @ (x * c) + V @ x + U @ h[t-1])
        outputs:
          y: h
        """)
    out, changed = _apply(hoist, model)
    assert changed  # V @ x moves ...
    node = _loop(out.graph)
    loop = loop_of(node)
    # ... but x * c is a (B, d) value per step times a (B, d) one per sequence: it stays, and W @ (x * c) with it
    (mixed,) = _ops(loop.body, "mul")
    assert [loop.body[i].op for i in mixed.inputs] == ["step_input", "capture"]
    assert _reads_param(loop.body, "W") and not _reads_param(loop.body, "V")
    assert node.inputs[loop.n_states:] == ["x", "V_x", "c"]  # x still sliced; V_x new; c still captured
    assert not _ops(out.graph, "mul")
    _same_outputs(model)


def test_hoisting_changes_nothing_when_everything_reads_the_state():
    model = _spec("""
        sizes: {h: 4}
        inputs:
          x: [B, T, h]
        params:
          U: [h, h]
        recurrent:
          state:
            h: [B, h]
          step:
            g: sigmoid(h[t-1]) * x
            h: tanh(U @ g) + g
        outputs:
          y: h
        """)
    for one in (hoist, fuse_linears):
        out, changed = _apply(one, model)
        assert changed is False
        assert repr(out.graph) == repr(model.graph)
    assert repr(optimize(model).graph) == repr(model.graph)


def test_hoisting_in_a_loop_of_fixed_steps():
    model = _spec("""
        sizes: {f: 3, h: 4, L: 5}
        inputs:
          v: [B, f]
        params:
          W: [h, f]
          U: [h, h]
          b: [h]
        recurrent:
          steps: L
          state:
            h: [B, h]
          step:
            h: tanh(W @ v + b + U @ h[t-1])
        outputs:
          y: h
          h_n: final(h)
        """)
    out, changed = _apply(hoist, model)
    assert changed
    node = _loop(out.graph)
    loop = loop_of(node)
    assert loop.steps == 5 and loop.n_sequences == 0 and not _ops(loop.body, "step_input")
    (cap,) = node.inputs[loop.n_states:]
    assert out.graph[cap].op == "add" and out.graph[cap].shape == ("B", 4)  # W v + b, once: a (B, h) capture
    assert loop.body[cap].op == "capture"
    assert not _reads_param(loop.body, "W") and not _reads_param(loop.body, "b")
    _same_outputs(model, onnx=True)


def test_hoisting_leaves_the_fixed_step_generator_alone():
    model = seqdsl.load(SPECS / "generator.yaml")  # every step reads the previous word: nothing to move
    for one in (fuse_linears, hoist):
        out, changed = _apply(one, model)
        assert changed is False and repr(out.graph) == repr(model.graph)


def test_hoisting_in_a_reversed_loop():
    text = RNN.replace("recurrent:\n", "recurrent:\n  direction: reverse\n") + "  h_last: last(h)\n"
    model = _spec(text)
    out, changed = _apply(hoist, model)
    assert changed
    node = _loop(out.graph)
    loop = loop_of(node)
    assert loop.reverse and node.inputs[loop.n_states:] == ["W_x"]
    assert out.graph["W_x"].shape == ("B", "T", 4)  # computed for every position; the loop reads it backwards
    _same_outputs(model, onnx=True)
    plain, fast = _modules(model)
    got = run_torch(fast, example_inputs(model, 2, 4))
    np.testing.assert_allclose(got["h_n"], got["y"][:, 0], atol=0)  # the reverse pass still ends at position 0
    np.testing.assert_allclose(got["h_last"], got["y"][:, -1], atol=0)


def test_hoisting_out_of_loops_inside_loops():
    model = _spec("""
        sizes: {d: 3, h: 4, k: 5}
        inputs:
          x: [B, T, d]
          hs: [B, S, k]
        modules:
          Inner:
            sizes: {k: 5, h: 4}
            inputs: {z: [B, S, k], q: [B, h]}
            params:
              A_q, A_g: [h, k]
              R: [h, h]
            recurrent:
              over: [z]
              state:
                g: {shape: [B, h], init: q}
              step:
                u: sigmoid(A_q @ z + R @ g[t-1])
                g: u * g[t-1] + (1 - u) * tanh(A_g @ z)
            outputs:
              g_n: final(g)
        params:
          W: [h, d]
          U: [h, h]
        recurrent:
          over: [x]
          state:
            h: [B, h]
          step:
            inner: Inner(hs, h[t-1])
            h: tanh(W @ x + U @ inner)
        outputs:
          y: h
        """)
    optimized = _optimize(model)
    outer = _loop(optimized.graph)
    outer_body = loop_of(outer).body
    inner = _loop(outer_body)
    inner_body = loop_of(inner).body
    # the inner loop's input projection (fused: A_q and A_g together) is computed once, on hs, at the top
    (top_cat,) = _ops(optimized.graph, "concat")
    assert _param_names(optimized.graph, top_cat.inputs) == ["inner.A_q", "inner.A_g"]
    (projection,) = [n for n in _ops(optimized.graph, "linear") if n.inputs == ["hs", top_cat.name]]
    assert projection.shape == ("B", "S", 8)
    assert optimized.graph["W_x"].shape == ("B", "T", 4)
    # ... and reaches the inner loop as a capture of the outer one, sliced over S by the inner loop
    for seq in inner.inputs[loop_of(inner).n_states:]:
        assert outer_body[seq].op == "capture" and outer_body[seq].shape[:2] == ("B", "S")
    assert not _ops(outer_body, "concat") and not _ops(inner_body, "concat")
    assert [outer_body[n.inputs[1]].attrs.get("name") for n in _ops(outer_body, "linear")] == ["U"]
    assert [inner_body[n.inputs[1]].attrs.get("name") for n in _ops(inner_body, "linear")] == ["inner.R"]
    assert not _ops(inner_body, "tanh")  # tanh(A_g z) needs no state either: it left with its product
    _same_outputs(model, onnx=True)


def test_hoisting_through_nested_module_calls():
    model = _spec("""
        sizes: {d: 3, h: 4}
        inputs:
          x: [B, T, d]
        modules:
          Cell:
            sizes: {d: 3, h: 4}
            inputs: {x: [B, T, d]}
            params:
              W_z, W_n: [h, d]
              U_z, U_n: [h, h]
            recurrent:
              state:
                h: [B, h]
              step:
                z: sigmoid(W_z @ x + U_z @ h[t-1])
                h: z * h[t-1] + (1 - z) * tanh(W_n @ x + U_n @ h[t-1])
            outputs:
              y: h
          Stack:
            sizes: {d: 3, h: 4}
            inputs: {x: [B, T, d]}
            params:
              P: [h, h]
            graph:
              lo: Cell(x, h=h)
              hi: Cell(tanh(P @ lo), h=h, direction=reverse)
            outputs:
              y: hi
        graph:
          s: Stack(x, h=h)
        outputs:
          y: s.y
        """)
    optimized = _optimize(model)
    assert sorted(optimized.params) == sorted(model.params)  # s.lo.W_z, s.hi.U_n, ...: names as in the spec
    loops = _ops(optimized.graph, "loop")
    assert [loop_of(n).reverse for n in loops] == [False, True]
    for node, layer in zip(loops, ("s.lo", "s.hi")):
        body = loop_of(node).body
        (recurrent,) = _ops(body, "linear")  # only [U_z; U_n] @ h[t-1] is left in the step
        assert body[recurrent.inputs[0]].op == "state"
        assert body[recurrent.inputs[1]].op == "capture"  # the concatenation [U_z; U_n], made once outside
        assert not any(n.op == "param" and n.attrs["name"].startswith(f"{layer}.W_") for n in body)
        (projection,) = [n for n in _ops(optimized.graph, "linear") if n.name == f"{layer}.W_z_W_n_x"]
        assert projection.shape == ("B", "T", 8)
    _same_outputs(model, onnx=True)


def test_hoisted_values_that_the_loop_returns():
    model = _spec("""
        sizes: {d: 3, h: 4}
        inputs:
          x: [B, T, d]
          c: [B, d]
        params:
          W, V: [h, d]
          U: [h, h]
        recurrent:
          over: [x]
          state:
            h: [B, h]
          step:
            u: W @ x
            v: V @ c
            h: tanh(u + v + U @ h[t-1])
        outputs:
          y: h
          u_all: u
          u_last: last(u)
          v_all: v
          v_n: final(v)
        """)
    out, changed = _apply(hoist, model)
    assert changed
    body = loop_of(_loop(out.graph)).body
    assert body["u"].op == "step_input" and body["v"].op == "capture"  # returned: they keep their names
    _same_outputs(model, onnx=True)


def test_hoisting_keeps_ops_on_a_counted_axis():
    # axis 1 of a (B, h) step value is its last axis, but axis 1 of the (B, T, h) sequence would be T
    model = _spec(RNN.replace("W @ x + U @ h[t-1] + b", "softmax(W @ x, axis=1) + U @ h[t-1]"))
    out, changed = _apply(hoist, model)
    assert changed  # W @ x moves, the softmax does not
    body = loop_of(_loop(out.graph)).body
    (softmax,) = _ops(body, "softmax")
    assert body[softmax.inputs[0]].op == "step_input" and not _ops(out.graph, "softmax")
    _same_outputs(model)


def test_hoisted_value_named_like_a_loop_output():
    model = _spec("""
        sizes: {d: 3, h: 4}
        inputs:
          x: [B, T, d]
        params:
          W: [h, d]
          U: [h, h]
        recurrent:
          state:
            h: [B, h]
          step:
            u: W @ x
            h: tanh(u + U @ h[t-1])
        outputs:
          y: h
          u: u
        """)
    _apply(hoist, model)
    _same_outputs(model)


def test_softmax_over_the_batch_axis_is_not_hoisted():
    model = _spec("""
        sizes: {h: 4}
        inputs:
          x: [B, T]
        params:
          U: [h, h]
        recurrent:
          state:
            h: [B, h]
          step:
            p: softmax(x)                  # x is (B,) at each step: a softmax over the batch
            h: tanh(U @ h[t-1] + unsqueeze(p, -1))
        outputs:
          y: h
        """)
    _same_outputs(model, shapes=[(3, 4)])


def test_dropout_stays_in_the_step():
    model = _spec("""
        sizes: {d: 3, h: 4}
        inputs:
          x: [B, T, d]
          c: [B, h]
        params:
          W: [h, d]
          U: [h, h]
        recurrent:
          over: [x]
          state:
            h: [B, h]
          step:
            h: tanh(U @ h[t-1] + W @ x + dropout(c, p=0.5))
        outputs:
          y: h
        """)
    out, _ = _apply(hoist, model)
    assert _ops(loop_of(_loop(out.graph)).body, "dropout")


# --------------------------------------------------------------------------------------------- every shipped spec


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: p.stem)
def test_passes_keep_every_spec_well_formed(spec: Path):
    model = seqdsl.load(spec)
    model.verify()
    _check_loops(model.graph)
    optimized = _optimize(model)  # each pass: verifies, leaves its input alone, keeps the parameters
    assert repr(optimize(model).graph) == repr(optimized.graph)
    for one in DEFAULT_PIPELINE:  # optimize reaches a fixpoint
        assert _apply(one, optimized)[1] is False
    assert {n.attrs["name"] for n in all_nodes(optimized.graph) if n.op == "param"} <= set(model.params)


def _gradients(net: torch.nn.Module, inputs: dict[str, np.ndarray]) -> tuple[list[torch.Tensor], dict]:
    net.eval()  # dropout off: both modules must draw nothing
    net.zero_grad()
    outs = net(*(torch.from_numpy(inputs[n]) for n in net.input_names))
    outs = outs if isinstance(outs, tuple) else (outs,)
    weights = torch.Generator().manual_seed(1)  # a fixed random cotangent per output, so no gradient cancels out
    loss = sum((o * torch.randn(o.shape, generator=weights)).sum() for o in outs if o.is_floating_point())
    if any(p.requires_grad for p in net.parameters()):
        loss.backward()
    grads = {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for k, p in net.named_parameters()}
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: p.stem)
def test_optimized_spec_computes_the_same(spec: Path):
    model = seqdsl.load(spec)
    plain, fast = _modules(model)
    proto = export(model)  # optimized by default
    set_weights(proto, {k: v.detach().numpy() for k, v in plain.state_dict().items()})
    proto = proto.SerializeToString()
    # fused attention (F.scaled_dot_product_attention: online softmax, the scale as a product) rounds its
    # gradients otherwise again: up to 1.3e-6 of their scale here, both sides within 3e-7 of float64's
    fused = any(n.op == "attention" for n in all_nodes(optimize(model).graph))
    grad_tol = 3e-6 if fused else 1e-6
    for batch, steps in SHAPES:
        inputs = example_inputs(model, batch, steps)
        want, want_grads = _gradients(plain, inputs)
        got, got_grads = _gradients(fast, inputs)
        for name, a, b in zip(plain.output_names, got, want):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, rtol=1e-6,
                                       err_msg=f"{name} B={batch} T={steps}")
        assert got_grads.keys() == want_grads.keys()
        for name, g in want_grads.items():
            # float32 sums the fused products in another order: within 1e-6 of the gradient's own scale
            scale = max(1.0, g.abs().max().item())
            torch.testing.assert_close(got_grads[name], g, atol=grad_tol * scale, rtol=0, msg=f"d/d{name} B={batch}")
        for name, value in run(proto, inputs).outputs.items():
            expected = dict(zip(plain.output_names, want))[name].numpy()
            np.testing.assert_allclose(value, expected, atol=1e-5, rtol=0, err_msg=f"onnx {name} B={batch} T={steps}")


# --------------------------------------------------------------------------------------------- random cells


@st.composite
def random_cells_with_capture(draw: st.DrawFn) -> str:
    """`random_cells`, where some reads of x read a (B, d) non-sequence input c instead, and maybe reversed."""
    text = draw(random_cells())
    head, step = text.split("  step:\n")
    step = re.sub(r"\bx\b", lambda _: "c" if draw(st.booleans()) else "x", step)
    head = head.replace("  x: [B, T, d]\n", "  x: [B, T, d]\n  c: [B, d]\n")
    head = head.replace("recurrent:\n", "recurrent:\n  over: [x]\n")
    if draw(st.booleans()):
        head = head.replace("recurrent:\n", "recurrent:\n  direction: reverse\n")
    return head + "  step:\n" + step


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=random_cells_with_capture(), steps=st.integers(1, 4), batch=st.integers(1, 3))
def test_random_cells_compute_the_same_optimized(spec: str, steps: int, batch: int):
    model = seqdsl.loads(spec)
    _optimize(model)
    plain, fast = _modules(model)
    inputs = example_inputs(model, batch, steps)
    want, got = run_torch(plain, inputs), run_torch(fast, inputs)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=1e-5, err_msg=f"{name}\n{spec}")


# --------------------------------------------------------------------------------------------- speed sanity


def test_optimized_lstm_step_holds_one_product():
    model = seqdsl.load(SPECS / "lstm.yaml")
    optimized = _optimize(model)
    node = _loop(optimized.graph)
    body = loop_of(node).body
    (product,) = _ops(body, "linear")  # [U_f; U_i; U_o; U_c] @ h[t-1], the only matrix product per step
    assert body[product.inputs[0]].op == "state" and product.shape == ("B", 128)
    assert body[product.inputs[1]].op == "capture" and not _ops(body, "concat")  # concatenated once, outside
    assert not any(n.op == "param" and n.attrs["name"].startswith("W_") for n in body)
    # the input projection: one (B, T, 4h) product over the whole sequence, outside the loop
    (projection,) = _ops(optimized.graph, "linear")
    assert projection.inputs[0] == "x" and projection.shape == ("B", "T", 128)
    assert _param_names(optimized.graph, optimized.graph[projection.inputs[1]].inputs) == ["W_f", "W_i", "W_o", "W_c"]
    assert "x" not in node.inputs  # the loop reads the projection (whole, or its slices), not x
    assert all(s == projection.name or optimized.graph[s].inputs == [projection.name]
               for s in node.inputs[2:2 + loop_of(node).n_sequences])

