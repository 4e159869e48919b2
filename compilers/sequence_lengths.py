"""The one rule for a block's ``lengths:`` input, shared by `seqdsl train` (its data) and `seqdsl run` (onnxruntime):
every sequence length lies in [1, T], T the length of the time axis it measures. A length of 0 would give the
readout of the initial state, and one above T would act as T: both are refused, never run.

An exported model records which inputs are lengths, and which input's axis gives their T, in its metadata
(`METADATA_KEY`: JSON ``{"n": ["x", 1]}``: ``n`` is bounded by ``x``'s axis 1), so the check needs only the ONNX
file.
"""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np

from seqdsl.ir import Model, all_nodes

METADATA_KEY = "seqdsl.lengths"


def out_of_range(lengths: np.ndarray, steps: int) -> tuple[int, int, int] | None:
    """``(index, value, count)``: the first length (flat index) outside [1, ``steps``], its value and how many are
    outside; None when every length is in range."""
    flat = np.asarray(lengths).reshape(-1)
    bad = (flat < 1) | (flat > steps)
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return i, int(flat[i]), int(bad.sum())


def bounded_by(model: Model) -> dict[str, tuple[str, int]]:
    """The model's ``lengths:`` inputs -> (an input, its axis) whose size is the T that they measure."""
    graph = model.graph
    found: dict[str, tuple[str, int]] = {}
    for node in all_nodes(graph):
        if node.op != "sequence_mask" or node.inputs[0] not in model.inputs or node.inputs[1] not in graph.nodes:
            continue
        seq = graph[node.inputs[1]]
        if len(seq.shape) < 2 or not isinstance(seq.shape[1], str):
            continue
        axis = seq.shape[1]
        where = next(((n.name, i) for n in model.input_nodes() for i, d in enumerate(n.shape) if d == axis), None)
        if where is not None:
            found.setdefault(node.inputs[0], where)
    return found


def to_metadata(bounds: Mapping[str, tuple[str, int]]) -> str:
    return json.dumps({k: [v[0], v[1]] for k, v in bounds.items()}, sort_keys=True)


def from_metadata(metadata: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """What `to_metadata` wrote, from a model's metadata map; {} when absent or not in that form (a file not
    written by seqdsl: nothing to check)."""
    text = metadata.get(METADATA_KEY)
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: (v[0], v[1]) for k, v in data.items()
            if isinstance(k, str) and isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
            and isinstance(v[1], int) and not isinstance(v[1], bool)}
