"""Trained weights into a build: read a safetensors file, a Lightning checkpoint's tensors (`checkpoint_weights`), or
take a state_dict, and check them against the spec.

    weights = read_weights(model, "trained.safetensors")   # {spec parameter name: float32 tensor}
    net.load_state_dict(weights)

A weights file is untrusted input: it is read with safetensors only (a header and raw bytes: nothing in it is
executed, never pickle), each tensor's shape and dtype are checked from the header before its data is read, and
a file that is not a safetensors file (truncated, corrupt, another format) is a `SpecError`, not a traceback.
Every way the weights do not fit the spec is listed in ONE error (E0603), each with the spec line that declares
the parameter, so that a user fixes them all at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from seqdsl.datafiles import MAX_DATA_BYTES, DataFileError, check_torch_archive
from seqdsl.errors import Location, SpecError
from seqdsl.text import printable
from seqdsl.ir import Model

WeightsSource = Union[str, Path, Mapping[str, Any]]
#: Floating dtypes accepted and converted to the model's float32 (a float64 value beyond float32's range becomes
#: infinite, and is then refused as non-finite). Integer, boolean and complex tensors are refused.
_FLOATS = {"F16", "BF16", "F32", "F64"}
_TORCH_FLOATS = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
#: Prefixes that wrappers add to state_dict keys: a hint names them when every unexpected key has one.
_WRAPPER_PREFIXES = {"module.": "DistributedDataParallel / DataParallel", "_orig_mod.": "torch.compile"}


#: Lightning checkpoints (what `seqdsl train` writes: best.ckpt, last.ckpt) are read for their weights.
CHECKPOINT_SUFFIX = ".ckpt"
#: The attribute under which `seqdsl.compilers.training.SpecModule` holds the spec's module: its keys' prefix.
_MODULE_PREFIX = "net."


def load_checkpoint(path: str | Path, max_bytes: int = MAX_DATA_BYTES) -> Any:
    """``torch.load(path, weights_only=True)`` of an untrusted checkpoint, bounded first: the archive is checked
    by `seqdsl.datafiles.check_torch_archive` (a zip of stored members declaring at most ``max_bytes``), so that a
    small file cannot make the load allocate what it declares. Raises `DataFileError` for a refused file and
    whatever ``torch.load`` raises for one it cannot read."""
    check_torch_archive(path, max_bytes)
    return torch.load(str(path), map_location="cpu", weights_only=True)


def checkpoint_weights(path: str | Path, max_bytes: int = MAX_DATA_BYTES) -> dict[str, torch.Tensor]:
    """The model weights of a Lightning checkpoint (``best.ckpt``/``last.ckpt`` of `seqdsl train`, or any whose
    ``state_dict`` holds the spec's parameters, with a common ``net.`` prefix stripped), keyed as in the spec.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, never an arbitrary
    object. Anything else (another format, a pickled object, a damaged file) is one `SpecError` E0604."""
    where = Location(str(path))
    hint = ("give seqdsl train's best.ckpt or last.ckpt, or a .safetensors file of the spec's parameters "
            "(safetensors.torch.save_file(net.state_dict(), PATH))")
    if not Path(path).is_file():
        raise SpecError("E0604", "no such checkpoint file" if not Path(path).exists() else
                        "the checkpoint path is not a file", where, hint=hint)
    try:
        stored = load_checkpoint(path, max_bytes)
    except DataFileError as exc:
        raise SpecError("E0604", "not a readable checkpoint", where, found=exc.message,
                        hint=exc.hint or hint) from None
    except Exception as exc:  # noqa: BLE001 - whatever the unpickler refuses is the file's fault
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SpecError("E0604", "not a readable checkpoint of plain tensors", where, found=_printable(reason),
                        hint=hint) from None
    state = stored.get("state_dict") if isinstance(stored, dict) else None
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise SpecError("E0604", "the checkpoint holds no state_dict of tensors", where, hint=hint)
    if state and all(k.startswith(_MODULE_PREFIX) for k in state):
        state = {k.removeprefix(_MODULE_PREFIX): v for k, v in state.items()}
    return dict(state)


def read_weights(model: Model, source: WeightsSource) -> dict[str, torch.Tensor]:
    """The parameters of ``model`` from ``source`` (a ``.safetensors`` path or a state_dict-like mapping of
    tensors or arrays), as contiguous float32 tensors keyed by the spec's parameter names.

    Raises `SpecError` E0603 listing every missing, unexpected, misshaped, non-float or non-finite entry, each with
    the location of the parameter's declaration; E0604 for a file that cannot be read as safetensors.
    """
    if isinstance(source, Mapping):
        where = Location("<state_dict>")
        entries = {str(k): _Entry.of_value(v) for k, v in source.items()}
        load = lambda name: _as_tensor(source[name])  # noqa: E731
        return _checked(model, where, entries, load)
    path = Path(source)
    if path.suffix == CHECKPOINT_SUFFIX:
        state = checkpoint_weights(path)
        return _checked(model, Location(str(path)), {k: _Entry.of_value(v) for k, v in state.items()},
                        lambda name: state[name])
    where = Location(str(path))
    handle = _open(path)
    entries = {k: _Entry(tuple(handle.get_slice(k).get_shape()), handle.get_slice(k).get_dtype(),
                         handle.get_slice(k).get_dtype() in _FLOATS) for k in handle.keys()}

    def load(name: str) -> torch.Tensor:
        try:
            return handle.get_tensor(name)
        except Exception as exc:  # noqa: BLE001 - data that does not read is the file's fault, not ours
            raise SpecError("E0604", f"the data of `{_printable(name)}` cannot be read", where,
                            found=(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200],
                            hint="the file is damaged: save the weights again") from None

    return _checked(model, where, entries, load)


class _Entry:
    """What the header (or the mapping) says about one tensor, before its data is read."""

    def __init__(self, shape: tuple[int, ...], dtype: str, floating: bool):
        self.shape, self.dtype, self.floating = shape, dtype, floating

    @classmethod
    def of_value(cls, value: Any) -> "_Entry":
        if isinstance(value, torch.Tensor):
            return cls(tuple(value.shape), str(value.dtype).removeprefix("torch."), value.dtype in _TORCH_FLOATS)
        if isinstance(value, np.ndarray):
            return cls(tuple(value.shape), value.dtype.name, value.dtype.kind == "f")
        return cls((), type(value).__name__, False)


def _as_tensor(value: Any) -> torch.Tensor:
    return value.detach() if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))


def _open(path: Path) -> Any:
    from safetensors import safe_open

    if not path.is_file():
        raise SpecError("E0604", "no such weights file" if not path.exists() else "the weights path is not a file",
                        Location(str(path)), hint="give the .safetensors file written by safetensors.torch.save_file")
    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # noqa: BLE001 - any failure to parse the user's file is the user's to fix
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError("E0604", "not a readable safetensors file", Location(str(path)), found=reason[:200],
                        hint="weights are read from safetensors (or a .ckpt of plain tensors, such as seqdsl "
                             "train's best.ckpt; never pickled objects): save them with "
                             "safetensors.torch.save_file(net.state_dict(), PATH)") from None


def _checked(model: Model, where: Location, entries: dict[str, _Entry], load: Any) -> dict[str, torch.Tensor]:
    params = model.params
    problems: list[tuple[Location, str]] = []
    out: dict[str, torch.Tensor] = {}
    for name, p in params.items():
        entry = entries.get(name)
        if entry is None:
            problems.append((p.loc, f"`{name}` {list(p.shape)}: missing"))
        elif entry.shape != tuple(p.shape):
            problems.append((p.loc, f"`{name}`: shape {list(entry.shape)}, the spec declares {list(p.shape)}"))
        elif not entry.floating:
            problems.append((p.loc, f"`{name}`: dtype {entry.dtype}, expected a float (float32; float16, "
                                    "bfloat16 and float64 are converted)"))
        else:  # the header fits: read the data (of this one tensor only) and look at the values
            tensor = load(name).to(torch.float32).contiguous()
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                problems.append((p.loc, f"`{name}`: {bad:,} of {tensor.numel():,} values are NaN or infinite"))
            out[name] = tensor
    unexpected = sorted(set(entries) - set(params))
    problems += [(where, f"`{_printable(k)}`: not a parameter of `{model.name}`") for k in unexpected]
    if problems:
        raise SpecError("E0603", f"the weights do not fit `{model.name}` ({len(problems)} "
                        f"problem{'s' if len(problems) > 1 else ''})", where,
                        expected=f"{len(params)} float tensors keyed by the spec's parameter names "
                                 "(what to_module(model).state_dict() gives)",
                        notes=problems, hint=_hint(unexpected, set(params)))
    return out


def _printable(key: str) -> str:
    """A key from the file, shortened and with control characters escaped (`seqdsl.text.printable`, the one
    escaping of every message): it goes to the terminal."""
    text = key if len(key) <= 80 else key[:77] + "..."
    return printable(text)


def _hint(unexpected: list[str], params: set[str]) -> str:
    for prefix, who in _WRAPPER_PREFIXES.items():
        if unexpected and all(k.startswith(prefix) for k in unexpected) and \
                {k.removeprefix(prefix) for k in unexpected} & params:
            return f"the keys carry the `{prefix}` prefix that {who} adds: save the inner module's state_dict"
    return "train the module that `to_module(seqdsl.load(SPEC))` gives, with the same sizes, and save its " \
           "state_dict with safetensors.torch.save_file"
