"""Data files (``.npz`` and ``.npy``, numpy only): read as untrusted input within a size bound, written as files
seqdsl owns.

Reading: the shape and dtype every array *declares* (its ``.npy`` header, read from inside the archive) are summed
and refused above ``max_bytes`` before any array is loaded, so a small file cannot make seqdsl allocate what it
declares (a 16 MB zip of zeros can declare terabytes). Only plain numeric arrays pass (bool, integers, floats):
object arrays (pickles), structured and string dtypes, members that are not ``.npy`` arrays, headers numpy cannot
parse, members shorter than their header says, names with control characters and archives of more than
`MAX_MEMBERS` members are each one `DataFileError`.

Writing: `seqdsl data` writes through `write_npz` and `write_json`, which write through `seqdsl.files` (whole and
atomically: a reader never sees half a file). Each file carries a mark (the zip comment of an ``.npz``, the
``written_by`` key of a JSON file); `check_output` lets ``--force`` replace only a file with that mark: a build owns
only what it writes.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import files

#: The default bound on the bytes a data file declares (``--max-data``): the build's ``--max-memory`` default.
MAX_DATA_BYTES = 4 * 2**30
#: An archive of training data holds a few arrays; more members than this are refused before any is opened.
MAX_MEMBERS = 1024
#: The zip comment of every ``.npz`` seqdsl writes, and the ``written_by`` value of its JSON files.
MARK = "seqdsl data"
NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats
_MAX_JSON_BYTES = 1 << 20  # a file that says it is ours is small; read no more of one to decide


class DataFileError(ValueError):
    """A data file that cannot be read, or an output that cannot be written; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint

    def line(self) -> str:
        """The error as one line (message; hint)."""
        return f"{self.message}" + (f" ({self.hint})" if self.hint else "")


@dataclass(frozen=True)
class Declared:
    """What one array's header says: read before the array is."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int


def shown(path: str | Path) -> str:
    """A path as it may appear in a terminal message: as typed, or quoted with escapes if it has any unprintable
    character."""
    text = str(path)
    return text if text.isprintable() else ascii(text)


def size_text(n: int) -> str:
    """Bytes at a glance: ``4 GiB``, ``1.5 MiB``, ``812 B``."""
    for unit, scale in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _header(fp: Any, name: str, size: int | None, max_bytes: int, what: str = "") -> tuple[Declared, int]:
    """The declared array of the ``.npy`` stream ``fp`` and the header's length; checked against ``max_bytes``,
    then against ``size``, the stream's length when known. ``what`` names the array (default: array `name`)."""
    what = what or f"array `{shown(name[:80])}`"
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:  # 3.0: utf-8 field names, i.e. a structured dtype, which nothing here reads
            raise ValueError(f"npy format version {version[0]}.{version[1]}")
        offset = fp.tell()
    except Exception as exc:  # noqa: BLE001 - whatever numpy says about a broken header is the file's fault
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataFileError(f"{what}: not a readable .npy header ({shown(reason[:200])})") from None
    if dtype.hasobject or dtype.kind not in NUMERIC_KINDS or dtype.shape:
        raise DataFileError(f"{what} is of dtype {shown(str(dtype)[:80])}: only bool, integer and float "
                            "arrays are read (never pickled objects)",
                            "store numbers, for example array.astype(np.float32)")
    if any(d < 0 for d in shape):
        raise DataFileError(f"{what} declares a negative size in its shape")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize if shape else dtype.itemsize
    declared = Declared(name, tuple(int(d) for d in shape), dtype, nbytes)
    _bounded([declared], max_bytes)
    if size is not None and size < offset + nbytes:
        raise DataFileError(f"{what} is truncated: its header declares {size_text(nbytes)}, the file "
                            f"holds {size_text(max(0, size - offset))}", "write the file again")
    return declared, offset


def _bounded(declared: list[Declared], max_bytes: int) -> None:
    total = sum(d.nbytes for d in declared)
    if total > max_bytes:
        biggest = max(declared, key=lambda d: d.nbytes)
        raise DataFileError(f"declares {size_text(total)} of arrays (`{biggest.name}` {list(biggest.shape)} "
                            f"{biggest.dtype.name}), above --max-data {size_text(max_bytes)}",
                            "raise --max-data if the machine has the memory, or split the data")


def _members(archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, str]]:
    seen: set[str] = set()
    out = []
    for info in archive.infolist():
        name = info.filename
        if not name.isprintable():
            raise DataFileError(f"a member name with control characters ({shown(name[:80])})",
                                "an array's name is a model input's name")
        if not name.endswith(".npy") or info.is_dir():
            raise DataFileError(f"member {shown(name[:80])} is not an .npy array",
                                "an .npz holds only arrays: write it with numpy.savez")
        key = name[: -len(".npy")]
        if key in seen:
            raise DataFileError(f"array `{shown(key[:80])}` appears twice")
        seen.add(key)
        out.append((info, key))
    return out


