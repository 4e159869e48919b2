"""The live modules' source files, importable by a stable name: ``seqdsl.compilers.generated.<model>_<digest>``.

`seqdsl.compilers.torch_module` writes each generated ``model.py`` to a per-user cache folder, named after the model and
the SHA-256 of its source, and imports it from there under this package. So a class made by ``to_module`` keeps
one importable name, and ``copy.deepcopy(net)`` and tracebacks work. A cached file is executed only if its content
still has the digest its name says: a file changed or planted in the cache is refused.

``torch.save(net)`` pickles the module with its generated source (`restore` and the source, then the state as
nn.Module pickles it), so ``torch.load(..., weights_only=False)`` works in any later process that has seqdsl, even
after the cache (``$TMPDIR``) was cleaned: the carried source is imported only if its SHA-256 is the one its module
name says. A module name that is neither cached nor carried (a pickle from an older seqdsl whose cache is gone) is
one ModuleNotFoundError line saying what to do.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import os
import pickle
import re
import stat
import sys
import tempfile
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from seqdsl import files
from seqdsl.naming import escape

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
    """Finds ``seqdsl.compilers.generated.<stem>_<digest>`` in the cache, if the file's content has that digest."""

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
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: its generated source is not in {cache_dir()} (a pickle from another "
                "machine, or its cache was cleaned); load the saved state_dict into to_module(seqdsl.load(spec)), "
                "or save the module again with this seqdsl, whose pickles carry their source", name=fullname) from None
        if _digest(source) != match["digest"]:
            raise ImportError(f"{file} does not hold the source its name says (changed since it was written); "
                              "remove it and make the module again", name=fullname)
        return importlib.util.spec_from_loader(fullname, _Loader(file, source), origin=str(file))


def load(model_name: str, source: str) -> ModuleType:
    """Write ``source`` to the cache (whole or not at all) and import it under its stable name."""
    return _import(module_name(model_name, source), source)


def restore(leaf: str, source: str) -> Any:
    """Unpickling a saved module: import the carried ``source`` under ``<package>.<leaf>`` if its SHA-256 is the
    one ``leaf`` names, and give a bare instance of its ``Model`` for pickle to fill with the saved state."""
    match = _NAME.fullmatch(leaf) if isinstance(leaf, str) else None
    if match is None or not isinstance(source, str) or _digest(source) != match["digest"]:
        raise pickle.UnpicklingError(f"the generated source carried for {__name__}.{escape(str(leaf)[:80])} does "
                                     "not have the SHA-256 its name says (the file was changed); load its state_dict "
                                     "instead")
    cls = _import(leaf, source).Model
    return cls.__new__(cls)


def _digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:DIGEST_CHARS]


def _import(leaf: str, source: str) -> ModuleType:
    fullname = f"{__name__}.{leaf}"
    if fullname in sys.modules:
        return sys.modules[fullname]
    file = cache_dir() / f"{leaf}.py"
    if not _holds(file, source):
        files.write_text(file, source)  # whole and atomic: another process may be importing the same file
    module = importlib.import_module(fullname)
    _carry_source(module, leaf, source)
    return module


def _holds(file: Path, source: str) -> bool:
    """Whether ``file`` is a plain file (not a link: never read through one) holding ``source``."""
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode) and f.read().decode("utf-8", "replace") == source


def _carry_source(module: ModuleType, leaf: str, source: str) -> None:
    """Pickle the module's ``Model`` instances as ``restore(leaf, source)`` plus nn.Module's own state."""
    cls = getattr(module, "Model", None)
    if not isinstance(cls, type) or "__reduce_ex__" in cls.__dict__:
        return

    def __reduce_ex__(self: Any, protocol: int) -> tuple[Any, ...]:
        return restore, (leaf, source), self.__getstate__()

    cls.__reduce_ex__ = __reduce_ex__  # type: ignore[method-assign]


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.append(_Finder())
