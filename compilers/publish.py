"""Where a build's files go, and the one rule for what a build may replace there: only what a build wrote.

`seqdsl build -o DIR` publishes into DIR when it is

1. new (it does not exist: it is made, with its parents),
2. an empty directory, or
3. a directory an earlier build made: its ``build.json`` carries seqdsl's signature (``"built_by": "seqdsl"``)
   and lists every entry of the directory, each a plain file with a name a build writes (`BUILD_FILES`).

Anything else is refused with `OutputError` (exit 2) before anything is built: a file, a directory holding
anything else (the spec's own folder, a project, your notes), the filesystem root, the current directory or one
above it, a dangling symlink. A symbolic link to a directory is followed: the build publishes into the link's
target under the same rule, and the link stays as it is.

The files are written to a staging directory beside DIR (``.DIR.staging-PID-XXXXXXXX``) and published in one
atomic step: onto a new or empty DIR with rename(2); onto an earlier build with renameat2(RENAME_EXCHANGE),
which swaps the two directories, after which the staging path holds the old build and its files (only those it
lists) are removed. So DIR is at every instant the old build or the new one, whatever kills the process, and two
builds into one DIR end with one of them whole. What a killed build leaves beside DIR (its staging directory) is
removed by the next build into DIR, once its process is gone and only if it holds nothing but a build's files.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import Literal

from seqdsl import files

#: Every name a build may write into its directory; a build's marker can only claim these.
BUILD_FILES = frozenset({"model.py", "weights.safetensors", "model.onnx", "model.onnx.data", "build.json"})
MARKER = "build.json"
SIGNATURE = "seqdsl"  # build.json's "built_by"
#: What `tempfile.mkdtemp` appends to a prefix: 8 characters of this alphabet.
_STAGING = r"\.staging-(?P<pid>[0-9]+)-[a-z0-9_]{8}"
#: A file the build may be in the middle of writing when it is killed (older builds wrote model.py so; now every
#: file goes through `seqdsl.files`, whose temporary names `files.is_temporary` knows).
_PARTIAL = re.compile(r"\.model\.py\.[0-9]+\.tmp")

State = Literal["new", "empty", "build"]


class OutputError(ValueError):
    """The output directory is not one a build may publish into (exit 2): one line, saying why and what to do."""


def output_dir(out: str | os.PathLike[str], spec: str | os.PathLike[str] | None = None) -> Path:
    """The real directory that a build asked for ``-o out`` publishes into (symlinks followed), after checking
    that the rule above lets it (raises `OutputError`). Writes nothing."""
    try:
        return _checked(out, spec)
    except OSError as exc:  # a name too long, a path through a file, a folder we may not read
        raise OutputError(f"-o {_show(os.fspath(out))}: {exc.strerror or exc}") from None


def _checked(out: str | os.PathLike[str], spec: str | os.PathLike[str] | None) -> Path:
    given = _show(os.fspath(out))
    if given in ("''", "") or "\0" in os.fspath(out):
        raise OutputError(f"-o {given}: not a directory name")
    path = Path(os.fspath(out))
    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise OutputError(f"-o {given}: a symbolic link loop") from None
    if path.is_symlink() and not real.exists():
        raise OutputError(f"-o {given}: a symbolic link to {_show(os.readlink(path))}, which does not exist; "
                          "make the directory first, or give another -o")
    if real.parent == real:
        raise OutputError(f"-o {given}: is the filesystem root; give a directory of its own, e.g. -o build/NAME")
    here = Path.cwd().resolve()
    if real == here or real in here.parents:
        where = "is the current directory" if real == here else "holds the current directory"
        raise OutputError(f"-o {given}: {where}; give a directory of its own, e.g. -o build/NAME")
    if spec is not None:
        source = Path(spec).resolve()
        if real == source:
            raise OutputError(f"-o {given}: is the spec file itself; give a directory, e.g. -o build/NAME")
        if real == source.parent or real in source.parents:
            what = "is the spec's own folder" if real == source.parent else "holds the spec"
            raise OutputError(f"-o {given}: {what}; a build replaces its whole directory, so give a directory of "
                              "its own, e.g. -o build/NAME")
    state(real, given)
    return real


def state(real: Path, given: str | None = None) -> State:
    """Whether ``real`` is new, empty or an earlier build; `OutputError` for anything else."""
    shown = given if given is not None else _show(str(real))
    try:
        info = real.lstat()
    except FileNotFoundError:
        return "new"
    except OSError as exc:
        raise OutputError(f"-o {shown}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise OutputError(f"-o {shown}: exists and is not a directory; give a directory, e.g. -o build/NAME")
    try:
        entries = sorted(os.listdir(real))
    except OSError as exc:
        raise OutputError(f"-o {shown}: {exc.strerror or exc}") from None
    if not entries:
        return "empty"
    owned = built_files(real)
    if owned is None:
        raise OutputError(f"-o {shown}: holds files no seqdsl build wrote ({_few(entries)}); a build publishes only "
                          "into a new or empty directory or one an earlier build made: give another -o")
    foreign = [e for e in entries if e not in owned or not _plain_file(real / e)]
    if foreign:
        raise OutputError(f"-o {shown}: holds files its build did not write ({_few(foreign)}); move them out, or "
                          "give another -o")
    return "build"


def built_files(directory: Path) -> frozenset[str] | None:
    """The files ``directory``'s build.json says a build wrote there, or None if it is not a build's marker."""
    marker = directory / MARKER
    if not _plain_file(marker):
        return None
    try:
        with open(marker, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("built_by") != SIGNATURE:
        return None
    files = data.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files) or MARKER not in files:
        return None
    return frozenset(files) & BUILD_FILES


def make_staging(real: Path) -> Path:
    """A fresh staging directory beside ``real`` (its parents made), after removing what killed builds left."""
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(real)
        return Path(tempfile.mkdtemp(prefix=f".{real.name}.staging-{os.getpid()}-", dir=real.parent))
    except OSError as exc:
        raise OutputError(f"-o {real}: cannot write beside it: {exc.strerror or exc}") from None


def publish(staging: Path, real: Path) -> list[str]:
    """Make ``staging`` (a complete build) the directory ``real``, atomically; returns warnings (none usually).

    ``real``'s state is checked again here: it may have changed while the build ran (another build published,
    someone added a file)."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp made it private; the published directory is an ordinary one
    for f in staging.iterdir():
        f.chmod(0o666 & ~umask)
    for _ in range(100):  # each retry means another build published in between: rare, and ends
        try:
            if state(real) != "build":
                os.rename(staging, real)  # onto nothing, or onto an empty directory: atomic
                return []
            if _exchange(staging, real):
                return _remove_build(staging, real)  # the staging path now holds the previous build
            return _replace_in_two_steps(staging, real)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise OutputError(f"-o {real}: cannot publish: {exc.strerror or exc}") from None
    raise OutputError(f"-o {real}: other builds kept replacing it; nothing was published")


