"""Training data: the arrays of an ``.npz`` file, checked against the model before any step runs.

An ``.npz`` holds one array per model input, keyed by the input's name, and the targets (``target`` unless told
otherwise). Data files are untrusted: they are read by `seqdsl.datafiles` (pickling off, the sizes the arrays
declare bounded by ``--max-data`` before anything is loaded), and every array is checked (presence, dtype, rank,
fixed sizes, one B and one length per time axis across arrays, ids inside their tables, lengths inside [1, T],
finite floats). Each mistake is one `SpecError` naming the file and the array (E07xx).

An optional ``<target>_mask`` array (bool, or 0/1 integers, of the targets' shape) says which target elements the
loss and the accuracy count: e.g. only the recall phase of the copy task. Where a block has ``lengths:``, an
element counts when it is both a real step and in the mask.

Optional ``<array>_mean`` and ``<array>_std`` arrays (``x_mean``, ``x_std``, ``target_mean``, ``target_std``, what
``seqdsl data csv`` writes) are the statistics the array was normalised with: `seqdsl.compilers.normalise` reads and
checks them; `check` leaves them (and any other array it does not need) out of the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqdsl import datafiles
from seqdsl.datafiles import MAX_DATA_BYTES
from seqdsl.errors import Location, SpecError, did_you_mean
from seqdsl.ir import Dim, Model, all_nodes

from ..sequence_lengths import out_of_range  # the lengths rule, shared with `seqdsl run`


@dataclass(frozen=True)
class Target:
    """What the loss compares: the model output ``output`` against the array ``name``."""

    name: str
    output: str
    loss: str  # "cross_entropy" | "mse"
    shape: tuple[Dim, ...]  # of the targets: the output's, without the classes axis for cross entropy
    classes: int | None  # cross entropy: the size of the output's last axis


@dataclass
class Dataset:
    """Checked arrays (inputs in the model's order, then the targets), all with N examples on axis 0."""

    file: str
    arrays: dict[str, np.ndarray]
    inputs: list[str]
    target: Target
    lengths: dict[str, str]  # time axis -> the int64 [B] input holding each sequence's length
    axes: dict[str, tuple[str, ...]]  # array -> its symbolic axes after B (None for fixed ones), for cropping
    n: int
    mask: str | None = None  # the bool array, of the targets' shape, of the target elements that count

    def sequence_lengths(self) -> np.ndarray | None:
        """The lengths used for bucketing: of the first time axis that has them."""
        for name in self.lengths.values():
            return self.arrays[name]
        return None


def mask_name(target: str) -> str:
    """The array of a data file that says which elements of the targets ``target`` count."""
    return f"{target}_mask"


def lengths_inputs(model: Model) -> dict[str, str]:
    """Time axis -> the model input that gives each sequence's length there (a block's ``lengths: n``)."""
    found: dict[str, str] = {}
    for node in all_nodes(model.graph):
        if node.op == "sequence_mask" and node.inputs[0] in model.inputs:
            seq = model.graph[node.inputs[1]] if node.inputs[1] in model.graph.nodes else None
            if seq is not None and len(seq.shape) > 1 and isinstance(seq.shape[1], str):
                found.setdefault(seq.shape[1], node.inputs[0])
    return found


def read_npz(path: str | Path, what: str = "--data",
             max_bytes: int = MAX_DATA_BYTES) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file at ``path``: no pickle, and the sizes their headers declare summed and
    bounded by ``max_bytes`` (``--max-data``) before any is loaded. Raises SpecError E0701."""
    try:
        return datafiles.read_npz(path, max_bytes)
    except datafiles.DataFileError as exc:
        file = datafiles.shown(path)
        raise SpecError("E0701", f"{what} {file}: {exc.message}", Location(file, path=what),
                        hint=exc.hint or "write it with numpy.savez(path, x=..., target=...)") from None


def check(model: Model, arrays: dict[str, np.ndarray], file: str, target: Target) -> Dataset:
    """Check ``arrays`` against ``model``'s inputs and ``target``; cast them to the model's dtypes."""
    checker = _Checker(model, file)
    out: dict[str, np.ndarray] = {}
    axes: dict[str, tuple[str, ...]] = {}
    lengths = lengths_inputs(model)
    for node in model.input_nodes():
        array = checker.present(arrays, node.name, "a model input")
        out[node.name] = checker.typed(node.name, array, node.dtype, "int64" if node.dtype == "int64" else "float32")
        checker.shaped(node.name, out[node.name], node.shape)
        axes[node.name] = _symbols(node.shape)
    wanted = "int64" if target.loss == "cross_entropy" else "float32"
    array = checker.present(arrays, target.name, f"the targets for output `{target.output}`")
    out[target.name] = checker.typed(target.name, array, wanted, wanted, targets=target.loss)
    checker.shaped(target.name, out[target.name], target.shape, output=target.output)
    axes[target.name] = _symbols(target.shape)
    masks = {axis: checker.lengths_in_range(out[name], name, checker.axis_len[axis])
             for axis, name in lengths.items() if axis in checker.axis_len}
    for node in model.input_nodes():
        if node.dtype == "int64" and node.name not in lengths.values():
            checker.ids_in_range(node.name, out[node.name], _vocabulary(model, node.name), "the embedding table")
    counted = _counted(out[target.name].shape, _mask_for(target.shape, masks))
    mask = mask_name(target.name)
    if mask in arrays:
        if mask in out:
            raise SpecError("E0702", f"`{mask}` is a model input and, by its name, the mask of `{target.name}`",
                            checker.loc(mask), hint="rename the input, or store the targets under another name "
                                                    "and pass --target NAME")
        out[mask] = checker.target_mask(mask, arrays[mask], out[target.name].shape, counted)
        axes[mask] = axes[target.name]
        counted = out[mask] if counted is None else counted & out[mask]
    if target.classes is not None:
        checker.ids_in_range(target.name, out[target.name], target.classes, f"the classes of `{target.output}`",
                             mask=counted)
    for name, value in out.items():
        checker.finite(name, value)
    return Dataset(file, out, [n.name for n in model.input_nodes()], target, lengths, axes, checker.n or 0,
                   mask if mask in out else None)


def _symbols(shape: tuple[Dim, ...]) -> tuple[str, ...]:
    return tuple(d if isinstance(d, str) else "" for d in shape[1:])


def _mask_for(shape: tuple[Dim, ...], masks: dict[str, np.ndarray]) -> np.ndarray | None:
    """(N, T) True at real steps, for a target whose axis 1 is a time axis with lengths."""
    if len(shape) > 1 and isinstance(shape[1], str) and shape[1] in masks:
        return masks[shape[1]]
    return None


def _counted(shape: tuple[int, ...], steps: np.ndarray | None) -> np.ndarray | None:
    """A (N, T) real-steps mask spread over the targets' ``shape`` (None: every element is real)."""
    if steps is None:
        return None
    return np.broadcast_to(steps.reshape(steps.shape + (1,) * (len(shape) - 2)), shape)


def _vocabulary(model: Model, name: str) -> int | None:
    """The smallest embedding table the id input ``name`` indexes (None: it indexes none)."""
    sizes = [model.graph[n.inputs[0]].shape[0] for n in all_nodes(model.graph)
             if n.op == "embedding" and n.inputs[1] == name and n.inputs[0] in model.graph.nodes]
    return int(min(sizes)) if sizes else None


class _Checker:
    def __init__(self, model: Model, file: str) -> None:
        self.model, self.file = model, file
        self.n: int | None = None
        self.axis_len: dict[str, int] = {}
        self.axis_from: dict[str, str] = {}

    def loc(self, name: str) -> Location:
        return Location(self.file, path=name)

    def present(self, arrays: dict[str, np.ndarray], name: str, role: str) -> np.ndarray:
        if name not in arrays:
            have = ", ".join(f"`{k}`" for k in arrays) or "no arrays"
            raise SpecError("E0702", f"no array `{name}` ({role}) in the data", self.loc(name),
                            found=have, hint=did_you_mean(name, arrays) or f"save it with numpy.savez(..., {name}=...)")
        return arrays[name]

    def typed(self, name: str, array: np.ndarray, dtype: str, cast: str, targets: str | None = None) -> np.ndarray:
        integer = np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_
        floating = np.issubdtype(array.dtype, np.floating)
        if dtype == "int64" and not integer:
            what = "cross-entropy targets are class ids" if targets else "the input is declared int64"
            raise SpecError("E0703", f"`{name}` is {array.dtype.name}, not integer: {what}", self.loc(name),
                            expected="an integer array", found=array.dtype.name,
                            hint="use --loss mse for real-valued targets" if targets else
                                 "store the ids as integers (array.astype(np.int64))")
        if dtype == "float32" and not floating:
            what = "MSE targets are real values" if targets else "the input is declared float32"
            raise SpecError("E0703", f"`{name}` is {array.dtype.name}, not floating: {what}", self.loc(name),
                            expected="a floating array (float32)", found=array.dtype.name,
                            hint="use --loss cross_entropy for class ids" if targets else
                                 "convert it with array.astype(np.float32)")
        if integer and array.size and (array.min() < np.iinfo(np.int64).min or array.max() > np.iinfo(np.int64).max):
            raise SpecError("E0705", f"`{name}` holds integers beyond int64", self.loc(name))
        return np.ascontiguousarray(array, dtype=np.dtype(cast))

    def shaped(self, name: str, array: np.ndarray, shape: tuple[Dim, ...], output: str | None = None) -> None:
        declared = "[" + ", ".join(map(str, shape)) + "]"
        role = f"the targets of `{output}` {declared}" if output else f"declared {declared}"
        if array.ndim != len(shape):
            raise SpecError("E0704", f"`{name}` has {array.ndim} axes, {role} has {len(shape)}", self.loc(name),
                            expected=declared, found=str(list(array.shape)),
                            hint="axis 0 holds the examples (B), then the axes as declared")
        for axis, (dim, size) in enumerate(zip(shape, array.shape)):
            if isinstance(dim, int):
                if dim != size:
                    raise SpecError("E0704", f"`{name}` has size {size} on axis {axis}, {role}", self.loc(name),
                                    expected=declared, found=str(list(array.shape)))
                continue
            if dim == "B":
                if self.n is None:
                    self.n = size
                    self.axis_from["B"] = name
                elif size != self.n:
                    raise SpecError("E0704", f"`{name}` holds {size} examples, `{self.axis_from['B']}` {self.n}",
                                    self.loc(name), hint="every array holds the same examples on axis 0")
                if size == 0:
                    raise SpecError("E0704", f"`{name}` holds no examples", self.loc(name))
                continue
            if dim not in self.axis_len:
                self.axis_len[dim], self.axis_from[dim] = size, name
            elif size != self.axis_len[dim]:
                raise SpecError("E0704", f"`{name}` has {dim}={size} on axis {axis}, `{self.axis_from[dim]}` has "
                                f"{dim}={self.axis_len[dim]}", self.loc(name),
                                hint="pad every sequence to one length (and give the real lengths in `lengths:`)")
            if size == 0:
                raise SpecError("E0704", f"`{name}` has an empty time axis {dim}", self.loc(name))

    def lengths_in_range(self, lengths: np.ndarray, name: str, steps: int) -> np.ndarray:
        bad = out_of_range(lengths, steps)  # the rule `seqdsl run` applies too
        if bad is not None:
            i, value, count = bad
            raise SpecError("E0705", f"`{name}`[{i}] = {value}: a length lies in [1, {steps}]",
                            self.loc(name), found=f"{count} lengths out of range",
                            hint="a length counts the real (unpadded) steps of its sequence")
        return np.arange(steps)[None, :] < lengths[:, None]

    def target_mask(self, name: str, array: np.ndarray, shape: tuple[int, ...], real: np.ndarray | None) -> np.ndarray:
        """The targets' mask as bool: of the targets' ``shape``, 0/1, and counting something in every example."""
        integer = np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_
        if not integer:
            raise SpecError("E0703", f"`{name}` is {array.dtype.name}: a mask is bool (or 0/1 integers)",
                            self.loc(name), expected="a bool array", found=array.dtype.name,
                            hint="store it as array.astype(bool): True where the target counts")
        if array.shape != shape:
            raise SpecError("E0704", f"`{name}` has the shape {list(array.shape)}, the targets {list(shape)}",
                            self.loc(name), expected=str(list(shape)), found=str(list(array.shape)),
                            hint="one True/False per target element")
        if array.dtype != np.bool_ and array.size and not np.isin(array, (0, 1)).all():
            raise SpecError("E0705", f"`{name}` holds values other than 0 and 1", self.loc(name),
                            hint="a mask says which target elements count: True/1 or False/0")
        mask = np.ascontiguousarray(array, dtype=np.bool_)
        counted = mask if real is None else mask & real
        empty = ~counted.reshape(counted.shape[0], -1).any(axis=1)
        if empty.any():
            i = int(np.argmax(empty))
            raise SpecError("E0705", f"`{name}`[{i}] counts no target element"
                            + (" at a real step (below its length)" if real is not None else ""), self.loc(name),
                            found=f"{int(empty.sum())} examples with nothing to score",
                            hint="drop those examples, or mark at least one of each example's targets True")
        return mask

    def ids_in_range(self, name: str, ids: np.ndarray, size: int | None, table: str,
                     mask: np.ndarray | None = None) -> None:
        values = ids if mask is None else ids[mask]  # a mask of the ids' shape selects the elements that count
        if values.size == 0:
            return
        low, high = int(values.min()), int(values.max())
        if low < 0 or (size is not None and high >= size):
            bound = f"[0, {size})" if size is not None else "[0, ...)"
            raise SpecError("E0705", f"`{name}` holds ids outside {table} {bound}", self.loc(name),
                            expected=f"ids in {bound}", found=f"ids from {low} to {high}",
                            hint="padded steps beyond a sequence's length are not checked; every other id must fit")

    def finite(self, name: str, array: np.ndarray) -> None:
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise SpecError("E0705", f"`{name}` holds {bad:,} NaN or infinite values", self.loc(name),
                            hint="clean or drop those examples before training")
