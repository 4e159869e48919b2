"""Drawing DOT as SVG or PNG with a Graphviz program, and writing figures without clobbering other files.

The program is graphviz-pure's (a dependency of seqdsl, installed from pip: the same bytes on every platform),
else a system Graphviz ``dot``. graphviz-pure installs no ``dot`` so as never to shadow a system Graphviz, which is
why this module finds the program itself rather than through the `graphviz` package (that one runs ``dot`` by
name), and finds it from the installed package rather than from PATH alone. The DOT goes in on standard input of an argument list: no shell, no file named by the spec.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import sysconfig
import zlib
from pathlib import Path
from typing import Callable

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

from . import files

FORMATS = ("svg", "png", "dot")
PROGRAMS = ("graphviz-pure", "dot")
MARK = "made by seqdsl graph"  # in every file `write` makes; it overwrites no file without it


class RenderError(Exception):
    """A problem of the set-up or of the output path, not of the spec: no Graphviz, or a file in the way."""


def program() -> str:
    """graphviz-pure's program where it is installed, else the first of `PROGRAMS` on PATH.

    graphviz-pure's own files are asked first, then the scripts folder of this interpreter, so that
    ``venv/bin/seqdsl`` run without the venv on PATH (pipx, an IDE, cron) still finds the program it installed."""
    for found in (_installed(), *(shutil.which(name) for name in PROGRAMS)):
        if found:
            return found
    raise RenderError("no Graphviz program found: `pip install graphviz-pure` (a dependency of seqdsl), "
                      "or install Graphviz so that `dot` is on PATH; or write the DOT text with -o FILE.dot")


def _installed() -> str | None:
    """The graphviz-pure program that belongs to this Python: from the package's file list (RECORD), else in
    the interpreter's scripts folder or beside the interpreter itself."""
    names = {PROGRAMS[0], PROGRAMS[0] + ".exe"}
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution(PROGRAMS[0])
        candidates += [Path(dist.locate_file(f)) for f in dist.files or () if Path(str(f)).name in names]
    except importlib.metadata.PackageNotFoundError:
        pass
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        if folder:
            candidates += [Path(folder) / name for name in sorted(names)]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path.resolve())
    return None


CPU_SECONDS = 2  # the most CPU Graphviz may spend on one figure under the default cap (seqdsl.figure.MAX_FIGURE)


def render(source: str, fmt: str, timeout: float = 300.0, cpu_seconds: int | None = CPU_SECONDS) -> bytes:
    """``source`` (DOT) drawn as ``fmt`` ("svg" or "png"; "dot" gives the source back), marked as ours. Graphviz is
    stopped after ``cpu_seconds`` of CPU (where the system can limit it; None: no limit) or ``timeout`` seconds."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}")
    if fmt == "dot":
        return f"// {MARK}\n{source}".encode("utf-8")
    way_out = "draw less with --depth K or --module NAME, or raise the cap with --max-figure N"
    try:
        done = subprocess.run([program(), f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True,
                              timeout=timeout, check=False, preexec_fn=_cpu_limit(cpu_seconds))
        if done.returncode != 0 and b"trouble in init_rank" in done.stderr:
            # Graphviz's ranking inside clusters fails on some figures (a long-known bug, seen here with about 30
            # module calls in a row; it fails at once); its global ranking, newrank, lays them out
            source = source.replace("{\n", "{\n\tnewrank=true\n", 1)
            done = subprocess.run([program(), f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True,
                                  timeout=timeout, check=False, preexec_fn=_cpu_limit(cpu_seconds))
    except subprocess.TimeoutExpired:
        raise RenderError(f"Graphviz took more than {timeout:.0f} s; {way_out}") from None
    if cpu_seconds is not None and done.returncode in (-_signal_number("SIGXCPU"), -_signal_number("SIGKILL")):
        raise RenderError(f"Graphviz ran past {cpu_seconds} s of CPU laying out this figure; {way_out}")
    if done.returncode != 0 or not done.stdout:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError("Graphviz failed on seqdsl's DOT: " + (reason[-1] if reason else f"exit {done.returncode}"))
    data = done.stdout
    return _mark_png(data) if fmt == "png" else data.replace(b"<svg ", f"<!-- {MARK} -->\n<svg ".encode(), 1)


def _signal_number(name: str) -> int:
    return int(getattr(signal, name, 0)) or -1000  # -1000: never a return code


def _cpu_limit(seconds: int | None) -> Callable[[], None] | None:
    """What the Graphviz child runs before it starts: a CPU-time limit (SIGXCPU at ``seconds``, SIGKILL a second
    later); none where `resource` is missing (Windows), where the wall-clock timeout alone bounds it."""
    if seconds is None or resource is None:
        return None

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    return limit


def _mark_png(data: bytes) -> bytes:
    """A PNG with a tEXt chunk ``Software: made by seqdsl graph`` after its header chunk."""
    signature, header_end = data[:8], 8 + 4 + 4 + 13 + 4  # IHDR: length, type, 13 bytes, CRC
    body = b"Software\x00" + MARK.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return signature + data[8:header_end] + chunk + data[header_end:]


def is_ours(path: Path) -> bool:
    """Whether ``path`` is a regular file (not a link, which is never followed) that `write` made: it carries the
    mark in its first 4 KiB."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return False
    with os.fdopen(fd, "rb") as f:
        head = f.read(4096)
    return MARK.encode() in head


def write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole (`seqdsl.files.write`); refuse a symbolic link there (dangling or not, even
    to a figure of ours) and anything that is not a figure made here."""
    if path.is_symlink():
        raise RenderError(f"{path} is a symbolic link; `seqdsl graph` writes only a regular file it made, never "
                          "through or over a link: remove it or choose another name")
    if path.exists() and not is_ours(path):
        raise RenderError(f"{path} exists and was not made by `seqdsl graph`; remove it or choose another name")
    if not path.parent.is_dir():
        raise RenderError(f"{path.parent} is not a directory")
    files.write(path, data)
