"""Checkpoints in safetensors (no pickle): the weights, the optimiser's state and the RNG, for ``--resume``.

One file, ``<work dir>/checkpoint.safetensors``, replaced whole at each save (written beside it, then renamed):

    model/<param>           the weights, keyed by the spec's parameter names (what `seqdsl build --weights` reads)
    optim/<index>/<key>     the optimiser's per-parameter state (Adam's moments and step count, SGD's momentum)
    rng/torch               torch's CPU generator (dropout masks continue as in an uninterrupted run)

and, as metadata, the step, the model's name and what must match to resume (optimiser, loss, target, output).
The batch order needs no state: it is a function of the seed and the epoch (`batches.epoch_plan`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seqdsl.errors import Location, SpecError

FORMAT = "seqdsl-checkpoint-1"
FILE = "checkpoint.safetensors"


@dataclass
class Checkpoint:
    step: int
    model: dict[str, torch.Tensor]
    optim_state: dict[int, dict[str, torch.Tensor]]
    rng: torch.Tensor | None


def save(path: Path, step: int, model_name: str, fingerprint: dict[str, Any], net: torch.nn.Module,
         optimizer: torch.optim.Optimizer) -> None:
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v.detach().cpu().contiguous()
                                        for k, v in net.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = value.detach().cpu().contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    metadata = {"format": FORMAT, "step": str(step), "model": model_name, "fingerprint": json.dumps(fingerprint)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load(path: Path, model_name: str, fingerprint: dict[str, Any], net: torch.nn.Module) -> Checkpoint:
    """Read and check the checkpoint at ``path`` against the model about to be trained (E0707, E0708)."""
    where = Location(str(path), path="--resume")
    if not path.is_file():
        raise SpecError("E0707", f"--resume: no checkpoint at {path}", where,
                        hint="train without --resume first (checkpoints go to the work directory)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SpecError("E0708", f"--resume: {path} is not a readable checkpoint ({exc})", where) from None
    if metadata.get("format") != FORMAT or not metadata.get("step", "").isdigit():
        raise SpecError("E0708", f"--resume: {path} is not a seqdsl checkpoint", where)
    found = json.loads(metadata.get("fingerprint", "{}"))
    if metadata.get("model") != model_name or found != fingerprint:
        differ = {k: (found.get(k), v) for k, v in fingerprint.items() if found.get(k) != v}
        what = f"model `{metadata.get('model')}`" if metadata.get("model") != model_name else \
            ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in differ.items())
        raise SpecError("E0708", f"--resume: the checkpoint was written for {what}", where,
                        hint="resume with the options of the run that wrote it, or train afresh without --resume")
    model = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        shapes = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        found_text = "; ".join(part for part in [
            f"missing {', '.join(missing)}" if missing else "", f"unexpected {', '.join(extra)}" if extra else "",
            ", ".join(f"{k} {list(got[k])} (now {list(expected[k])})" for k in shapes)] if part)
        raise SpecError("E0708", "--resume: the checkpoint's weights do not fit the model", where, found=found_text,
                        hint="resume with the spec and --set sizes of the run that wrote it")
    optim: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            optim.setdefault(int(index), {})[name] = value
    return Checkpoint(int(metadata["step"]), model, optim, tensors.get("rng/torch"))


def restore(checkpoint: Checkpoint, net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    device = next(net.parameters()).device
    net.load_state_dict(checkpoint.model)
    groups = optimizer.state_dict()["param_groups"]  # this run's settings (a new --lr takes effect)
    state = {i: {k: v.to(device) if k != "step" else v for k, v in s.items()}
             for i, s in checkpoint.optim_state.items()}
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    if checkpoint.rng is not None:
        torch.set_rng_state(checkpoint.rng)
