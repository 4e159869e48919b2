"""One post-norm transformer encoder block vs nn.TransformerEncoderLayer (eval: torch's fast path; train mode,
dropout=0), forward, and the training step (both in eval mode with gradients: dropout off, no fast path)."""

from __future__ import annotations

import torch
from torch import nn

import seqdsl
from seqdsl.compilers.torch_module import to_module

from ..harness import SPECS, TRAINING_STEP, Config, Report, Row, copy_named, input_grad, max_diff, measure, \
    train_step

ORDER = 50
FULL = {"B": 32, "T": 128, "d": 256, "heads": 4, "ffn": 1024}
TINY = {"B": 2, "T": 3, "d": 8, "heads": 2, "ffn": 16}
BLOCK_SPEC = """
name: bench_block
imports:
  MultiHead: lib/attention.yaml#MultiHead
  EncoderBlock: transformer_encoder.yaml#EncoderBlock
sizes: {d: 256, heads: 4, ffn: 1024}
inputs:
  x: [B, T, d]
params:
  W_1: [ffn, d]
  b_1: [ffn]
  W_2: [d, ffn]
  b_2: [d]
  gamma_1, gamma_2: {shape: [d], init: ones}
  beta_1, beta_2: {shape: [d], init: zeros}
graph:                                   # transformer_encoder.yaml's EncoderBlock without the padding mask
  attn: MultiHead(x, x, x, heads=heads)
  a: layer_norm(x + dropout(attn), gamma_1, beta_1)
  f: W_2 @ dropout(relu(W_1 @ a + b_1)) + b_2
  y: layer_norm(a + dropout(f), gamma_2, beta_2)
outputs:
  y: y
"""
MASKED_BLOCK_SPEC = """
name: bench_masked_block
imports:
  EncoderBlock: transformer_encoder.yaml#EncoderBlock
sizes: {d: 256, heads: 4, ffn: 1024}
inputs:
  x: [B, T, d]
  keep: [B, T]
graph:
  block: EncoderBlock(x, keep, heads=heads, ffn=ffn)
outputs:
  y: block
"""


def torch_layer_weights(layer: nn.TransformerEncoderLayer, prefix: str = "") -> dict[str, torch.Tensor]:
    """nn.TransformerEncoderLayer's weights under the spec's parameter names."""
    W_q, W_k, W_v = layer.self_attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = layer.self_attn.in_proj_bias.chunk(3)
    a = prefix + "attn."
    return {a + "W_q": W_q, a + "W_k": W_k, a + "W_v": W_v, a + "b_q": b_q, a + "b_k": b_k, a + "b_v": b_v,
            a + "W_o": layer.self_attn.out_proj.weight, a + "b_o": layer.self_attn.out_proj.bias,
            prefix + "W_1": layer.linear1.weight, prefix + "b_1": layer.linear1.bias,
            prefix + "W_2": layer.linear2.weight, prefix + "b_2": layer.linear2.bias,
            prefix + "gamma_1": layer.norm1.weight, prefix + "beta_1": layer.norm1.bias,
            prefix + "gamma_2": layer.norm2.weight, prefix + "beta_2": layer.norm2.bias}


def run(report: Report, cfg: Config) -> None:
    n = cfg.pick(FULL, TINY)
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(n["d"], n["heads"], n["ffn"], dropout=0.0, batch_first=True).eval()
    sizes = {"d": n["d"], "heads": n["heads"], "ffn": n["ffn"]}
    net = to_module(seqdsl.loads(BLOCK_SPEC, sizes, file=str(SPECS / "_bench.yaml"))).eval()
    copy_named(net, torch_layer_weights(layer))
    masked = to_module(seqdsl.loads(MASKED_BLOCK_SPEC, sizes, file=str(SPECS / "_bench.yaml"))).eval()
    copy_named(masked, torch_layer_weights(layer, "block."))
    train_layer = nn.TransformerEncoderLayer(n["d"], n["heads"], n["ffn"], dropout=0.0, batch_first=True)
    train_layer.load_state_dict(layer.state_dict())
    train_layer.train()  # no fast path; dropout=0 so the same numbers
    x = torch.randn(n["B"], n["T"], n["d"])
    keep = torch.ones(n["B"], n["T"])
    pad = torch.zeros(n["B"], n["T"], dtype=torch.bool)  # torch's key padding mask: True = padding
    fns = {"ours": lambda: net(x), "eval": lambda: layer(x), "train": lambda: train_layer(x),
           "ours_masked": lambda: masked(x, keep), "eval_masked": lambda: layer(x, src_key_padding_mask=pad),
           "ours_step": train_step(net, list(net.parameters()), x),
           "ref_step": train_step(layer, list(layer.parameters()), x)}
    stats = measure(fns, cfg)
    with torch.no_grad():
        want = layer(x)
        d = {k: max_diff(fns[k](), want) for k in ("ours", "train", "ours_masked", "eval_masked")}
    grad_diff = max_diff(input_grad(net, x), input_grad(layer, x))
    w = f"transformer block B={n['B']} T={n['T']} d={n['d']} heads={n['heads']} ffn={n['ffn']}"
    report.add(Row(w, "EncoderBlock (no mask) to_module", "nn.TransformerEncoderLayer eval (fast path)",
                   stats["ours"], stats["eval"], 1.0, d["ours"],
                   headline="transformer encoder block vs nn.TransformerEncoderLayer (fast path)"))
    report.add(Row(w, "EncoderBlock (no mask) to_module", "nn.TransformerEncoderLayer train mode, dropout=0",
                   stats["ours"], stats["train"], None, d["train"]))
    report.add(Row(w, "transformer_encoder.yaml#EncoderBlock, keep=1", "nn.TransformerEncoderLayer eval, "
                   "src_key_padding_mask=False", stats["ours_masked"], stats["eval_masked"], None, d["ours_masked"]))
    report.add(Row(w, "EncoderBlock (no mask) to_module", "nn.TransformerEncoderLayer", stats["ours_step"],
                   stats["ref_step"], None, grad_diff, kind="training step", note=TRAINING_STEP,
                   headline="transformer encoder block, training step vs nn.TransformerEncoderLayer's"))