def _entries(file: Path) -> int:
    """How many members the archive's end record announces (before zipfile reads the whole directory)."""
    with file.open("rb") as fp:
        end = zipfile._EndRecData(fp)  # the stdlib's own reader of the end record (zip64 included)
    if end is None:
        raise zipfile.BadZipFile("no end of central directory record")
    return int(end[zipfile._ECD_ENTRIES_TOTAL])


def declared_npz(path: str | Path, max_bytes: int = MAX_DATA_BYTES) -> list[Declared]:
    """The arrays an ``.npz`` declares, checked and bounded (nothing is loaded). Raises `DataFileError`."""
    return _read_archive(Path(path), max_bytes, load=False)[0]


def read_npz(path: str | Path, max_bytes: int = MAX_DATA_BYTES) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``: every header checked and their sum bounded by ``max_bytes`` first, then loaded
    with pickling off. Raises `DataFileError`."""
    return _read_archive(Path(path), max_bytes, load=True)[1]


def _read_archive(file: Path, max_bytes: int, load: bool) -> tuple[list[Declared], dict[str, np.ndarray]]:
    _readable_file(file)
    try:
        if not zipfile.is_zipfile(file):
            raise DataFileError("not an .npz archive", "write it with numpy.savez(path, x=..., target=...)")
        if _entries(file) > MAX_MEMBERS:
            raise DataFileError(f"holds more than {MAX_MEMBERS} members", "an .npz of training data holds a few "
                                "arrays: one per model input and the targets")
        with zipfile.ZipFile(file) as archive:
            members = _members(archive)
            unpacked = sum(info.file_size for info, _ in members)
            if unpacked > max_bytes:
                raise DataFileError(f"unpacks to {size_text(unpacked)}, above --max-data {size_text(max_bytes)}",
                                    "raise --max-data if the machine has the memory, or split the data")
            declared = []
            for info, key in members:
                with archive.open(info) as fp:
                    declared.append(_header(fp, key, info.file_size, max_bytes)[0])
            _bounded(declared, max_bytes)
            arrays: dict[str, np.ndarray] = {}
            for (info, key), want in zip(members if load else [], declared):
                with archive.open(info) as fp:
                    array = np.lib.format.read_array(fp, allow_pickle=False)
                if array.shape != want.shape or array.dtype != want.dtype:  # the file changed meanwhile
                    raise DataFileError(f"array `{key}` changed while it was read", "read it again")
                arrays[key] = array
    except DataFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - a CRC error, a short stream, a broken directory: the file's fault
        raise DataFileError(f"cannot read the archive ({shown(str(exc)[:200] or type(exc).__name__)})") from None
    return declared, arrays


def read_npy(path: str | Path, max_bytes: int = MAX_DATA_BYTES) -> np.ndarray:
    """The array of one ``.npy`` file, its header checked and bounded before it is loaded. Raises
    `DataFileError` (an ``.npz`` is refused: it holds several arrays)."""
    file = Path(path)
    _readable_file(file)
    try:
        if zipfile.is_zipfile(file):
            raise DataFileError("an .npz archive holds several arrays; give one .npy file")
        with file.open("rb") as fp:
            _header(fp, file.stem, file.stat().st_size, max_bytes, what="the array")
            fp.seek(0)
            return np.lib.format.read_array(fp, allow_pickle=False)
    except DataFileError as exc:
        if exc.message.startswith("an .npz"):
            raise
        raise DataFileError(f"not a readable .npy array ({exc.message})", exc.hint) from None
    except Exception as exc:  # noqa: BLE001 - an unreadable file is the user's to fix
        raise DataFileError(f"not a readable .npy array ({shown(str(exc)[:200] or type(exc).__name__)})") from None


#: A torch.save archive holds one member per tensor storage and a few records: more than this is not a checkpoint.
MAX_CHECKPOINT_MEMBERS = 1 << 15


def check_torch_archive(path: str | Path, max_bytes: int = MAX_DATA_BYTES) -> None:
    """Refuse a checkpoint that could make ``torch.load`` allocate more than ``max_bytes`` (``--max-data``), before
    it is loaded: it must be a zip archive (torch.save's format; a legacy pickle is refused) of at most
    `MAX_CHECKPOINT_MEMBERS` members, each stored uncompressed (torch.save writes ZIP_STORED only, so a deflated
    member is a zip bomb's, never torch's), whose declared sizes sum to at most ``max_bytes``. Raises
    `DataFileError`; nothing here imports torch."""
    file = Path(path)
    _readable_file(file)
    try:
        if not zipfile.is_zipfile(file):
            raise DataFileError("not a torch.save zip archive (a legacy pickle or another format)",
                                "save it again with torch.save (any torch since 1.6 writes a zip archive)")
        if _entries(file) > MAX_CHECKPOINT_MEMBERS:
            raise DataFileError(f"holds more than {MAX_CHECKPOINT_MEMBERS} members", "not a torch.save archive")
        with zipfile.ZipFile(file) as archive:
            members = archive.infolist()
    except DataFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken directory is the file's fault
        raise DataFileError(f"cannot read the archive ({shown(str(exc)[:200] or type(exc).__name__)})") from None
    if len(members) > MAX_CHECKPOINT_MEMBERS:
        raise DataFileError(f"holds more than {MAX_CHECKPOINT_MEMBERS} members", "not a torch.save archive")
    for info in members:
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise DataFileError(f"member {shown(info.filename[:80])} is compressed: torch.save stores members "
                                "uncompressed", "give the file torch.save (or seqdsl train) wrote, not a re-zip")
    unpacked = sum(info.file_size for info in members)
    if unpacked > max_bytes:
        raise DataFileError(f"unpacks to {size_text(unpacked)}, above --max-data {size_text(max_bytes)}",
                            "raise --max-data if the machine has the memory")


def _readable_file(file: Path) -> None:
    if not file.is_file():
        if file.exists():
            raise DataFileError("not a file", "give the data file, not a folder")
        raise DataFileError("no such file", "check the path")


# ------------------------------------------------------------------------------------------------------ writing

def is_seqdsl_file(path: str | Path) -> bool:
    """Whether ``path`` is a regular file seqdsl wrote (its mark; see the module docstring)."""
    file = Path(path)
    if file.is_symlink() or not file.is_file():
        return False
    try:
        if file.suffix == ".json":
            with file.open("rb") as fp:
                text = fp.read(_MAX_JSON_BYTES + 1)
            if len(text) > _MAX_JSON_BYTES:
                return False
            value = json.loads(text)
            return isinstance(value, dict) and value.get("written_by") == MARK
        with zipfile.ZipFile(file) as archive:
            return archive.comment == MARK.encode()
    except (OSError, ValueError, zipfile.BadZipFile, RecursionError):
        return False


def check_output(path: Path, force: bool, option: str = "-o") -> None:
    """Refuse, before any work, an output path that cannot be written or holds a file seqdsl may not replace:
    an existing file is replaced only with ``force`` and only if seqdsl wrote it. Raises `DataFileError`
    (whose message starts with ``option`` and the path)."""
    try:
        _check_output(path, force, f"{option} {shown(path)}")
    except (OSError, ValueError) as exc:  # a name too long, a folder that cannot be searched
        if isinstance(exc, DataFileError):
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DataFileError(f"{option} {shown(path)}: cannot write there ({shown(reason)})") from None


def _check_output(path: Path, force: bool, where: str) -> None:
    if path.is_symlink():
        raise DataFileError(f"{where}: a symbolic link; it is left alone, and so is what it points to",
                            "give a new file name")
    if path.is_dir():
        raise DataFileError(f"{where}: a folder", "give a file name in it")
    if path.exists() and not path.is_file():
        raise DataFileError(f"{where}: not a regular file", "give a new file name")
    if path.exists():
        if not is_seqdsl_file(path):
            raise DataFileError(f"{where}: exists and was not written by seqdsl data; it is left alone even with "
                                "--force", "give another name, or move the file away yourself")
        if not force:
            raise DataFileError(f"{where}: exists; pass --force to replace it")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DataFileError(f"{where}: {shown(parent)} is a file, not a folder", "give a path inside a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataFileError(f"{where}: cannot write in {shown(parent)} (permission denied)",
                            "give a path in a folder you can write")


def _atomic(path: Path, write: Any, option: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write(path, write)  # whole, atomically, over a link rather than through it
    except OSError as exc:
        raise DataFileError(f"{option} {shown(path)}: cannot write ({shown(exc.strerror or str(exc))})") from None


def write_npz(arrays: Mapping[str, np.ndarray], path: Path, option: str = "-o") -> None:
    """Write ``arrays`` to the ``.npz`` at ``path`` atomically, with seqdsl's mark (numpy.load reads it as any
    ``numpy.savez`` file). Raises `DataFileError` when the folder cannot be written."""

    def write(fp: Any) -> None:
        with zipfile.ZipFile(fp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            archive.comment = MARK.encode()
            for key, array in arrays.items():
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)

    _atomic(path, write, option)


def write_json(value: dict[str, Any], path: Path, option: str = "-o") -> None:
    """Write ``value`` (with ``written_by`` set to seqdsl's mark) as JSON at ``path``, atomically."""
    text = json.dumps({"written_by": MARK, **value}, indent=1, ensure_ascii=True) + "\n"
    _atomic(path, lambda fp: fp.write(text.encode("ascii")), option)


__all__ = ["MAX_DATA_BYTES", "MAX_MEMBERS", "MAX_CHECKPOINT_MEMBERS", "check_torch_archive", "MARK", "DataFileError", "Declared", "declared_npz", "read_npz",
           "read_npy", "is_seqdsl_file", "check_output", "write_npz", "write_json", "shown", "size_text"]
