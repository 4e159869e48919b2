"""`seqdsl build`: one spec in, a checked directory of deployable files out.

    DIR/model.py              standalone PyTorch source (imports torch only), ``class Model(nn.Module)``
    DIR/weights.safetensors   the initial weights, named as in the spec (no pickle)
    DIR/model.onnx            a length-independent ONNX graph (Scan), checked by onnx.checker
    DIR/build.json            what was built: sizes, shapes, parameter count, provider, max abs diff

Everything is written to a staging directory beside DIR and published only when every check passed, so a
failed build (bad spec, failed check, Ctrl-C) leaves the previous DIR exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import seqdsl
from seqdsl.errors import SpecError
from seqdsl.ir import Model

TOLERANCE = 1e-4  # fp32: onnxruntime vs PyTorch, largest absolute difference allowed
MAX_PARAMS = 100_000_000  # refused above this unless asked for: a typo in a size should not fill the memory


class ParityError(Exception):
    """onnxruntime and PyTorch disagree beyond the tolerance: a compiler bug, never the user's fault."""


@dataclass
class BuildResult:
    name: str
    out_dir: str
    files: list[str]
    sizes: dict[str, int]
    param_count: int
    inputs: dict[str, list[Any]]
    outputs: dict[str, list[Any]]
    provider: str
    max_abs_diff: dict[str, float]
    check_shape: dict[str, int] = field(default_factory=dict)
    onnx_nodes: int = 0
    warnings: list[str] = field(default_factory=list)


def example_inputs(model: Model, batch: int, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for ``model`` with B=batch and T=steps; other time axes (S, ...) get other lengths so
    that mixing them up cannot go unnoticed. Token ids stay below the embedding's vocabulary."""
    rng = np.random.default_rng(seed)
    others = sorted({d for n in model.input_nodes() for d in n.shape if isinstance(d, str)} - {"B", "T"})
    axes = {"B": batch, "T": steps, **{name: steps + 2 + i for i, name in enumerate(others)}}
    out: dict[str, np.ndarray] = {}
    for node in model.input_nodes():
        shape = [axes[d] if isinstance(d, str) else d for d in node.shape]
        if node.dtype == "int64":
            out[node.name] = rng.integers(0, _vocab_for(model, node.name), size=shape, dtype=np.int64)
        else:
            out[node.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _vocab_for(model: Model, input_name: str) -> int:
    """The smallest table an id input indexes (ids must stay in range of every lookup that reads them)."""
    from seqdsl.ir import all_nodes

    sizes = [model.graph[n.inputs[0]].shape[0] for n in all_nodes(model.graph)
             if n.op == "embedding" and n.inputs[1] == input_name and n.inputs[0] in model.graph.nodes]
    return int(min(sizes)) if sizes else 2


def check_size(model: Model, max_params: int) -> None:
    """Refuse a model above ``max_params`` parameters before anything is allocated (E0410)."""
    if model.param_count > max_params:
        biggest = max(model.params.values(), key=lambda p: p.size)
        raise SpecError("E0410", f"the model has {model.param_count:,} parameters, above the limit of {max_params:,}",
                        biggest.loc, found=f"largest: `{biggest.name}` {list(biggest.shape)} ({biggest.size:,})",
                        hint="check the sizes; to build it anyway, raise --max-params")


def run_torch(net: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    net.eval()  # dropout off: the ONNX graph is the inference graph
    with torch.no_grad():
        out = net(*(torch.from_numpy(inputs[n]) for n in net.input_names))
    out = out if isinstance(out, tuple) else (out,)
    return {name: t.numpy() for name, t in zip(net.output_names, out)}


def build(spec: str | Path, out_dir: str | Path | None = None, sizes: dict[str, int] | None = None,
          steps: int = 7, batch: int = 3, seed: int = 0, tolerance: float = TOLERANCE,
          provider: str | None = None, max_params: int = MAX_PARAMS) -> BuildResult:
    """Compile ``spec`` into ``out_dir`` (default ``build/<name>``); raises SpecError for a bad spec."""
    import onnx
    import torch
    from safetensors.torch import save_file

    from .onnx_export import export, set_weights
    from .onnx_runtime import max_abs_diff, run
    from .torch_module import module_class

    model = seqdsl.load(spec, sizes)
    check_size(model, max_params)
    out = Path(out_dir) if out_dir is not None else Path("build") / model.name
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        cls = module_class(model, staging / "model.py")
        torch.manual_seed(seed)
        net = cls()
        weights = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        save_file(weights, str(staging / "weights.safetensors"), metadata={"spec": str(spec), "seqdsl": "0.1"})
        proto = export(model)
        set_weights(proto, {k: v.numpy() for k, v in weights.items()})
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(staging / "model.onnx"))
        inputs = example_inputs(model, batch, steps, seed)
        expected = run_torch(net, inputs)
        got = run(str(staging / "model.onnx"), inputs, provider)
        diff = max_abs_diff(expected, got.outputs)
        worst = max(diff.values(), default=0.0)
        if not worst <= tolerance:
            raise ParityError(f"onnxruntime differs from PyTorch by {worst:.3g} (> {tolerance:g}) on "
                              f"{max(diff, key=diff.get)}: a seqdsl bug; please report it with the spec")
        g = model.graph
        result = BuildResult(
            name=model.name, out_dir=str(out), files=["model.py", "weights.safetensors", "model.onnx", "build.json"],
            sizes=model.sizes, param_count=model.param_count,
            inputs={n.name: [*n.shape, n.dtype] for n in model.input_nodes()},
            outputs={k: [*g[v].shape, g[v].dtype] for k, v in g.outputs.items()},
            provider=got.provider, max_abs_diff=diff, check_shape={"B": batch, "T": steps},
            onnx_nodes=len(proto.graph.node), warnings=[w.format() for w in model.warnings])
        (staging / "build.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
        _publish(staging, out)
        return result
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, out: Path) -> None:
    """Replace ``out`` by ``staging``: the old directory is moved aside first and removed only afterwards."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp made it private; the published directory is an ordinary one
    for f in staging.iterdir():
        f.chmod(0o666 & ~umask)
    old = None
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a directory")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
