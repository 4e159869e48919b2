"""The attention pass (seqdsl/passes/attention.py): softmax(Q Kᵀ · scale (+ causal / padding mask)) V becomes one
`attention` node, which PyTorch runs as F.scaled_dot_product_attention and ONNX as its MatMul/Softmax/MatMul.

Checked against implementations we did not write: nn.MultiheadAttention and nn.TransformerEncoderLayer (weights
copied across; outputs and gradients), onnxruntime and onnx.reference on the export. Every form of the pattern
the pass takes (any order of scaling and masks, / c, * c, c *) computes what the unfused equations compute,
a query whose keys are all padding included (NaN, as before); near misses stay as written.
"""

from __future__ import annotations

import os
import re
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator
from torch import nn

from conftest import SPECS
from test_parity_transformer import causal_bool, check_parity, copy_weights, keep_mask, layer_map, leaf, mha_map

import seqdsl
from seqdsl.compilers import onnx_runtime as rt
from seqdsl.compilers.onnx_export import export, set_weights
from seqdsl.compilers.torch_codegen import generate
from seqdsl.compilers.torch_module import to_module
from seqdsl.ir import all_nodes, loop_of
from seqdsl.errors import SpecError
from seqdsl.passes import fuse_attention, optimize

TOL = 1e-5
EXAMPLES = 200 if os.environ.get("SEQDSL_LONG_TESTS") else 25


def probe(text: str, sizes: dict[str, int] | None = None) -> seqdsl.Model:
    """A spec text whose imports are read relative to specs/ (as if it lived there)."""
    return seqdsl.loads(textwrap.dedent(text), sizes, file=str(SPECS / "_probe.yaml"))


def fused_nodes(model: seqdsl.Model) -> list:
    return [n for n in all_nodes(optimize(model).graph) if n.op == "attention"]


# ------------------------------------------------------------------------------ the pass fires where it should

@pytest.mark.parametrize("rel,calls", [("transformer_encoder.yaml", 2), ("transformer_decoder.yaml", 4),
                                       ("transformer.yaml", 6), ("lib/attention.yaml", 4)])
def test_every_shipped_attention_is_fused(rel, calls):
    """Each multi-head attention of the shipped specs is one fused call; the unfused softmax over scores is gone.
    lib/attention.yaml's root runs Dot, ScaledDot and two multi-head modules (its Additive is no dot product)."""
    model = seqdsl.load(SPECS / rel)
    assert len(fused_nodes(model)) == calls
    forward = generate(optimize(model)).split("def _forward", 1)[1]
    assert forward.count("F.scaled_dot_product_attention(") + forward.count("masked_attention(") == calls
    if rel != "lib/attention.yaml":
        assert "torch.softmax" not in forward and "causal_mask(" not in forward and "padding_mask(" not in forward


@pytest.mark.parametrize("variant,padded,causal", [("MultiHead", False, False), ("MaskedMultiHead", True, False),
                                                   ("CausalMultiHead", False, True),
                                                   ("CausalMaskedMultiHead", True, True)])
