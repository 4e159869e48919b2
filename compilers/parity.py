"""The one comparison of two backends' outputs (onnxruntime against PyTorch), judged as numbers.

An element agrees when ``|got - want| <= atol + rtol * |want|`` (the rule of `numpy.allclose` and
`torch.testing.assert_close`, PyTorch's value being the reference), or when both are the same infinity, or both
NaN. Anything else is a disagreement: a finite value against a non-finite one, ``inf`` against ``-inf``, or a
difference past the tolerance. Outputs that are not finite in both backends alike are no disagreement: the model
overflows (or computes ``-inf`` by design, e.g. causal scores without a softmax), which the warning says. Once a
value has overflowed from finite operands and the overflow reaches the outputs, the two backends may also differ
(they order a sum's terms differently: inf - inf is NaN in one order only, and tanh then gives 1 or -1): such a
difference is said in the warning too, not called a bug. Any other difference is a `ParityError`.

    result, warning = check(model, state, inputs, run_torch(net, inputs), run(path, inputs).outputs)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from seqdsl.errors import Location

if TYPE_CHECKING:
    from seqdsl.ir import Model


class ParityError(Exception):
    """onnxruntime and PyTorch disagree beyond the tolerance: a compiler bug, never the user's fault."""


ATOL = 1e-4  # the absolute part: what a few float32 roundings cost around values of size 1
RTOL = 1e-4  # the relative part: float32 keeps ~7 digits; a recurrence over many steps loses a few of them


@dataclass
class OutputCheck:
    """The figures compared for one output: the worst absolute and relative differences over the elements that
    are finite in both, how many elements were not finite (alike in both), and how many disagree."""

    values: int
    max_abs_diff: float
    max_rel_diff: float
    non_finite: int
    disagree: int  # values that differ: finite ones beyond the tolerance, or one side (or sign) not finite
    reached: int  # values that are inf or NaN in either backend: an overflow reached this output
    worst: str  # the element that is furthest outside the tolerance (or the worst one), for the message

    def record(self) -> dict[str, Any]:
        return {"values": self.values, "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
                "non_finite": self.non_finite, "disagree": self.disagree}  # a build holds only excused ones


@dataclass
class Comparison:
    atol: float
    rtol: float
    outputs: dict[str, OutputCheck]

    @property
    def ok(self) -> bool:
        return all(c.disagree == 0 for c in self.outputs.values())

    @property
    def max_abs_diff(self) -> dict[str, float]:
        return {name: c.max_abs_diff for name, c in self.outputs.items()}

    @property
    def non_finite(self) -> list[str]:
        """The outputs with values that are not finite (in both backends alike)."""
        return [name for name, c in self.outputs.items() if c.non_finite]

    def record(self) -> dict[str, Any]:
        """What build.json says was compared."""
        return {"rule": "|onnxruntime - pytorch| <= atol + rtol * |pytorch|; inf == inf of the same sign, "
                        "nan == nan", "atol": self.atol, "rtol": self.rtol,
                "outputs": {name: c.record() for name, c in self.outputs.items()}}

    def failure(self) -> str:
        bad = {name: c for name, c in self.outputs.items() if c.disagree}
        parts = [f"`{name}`: {c.disagree} of {c.values} values differ ({c.worst})" for name, c in bad.items()]
        return (f"onnxruntime differs from PyTorch beyond {self.atol:g} + {self.rtol:g}·|value| on "
                + "; ".join(parts) + ": a seqdsl bug; please report it with the spec")


def check_line(record: Mapping[str, Any]) -> str:
    """One line from a `Comparison.record` (build.json's ``check``): the worst differences and the tolerance."""
    outputs = record.get("outputs", {}).values()
    worst = {k: max((o[k] for o in outputs), default=0) for k in ("max_abs_diff", "max_rel_diff", "non_finite")}
    line = (f"max abs diff {worst['max_abs_diff']:.2e}, max rel diff {worst['max_rel_diff']:.2e} "
            f"(limit {record.get('atol', ATOL):g} + {record.get('rtol', RTOL):g}·|value|)")
    return line + (", some outputs not finite alike in both" if worst["non_finite"] else "")


