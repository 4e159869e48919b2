"""A Triton Inference Server model repository for a checked build: ``REPO/<name>/1/model.onnx`` and
``REPO/<name>/config.pbtxt``, served by Triton's onnxruntime backend.

The config is read off the ONNX file's own signature (what Triton will load), following Triton's conventions:

- when every input and output has the batch axis first (every seqdsl model does), ``max_batch_size`` is > 0 and
  ``dims`` leave the batch axis out; Triton adds it. ``dynamic_batching`` then lets the server gather requests.
  A tensor that is only ``[B]`` has ``dims: [1]`` with ``reshape: { shape: [] }`` (Triton's rule for a
  per-request scalar). Otherwise ``max_batch_size: 0``, full ``dims`` and no dynamic batching (Triton refuses it).
- a symbolic axis (T, S, ...) is ``-1``; a fixed one (``--unroll``) its length.

A build owns only what it writes: ``REPO/<name>/`` is written when it does not exist yet or when its
``config.pbtxt`` starts with seqdsl's header (an earlier ``--triton`` build of this name); anything else there is
refused before the build starts. Other version folders (``2/``, ...) and other files are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .usage import UsageError

HEADER = "# written by seqdsl build --triton; a rebuild replaces it (and 1/model.onnx)"
VERSION = "1"
DEFAULT_MAX_BATCH = 64
# ONNX TensorProto element types -> Triton's data types (model_config.proto's DataType)
_TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32",
                 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def _quote(text: str) -> str:
    """``text`` as a protobuf text-format string literal: printable ASCII kept, everything else octal-escaped
    byte by byte (UTF-8), so that no name can end the string or the line."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if 0x20 <= byte < 0x7F and ch not in '"\\' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def model_dir(repo: Path, name: str) -> Path:
    """``repo/name``, after checking that ``name`` is a plain folder name and that the folder is ours to write."""
    if not _MODEL_NAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(f"--triton: the model name `{name!r}` cannot name a Triton model folder; give the spec a "
                         "`name:` of letters, digits, `_`, `-` and `.`")
    target = Path(repo) / name
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UsageError(f"--triton: {target} exists and is not a folder; choose another repository")
    if target.exists() and any(target.iterdir()) and not _ours(target / "config.pbtxt"):
        raise UsageError(f"--triton: {target} exists and was not written by seqdsl (its config.pbtxt lacks "
                         "seqdsl's header); nothing was written. Choose another repository, or move it away")
    return target


def _ours(config: Path) -> bool:
    try:
        with config.open(encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n") == HEADER
    except OSError:
        return False


def config_text(onnx_path: Path, name: str, max_batch_size: int = DEFAULT_MAX_BATCH) -> str:
    """The ``config.pbtxt`` of the ONNX model at ``onnx_path`` (its graph's inputs and outputs)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    values = [*graph.input, *graph.output]
    batched = all(_dims(v)[:1] == ["B"] for v in values)
    lines = [HEADER, f"name: {_quote(name)}", 'platform: "onnxruntime_onnx"', 'backend: "onnxruntime"',
             f"max_batch_size: {max_batch_size if batched else 0}"]
    for section, group in (("input", graph.input), ("output", graph.output)):
        for value in group:
            dims = _dims(value)[1:] if batched else _dims(value)
            entry = [f"  name: {_quote(value.name)}",
                     f"  data_type: {_TRITON_TYPES[value.type.tensor_type.elem_type]}"]
            if batched and not dims:  # a per-request scalar: Triton wants dims [1] and an empty reshape
                entry += ["  dims: [ 1 ]", "  reshape: { shape: [ ] }"]
            else:
                entry.append(f"  dims: [ {', '.join(str(d if isinstance(d, int) else -1) for d in dims)} ]")
            lines += [f"{section} {{", *entry, "}"]
    if batched:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def _dims(value: object) -> list[int | str]:
    dims = value.type.tensor_type.shape.dim  # type: ignore[attr-defined]
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def write_repository(target: Path, build_dir: Path, name: str, files: list[str],
                     max_batch_size: int = DEFAULT_MAX_BATCH) -> list[Path]:
    """Copy the checked ``files`` (model.onnx and model.onnx.data when there is one) of ``build_dir`` to
    ``target/1/`` and write ``target/config.pbtxt``; each file goes in whole (a temporary name, then a rename).
    ``target`` comes from `model_dir`. Returns the paths written."""
    version = target / VERSION
    version.mkdir(parents=True, exist_ok=True)
    written = []
    for file in files:
        written.append(_replace(version / file, lambda tmp, f=file: shutil.copyfile(build_dir / f, tmp)))
    text = config_text(build_dir / "model.onnx", name, max_batch_size)
    written.append(_replace(target / "config.pbtxt", lambda tmp: tmp.write_text(text, encoding="utf-8")))
    return written


def _replace(path: Path, write: object) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)  # type: ignore[operator]
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
