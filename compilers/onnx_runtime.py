"""Run seqdsl's ONNX output on onnxruntime: version targets, provider choice, sessions, comparisons.

The ONNX IR version and default-domain opset that the installed onnxruntime loads are found by asking
onnxruntime itself (it has no query API, so we probe it with a one-node model), never from a table.
Execution providers are chosen from what really works on this machine: onnxruntime-gpu lists CUDA and
TensorRT as "available" even without a GPU, and requesting them there makes it print errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import io
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from seqdsl.text import printable

from . import sequence_lengths

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: onnxruntime log severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
LOG_SEVERITY = 3
#: Lowest versions probed; every onnxruntime seqdsl supports (>= 1.18) loads these.
_MIN_IR = 7
_MIN_OPSET = 7
#: A user's word for a provider -> the canonical request.
_REQUESTS = {"auto": "auto", "cpu": "cpu", "cuda": "cuda", "gpu": "cuda", "tensorrt": "tensorrt", "trt": "tensorrt"}

ModelSource = bytes | str | Path | onnx.ModelProto


class RuntimeUnavailable(Exception):
    """The requested onnxruntime execution provider (or onnxruntime itself) cannot run on this machine."""


class InputMismatch(ValueError):
    """The inputs given do not fit the model's input signature (names, rank, dtype, fixed or shared axes)."""


class ModelLoadError(ValueError):
    """onnxruntime cannot load the model (not ONNX, corrupt, or using something it does not implement)."""


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, dims (an int, a symbolic name, or None when unknown) and numpy dtype name."""

    name: str
    shape: tuple[int | str | None, ...] | None  # None: the model gives no shape (any rank)
    dtype: str | None  # numpy dtype name; None: not a tensor type we check (strings, sequences, ...)

    def __str__(self) -> str:
        dims = "?" if self.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"
        return f"{self.name} {dims} {self.dtype or '?'}"


@dataclass
class RunResult:
    """Outputs of one run, keyed by the model's output names, the provider that ran it, and a line per input that
    ``cast=True`` converted."""

    outputs: dict[str, np.ndarray]
    provider: str
    casts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # inputs that are not finite (`non_finite_inputs`)


# --------------------------------------------------------------------------- versions


def _identity_model(ir_version: int, opset: int) -> bytes:
    """A one-node Identity model stamped with the given IR version and default-domain opset."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model.SerializeToString()


def _session_options(threads: int | None = None) -> ort.SessionOptions:
    """Session options that keep onnxruntime quiet below errors; ``threads`` intra-op threads (one op at a time)."""
    options = ort.SessionOptions()
    options.log_severity_level = LOG_SEVERITY
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return options


def _cpu_loads(model: bytes) -> bool:
    """Whether onnxruntime's CPU provider accepts ``model``."""
    try:
        ort.InferenceSession(model, _session_options(), providers=[CPU])
    except Exception:  # onnxruntime raises its own pybind classes (Fail, InvalidGraph, ...)
        return False
    return True


@functools.cache
def supported_ir_version() -> int:
    """The highest ONNX IR version the installed onnxruntime loads (probed from ``onnx.IR_VERSION`` down)."""
    for ir in range(onnx.IR_VERSION, _MIN_IR - 1, -1):
        if _cpu_loads(_identity_model(ir, 13)):
            return ir
    raise RuntimeUnavailable(f"onnxruntime {ort.__version__} loads no model with IR version {_MIN_IR}..{onnx.IR_VERSION}")


@functools.cache
def supported_opset() -> int:
    """The highest default-domain (ai.onnx) opset the installed onnxruntime loads (probed downwards)."""
    ir = supported_ir_version()
    for opset in range(onnx.defs.onnx_opset_version(), _MIN_OPSET - 1, -1):
        if _cpu_loads(_identity_model(ir, opset)):
            return opset
    raise RuntimeUnavailable(f"onnxruntime {ort.__version__} loads no model with opset {_MIN_OPSET}..")


