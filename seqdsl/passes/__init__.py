"""IR passes: each takes a model and returns ``(model, changed)``; `Model.verify()` holds after every one.

`optimize` is the default pipeline the backends run: recognition of standard cells (for the kernels the backend
has), attention recognition (one fused scaled-dot-product node), regrouping of sums (state-free terms first),
bias folding, fusion (of sibling products, then of the elementwise ops on their slices, so that a fused product
can then leave the loop whole), hoisting, then sinking (a decoder nothing feeds back runs after the loop).
"""

from __future__ import annotations

from typing import Callable

from ..ir import Model
from .attention import fuse_attention
from .fold_bias import fold_bias
from .fuse import fuse_linears, fuse_slices
from .hoist import hoist, regroup
from .recognize import CELLS, Kinds, recognize
from .sink import sink
from .unroll import unroll

Pass = Callable[[Model], tuple[Model, bool]]
DEFAULT_PIPELINE: tuple[Pass, ...] = (fuse_attention, regroup, fold_bias, fuse_linears, fuse_slices, hoist, sink)


def optimize(model: Model, passes: tuple[Pass, ...] = DEFAULT_PIPELINE,
             cells: Kinds = frozenset()) -> Model:
    """Run ``passes`` in order, each until it changes nothing more; first, loops that are one of the standard
    ``cells`` the backend has a kernel for (family names, or a test of a cell's attributes: see `recognize`)
    become cells."""
    if cells:
        model, _ = recognize(model, cells)
    for one in passes:
        for _ in range(8):  # every pass here reaches its fixpoint in one or two rounds
            model, changed = one(model)
            if not changed:
                break
    return model


__all__ = ["optimize", "fuse_attention", "fold_bias", "fuse_linears", "fuse_slices", "hoist", "regroup", "sink",
           "recognize", "unroll", "CELLS", "DEFAULT_PIPELINE"]