def compare(want: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], atol: float = ATOL,
            rtol: float = RTOL) -> Comparison:
    """Compare ``got`` (onnxruntime) with ``want`` (PyTorch), output by output. Raises ValueError when the output
    names or an output's shapes differ (that is no numerical question)."""
    only_want, only_got = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if only_want or only_got:
        raise ValueError(f"outputs differ: only in PyTorch {only_want}, only in onnxruntime {only_got}")
    checks: dict[str, OutputCheck] = {}
    for name in want:
        w, g = np.asarray(want[name]), np.asarray(got[name])
        if w.shape != g.shape:
            raise ValueError(f"output {name!r}: shape {tuple(w.shape)} != {tuple(g.shape)}")
        checks[name] = _check(w.astype(np.float64).ravel(), g.astype(np.float64).ravel(), w.shape, atol, rtol)
    return Comparison(atol, rtol, checks)


def _check(w: np.ndarray, g: np.ndarray, shape: tuple[int, ...], atol: float, rtol: float) -> OutputCheck:
    finite = np.isfinite(w) & np.isfinite(g)
    alike = ~finite & ((w == g) | (np.isnan(w) & np.isnan(g)))  # the same infinity, or NaN in both
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(finite, np.abs(g - w), 0.0)
        nonzero = finite & (w != 0)  # the relative difference of an exact zero is no figure: its absolute one is
        rel = np.where(nonzero, diff / np.where(nonzero, np.abs(w), 1.0), 0.0)
        excess = np.where(finite, diff - (atol + rtol * np.abs(w)), np.inf)
    excess[alike] = -np.inf
    worst = ""
    if w.size:
        i = int(np.argmax(excess))
        worst = (f"worst at {[int(k) for k in np.unravel_index(i, shape)]}: "
                 f"PyTorch {w[i]:.7g}, onnxruntime {g[i]:.7g}")
    return OutputCheck(values=int(w.size), max_abs_diff=float(diff.max(initial=0.0)),
                       max_rel_diff=float(rel.max(initial=0.0)), non_finite=int(np.count_nonzero(alike)),
                       disagree=int(np.count_nonzero(excess > 0)),
                       reached=int(np.count_nonzero(~finite)), worst=worst)


@dataclass
class Overflow:
    """Where PyTorch's values first stopped being finite: the spec equation, when the line maps to one; and whether
    it came from finite operands alone (an overflow) or from an inf/NaN constant (``causal``'s -inf, by design)."""

    where: tuple[Location, str] | None
    overflowed: bool


def check(model: "Model", state: Mapping[str, Any], inputs: Mapping[str, np.ndarray],
          want: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], atol: float = ATOL,
          rtol: float = RTOL) -> tuple[Comparison, str | None]:
    """The build's check: `compare`, then for outputs that are not finite, or that differ after an overflow that
    reached them, the warning to print (None when all is finite and agrees). Raises ParityError for any other
    disagreement."""
    result = compare(want, got, atol, rtol)
    if result.ok and not result.non_finite:
        return result, None
    try:
        overflow = first_non_finite(model, state, inputs)
    except Exception:  # noqa: BLE001 - the place is told where it can be found; the check itself stands without it
        overflow = None
    # after a real overflow that reached the outputs, the backends' numbers are no evidence either way (tanh of
    # +inf in one and of -inf in the other): said, not called a bug. A causal mask's -inf is no overflow.
    # Only the outputs the overflow itself reached (inf or NaN in either backend) are excused: another output that
    # stayed finite in both and still differs is a real disagreement.
    overflowed = overflow is not None and overflow.overflowed
    unexcused = [c for c in result.outputs.values() if c.disagree and not (overflowed and c.reached)]
    if unexcused:
        raise ParityError(result.failure())
    return result, overflow_warning(result, overflow)