def _min_ir_for(opset: int) -> int:
    """The lowest IR version onnx allows for a default-domain ``opset`` (0 if onnx does not know it)."""
    try:
        return int(helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    except Exception:
        return 0


@functools.cache
def target_versions() -> tuple[int, int]:
    """``(ir_version, opset)`` that seqdsl writes: the newest both onnx and onnxruntime handle, mutually consistent."""
    ir = min(onnx.IR_VERSION, supported_ir_version())
    opset = min(onnx.defs.onnx_opset_version(), supported_opset())
    while opset > _MIN_OPSET and _min_ir_for(opset) > ir:
        opset -= 1
    return ir, opset


# --------------------------------------------------------------------------- providers


@functools.cache
def _gpu_present() -> bool:
    """Whether the CUDA driver loads and sees at least one device (no torch, no nvidia-smi)."""
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so"]
    found = ctypes.util.find_library("cuda")
    for name in names + ([found] if found else []):
        try:
            libcuda = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        try:
            return libcuda.cuInit(0) == 0 and libcuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
        except AttributeError:
            return False
    return False


@functools.cache
def _provider_library_loads(short: str) -> bool:
    """Whether onnxruntime's provider library ``short`` ("cuda", "tensorrt") and all its dependencies load.

    Loading it with ctypes fails silently on a missing cuBLAS/cuDNN/TensorRT, where onnxruntime would
    print errors and fall back to the CPU.
    """
    capi = Path(ort.__file__).parent / "capi"
    prefix, suffix = ("", ".dll") if sys.platform == "win32" else ("lib", ".so")
    shared = capi / f"{prefix}onnxruntime_providers_shared{suffix}"
    library = capi / f"{prefix}onnxruntime_providers_{short}{suffix}"
    if not library.exists():
        return False
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), contextlib.suppress(Exception):
        ort.preload_dlls()  # CUDA/cuDNN from nvidia-* wheels, when present; it prints what it misses
    try:
        if shared.exists():
            ctypes.CDLL(str(shared), mode=getattr(ctypes, "RTLD_GLOBAL", 0))
        ctypes.CDLL(str(library))
    except OSError:
        return False
    return True


def _usable(provider: str) -> bool:
    """Whether ``provider`` is both listed by onnxruntime and really able to run here."""
    if provider == CPU:
        return True
    if provider not in ort.get_available_providers() or not _gpu_present():
        return False
    return _provider_library_loads("tensorrt" if provider == TENSORRT else "cuda")


def _normalize(requested: str | None) -> str:
    """Map a user request to one of "auto", "cpu", "cuda", "tensorrt"; ValueError for anything else."""
    key = (requested or "auto").strip().lower().removesuffix("executionprovider")
    if key not in _REQUESTS:
        raise ValueError(f"unknown execution provider {requested!r}; choose auto, cpu, cuda or tensorrt")
    return _REQUESTS[key]


def available_providers(requested: str | None = None) -> list[str]:
    """Providers to hand to onnxruntime, best first, always ending with the CPU.

    ``requested`` is None/"auto" (TensorRT and CUDA when they really work here, else CPU), "cpu", "cuda" or
    "tensorrt"; an explicit GPU request that cannot be met raises `RuntimeUnavailable`.
    """
    want = _normalize(requested)
    if want == "cpu":
        return [CPU]
    if want == "auto":
        return [p for p in (TENSORRT, CUDA) if _usable(p)] + [CPU]
    primary = TENSORRT if want == "tensorrt" else CUDA
    if not _usable(primary):
        if primary not in ort.get_available_providers():
            why = f"this onnxruntime build ({ort.__version__}) does not include it"
        elif not _gpu_present():
            why = "no usable NVIDIA GPU on this machine"
        else:
            why = "its CUDA/cuDNN/TensorRT libraries do not load"
        raise RuntimeUnavailable(f"onnxruntime provider {want!r} is unavailable: {why} (use provider 'cpu')")
    return [primary, CUDA, CPU] if primary == TENSORRT and _usable(CUDA) else [primary, CPU]


# --------------------------------------------------------------------------- sessions and runs


def _model_payload(model: ModelSource) -> bytes | str:
    """What `ort.InferenceSession` takes: serialized bytes or a path string."""
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    return os.fspath(model)


