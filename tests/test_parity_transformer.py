"""Attention and Transformer specs against torch.nn, which we did not write: the same weights (copied from the
torch module into the compiled spec), float32, give the same outputs and the same gradients (input and every
parameter) within 1e-5; and every attention/Transformer spec builds and runs in onnxruntime at other lengths.

The spec side runs in eval mode (its `dropout(...)` off). The torch layers are built with dropout=0.0 and run in
train mode, so that torch never takes its inference fast path (a different kernel); one test checks that fast
path (eval, no grad) separately. Library modules are compiled through a small spec text that imports them,
loaded as if it were a file in specs/ (nothing is written there).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import SPECS

import seqdsl
from seqdsl.compilers.build import build, example_inputs, run_torch
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_module import import_source, to_module

TOL = 1e-5
MHA_VARIANTS = {  # spec module -> (self-attention only, padding mask, causal mask)
    "MultiHead": (False, False, False),
    "MaskedMultiHead": (False, True, False),
    "CausalMultiHead": (True, False, True),
    "CausalMaskedMultiHead": (True, True, True),
}


# ----------------------------------------------------------------------------------------------- helpers

def compile_probe(text: str, sizes: dict[str, int] | None = None) -> nn.Module:
    """The live module of a spec text whose imports are read relative to specs/ (as if it lived there)."""
    model = seqdsl.loads(textwrap.dedent(text), sizes, file=str(SPECS / "_probe.yaml"))
    return to_module(model).eval()


def keep_mask(batch: int, length: int, seed: int) -> torch.Tensor:
    """A float keep-mask (1.0 token, 0.0 padding): row 0 full, the others random lengths >= 1; some padding
    whenever length > 1."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    if batch > 1 and length > 1:
        lengths[1] = max(1, length // 2)
    return (torch.arange(length)[None, :] < lengths[:, None]).float()


def causal_bool(t: int) -> torch.Tensor:
    return torch.ones(t, t, dtype=torch.bool).triu(1)  # True = may not attend


def mha_map(spec_prefix: str, torch_prefix: str, d: int) -> dict[str, tuple[str, slice | None]]:
    """Spec parameter -> (torch parameter, rows): nn.MultiheadAttention packs in_proj_weight [3d, d] as q, k, v."""
    out: dict[str, tuple[str, slice | None]] = {}
    for i, part in enumerate("qkv"):
        rows = slice(i * d, (i + 1) * d)
        out[f"{spec_prefix}W_{part}"] = (f"{torch_prefix}in_proj_weight", rows)
        out[f"{spec_prefix}b_{part}"] = (f"{torch_prefix}in_proj_bias", rows)
    out[f"{spec_prefix}W_o"] = (f"{torch_prefix}out_proj.weight", None)
    out[f"{spec_prefix}b_o"] = (f"{torch_prefix}out_proj.bias", None)
    return out


def layer_map(prefix: str, torch_prefix: str, d: int, attn: dict[str, str], norms: int) -> dict[str, tuple[str, slice | None]]:
    """Spec names of one encoder/decoder block -> torch names of nn.TransformerEncoderLayer/DecoderLayer."""
    out: dict[str, tuple[str, slice | None]] = {}
    for spec_attn, torch_attn in attn.items():
        out.update(mha_map(f"{prefix}{spec_attn}.", f"{torch_prefix}{torch_attn}.", d))
    for k in (1, 2):
        out[f"{prefix}W_{k}"] = (f"{torch_prefix}linear{k}.weight", None)
        out[f"{prefix}b_{k}"] = (f"{torch_prefix}linear{k}.bias", None)
    for k in range(1, norms + 1):
        out[f"{prefix}gamma_{k}"] = (f"{torch_prefix}norm{k}.weight", None)
        out[f"{prefix}beta_{k}"] = (f"{torch_prefix}norm{k}.bias", None)
    return out


def copy_weights(spec: nn.Module, ref: nn.Module, mapping: dict[str, tuple[str, slice | None]]) -> None:
    """Every spec parameter from torch, every torch parameter used; torch's weights randomised first (its
    zero biases and unit norms would hide mistakes): matrices U(-1/√n, 1/√n) (n the fan-in, as nn.Linear),
    vectors U(-0.5, 0.5) around 0 (biases) or 1 (layer-norm gains)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            u = torch.rand(p.shape, generator=g) * 2 - 1
            if p.dim() == 2:
                p.copy_(u / math.sqrt(p.shape[1]) if "emb" not in name else u * 2)
            else:
                p.copy_(u / 2 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    ref_params = dict(ref.named_parameters())
    spec_names = set(dict(spec.named_parameters()))
    assert spec_names == set(mapping), f"spec parameters {sorted(spec_names ^ set(mapping))}"
    assert {t for t, _ in mapping.values()} == set(ref_params), "a torch parameter has no spec counterpart"
    state = {}
    for name, (tname, rows) in mapping.items():
        value = ref_params[tname].detach()
        state[name] = (value[rows] if rows is not None else value).clone()
    spec.load_state_dict(state, strict=True)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max()) if a.numel() else 0.0


def check_parity(spec: nn.Module, ref: nn.Module, mapping: dict[str, tuple[str, slice | None]],
                 spec_out: torch.Tensor, ref_out: torch.Tensor, inputs: list[torch.Tensor],
                 ref_inputs: list[torch.Tensor]) -> dict[str, float]:
    """Outputs, then gradients of a random projection of the outputs: inputs and every parameter."""
    diffs = {"out": max_diff(spec_out, ref_out)}
    assert spec_out.shape == ref_out.shape
    assert torch.isfinite(ref_out).all()
    torch.testing.assert_close(spec_out, ref_out, atol=TOL, rtol=0)
    weight = torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(1))
    (spec_out * weight).sum().backward()
    (ref_out * weight).sum().backward()
    for i, (a, b) in enumerate(zip(inputs, ref_inputs)):
        diffs[f"grad input {i}"] = max_diff(a.grad, b.grad)
        torch.testing.assert_close(a.grad, b.grad, atol=TOL, rtol=0, msg=lambda m, i=i: f"gradient of input {i}: {m}")
    ref_params = dict(ref.named_parameters())
    for name, p in spec.named_parameters():
        tname, rows = mapping[name]
        want = ref_params[tname].grad
        want = want[rows] if rows is not None else want
        assert p.grad is not None, name
        diffs[f"grad {name}"] = max_diff(p.grad, want)
        torch.testing.assert_close(p.grad, want, atol=TOL, rtol=0, msg=lambda m, name=name: f"gradient of {name}: {m}")
    return diffs


def leaf(*shape: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random input twice, as two leaves (one for each side's gradient)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.clone().requires_grad_(), x.clone().requires_grad_()


def sinusoid(t: int, d: int) -> torch.Tensor:
    """Vaswani §3.5, written out: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""
    pe = torch.zeros(t, d)
    for pos in range(t):
        for i in range(0, d, 2):
            pe[pos, i] = math.sin(pos / 10000 ** (i / d))
            pe[pos, i + 1] = math.cos(pos / 10000 ** (i / d))
    return pe


# ------------------------------------------------------------------------------------ multi-head attention

@pytest.mark.parametrize("variant,kind", [(v, k) for v, (self_only, _, _) in MHA_VARIANTS.items()
                                          for k in ("self", "cross") if k == "self" or not self_only])
@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 1, 4), (2, 6, 6)], ids=lambda s: "B{}T{}S{}".format(*s))
@pytest.mark.parametrize("d,heads", [(16, 2), (12, 3)])
def test_multihead_matches_nn_multiheadattention(variant, kind, shape, d, heads):
    """Self-attention (x, x, x; S = T) and cross-attention (x, memory, memory), with and without the masks."""
    _, padded, causal = MHA_VARIANTS[variant]
    b, t, s = shape
    if kind == "self":
        s = t
    axis = "T" if kind == "self" else "S"  # the keys' time axis
    decls = ["x: [B, T, d]"] + (["memory: [B, S, d]"] if kind == "cross" else []) \
        + ([f"keep: [B, {axis}]"] if padded else [])
    args = ("x, x, x" if kind == "self" else "x, memory, memory") + (", keep" if padded else "")
    spec = compile_probe(f"""
        name: probe
        imports: {{MHA: lib/attention.yaml#{variant}}}
        sizes: {{d: 16, heads: 2}}
        inputs: {{{", ".join(decls)}}}
        graph:
          attn: MHA({args}, heads=heads)
        outputs:
          y: attn
        """, {"d": d, "heads": heads})
    ref = nn.MultiheadAttention(d, heads, batch_first=True).train()  # dropout 0.0 by default
    mapping = mha_map("attn.", "", d)
    copy_weights(spec, ref, mapping)
    x, x_ref = leaf(b, t, d, seed=10 + t)
    inputs, ref_inputs = [x], [x_ref]
    if kind == "cross":
        m, m_ref = leaf(b, s, d, seed=20 + s)
        inputs.append(m)
        ref_inputs.append(m_ref)
        k_ref = m_ref
    else:
        k_ref = x_ref
    keep = keep_mask(b, s, seed=b + s)
    spec_args = [*inputs, keep] if padded else inputs
    spec_out = spec(*spec_args)
    ref_out, _ = ref(x_ref, k_ref, k_ref, need_weights=False,
                     key_padding_mask=(keep == 0) if padded else None,
                     attn_mask=causal_bool(t) if causal else None)
    diffs = check_parity(spec, ref, mapping, spec_out, ref_out, inputs, ref_inputs)
    assert max(diffs.values()) <= TOL


