"""Parameter initialisers: the table of what a spec may write under a parameter's ``init:``, and its checks.

    W: {shape: [h, d], init: xavier_uniform}
    U: {shape: [4 * h, h], init: orthogonal, blocks: 4}     # four stacked gates, each block orthogonal
    U_rec: {shape: [h, h], init: identity, gain: 0.5}       # IRNN (Le et al. 2015), scaled
    b_f: {shape: [h], init: 1.0}                            # a constant: the forget-gate bias of 1

With fan_in = shape[1]·∏shape[2:] and fan_out = shape[0]·∏shape[2:] (torch.nn.init's definition; for a matrix
[out, in] the number of inputs and outputs), per block:

    uniform           U(−1/√n, 1/√n), n the last axis (a vector's length), as nn.Linear      (no gain)
    normal            N(0, 1), as nn.Embedding                                               (no gain)
    zeros, ones, <c>  the constant 0, 1 or c                                                 (no gain)
    orthogonal        gain·Q with Q (semi-)orthogonal: QᵀQ = I (rows ≥ columns) or QQᵀ = I   (gain 1)
    identity          gain·I (ones on the main diagonal of a non-square block)               (gain 1)
    xavier_uniform    U(−a, a), a = gain·√(6 / (fan_in + fan_out)): variance gain²·2/(fan_in + fan_out)   (gain 1)
    kaiming_uniform   U(−a, a), a = gain·√(3 / fan_in): variance gain²/fan_in                 (gain √2, for ReLU)

``blocks: k`` splits axis 0 into k equal blocks (a matrix that stacks k gates, [k·h, n]) and initialises each as a
matrix of its own; it needs a parameter of two or more axes whose first axis k divides. Nothing here imports a
backend: `seqdsl.compilers.torch_codegen` writes these as ``torch.nn.init`` calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from .errors import Location, SpecError

InitName = Literal["uniform", "normal", "zeros", "ones", "orthogonal", "identity", "xavier_uniform",
                   "kaiming_uniform"]


@dataclass(frozen=True)
class Initialiser:
    default_gain: float | None  # None: takes no gain
    min_axes: int = 1
    max_axes: int | None = None


INITIALISERS: dict[str, Initialiser] = {
    "uniform": Initialiser(None),
    "normal": Initialiser(None),
    "zeros": Initialiser(None),
    "ones": Initialiser(None),
    "constant": Initialiser(None),
    "orthogonal": Initialiser(1.0, min_axes=2),
    "identity": Initialiser(1.0, min_axes=2, max_axes=2),
    "xavier_uniform": Initialiser(1.0, min_axes=2),
    "kaiming_uniform": Initialiser(math.sqrt(2.0), min_axes=2),
}


@dataclass(frozen=True)
class Init:
    """A checked initialiser: ``kind`` from `INITIALISERS`, its gain (None where it takes none), the number of
    blocks along axis 0, and the value of a constant."""

    kind: str = "uniform"
    gain: float | None = None
    blocks: int = 1
    value: float | None = None


def resolve(init: Any, gain: Any, blocks: int | None, shape: tuple[int, ...], name: str, loc: Location) -> Init:
    """Check a parameter's ``init``/``gain``/``blocks`` against its (resolved) ``shape``; raise E0317."""
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        if not math.isfinite(init):
            raise _error(f"the constant initial value of `{name}` is not finite", loc, found=repr(init),
                         hint="give a finite number, e.g. `init: 1.0`")
        kind, value = "constant", float(init)
    else:
        kind, value = str(init), None
    rule = INITIALISERS[kind]
    if gain is not None:
        if rule.default_gain is None:
            takes = ", ".join(k for k, r in INITIALISERS.items() if r.default_gain is not None)
            raise _error(f"`init: {kind}` takes no gain", loc, expected=f"a gain only with {takes}",
                         hint="remove `gain:`, or scale a constant directly: `init: 0.5`")
        if not (isinstance(gain, (int, float)) and not isinstance(gain, bool) and math.isfinite(gain) and gain > 0):
            raise _error(f"the gain of `{name}` must be a positive finite number", loc, found=repr(gain))
    axes = len(shape)
    if axes < rule.min_axes or (rule.max_axes is not None and axes > rule.max_axes):
        want = f"{rule.min_axes} axes" if rule.max_axes == rule.min_axes else f"{rule.min_axes} or more axes"
        raise _error(f"`init: {kind}` needs a parameter of {want}; `{name}` has shape {list(shape)}", loc,
                     hint="use `uniform`, `normal` or a constant for a vector, e.g. `init: 1.0`")
    n_blocks = 1 if blocks is None else blocks
    if blocks is not None and (axes < 2 or shape[0] % n_blocks):
        raise _error(f"`blocks: {n_blocks}` does not split `{name}` {list(shape)} along its first axis", loc,
                     expected="a matrix whose first axis the number of blocks divides: [k * h, n] with blocks: k",
                     hint="blocks are the gates a matrix stacks, e.g. 4 for an LSTM's [4 * h, n]")
    return Init(kind, None if rule.default_gain is None else float(gain if gain is not None else rule.default_gain),
                n_blocks, value)


def _error(message: str, loc: Location, **kw: Any) -> SpecError:
    return SpecError("E0317", message, loc, **kw)