def make_session(model: ModelSource, provider: str | None = None,
                 threads: int | None = None) -> tuple[ort.InferenceSession, str]:
    """An InferenceSession for ``model`` on the chosen provider (``threads`` CPU threads, default onnxruntime's),
    and the provider actually used.

    Quiet on a CPU-only machine: GPU providers are never requested there and logging is set to errors only.
    """
    providers = available_providers(provider)
    try:
        session = ort.InferenceSession(_model_payload(model), _session_options(threads), providers=providers)
    except Exception as exc:  # onnxruntime's pybind classes (InvalidProtobuf, NoSuchFile, Fail, ...)
        if type(exc).__module__.split(".")[0] != "onnxruntime":
            raise
        what = "the model" if isinstance(model, (bytes, bytearray, onnx.ModelProto)) else os.fspath(model)
        text = str(exc).strip()
        reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", text.splitlines()[0]) if text else type(exc).__name__
        raise ModelLoadError(f"onnxruntime cannot load {what}: {reason}") from exc
    used = session.get_providers()[0]
    if used != providers[0] and _normalize(provider) in ("cuda", "tensorrt"):
        raise RuntimeUnavailable(f"onnxruntime fell back from {providers[0]} to {used} (use provider 'cpu')")
    return session, used


def run(model: ModelSource, inputs: Mapping[str, np.ndarray], provider: str | None = None,
        cast: bool = False, threads: int | None = None) -> RunResult:
    """Run ``model`` once on ``inputs``; outputs are keyed by the model's output names.

    The inputs are checked and converted first (`prepare_inputs`: native byte order; with ``cast`` the model's
    dtypes, each conversion listed in ``RunResult.casts``), so that what onnxruntime gets is what was meant, and
    nothing it would crash on (an empty axis) reaches it.
    Raises `InputMismatch` (a ValueError) when ``inputs`` do not fit the model's input signature, `ModelLoadError`
    when onnxruntime cannot load the model and `RuntimeUnavailable` for a provider that cannot run here.
    """
    session, used = make_session(model, provider, threads)
    arrays, casts = prepare_inputs(session, inputs, cast=cast)
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, arrays)
    return RunResult(outputs={n: np.asarray(v) for n, v in zip(names, values)}, provider=used, casts=casts,
                     warnings=non_finite_inputs(arrays))


# --------------------------------------------------------------------------- input signatures

#: onnxruntime's element type names -> numpy dtype names (what `np.asarray(v).dtype.name` says).
_ORT_TYPES = {"float": "float32", "double": "float64", "float16": "float16", "int64": "int64", "int32": "int32",
              "int16": "int16", "int8": "int8", "uint64": "uint64", "uint32": "uint32", "uint16": "uint16",
              "uint8": "uint8", "bool": "bool"}


def _np_dtype_name(elem_type: int) -> str | None:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # strings, bfloat16 and float8 types: not checked
        return None


def _proto_signature(proto: onnx.ModelProto) -> list[InputSpec]:
    initialized = {i.name for i in proto.graph.initializer}
    specs = []
    for value in proto.graph.input:
        if value.name in initialized:  # an overridable initializer, not a required input
            continue
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            specs.append(InputSpec(value.name, None, None))
            continue
        shape = None
        if tensor.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, shape, _np_dtype_name(tensor.elem_type)))
    return specs


def input_signature(session_or_model: "ort.InferenceSession | ModelSource") -> list[InputSpec]:
    """The required inputs of a session or model (path, bytes or ModelProto): names, dims and dtypes."""
    return _model_info(session_or_model)[0]


def _model_info(session_or_model: "ort.InferenceSession | ModelSource") -> tuple[list[InputSpec], dict[str, str]]:
    """The input signature and the metadata map of a session or model."""
    if isinstance(session_or_model, ort.InferenceSession):
        return _session_signature(session_or_model), dict(session_or_model.get_modelmeta().custom_metadata_map)
    if isinstance(session_or_model, onnx.ModelProto):
        proto = session_or_model
    elif isinstance(session_or_model, (bytes, bytearray)):
        proto = onnx.ModelProto.FromString(bytes(session_or_model))
    else:
        proto = onnx.load(os.fspath(session_or_model), load_external_data=False)
    return _proto_signature(proto), {p.key: p.value for p in proto.metadata_props}