def test_multihead_masks_padding_and_the_future():
    """The masks do something: a padded key's value and a future position's value do not reach the output."""
    spec = compile_probe("""
        name: probe
        imports: {MHA: lib/attention.yaml#CausalMaskedMultiHead}
        sizes: {d: 8, heads: 2}
        inputs: {x: [B, T, d], keep: [B, T]}
        graph:
          attn: MHA(x, x, x, keep, heads=heads)
        outputs: {y: attn}
        """)
    x = torch.randn(2, 6, 8)
    keep = torch.tensor([[1.0] * 6, [1.0] * 4 + [0.0] * 2])
    with torch.no_grad():
        y = spec(x, keep)
        x2 = x.clone()
        x2[:, 3:] += 10.0  # changes positions 3.. (row 1: positions 4, 5 are padding)
        y2 = spec(x2, keep)
    torch.testing.assert_close(y[:, :3], y2[:, :3], atol=0, rtol=0)  # causal: 0..2 never see 3..
    assert not torch.allclose(y[:, 3:], y2[:, 3:])


# -------------------------------------------------------------------------------- Dot, ScaledDot, Additive

@pytest.mark.parametrize("module,scale", [("Dot", 1.0), ("ScaledDot", None)])
def test_dot_attention_matches_scaled_dot_product_attention(module, scale):
    spec = compile_probe(f"""
        name: probe
        imports: {{A: lib/attention.yaml#{module}}}
        sizes: {{d: 8, d_v: 6}}
        inputs: {{q: [B, T, d], k: [B, S, d], v: [B, S, d_v]}}
        graph:
          att: A(q, k, v)
        outputs: {{c: att.c, alpha: att.alpha}}
        """)
    q, q_ref = leaf(3, 4, 8, seed=1)
    k, k_ref = leaf(3, 5, 8, seed=2)
    v, v_ref = leaf(3, 5, 6, seed=3)
    c, alpha = spec(q, k, v)
    want = torch.nn.functional.scaled_dot_product_attention(q_ref, k_ref, v_ref, scale=scale)
    torch.testing.assert_close(c, want, atol=TOL, rtol=0)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3, 4), atol=TOL, rtol=0)
    weight = torch.randn(c.shape)
    (c * weight).sum().backward()
    (want * weight).sum().backward()
    for a, b in [(q, q_ref), (k, k_ref), (v, v_ref)]:
        torch.testing.assert_close(a.grad, b.grad, atol=TOL, rtol=0)


