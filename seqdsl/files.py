"""The one way seqdsl writes a file: whole, atomically, and never through a link.

Every writer (`seqdsl build`'s files and build.json, `--triton`, `run --output-dir`, `graph -o`, `data -o`) goes
through `write` or `replacing`. The bytes go to a new file beside the destination (created with ``O_EXCL``, so it
cannot be a file or link that was already there), are flushed to disk (fsync), and the new file is renamed onto
the destination (`os.replace`). A rename replaces a symbolic link at the destination by the file: the link's target
is never opened, so a link planted in an output folder cannot send the bytes outside it. A reader sees the old
file or the new one, never a part; a failed or interrupted write leaves the destination as it was.

`replacing` is for libraries that write by path (onnx's external data names its file): they write into a private
directory made beside the destinations (mode 0700, so no one else can put a link there), and each file written is
renamed onto its destination.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

#: What `write` takes: the bytes, or a function that writes them to the open (binary) file it is given.
Content = Union[bytes, bytearray, memoryview, Callable[[BinaryIO], object]]
#: The prefix of every temporary name: a leftover of a killed process is recognisable (and hidden).
TEMP_PREFIX = ".seqdsl-tmp-"


def write(path: str | os.PathLike[str], content: Content) -> Path:
    """Write ``content`` to ``path`` whole (see the module's docstring); returns ``path``.

    Raises OSError when the folder does not exist or cannot be written, or when ``path`` is a directory: callers
    turn that into the one-line error of their option."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{_stem(path)}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
            f.flush()
            _durable(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    _sync_dir(path.parent)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write(path, text.encode("utf-8"))


@contextmanager
def replacing(*paths: str | os.PathLike[str]) -> Iterator[list[Path]]:
    """Temporary paths, in a private directory beside ``paths`` (which share one folder), for a library that writes
    by path; when the block ends without an error, each temporary file that was written is flushed and renamed onto
    its path (one that was not written leaves its path alone). The private directory is removed in every case."""
    targets = [Path(p) for p in paths]
    folder = targets[0].parent
    if any(t.parent != folder for t in targets):
        raise ValueError("replacing: the paths must share one folder")
    private = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{_stem(targets[0])}-", dir=folder))
    try:
        temps = [private / t.name for t in targets]
        yield temps
        for temp, target in zip(temps, targets):
            try:
                info = temp.lstat()
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"{temp.name}: the writer made something other than a file")
            fd = os.open(temp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                _durable(fd)
            finally:
                os.close(fd)
            os.replace(temp, target)
        _sync_dir(folder)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file or folder of `write` / `replacing` (what a killed process leaves)."""
    return name.startswith(TEMP_PREFIX)


def _durable(fd: int) -> None:
    """The new file as open() would have made it (not mkstemp's 0600), and on the disk (where a full disk shows)."""
    os.fchmod(fd, _ordinary_mode())
    os.fsync(fd)


def _stem(path: Path) -> str:
    return path.name[:64]


def _ordinary_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX: fsync the folder); a filesystem that cannot is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