def _session_signature(session: ort.InferenceSession) -> list[InputSpec]:
    specs = []
    for arg in session.get_inputs():
        kind = arg.type or ""
        dtype = _ORT_TYPES.get(kind[len("tensor("):-1]) if kind.startswith("tensor(") else None
        shape = None if arg.shape is None else tuple(
            d if isinstance(d, int) or d is None else (str(d) or None) for d in arg.shape)
        specs.append(InputSpec(arg.name, shape, dtype))
    return specs


def _closest(name: str, names: list[str]) -> str | None:
    from seqdsl.suggest import closest  # only on this error's path: `seqdsl run` does not load the language

    return closest(name, names, fold_case=True)


def check_inputs(session_or_model: "ort.InferenceSession | ModelSource", inputs: Mapping[str, object],
                 cast: bool = False) -> None:
    """Check ``inputs`` against the model's input signature; raise `InputMismatch` (a ValueError) on the first
    problem (see `prepare_inputs`, which also gives the arrays to run)."""
    prepare_inputs(session_or_model, inputs, cast=cast)


def non_finite_inputs(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """One line per float input holding inf or NaN. They are run as given, but onnxruntime's kernels need not carry
    them through as PyTorch does (its native LSTM turns a NaN input into finite states), so the answers are no
    evidence of the model's."""
    lines = []
    for name, array in arrays.items():
        if array.dtype.kind == "f" and array.dtype.isnative:
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                lines.append(f"input `{printable(name)}` holds {bad} of {array.size} values that are inf or NaN; "
                             "onnxruntime's kernels need not propagate them (the outputs may look finite)")
    return lines


def prepare_inputs(session_or_model: "ort.InferenceSession | ModelSource", inputs: Mapping[str, object],
                   cast: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays to hand onnxruntime for ``inputs``, and one line per input that ``cast`` converted.

    Raises `InputMismatch` (a ValueError) on the first problem: a name the model does not have (with the closest
    one), a missing input, a wrong dtype (unless ``cast``: then converted to the model's dtype, refused only where
    the values do not fit it, see `_cast`), an empty axis (onnxruntime would kill the process), a wrong rank or fixed
    dimension, a symbolic axis (``B``, ``T``) given two different lengths by two inputs, or a ``lengths:`` input
    outside [1, T] (`seqdsl.compilers.sequence_lengths`, the rule `train` applies). Every message names the input and
    says what was expected and what was found. Arrays in the other byte order (a big-endian ``>f4`` file) are
    converted to the native one: onnxruntime reads the bytes as they are.
    """
    signature, metadata = _model_info(session_or_model)
    names = [s.name for s in signature]
    listing = ", ".join(map(str, signature)) or "none"
    for name in inputs:
        if name not in names:
            close = _closest(name, names)
            maybe = f" (did you mean `{close}`?)" if close else ""
            raise InputMismatch(f"the model has no input `{name}`{maybe}; its inputs: {listing}")
    missing = [s for s in signature if s.name not in inputs]
    if missing:
        raise InputMismatch(f"missing input{'s' if len(missing) > 1 else ''} "
                            + ", ".join(f"`{s.name}`" for s in missing) + f"; the model's inputs: {listing}")
    seen: dict[str, tuple[int, str]] = {}  # symbolic axis -> (length, input that set it)
    arrays: dict[str, np.ndarray] = {}
    casts: list[str] = []
    for spec in signature:
        value = inputs[spec.name]
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        found = f"a {array.dtype.name} array of shape {tuple(array.shape)}"
        if spec.dtype is not None and array.dtype.name != spec.dtype:
            if not cast:
                raise InputMismatch(f"input `{spec.name}`: expected dtype {spec.dtype} ({spec}), found {found}; "
                                    "--cast (cast=True) converts it")
            array, note = _cast(spec, array)
            casts.append(note)
        empty = [axis for axis, size in enumerate(array.shape) if size == 0]
        if empty:
            raise InputMismatch(f"input `{spec.name}`: axis {empty[0]} is empty in {found} ({spec}); every axis "
                                "needs at least one element")
        if spec.shape is not None:
            if array.ndim != len(spec.shape):
                raise InputMismatch(f"input `{spec.name}`: expected rank {len(spec.shape)} ({spec}), "
                                    f"found {found}")
            for axis, (dim, size) in enumerate(zip(spec.shape, array.shape)):
                if isinstance(dim, int) and dim != size:
                    raise InputMismatch(f"input `{spec.name}`: axis {axis} must be {dim} ({spec}), found {size} in "
                                        f"{found}")
                if isinstance(dim, str):
                    if dim in seen and seen[dim][0] != size:
                        length, other = seen[dim]
                        raise InputMismatch(f"input `{spec.name}`: axis {axis} is `{dim}`, which is {length} in "
                                            f"input `{other}` but {size} here, in {found}")
                    seen.setdefault(dim, (size, spec.name))
        arrays[spec.name] = _native(array)
    for name, (other, axis) in sequence_lengths.from_metadata(metadata).items():
        if name not in arrays or other not in arrays or not 0 <= axis < arrays[other].ndim:
            continue
        steps = arrays[other].shape[axis]
        bad = sequence_lengths.out_of_range(arrays[name], steps)
        if bad is not None:
            i, value, count = bad
            raise InputMismatch(f"input `{name}`: `{name}`[{i}] = {value}: a length lies in [1, {steps}] (axis "
                                f"{axis} of `{other}`); {count} length{'s' if count > 1 else ''} out of range")
    return arrays, casts


def _native(array: np.ndarray) -> np.ndarray:
    """``array`` in the machine's byte order and C order: onnxruntime takes the buffer's bytes as they are."""
    if array.dtype.byteorder not in ("=", "|") and array.dtype.byteorder != _NATIVE:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array)


_NATIVE = "<" if sys.byteorder == "little" else ">"


def _cast(spec: InputSpec, array: np.ndarray) -> tuple[np.ndarray, str]:
    """``array`` converted to ``spec``'s dtype, and the line that says so (exactly, or rounded).

    To a float type any bool, integer or float array converts, rounded to the nearest value as numpy's astype;
    refused when a finite value would become infinite (float64 1e300 to float32). To an integer or bool type only
    values that it holds exactly convert: integers (or integral, finite floats) within its range, 0 and 1 for bool;
    anything else is refused naming the first value that does not fit, never wrapped or truncated."""
    target, source, name = np.dtype(spec.dtype), array.dtype, spec.name
    if source.kind not in "biuf" or target.kind not in "biuf":
        raise InputMismatch(f"input `{name}`: a {source.name} array cannot be cast to {target.name} ({spec})")
    values = _native(array)

    def refuse(bad: np.ndarray, why: str) -> None:
        if bad.any():
            first = values.reshape(-1)[int(np.argmax(bad.reshape(-1)))]
            raise InputMismatch(f"input `{name}`: cannot cast {source.name} to {target.name} ({spec}): "
                                f"{first.item()!r} {why}; {int(bad.sum())} such value{'s' if bad.sum() > 1 else ''}")

    if target.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            out = values.astype(target)
        refuse(np.isinf(out) & ~np.isinf(values), f"lies beyond {target.name}'s range")
    else:
        if source.kind == "f":
            refuse(~np.isfinite(values) | (np.floor(values) != values), "is not an integer")
        low, high = (0, 1) if target.kind == "b" else (int(np.iinfo(target).min), int(np.iinfo(target).max))
        # compared as Python integers through object arrays would be slow; float64 holds every bound that matters
        # exactly except int64/uint64's upper ends, where >= 2**63 (2**64) is the test
        if source.kind == "f":
            upper = float(high) if high < 2**53 else float(high + 1)
            outside = (values < low) | ((values > upper) if high < 2**53 else (values >= upper))
        else:
            outside = (values < low) | (values > high)
        refuse(outside, f"lies outside {target.name}'s [{low}, {high}]")
        out = values.astype(target)
    back = out.astype(source)
    exact = np.array_equal(back, values, equal_nan=source.kind == "f" and target.kind == "f")
    return out, f"input `{name}`: cast from {source.name} to {target.name} " + (
        "(exactly)" if exact else "(rounded to the nearest value)")