def test_fused_multihead_matches_nn_multiheadattention(variant, padded, causal):
    """Outputs and gradients against nn.MultiheadAttention (its own, unfused path: train mode, dropout 0)."""
    b, t, d, heads = 3, 6, 12, 3
    model = probe(f"""
        name: probe
        imports: {{MHA: lib/attention.yaml#{variant}}}
        sizes: {{d: {d}, heads: {heads}}}
        inputs: {{x: [B, T, d]{", keep: [B, T]" if padded else ""}}}
        graph:
          attn: MHA(x, x, x{", keep" if padded else ""}, heads=heads)
        outputs: {{y: attn}}
        """)
    (node,) = fused_nodes(model)
    assert node.attrs["causal"] == causal and len(node.inputs) == 3 + padded
    assert node.attrs["scale"] == pytest.approx(1 / np.sqrt(d // heads), rel=1e-12)
    spec = to_module(model).eval()
    ref = nn.MultiheadAttention(d, heads, batch_first=True).train()
    mapping = mha_map("attn.", "", d)
    copy_weights(spec, ref, mapping)
    x, x_ref = leaf(b, t, d, seed=5)
    keep = keep_mask(b, t, seed=7)
    out = spec(x, keep) if padded else spec(x)
    want, _ = ref(x_ref, x_ref, x_ref, need_weights=False, key_padding_mask=(keep == 0) if padded else None,
                  attn_mask=causal_bool(t) if causal else None)
    check_parity(spec, ref, mapping, out, want, [x], [x_ref])


def test_fused_encoder_block_matches_transformer_encoder_layer_and_its_export():
    """The shipped EncoderBlock with padding, fused: against nn.TransformerEncoderLayer in eval (torch's fast
    path), and its ONNX export in onnxruntime and onnx.reference against the same layer."""
    d, heads, ffn, b, t = 16, 2, 32, 3, 7
    model = probe("""
        name: probe
        imports: {Block: transformer_encoder.yaml#EncoderBlock}
        sizes: {d: 16, heads: 2, ffn: 32}
        inputs: {x: [B, T, d], keep: [B, T]}
        graph:
          block: Block(x, keep, heads=heads, ffn=ffn)
        outputs: {y: block}
        """)
    assert len(fused_nodes(model)) == 1
    spec = to_module(model).eval()
    ref = nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, batch_first=True)
    mapping = layer_map("block.", "", d, {"attn": "self_attn"}, norms=2)
    copy_weights(spec, ref, mapping)
    ref.eval()
    x = torch.randn(b, t, d, generator=torch.Generator().manual_seed(3))
    keep = keep_mask(b, t, seed=4)
    with torch.no_grad():
        want = ref(x, src_key_padding_mask=keep == 0)
        got = spec(x, keep)
    real = keep.bool()  # torch's fast path leaves padded query rows unspecified (zeros); compare the tokens
    torch.testing.assert_close(got[real], want[real], atol=TOL, rtol=0)
    proto = export(model)
    assert {"Softmax", "MatMul"} <= {n.op_type for n in proto.graph.node}
    set_weights(proto, {k: v.detach().numpy() for k, v in spec.state_dict().items()})
    feed = {"x": x.numpy(), "keep": keep.numpy()}
    runtime = rt.run(proto, feed).outputs["y"]
    reference = ReferenceEvaluator(proto).run(None, feed)[0]
    for value in (runtime, reference):
        np.testing.assert_allclose(value[real.numpy()], want[real].numpy(), atol=TOL, rtol=0)


# --------------------------------------------------------------- every form of the pattern: same numbers

KEYS = 5


@settings(max_examples=EXAMPLES, deadline=None)
@given(order=st.permutations(["scale", "causal", "mask"]), use=st.tuples(st.booleans(), st.booleans(), st.booleans()),
       form=st.sampled_from(["/ c", "* c", "c *"]), c=st.sampled_from([0.5, 2.0, 3.0, 7.25, 0.1]),
       heads=st.sampled_from([0, 2]), empty_row=st.booleans(), seed=st.integers(0, 2**16))
def test_every_form_of_the_pattern_is_fused_and_exact(order, use, form, c, heads, empty_row, seed):
    """Scaling, causal and padding mask in any order and any subset, 3-d or split into heads: one fused node whose
    PyTorch and ONNX outputs equal the unfused equations', NaN exactly where a query sees no key."""
    present = [step for step, on in zip(("scale", "causal", "mask"), use) if on]
    expr = "q @ transpose(k)" if not heads else "split_heads(q, 2) @ transpose(split_heads(k, 2))"
    for step in (s for s in order if s in present):
        if step == "scale":
            expr = {"/ c": f"({expr}) / {c}", "* c": f"({expr}) * {c}", "c *": f"{c} * ({expr})"}[form]
        elif step == "causal":
            expr = f"causal({expr})"
        else:
            expr = f"mask({expr}, keep)"
    value = "softmax({}) @ {}".format(expr, "split_heads(v, 2)" if heads else "v")
    out = f"merge_heads({value})" if heads else value
    model = probe(f"""
        name: probe
        sizes: {{d: 4}}
        inputs: {{q: [B, T, d], k: [B, S, d], v: [B, S, d]{", keep: [B, S]" if "mask" in present else ""}}}
        graph:
          y: {out}
        outputs: {{y: y}}
        """)
    (node,) = fused_nodes(model)
    assert node.attrs["causal"] == ("causal" in present)
    assert len(node.inputs) == (4 if "mask" in present else 3)
    want_scale = 1.0 if "scale" not in present else (1 / c if form == "/ c" else c)
    assert node.attrs["scale"] == pytest.approx(want_scale, rel=1e-15)
    g = torch.Generator().manual_seed(seed)
    b, t = 3, 4
    feed = {"q": torch.randn(b, t, 4, generator=g), "k": torch.randn(b, KEYS, 4, generator=g),
            "v": torch.randn(b, KEYS, 4, generator=g)}
    if "mask" in present:
        feed["keep"] = (torch.rand(b, KEYS, generator=g) > 0.4).float()
        feed["keep"][0] = 1.0
        if empty_row:
            feed["keep"][1] = 0.0  # every key of row 1 is padding
    unfused = to_module(model, optimize=False).eval()
    fused = to_module(model).eval()
    fused.load_state_dict(unfused.state_dict())
    with torch.no_grad():
        want, got = unfused(*feed.values()), fused(*feed.values())
    torch.testing.assert_close(got, want, atol=TOL, rtol=0, equal_nan=True)
    assert torch.equal(got.isnan(), want.isnan())
    if "mask" in present and empty_row:
        assert got[1].isnan().all()
    proto = export(model)
    numpy_feed = {k: v.numpy() for k, v in feed.items()}
    np.testing.assert_allclose(rt.run(proto, numpy_feed).outputs["y"], want.numpy(), atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------------ near misses

NEAR_MISSES = {
    "a learned temperature": "softmax(q @ transpose(k) / tau) @ v",
    "a negative scale": "softmax(q @ transpose(k) / -2) @ v",
    "softmax over the queries": "softmax(q @ transpose(k), axis=1) @ v",
    "an extra term": "softmax(q @ transpose(k) / 2 + bias) @ v",
    "keys not transposed": "softmax(q @ kt) @ v",
    "two scalings": "softmax(q @ transpose(k) / 2 / 2) @ v",
    "two padding masks": "softmax(mask(mask(q @ transpose(k), keep), keep)) @ v",
    "an exp instead of a softmax": "exp(q @ transpose(k)) @ v",
    "dropout on the weights": "dropout(softmax(q @ transpose(k))) @ v",
    "weights on the right": "v2 @ softmax(q @ transpose(k))",
}


@pytest.mark.parametrize("case", list(NEAR_MISSES))
def test_near_misses_stay_as_written(case):
    """Each differs from scaled dot-product attention in meaning or in form the pass does not take: no fused
    node, and the optimized module still computes the equations."""
    b, t = 2, 3
    g = torch.Generator().manual_seed(0)
    inputs = {"q": "[B, T, d]", "k": "[B, T, d]", "v": "[B, T, d]", "kt": "[B, d, T]", "bias": "[B, T, T]",
              "keep": "[B, T]", "v2": "[B, d, T]"}
    used = [n for n in inputs if re.search(rf"\b{n}\b", NEAR_MISSES[case])]
    model = probe(f"""
        name: probe
        sizes: {{d: 4}}
        inputs: {{{", ".join(f"{n}: {inputs[n]}" for n in used)}}}
        params: {{tau: {{shape: [1], init: ones}}}}
        graph:
          y: {NEAR_MISSES[case]}
        outputs: {{y: y}}
        """)
    assert fused_nodes(model) == []
    dims = {"B": b, "T": t, "d": 4}
    args = [torch.ones(b, t) if n == "keep" else
            torch.randn(*(dims[a.strip()] for a in inputs[n].strip("[]").split(",")), generator=g) for n in used]
    unfused = to_module(model, optimize=False).eval()
    fused = to_module(model).eval()
    fused.load_state_dict(unfused.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fused(*args), unfused(*args), atol=TOL, rtol=0)


def test_attention_weights_read_elsewhere_stay():
    """ScaledDot returns its weights alpha too: SDPA does not give them, so nothing is fused; with only the
    context used, the pass fuses it."""
    both = probe("""
        name: probe
        imports: {A: lib/attention.yaml#ScaledDot}
        sizes: {d_k: 4, d_v: 4}
        inputs: {q: [B, T, d_k], k: [B, S, d_k], v: [B, S, d_v]}
        graph:
          att: A(q, k, v)
        outputs: {c: att.c, alpha: att.alpha}
        """)
    assert fused_nodes(both) == []
    context_only = probe("""
        name: probe
        imports: {A: lib/attention.yaml#ScaledDot}
        sizes: {d_k: 4, d_v: 4}
        inputs: {q: [B, T, d_k], k: [B, S, d_k], v: [B, S, d_v]}
        graph:
          att: A(q, k, v)
        outputs: {c: att.c}
        """)
    assert len(fused_nodes(context_only)) == 1


def test_pass_leaves_its_input_alone_and_reaches_a_fixpoint():
    model = seqdsl.load(SPECS / "transformer_encoder.yaml")
    before = repr(model.graph)
    once, changed = fuse_attention(model)
    assert changed and repr(model.graph) == before
    twice, changed_again = fuse_attention(once)
    assert not changed_again and repr(twice.graph) == repr(once.graph)
    assert not any(n.op in ("softmax", "mask") for n in all_nodes(once.graph))


# ------------------------------------------------------------- additive attention's score: one product

def test_additive_score_is_one_matrix_vector_product():
    """seq2seq_attention.yaml's e = sum(v_a * tanh(...)) runs per decoder step as tanh(...) @ v_a: no
    elementwise product and reduction left in the step, and the outputs are the equations'."""
    model = seqdsl.load(SPECS / "seq2seq_attention.yaml")
    (dec,) = [n for n in optimize(model).graph if n.op == "loop" and n.name.startswith("dec")]
    body = loop_of(dec).body
    assert body["dec.e"].op == "matvec" and not any(n.op == "sum" for n in body)
    unfused = to_module(model, optimize=False).eval()
    fused = to_module(model).eval()
    fused.load_state_dict(unfused.state_dict())
    g = torch.Generator().manual_seed(2)
    src, tgt = torch.randn(3, 7, 6, generator=g), torch.randint(0, 11, (3, 4), generator=g)
    with torch.no_grad():
        for got, want in zip(fused(src, tgt), unfused(src, tgt)):
            torch.testing.assert_close(got, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("expr,fuses", [("sum(w * tanh(x), axis=-1)", True), ("sum(tanh(x) * w)", True),
                                        ("sum(w * tanh(x), axis=1)", False), ("sum(x * x)", False),
                                        ("sum(u * tanh(x))", False)])
def test_weighted_sums(expr, fuses):
    """Only a sum over the last axis of a product with a vector as long as that axis is a matrix-vector product."""
    model = load_probe_sum(expr)
    assert any(n.op == "matvec" for n in optimize(model).graph) == fuses
    unfused = to_module(model, optimize=False).eval()
    fused = to_module(model).eval()
    fused.load_state_dict(unfused.state_dict())
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), unfused(x), atol=TOL, rtol=0)


def load_probe_sum(expr: str) -> seqdsl.Model:
    return probe(f"""
        name: probe
        sizes: {{d: 4}}
        inputs: {{x: [B, T, d]}}
        params: {{w: [d], u: [1]}}
        graph:
          y: {expr}
        outputs: {{y: y}}
        """)


@given(st.sampled_from(["/", "*"]),
       st.one_of(st.sampled_from([1e-310, 1e-45, 1.4e-45, 1e-39, 1e-38, 2.9e-39, 1e-31, 1e30, 3.5e38, 0.125, 8.0]),
                 st.floats(min_value=1e-320, max_value=1e300, allow_nan=False, allow_infinity=False)))
@settings(max_examples=EXAMPLES, deadline=None)
def test_any_positive_constant_scale_builds_fused_or_as_written(op, c):
    """A scale constant of any size (subnormal, 0 or inf once in float32, its reciprocal out of float32's range)
    never reaches the code generator as inf: either it is a finite float32 scale and the pass fuses it, or the
    scores stay as written. Both backends build, and the module computes what the unoptimized one does."""
    try:
        model = probe(f"""
            name: probe
            sizes: {{d: 4}}
            inputs: {{q: [B, T, d], k: [B, T, d], v: [B, T, d]}}
            graph:
              y: softmax(q @ transpose(k) {op} {c!r}) @ v
            outputs: {{y: y}}
            """)
    except SpecError as e:  # a number beyond float32 is the user's mistake, said at its place
        assert e.code == "E0302" and (c > 1e30 or c < 1e-30)
        return
    for n in fused_nodes(model):
        assert np.isfinite(np.float32(n.attrs["scale"])) and np.float32(n.attrs["scale"]) > 0
    generate(optimize(model))
    export(model)
    g = torch.Generator().manual_seed(0)
    args = [0.01 * torch.randn(2, 3, 4, generator=g) for _ in range(3)]
    with torch.no_grad():
        want, got = to_module(model, optimize=False).eval()(*args), to_module(model).eval()(*args)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, equal_nan=True)
