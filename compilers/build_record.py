"""What `build.json` says about a build beyond its shapes: where it came from (provenance) and what form each
recurrent block really has in the written ``model.onnx``.

Both are read off the facts, not off what the build meant to do: versions from the imported packages, the
opset and IR version from the written proto, the spec's hash from the bytes that were parsed, and each block's
form from the nodes that are in the file.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqdsl.ir import Model, all_nodes
from seqdsl.version import __version__

from .onnx_form import BlockForm, block_label

if TYPE_CHECKING:
    import onnx

#: ONNX ops that run a whole recurrence; the first three are ONNX's own cells.
RECURRENT_OPS = ("LSTM", "GRU", "RNN", "Scan", "Loop")


def _owner_of(node: "onnx.NodeProto") -> str:
    """The IR loop an exported recurrent node came from: ``enc.loop:LSTM`` and ``enc.loop/Scan`` -> ``enc.loop``."""
    name = node.name
    for sep in (f":{node.op_type}", f"/{node.op_type}"):
        if name.endswith(sep):
            return name[: -len(sep)]
    return name


def _recurrent_nodes(graph: "onnx.GraphProto") -> list["onnx.NodeProto"]:
    found = []
    for node in graph.node:
        if node.op_type in RECURRENT_OPS and node.domain in ("", "ai.onnx"):
            found.append(node)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found += _recurrent_nodes(sub)
    return found


def onnx_forms(proto: "onnx.ModelProto", model: Model) -> dict[str, str]:
    """Per recurrent block of ``model`` (the spec as written, before any pass), what the written ``proto`` holds
    for it: ``LSTM``, ``GRU`` or ``RNN`` (ONNX's own op), ``Scan``, ``Loop``, or ``unrolled`` (no loop left).
    A recurrent node that names no block of the spec is listed under its own node name."""
    blocks = [n.name for n in all_nodes(model.graph) if n.op == "loop"]
    forms: dict[str, str] = {}
    for node in _recurrent_nodes(proto.graph):
        owner = _owner_of(node)
        forms[block_label(owner) if owner in blocks else node.name] = node.op_type
    for name in blocks:
        forms.setdefault(block_label(name), "unrolled")
    return forms


def onnx_form(forms: dict[str, str]) -> str:
    """One word for the whole file: ``none`` (no recurrence: a plain dataflow graph), ``unrolled``, or the forms
    present joined by ``+`` (``LSTM``, ``GRU+Scan``, ``Loop``)."""
    return "+".join(sorted(set(forms.values()))) if forms else "none"


def choice_record(choices: dict[str, "BlockForm"], forms: dict[str, str]) -> dict[str, dict[str, Any]]:
    """build.json's ``onnx_choice``: per block, what `seqdsl.compilers.onnx_form` chose and why, and the op the written
    file holds for it (``onnx_blocks``), so that a reader sees both the intent and the fact."""
    return {label: {**choice.record(), "op": forms.get(label, "")} for label, choice in choices.items()}


def _label(file: str, spec_dir: Path) -> str:
    """A spec file as build.json names it: relative to the built spec's folder, or ``std:...`` for the standard
    library, never an absolute path of this machine."""
    from seqdsl.imports import STD_ROOT

    path = Path(file).resolve()
    for root, prefix in ((spec_dir, ""), (STD_ROOT, "std:")):
        if path == root or root in path.parents:
            return prefix + path.relative_to(root).as_posix()
    return path.name


def provenance(model: Model, proto: "onnx.ModelProto", seed: int) -> dict[str, Any]:
    """The versions, file hashes and settings that make this build reproducible."""
    import onnx
    import onnxruntime
    import torch

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    files = list(model.sources.items())
    spec_dir = Path(model.source).resolve().parent
    spec = {"file": Path(model.source).name, "sha256": files[0][1]} if files else {}
    return {
        "seqdsl": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "opset": opset,
        "ir_version": proto.ir_version,
        "spec": spec,
        "imports": {_label(f, spec_dir): digest for f, digest in files[1:]},
        "sizes": dict(model.sizes),
        "seed": seed,
    }


def training_record(chosen: dict[str, Any]) -> dict[str, Any]:
    """build.json's ``training``, for a build made by `seqdsl train`: which checkpoint the weights come from
    (``best`` on the monitored validation metric, or ``last``), the optimiser step it was saved at, and for the
    best the metric and its value; for the last, why it was taken."""
    keys = ("use", "checkpoint", "step", "monitor", "value", "last_step", "reason")
    return {k: chosen[k] for k in keys if k in chosen}
