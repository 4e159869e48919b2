"""The normalisation statistics that travel with a model: read off its training data, recorded in ``build.json``,
and with raw I/O folded into ``model.onnx``.

A data file may carry, beside an array ``a``, the statistics it was normalised with: ``a_mean`` and ``a_std``
(``seqdsl data csv`` writes ``x_mean``, ``x_std``, ``target_mean``, ``target_std``). The model then trains on
``(raw − mean) / std`` and predicts targets in the same units. With raw I/O the ONNX graph takes the raw values
and returns them: ``(x − mean) / std`` is computed at each normalised input and ``y · std + mean`` at the output
the loss trained, so a served model needs no preprocessing. ``model.py`` and the weights stay in normalised units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seqdsl.errors import Location, SpecError

if TYPE_CHECKING:
    import onnx

    from seqdsl.ir import Model

MEAN, STD = "_mean", "_std"


@dataclass(frozen=True)
class Stats:
    mean: np.ndarray  # float32, shape () or (last axis,)
    std: np.ndarray

    def record(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def same(self, other: Stats) -> bool:
        return self.mean.shape == other.mean.shape and bool(np.array_equal(self.mean, other.mean)
                                                            and np.array_equal(self.std, other.std))


@dataclass(frozen=True)
class Normalisation:
    """Per model input and per model output (the one the loss reads), the statistics of its values."""

    inputs: dict[str, Stats]
    outputs: dict[str, Stats]
    source: str  # the data file they were read from

    def record(self, raw_io: bool) -> dict[str, Any]:
        """What build.json says: the statistics, and whether model.onnx takes raw values."""
        return {"source": self.source, "raw_io": raw_io,
                "inputs": {k: v.record() for k, v in self.inputs.items()},
                "outputs": {k: v.record() for k, v in self.outputs.items()}}

    def same(self, other: Normalisation) -> bool:
        return (self.inputs.keys() == other.inputs.keys() and self.outputs.keys() == other.outputs.keys()
                and all(v.same(other.inputs[k]) for k, v in self.inputs.items())
                and all(v.same(other.outputs[k]) for k, v in self.outputs.items()))


def stat_names(name: str) -> tuple[str, str]:
    return name + MEAN, name + STD


def read(arrays: dict[str, np.ndarray], model: Model, target: str, output: str, loss: str,
         file: str) -> Normalisation | None:
    """The statistics stored in ``arrays`` for the model's inputs and the targets ``target`` (which train
    ``output``), checked (E0710); None where the file carries none."""
    inputs = {n.name: n for n in model.input_nodes()}
    found: dict[str, Stats] = {}
    for name in [*inputs, target]:
        mean_name, std_name = stat_names(name)
        if mean_name in inputs or std_name in inputs:
            continue  # a model input of that name is data, not a statistic
        present = [s for s in (mean_name, std_name) if s in arrays]
        if not present:
            continue
        where = Location(file, path=present[0])
        if len(present) == 1:
            other = std_name if present[0] == mean_name else mean_name
            raise SpecError("E0710", f"`{present[0]}` without `{other}` in the data", where,
                            hint=f"store both, the mean and the std `{name}` was normalised with, or neither")
        if name in inputs and inputs[name].dtype != "float32":
            raise SpecError("E0710", f"statistics for `{name}`, an {inputs[name].dtype} input: only float inputs "
                            "are normalised", where, hint=f"drop {mean_name} and {std_name} from the data")
        if name == target and loss != "mse":
            raise SpecError("E0710", f"statistics for the targets `{name}` of a {loss} loss: only real-valued "
                            "(MSE) targets are normalised", where, hint=f"drop {mean_name} and {std_name}")
        last = arrays[name].shape[-1] if name in arrays and arrays[name].ndim else None
        values = []
        for stat in (mean_name, std_name):
            array = arrays[stat]
            loc = Location(file, path=stat)
            if not np.issubdtype(array.dtype, np.floating):
                raise SpecError("E0710", f"`{stat}` is {array.dtype.name}, not floating", loc)
            if array.shape not in ((), (last,)):
                raise SpecError("E0710", f"`{stat}` has the shape {list(array.shape)}: a statistic is one number, "
                                f"or one per entry of `{name}`'s last axis", loc, expected=f"[] or [{last}]",
                                found=str(list(array.shape)))
            if not np.isfinite(array).all() or (stat == std_name and not (array > 0).all()):
                raise SpecError("E0710", f"`{stat}` holds " + ("a value that is not finite" if not
                                np.isfinite(array).all() else "a standard deviation that is not above 0"), loc)
            values.append(np.array(array, dtype=np.float32))  # keeps shape () (ascontiguousarray would not)
        found[name] = Stats(*values)
    if not found:
        return None
    outputs = {output: found.pop(target)} if target in found else {}
    return Normalisation(found, outputs, file)


def from_file(path: str | Path, model: Model) -> Normalisation:
    """The statistics a data file (``.npz``) carries for ``model``: its inputs, and the targets its spec's
    ``train:`` section names (default ``target``) for the output it names (default the first). E0710 if none."""
    from .training.data import read_npz

    arrays = read_npz(path, "--stats")
    train = model.train.values
    output = train.get("output") or next(iter(model.graph.outputs))
    found = read(arrays, model, train.get("target", "target"), output, train.get("loss", "mse"), str(path))
    if found is None:
        raise SpecError("E0710", f"--stats {path}: no normalisation statistics in the file", Location(str(path),
                        path="--stats"), hint="give the training data `seqdsl data csv` wrote (it holds x_mean, "
                                              "x_std, target_mean, target_std)")
    return found


def check_same(train: Normalisation | None, val: Normalisation | None, val_file: str) -> None:
    """The validation data must be normalised as the training data is (or carry no statistics)."""
    if val is not None and (train is None or not train.same(val)):
        raise SpecError("E0710", "the validation data carries other normalisation statistics than the training "
                        "data", Location(val_file, path="--val"),
                        hint="normalise both with the training part's statistics: one `seqdsl data csv` call "
                             "writes both files")


# -- raw I/O in the ONNX graph

def fold(proto: onnx.ModelProto, norm: Normalisation) -> None:
    """Make ``proto`` take raw values at the normalised inputs and return raw values at the normalised outputs;
    their names, dtypes and shapes stay."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    taken = _names(graph)

    def fresh(base: str) -> str:
        name, i = base, 1
        while name in taken:
            name, i = f"{base}.{i}", i + 1
        taken.add(name)
        return name

    def constant(name: str, array: np.ndarray) -> str:
        const = fresh(name)
        graph.initializer.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), const))
        return const

    inputs = {v.name for v in graph.input}
    front: list[onnx.NodeProto] = []
    for name, stats in norm.inputs.items():
        if name not in inputs:
            raise ValueError(f"internal: no ONNX input {name}")
        inner = fresh(f"{name}#raw_io.normalised")
        _rename_uses(graph, name, inner)
        centred = fresh(f"{name}#raw_io.centred")
        front.append(helper.make_node("Sub", [name, constant(f"{name}#raw_io.mean", stats.mean)], [centred],
                                      name=fresh(f"{name}#raw_io/Sub")))
        front.append(helper.make_node("Div", [centred, constant(f"{name}#raw_io.std", stats.std)], [inner],
                                      name=fresh(f"{name}#raw_io/Div")))
    back: list[onnx.NodeProto] = []
    outputs = {v.name for v in graph.output}
    for name, stats in norm.outputs.items():
        if name not in outputs or name in inputs or any(i.name == name for i in graph.initializer):
            raise ValueError(f"internal: output {name} is not computed by a node")
        inner = fresh(f"{name}#raw_io.normalised")
        _rename_uses(graph, name, inner)
        scaled = fresh(f"{name}#raw_io.scaled")
        back.append(helper.make_node("Mul", [inner, constant(f"{name}#raw_io.std", stats.std)], [scaled],
                                     name=fresh(f"{name}#raw_io/Mul")))
        back.append(helper.make_node("Add", [scaled, constant(f"{name}#raw_io.mean", stats.mean)], [name],
                                     name=fresh(f"{name}#raw_io/Add")))
    nodes = [*front, *graph.node, *back]
    del graph.node[:]
    graph.node.extend(nodes)


