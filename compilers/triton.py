"""A Triton Inference Server model repository for a checked build: ``REPO/<name>/1/model.onnx`` and
``REPO/<name>/config.pbtxt``, served by Triton's onnxruntime backend.

The config is read off the ONNX file's own signature (what Triton will load), following Triton's conventions:

- when every input and output has the batch axis first (every seqdsl model does), ``max_batch_size`` is > 0 and
  ``dims`` leave the batch axis out; Triton adds it. ``dynamic_batching`` then lets the server gather requests.
  A tensor that is only ``[B]`` has ``dims: [1]`` with ``reshape: { shape: [] }`` (Triton's rule for a
  per-request scalar). Otherwise ``max_batch_size: 0``, full ``dims`` and no dynamic batching (Triton refuses it).
- a symbolic axis (T, S, ...) is ``-1``; a fixed one (``--unroll``) its length.

A build owns only what it writes: ``REPO/<name>/`` is written when it does not exist yet or when its
``config.pbtxt`` (a plain file, not a link) starts with seqdsl's header (an earlier ``--triton`` build of this
name); anything else there, a repository that is a file, a dangling link or inside the build's directory, is
refused before the build starts. The copy is written after the build's directory is published, each file through
`seqdsl.files` (a link planted there is replaced, its target left alone). Other version folders (``2/``, ...) and
other files are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

from seqdsl.files import write, write_text

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


def check_repository(repo: str | os.PathLike[str], out: Path | None = None) -> Path:
    """The real folder ``--triton repo`` names (a link to a folder followed), checked before anything is built:
    a folder, or a path where one can be made; not a file, a dangling link or a path through a file; writable;
    neither ``out`` (the build's real directory, when known) nor inside it. Raises `UsageError`."""
    given = _show(os.fspath(repo))
    path = Path(os.fspath(repo))
    if not os.fspath(repo) or "\0" in os.fspath(repo):
        raise UsageError(f"--triton {given}: not a folder name")
    try:
        real = path.resolve()
    except (OSError, RuntimeError):
        raise UsageError(f"--triton {given}: a symbolic link loop") from None
    if path.is_symlink() and not real.exists():
        raise UsageError(f"--triton {given}: a symbolic link to {_show(os.readlink(path))}, which does not exist; "
                         "make the folder first, or give another repository")
    existing = real
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "exists and is not a folder" if existing == real else f"lies under {_show(str(existing))}, a file"
        raise UsageError(f"--triton {given}: {where}; give a model repository folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--triton {given}: {_show(str(existing))} is not writable")
    if out is not None and (real == out or out in real.parents):
        raise UsageError(f"--triton {given}: lies inside the build's directory {_show(str(out))}, which a build "
                         "replaces whole; give a repository outside it")
    return real


def model_dir(repo: Path, name: str, out: Path | None = None) -> Path:
    """``repo/name``, after checking that ``name`` is a plain folder name and that the folder is ours to write:
    new or empty, or an earlier ``--triton`` build's, with ``1`` a folder (not a link) if it is there, and no folder
    where a file goes; neither inside the build's directory ``out`` nor holding it. Raises `UsageError`; writes
    nothing."""
    if not _MODEL_NAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(f"--triton: the model name `{name!r}` cannot name a Triton model folder; give the spec a "
                         "`name:` of letters, digits, `_`, `-` and `.`")
    real = check_repository(repo, out)
    target = real / name
    shown = _show(str(Path(repo) / name))
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UsageError(f"--triton: {shown} exists and is not a folder; choose another repository")
    if out is not None and (out == target or target in out.parents):
        raise UsageError(f"--triton: the build's directory {_show(str(out))} lies inside the model folder {shown}, "
                         "which --triton writes; give -o outside it")
    if target.exists() and any(target.iterdir()) and not _ours(target / "config.pbtxt"):
        raise UsageError(f"--triton: {shown} exists and was not written by seqdsl (its config.pbtxt lacks "
                         "seqdsl's header); nothing was written. Choose another repository, or move it away")
    version = target / VERSION
    if os.path.lexists(version) and (version.is_symlink() or not version.is_dir()):
        raise UsageError(f"--triton: {shown}/{VERSION} exists and is not a folder; move it away")
    for entry in ("config.pbtxt", f"{VERSION}/model.onnx", f"{VERSION}/model.onnx.data"):
        if (target / entry).is_dir() and not (target / entry).is_symlink():
            raise UsageError(f"--triton: {shown}/{entry} is a folder, where the build writes a file; move it away")
    return Path(repo) / name


def _ours(config: Path) -> bool:
    """Whether ``config`` is a plain file (not a link) that starts with seqdsl's header."""
    try:
        fd = os.open(config, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return False
    with os.fdopen(fd, "rb") as f:
        return f.readline(4096).decode("utf-8", "replace").rstrip("\n") == HEADER


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
    ``target/1/`` and write ``target/config.pbtxt``, each whole through `seqdsl.files.write` (a link there is
    replaced, never followed). ``target`` comes from `model_dir`. Returns the paths written."""
    version = target / VERSION
    version.mkdir(parents=True, exist_ok=True)
    if version.is_symlink() or target.is_symlink():  # appeared since `model_dir` looked
        raise UsageError(f"--triton: {_show(str(version))} is a symbolic link; nothing was copied there")
    written = []
    for file in files:
        with open(build_dir / file, "rb") as source:
            written.append(write(version / file, lambda f, s=source: shutil.copyfileobj(s, f, 1 << 20)))
    text = config_text(build_dir / "model.onnx", name, max_batch_size)
    written.append(write_text(target / "config.pbtxt", text))
    return written


def _show(name: str) -> str:
    """``name`` for a one-line message: as it is, or quoted with escapes when it holds a newline or the like."""
    return name if name.isprintable() and name.strip() == name and name else repr(name)