def remove_leftovers(real: Path) -> list[Path]:
    """Remove the staging directories that builds into ``real`` left when they were killed: only those named as
    `make_staging` names them, whose process is gone, holding nothing but a build's files. Returns what was removed."""
    pattern = re.compile(re.escape(f".{real.name}") + _STAGING)
    removed = []
    for entry in os.scandir(real.parent):
        match = pattern.fullmatch(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False) or _alive(int(match["pid"])):
            continue
        if discard(Path(entry.path)):
            removed.append(Path(entry.path))
    return removed


def discard(staging: Path) -> bool:
    """Remove a staging directory if it holds nothing but a build's plain files (what a build writes there);
    leave it, and anything in it, otherwise. Returns whether it is gone."""
    try:
        names = os.listdir(staging)
        temporary = [n for n in names if files.is_temporary(n) and _only_build_files(staging / n)]
        if not all(((n in BUILD_FILES or _PARTIAL.fullmatch(n) or files.is_temporary(n)) and _plain_file(staging / n))
                   or n in temporary for n in names):
            return False
        for name in names:
            if name in temporary and not _plain_file(staging / name):
                for inner in os.listdir(staging / name):
                    (staging / name / inner).unlink()
                (staging / name).rmdir()
            else:
                (staging / name).unlink()
        staging.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _remove_build(old: Path, real: Path) -> list[str]:
    """Remove the replaced build now at ``old``; kept, with a warning, if something else appeared in it."""
    if discard(old):
        return []
    return [f"warning: files that appeared in {_show(str(real))} while it was being rebuilt were kept in "
            f"{_show(str(old))}"]


def _replace_in_two_steps(staging: Path, real: Path) -> list[str]:
    """Where renameat2 is missing: move the old build aside (to a staging-like name that `remove_leftovers`
    recognises), move the new one in, remove the old; put the old one back if the second step fails."""
    aside = Path(tempfile.mkdtemp(prefix=f".{real.name}.staging-{os.getpid()}-", dir=real.parent))
    try:
        os.rename(real, aside)  # replaces the empty `aside`
    except BaseException:
        aside.rmdir()
        raise
    try:
        os.rename(staging, real)
    except BaseException:
        os.rename(aside, real)
        raise
    return _remove_build(aside, real)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the directories ``a`` and ``b`` in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or the filesystem has no such call."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or an impossible pid): not ours to judge
    return True


def _only_build_files(folder: Path) -> bool:
    """Whether ``folder`` is a directory (not a link) holding only plain files named as a build names its files:
    the private folder `seqdsl.files.replacing` writes model.onnx and its data into."""
    try:
        if not stat.S_ISDIR(folder.lstat().st_mode):
            return False
        return all(n in BUILD_FILES and _plain_file(folder / n) for n in os.listdir(folder))
    except OSError:
        return False


def _plain_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _show(name: str) -> str:
    """``name`` for a one-line message: as it is, or quoted with escapes when it holds a newline or the like."""
    return name if name.isprintable() and name.strip() == name and name else repr(name)


def _few(names: list[str]) -> str:
    shown = ", ".join(_show(n) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")