def overflow_warning(comparison: Comparison, overflow: Overflow | None) -> str | None:
    """The warning for outputs that are not finite, or differ after an overflow: which, and the
    spec line whose value first became inf or NaN, where one can be found."""
    names = comparison.non_finite
    differ = [n for n, c in comparison.outputs.items() if c.disagree]
    if not names and not differ:
        return None
    where = overflow.where if overflow is not None else None
    head = f"{where[0]}: warning: " if where is not None else "warning: "
    parts = []
    if names:
        parts.append("outputs inf or NaN: " + ", ".join(
            f"`{n}` ({comparison.outputs[n].non_finite} of {comparison.outputs[n].values} values)" for n in names))
    if differ:
        parts.append("onnxruntime and PyTorch differ after the overflow: "
                     + ", ".join(f"`{n}` ({comparison.outputs[n].disagree} values)" for n in differ))
    if where is not None:
        parts.append(f"the first value that is not finite is `{where[1]}`, computed here")
    return head + "; ".join(parts) + "; the build is written (check the weights and the scale of the equations)"


def first_non_finite(model: "Model", state: Mapping[str, Any], inputs: Mapping[str, np.ndarray]) -> Overflow | None:
    """Where the model's values first stop being finite: the spec's equations run as written (no passes), and the
    first torch operation whose tensor operands are finite but whose result is not, mapped to the equation computing
    it (through the helper functions of model.py it may be in). None when no operation makes a value inf or NaN."""
    import sys

    import torch
    from torch.overrides import TorchFunctionMode

    from .torch_codegen import generate
    from .torch_module import module_class

    cls = module_class(model, optimize=False, native_cells=False)
    path = sys.modules[cls.__module__].__file__
    lines = generate(model).splitlines()
    net = cls()
    net.load_state_dict(dict(state), strict=False)
    net.eval()
    found: list[tuple[list[int], bool]] = []

    def finite(value: Any, constants: bool = False) -> bool:
        if isinstance(value, torch.Tensor):
            return constants or not value.is_floating_point() or bool(torch.isfinite(value).all())
        if isinstance(value, (tuple, list)):
            return all(finite(v, constants) for v in value)
        if isinstance(value, float):
            return not constants or np.isfinite(value)
        return True

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            operands = [*args, *(kwargs or {}).values()]
            if not found and not finite(out) and finite(operands):
                frames, frame = [], sys._getframe(1)
                while frame is not None:
                    if frame.f_code.co_filename == path:
                        frames.append(frame.f_lineno)  # innermost first: a helper's line, then its caller's
                    frame = frame.f_back  # type: ignore[assignment]
                found.append((frames, finite(operands, constants=True)))
            return out

    with torch.no_grad(), Watch():
        net(*(torch.from_numpy(np.asarray(inputs[n])) for n in net.input_names))
    if not found:
        return None
    frames, overflowed = found[0]
    for line in frames:
        assigned = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", lines[line - 1]) if 1 <= line <= len(lines) else None
        where = _equation(model, assigned.group(1)) if assigned else None
        if where is not None:
            return Overflow(where, overflowed)
    return Overflow(None, overflowed)


def _equation(model: "Model", var: str) -> tuple[Location, str] | None:
    """The spec equation that the generated variable ``var`` holds (the code generator names a variable after
    its node, made an identifier; inside a called module's loop without the module's prefix; `_N` when taken)."""
    from seqdsl.ir import all_nodes

    def ident(name: str) -> str:
        return re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_")

    bare = re.sub(r"_[0-9]+$", "", var)
    matches = []
    for node in all_nodes(model.graph):
        if not node.loc.line:
            continue
        parts = node.name.split(".")
        forms = {ident(".".join(parts[i:])) for i in range(len(parts))}
        if var in forms or bare in forms:
            matches.append(node)
    matches.sort(key=lambda n: (not n.attrs.get("eq_root"), var not in {ident(n.name)}))
    return (matches[0].loc, matches[0].name) if matches else None