def test_additive_attention_matches_bahdanau():
    spec = compile_probe("""
        name: probe
        imports: {A: lib/attention.yaml#Additive}
        sizes: {d_s: 6, d_h: 10, n: 7}
        inputs: {s: [B, d_s], h: [B, S, d_h]}
        graph:
          att: A(s, h, n=n)
        outputs: {c: att.c, alpha: att.alpha}
        """)
    s, s_ref = leaf(3, 6, seed=4)
    h, h_ref = leaf(3, 9, 10, seed=5)
    c, alpha = spec(s, h)
    params = dict(spec.named_parameters())
    W_a, U_a, v_a = (params[f"att.{n}"].detach().clone().requires_grad_() for n in ("W_a", "U_a", "v_a"))
    # e_j = v_aᵀ tanh(W_a s + U_a h_j), α = softmax(e), c = Σ_j α_j h_j, one (b, j) at a time
    e = torch.stack([torch.stack([v_a @ torch.tanh(W_a @ s_ref[i] + U_a @ h_ref[i, j]) for j in range(9)])
                     for i in range(3)])
    a_ref = torch.softmax(e, dim=-1)
    c_ref = torch.einsum("bj,bjd->bd", a_ref, h_ref)
    torch.testing.assert_close(alpha, a_ref, atol=TOL, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=TOL, rtol=0)
    weight = torch.randn(c.shape)
    (c * weight).sum().backward()
    (c_ref * weight).sum().backward()
    for a, b in [(s, s_ref), (h, h_ref), (params["att.W_a"], W_a), (params["att.U_a"], U_a), (params["att.v_a"], v_a)]:
        torch.testing.assert_close(a.grad, b.grad, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------- encoder / decoder blocks

D, HEADS, FFN = 16, 2, 32


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
@pytest.mark.parametrize("padded", [False, True], ids=["no_mask", "padding_mask"])
@pytest.mark.parametrize("shape", [(3, 7), (1, 1)], ids=lambda s: "B{}T{}".format(*s))
def test_encoder_block_matches_transformer_encoder_layer(norm_first, padded, shape):
    module = "PreNormEncoderBlock" if norm_first else "EncoderBlock"
    spec = compile_probe(f"""
        name: probe
        imports: {{Block: transformer_encoder.yaml#{module}}}
        sizes: {{d: {D}, heads: {HEADS}, ffn: {FFN}}}
        inputs: {{x: [B, T, d], keep: [B, T]}}
        graph:
          block: Block(x, keep, heads=heads, ffn=ffn)
        outputs: {{y: block}}
        """)
    ref = nn.TransformerEncoderLayer(D, HEADS, FFN, dropout=0.0, batch_first=True, norm_first=norm_first).train()
    mapping = layer_map("block.", "", D, {"attn": "self_attn"}, norms=2)
    copy_weights(spec, ref, mapping)
    b, t = shape
    x, x_ref = leaf(b, t, D, seed=30 + t)
    keep = keep_mask(b, t, seed=7) if padded else torch.ones(b, t)
    spec_out = spec(x, keep)
    ref_out = ref(x_ref, src_key_padding_mask=(keep == 0) if padded else None)
    check_parity(spec, ref, mapping, spec_out, ref_out, [x], [x_ref])


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
@pytest.mark.parametrize("shape", [(3, 5, 8), (2, 1, 3), (2, 6, 6)], ids=lambda s: "B{}T{}S{}".format(*s))
def test_decoder_block_matches_transformer_decoder_layer(norm_first, shape):
    module = "PreNormDecoderBlock" if norm_first else "DecoderBlock"
    spec = compile_probe(f"""
        name: probe
        imports: {{Block: transformer_decoder.yaml#{module}}}
        sizes: {{d: {D}, heads: {HEADS}, ffn: {FFN}}}
        inputs: {{x: [B, T, d], memory: [B, S, d], memory_keep: [B, S]}}
        graph:
          block: Block(x, memory, memory_keep, heads=heads, ffn=ffn)
        outputs: {{y: block}}
        """)
    ref = nn.TransformerDecoderLayer(D, HEADS, FFN, dropout=0.0, batch_first=True, norm_first=norm_first).train()
    mapping = layer_map("block.", "", D, {"self_attn": "self_attn", "cross_attn": "multihead_attn"}, norms=3)
    copy_weights(spec, ref, mapping)
    b, t, s = shape
    x, x_ref = leaf(b, t, D, seed=40 + t)
    m, m_ref = leaf(b, s, D, seed=50 + s)
    keep = keep_mask(b, s, seed=8)
    spec_out = spec(x, m, keep)
    ref_out = ref(x_ref, m_ref, tgt_mask=causal_bool(t), memory_key_padding_mask=(keep == 0))
    check_parity(spec, ref, mapping, spec_out, ref_out, [x, m], [x_ref, m_ref])


def test_encoder_block_matches_torch_inference_fast_path(monkeypatch):
    """eval + no_grad: torch runs its fused kernel (checked); same numbers, forward only."""
    fused = []
    kernel = torch._transformer_encoder_layer_fwd
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", lambda *a, **k: fused.append(1) or kernel(*a, **k))
    spec = compile_probe(f"""
        name: probe
        imports: {{Block: transformer_encoder.yaml#EncoderBlock}}
        sizes: {{d: {D}, heads: {HEADS}, ffn: {FFN}}}
        inputs: {{x: [B, T, d], keep: [B, T]}}
        graph:
          block: Block(x, keep, heads=heads, ffn=ffn)
        outputs: {{y: block}}
        """)
    ref = nn.TransformerEncoderLayer(D, HEADS, FFN, dropout=0.1, batch_first=True).eval()
    copy_weights(spec, ref, layer_map("block.", "", D, {"attn": "self_attn"}, norms=2))
    x = torch.randn(3, 7, D)
    keep = keep_mask(3, 7, seed=9)
    with torch.no_grad():
        want = ref(x, src_key_padding_mask=keep == 0)
        got = spec(x, keep)
    assert fused, "torch did not take its fast path"
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------- the whole Transformer

def test_transformer_matches_torch_stacks():
    """specs/transformer.yaml (N=2) against nn.Embedding · √d + PE, nn.TransformerEncoder/Decoder (no final
    norms), nn.Linear and log_softmax: outputs and every gradient."""
    sizes = {"src_vocab": 11, "tgt_vocab": 13, "d": D, "heads": HEADS, "ffn": FFN, "N": 2}
    spec = to_module(seqdsl.load(SPECS / "transformer.yaml", sizes)).eval()

    class Ref(nn.Module):
        def __init__(self):
            super().__init__()
            self.src_emb, self.tgt_emb = nn.Embedding(11, D), nn.Embedding(13, D)
            enc = nn.TransformerEncoderLayer(D, HEADS, FFN, dropout=0.0, batch_first=True)
            dec = nn.TransformerDecoderLayer(D, HEADS, FFN, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(enc, 2, enable_nested_tensor=False)
            self.decoder = nn.TransformerDecoder(dec, 2)
            self.out = nn.Linear(D, 13)

        def forward(self, src, tgt, src_keep):
            s, t = src.shape[1], tgt.shape[1]
            x = self.src_emb(src) * math.sqrt(D) + sinusoid(s, D)
            memory = self.encoder(x, src_key_padding_mask=src_keep == 0)
            y = self.tgt_emb(tgt) * math.sqrt(D) + sinusoid(t, D)
            y = self.decoder(y, memory, tgt_mask=causal_bool(t), memory_key_padding_mask=src_keep == 0)
            return torch.log_softmax(self.out(y), dim=-1)

    ref = Ref().train()
    mapping = {"enc.E": ("src_emb.weight", None), "dec.E": ("tgt_emb.weight", None),
               "dec.W_y": ("out.weight", None), "dec.b_y": ("out.bias", None)}
    for i in range(2):
        mapping |= layer_map(f"enc.blocks.{i}.", f"encoder.layers.{i}.", D, {"attn": "self_attn"}, norms=2)
        mapping |= layer_map(f"dec.blocks.{i}.", f"decoder.layers.{i}.", D,
                             {"self_attn": "self_attn", "cross_attn": "multihead_attn"}, norms=3)
    copy_weights(spec, ref, mapping)
    g = torch.Generator().manual_seed(3)
    src, tgt = torch.randint(0, 11, (3, 9), generator=g), torch.randint(0, 13, (3, 6), generator=g)
    keep = keep_mask(3, 9, seed=4)
    check_parity(spec, ref, mapping, spec(src, tgt, keep), ref(src, tgt, keep), [], [])


# ------------------------------------------------------------------------------------------ builds, ONNX

BUILT = ["lib/attention.yaml", "transformer_encoder.yaml", "transformer_decoder.yaml", "transformer.yaml"]


@pytest.mark.parametrize("rel", BUILT, ids=lambda r: Path(r).stem)
def test_spec_builds_and_onnx_agrees_at_other_lengths(rel: str, tmp_path: Path):
    spec = SPECS / rel
    result = build(spec, tmp_path / "out", steps=5, batch=2)
    assert max(result.max_abs_diff.values()) <= 1e-4
    out = Path(result.out_dir)
    net = import_source(out / "model.py").Model()
    net.load_state_dict(load_file(str(out / "weights.safetensors")), strict=True)
    net.eval()
    model = seqdsl.load(spec)
    for batch, steps in [(1, 1), (4, 9), (3, 3)]:  # built at B=2, T=5 (S=7)
        inputs = example_inputs(model, batch, steps, seed=batch + steps)
        for name in inputs:
            if "keep" in name:  # a real padding mask: 0/1 with at least one token per row
                inputs[name] = keep_mask(batch, inputs[name].shape[1], seed=steps).numpy()
        want = run_torch(net, inputs)
        got = run(out / "model.onnx", inputs).outputs
        for name, value in want.items():
            assert np.isfinite(value).all()
            np.testing.assert_allclose(got[name], value, atol=TOL, rtol=0, err_msg=f"{rel}: {name}")
