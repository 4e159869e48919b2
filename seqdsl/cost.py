"""What one evaluation of an IR node costs: multiply-accumulates, floating-point operations, and bytes.

The convention (the one torchinfo's "Mult-Adds" and most papers use for the products):
  * a MAC is one multiply-accumulate of a matrix product (``linear``, ``matmul``, ``contract``, ``matvec``):
    W (m, n) applied to x (B, n) is B·m·n MACs;
  * FLOPs count a MAC as 2 (its multiply and its add), and every other arithmetic op by the elements it writes
    (or reads, for a reduction): one for ``+``, ``×``, ``σ``, ``tanh``, ``exp``...; softmax 3 per element (exp,
    sum, divide); layer_norm 5 (mean, variance, normalise, scale, shift). A bias added by ``linear`` is one FLOP
    per output element. Moving data (slices, transposes, concat, embedding lookups, zeros) costs nothing.
So one LSTM step is 4·B·h·(d+h) MACs, 8·B·h·(d+h) FLOPs in its products and 17·B·h in its gates and cell.

Shapes here are concrete: `concrete` replaces B by the batch and every time axis by the sequence length.
"""

from __future__ import annotations

import math
from typing import Callable

from .footprint import DTYPE_BYTES
from .ir import Node, Shape

Sizes = tuple[int, ...]
# (node, its shape, its inputs' shapes), all concrete -> (MACs, FLOPs)
Rule = Callable[[Node, Sizes, list[Sizes]], tuple[int, int]]


def concrete(shape: Shape, batch: int, seq_len: int) -> Sizes:
    return tuple(batch if d == "B" else seq_len if isinstance(d, str) else d for d in shape)


def numel(shape: Sizes) -> int:
    return math.prod(shape)


def _free(node: Node, out: Sizes, ins: list[Sizes]) -> tuple[int, int]:
    return 0, 0


def _each(per_element: int) -> Rule:
    def rule(node: Node, out: Sizes, ins: list[Sizes]) -> tuple[int, int]:
        return 0, per_element * numel(out)
    return rule


def _each_input(per_element: int) -> Rule:
    def rule(node: Node, out: Sizes, ins: list[Sizes]) -> tuple[int, int]:
        return 0, per_element * numel(ins[0])
    return rule


def _product(inner: Callable[[list[Sizes]], int]) -> Rule:
    """A matrix product writing ``out``: each output element is ``inner`` MACs; a third input is a bias."""
    def rule(node: Node, out: Sizes, ins: list[Sizes]) -> tuple[int, int]:
        macs = numel(out) * inner(ins)
        return macs, 2 * macs + (numel(out) if len(ins) > 2 else 0)
    return rule


def _not_costed(node: Node, out: Sizes, ins: list[Sizes]) -> tuple[int, int]:
    raise ValueError(f"op `{node.op}` is counted from the equations it replaced: summarise the model as loaded, "
                     "before the optimisation passes")


COSTS: dict[str, Rule] = {
    # leaves: values that exist before anything is computed
    "input": _free, "param": _free, "const": _free, "step_input": _free, "state": _free, "capture": _free,
    # arithmetic
    "add": _each(1), "sub": _each(1), "mul": _each(1), "div": _each(1), "neg": _each(1),
    "linear": _product(lambda ins: ins[1][-1]),   # x (..., n), W (m, n): n per output
    "matmul": _product(lambda ins: ins[0][-1]),   # a (..., p, k) @ b (..., k, q): k per output
    "contract": _product(lambda ins: ins[1][-1]),  # U (m, n, d) @ z (..., d): d per output
    "matvec": _product(lambda ins: ins[0][-1]),   # A (..., m, n) @ v (..., n): n per output
    # user functions
    "sigmoid": _each(1), "tanh": _each(1), "relu": _each(1), "exp": _each(1), "sqrt": _each(1),
    "transpose": _free, "unsqueeze": _free, "squeeze": _free,
    "sum": _each_input(1), "mean": _each_input(1), "argmax": _each_input(1),
    "layer_norm": _each(5), "dropout": _each(1), "split_heads": _free, "merge_heads": _free,
    "causal": _each(1), "mask": _each(1), "positional_encoding": _each(1),
    "softmax": _each(3), "log_softmax": _each(3), "concat": _free, "embedding": _free, "last": _free,
    "first": _free,
    # structural
    "slice": _free, "zeros": _free, "expand_batch": _free, "time_slice": _free, "sequence_mask": _each(1),
    "select": _each(1), "stack": _free, "item": _free,
    "loop": _free,  # its body is counted node by node, once per step
    "cell": _not_costed, "attention": _not_costed,
    "gelu": _each(1), "silu": _each(1), "softplus": _each(1), "elu": _each(1), "leaky_relu": _each(1),
    "log": _each(1), "abs": _each(1), "min": _each(1), "max": _each(1), "clamp": _each(1), "where": _each(1),
}


def node_cost(node: Node, out: Sizes, ins: list[Sizes]) -> tuple[int, int]:
    """(MACs, FLOPs) of one evaluation of ``node``, at concrete shapes."""
    rule = COSTS.get(node.op)
    if rule is None:
        raise KeyError(f"op `{node.op}` has no entry in seqdsl.cost.COSTS")
    return rule(node, out, ins)


LEAVES = {"input", "param", "const", "step_input", "state", "capture", "loop"}


def node_bytes(node: Node, out: Sizes) -> int:
    """Bytes of the value ``node`` computes; leaves (inputs, parameters, constants, a step's views of them) and
    the loop node itself (its values are its items) take none."""
    return 0 if node.op in LEAVES else numel(out) * DTYPE_BYTES.get(node.dtype, 8)