def _names(graph: onnx.GraphProto) -> set[str]:
    """Every value, initializer and node name of ``graph`` and of the subgraphs inside it."""
    names = {v.name for v in [*graph.input, *graph.output, *graph.value_info]} | {i.name for i in graph.initializer}
    for node in graph.node:
        names |= set(node.input) | set(node.output) | {node.name}
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= _names(sub)
    return names


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node (in subgraphs too: they may read an outer value) that reads or writes ``old`` now uses ``new``;
    the graph's own input or output named ``old`` keeps its name."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                if old not in {v.name for v in sub.input} | {i.name for i in sub.initializer}:  # not shadowed
                    _rename_uses(sub, old, new)
    for info in graph.value_info:
        if info.name == old:
            info.name = new


# -- the check against PyTorch, which runs in normalised units

def raw_inputs(inputs: dict[str, np.ndarray], norm: Normalisation) -> dict[str, np.ndarray]:
    """The raw values whose normalisation is ``inputs``: what the folded ONNX graph takes."""
    return {k: (v * norm.inputs[k].std + norm.inputs[k].mean).astype(v.dtype) if k in norm.inputs else v
            for k, v in inputs.items()}


def normalised_outputs(outputs: dict[str, np.ndarray], norm: Normalisation) -> dict[str, np.ndarray]:
    """The folded graph's raw outputs in the model's normalised units (float64: the comparison adds no rounding)."""
    return {k: (v.astype(np.float64) - norm.outputs[k].mean) / norm.outputs[k].std if k in norm.outputs else v
            for k, v in outputs.items()}


__all__ = ["Stats", "Normalisation", "read", "from_file", "check_same", "fold", "raw_inputs", "normalised_outputs",
           "stat_names"]
