"""The live modules' source files, importable by a stable name: ``compilers.generated.<model>_<digest>``.

`compilers.torch_module` writes each generated ``model.py`` to a per-user cache folder, named after the model and
the SHA-256 of its source, and imports it from there under this package. So a class made by ``to_module`` keeps
one importable name: ``torch.save(net)`` pickles it by that name, and ``torch.load(..., weights_only=False)``
finds it again in any process on the same machine (this package's finder re-imports the cached file). A cached
file is executed only if its content still has the digest its name says: a file changed or planted in the cache
is refused. On another machine, ship the state_dict (or a build's model.py and weights.safetensors) instead.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Sequence

DIGEST_CHARS = 32  # hex characters of SHA-256 in a module's name
_NAME = re.compile(rf"(?P<stem>[A-Za-z0-9_]{{1,40}})_(?P<digest>[0-9a-f]{{{DIGEST_CHARS}}})")


def cache_dir() -> Path:
    """The per-user folder of generated sources (created private; refused if another user owns it)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = Path(tempfile.gettempdir()) / f"seqdsl-modules-{uid}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if hasattr(os, "getuid") and (folder.is_symlink() or folder.stat().st_uid != uid):
        raise PermissionError(f"{folder} is not a folder of this user's; remove it or set TMPDIR")
    return folder


def module_name(model_name: str, source: str) -> str:
    """``<model>_<digest>``: the model's name made an identifier, and the source's SHA-256."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", model_name)[:40] or "model"
    return f"{stem}_{hashlib.sha256(source.encode()).hexdigest()[:DIGEST_CHARS]}"


class _Loader(importlib.abc.Loader):
    def __init__(self, path: Path, source: str):
        self.path, self.source = path, source

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        module.__file__ = str(self.path)
        exec(compile(self.source, str(self.path), "exec"), module.__dict__)  # the verified text, not a re-read


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``compilers.generated.<stem>_<digest>`` in the cache, if the file's content has that digest."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> ModuleSpec | None:
        prefix, _, leaf = fullname.rpartition(".")
        match = _NAME.fullmatch(leaf)
        if prefix != __name__ or match is None:
            return None
        file = cache_dir() / f"{leaf}.py"
        try:
            source = file.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None  # not made on this machine: "No module named ..."
        if hashlib.sha256(source.encode()).hexdigest()[:DIGEST_CHARS] != match["digest"]:
            raise ImportError(f"{file} does not hold the source its name says (changed since it was written); "
                              "remove it and make the module again", name=fullname)
        return importlib.util.spec_from_loader(fullname, _Loader(file, source), origin=str(file))


def load(model_name: str, source: str) -> ModuleType:
    """Write ``source`` to the cache (whole or not at all) and import it under its stable name."""
    leaf = module_name(model_name, source)
    fullname = f"{__name__}.{leaf}"
    if fullname in sys.modules:
        return sys.modules[fullname]
    file = cache_dir() / f"{leaf}.py"
    if not file.exists() or file.read_text(encoding="utf-8", errors="replace") != source:
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")  # another process may be importing the same file
        tmp.write_text(source, encoding="utf-8")
        os.replace(tmp, file)
    import importlib

    return importlib.import_module(fullname)


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.append(_Finder())
