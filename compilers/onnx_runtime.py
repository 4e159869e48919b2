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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

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


@dataclass
class RunResult:
    """Outputs of one run, keyed by the model's output names, and the provider that ran it."""

    outputs: dict[str, np.ndarray]
    provider: str


# --------------------------------------------------------------------------- versions


def _identity_model(ir_version: int, opset: int) -> bytes:
    """A one-node Identity model stamped with the given IR version and default-domain opset."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model.SerializeToString()


def _session_options() -> ort.SessionOptions:
    """Session options that keep onnxruntime quiet below errors."""
    options = ort.SessionOptions()
    options.log_severity_level = LOG_SEVERITY
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


def make_session(model: ModelSource, provider: str | None = None) -> tuple[ort.InferenceSession, str]:
    """An InferenceSession for ``model`` on the chosen provider, and the provider actually used.

    Quiet on a CPU-only machine: GPU providers are never requested there and logging is set to errors only.
    """
    providers = available_providers(provider)
    session = ort.InferenceSession(_model_payload(model), _session_options(), providers=providers)
    used = session.get_providers()[0]
    if used != providers[0] and _normalize(provider) in ("cuda", "tensorrt"):
        raise RuntimeUnavailable(f"onnxruntime fell back from {providers[0]} to {used} (use provider 'cpu')")
    return session, used


def run(model: ModelSource, inputs: Mapping[str, np.ndarray], provider: str | None = None) -> RunResult:
    """Run ``model`` once on ``inputs``; outputs are keyed by the model's output names."""
    session, used = make_session(model, provider)
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {k: np.asarray(v) for k, v in inputs.items()})
    return RunResult(outputs={n: np.asarray(v) for n, v in zip(names, values)}, provider=used)


def max_abs_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per output name, the largest absolute elementwise difference between ``a`` and ``b``.

    Raises ValueError when the names differ or an output's shapes differ.
    """
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise ValueError(f"outputs differ: only in first {only_a}, only in second {only_b}")
    diffs: dict[str, float] = {}
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape:
            raise ValueError(f"output {name!r}: shape {tuple(x.shape)} != {tuple(y.shape)}")
        if x.size == 0:
            diffs[name] = 0.0
            continue
        diffs[name] = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
    return diffs
