"""`seqdsl train`'s work folder (``<DIR>.train``, ``--work-dir``): the rule of `seqdsl.compilers.publish` for ``-o``, with
its own marker.

A run writes into a folder that is new, empty, or one an earlier run made: its ``train.json`` carries seqdsl's
signature and lists every entry, each a plain file with a name a run writes (`writes`). Anything else — a file, a
folder holding the user's files, a link planted where a run writes, the current directory, the spec's folder, the
build's own ``-o`` (or a folder inside it, or one holding it) — is refused before any training. A folder holding
an earlier run's checkpoint is taken only by ``--resume`` (continue it) or ``--fresh`` (replace it).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from seqdsl import files as seqdsl_files

from ..publish import SIGNATURE, Owner, OutputError, output_dir

MARKER = "train.json"
LAST, BEST = "last.ckpt", "best.ckpt"
#: Every name a run writes: metrics, plot, checkpoints, the marker; TensorBoard's event files and hparams.yaml.
_FILES = frozenset({MARKER, "metrics.csv", "metrics.jsonl", "metrics.png", LAST, BEST, "hparams.yaml"})
_EVENTS = re.compile(r"events\.out\.tfevents\.[0-9]+\.[A-Za-z0-9._-]+")


def writes(name: str) -> bool:
    return name in _FILES or _EVENTS.fullmatch(name) is not None


WORK = Owner("--work-dir", MARKER, writes, "training run", "--work-dir build/NAME.train")


def checked(work: Path, spec: str | os.PathLike[str], out: Path | None, resume: bool, fresh: bool) -> Path:
    """The real work folder, after every check (OutputError, exit 2); writes nothing. ``out`` is the build's
    directory when there is a build."""
    real = output_dir(work, spec, WORK)
    if out is not None:
        built = Path(out).resolve()
        if real == built or built in real.parents or real in built.parents:
            relation = "is" if real == built else "lies inside" if built in real.parents else "holds"
            raise OutputError(f"--work-dir {work}: {relation} the build's directory -o {out}; the build replaces "
                              "its directory whole: give the work folder a place of its own (the default is "
                              f"{Path(out).name}.train beside it)")
    has_run = (real / LAST).is_file() or (real / BEST).is_file()
    if resume and not (real / LAST).is_file():
        raise OutputError(f"--resume: no checkpoint {LAST} in {work}; train without --resume first")
    if has_run and not resume and not fresh:
        raise OutputError(f"--work-dir {work}: holds an earlier run's checkpoints; continue it with --resume, "
                          "replace it with --fresh, or give a new --work-dir")
    return real


def claim(real: Path, files: list[str]) -> None:
    """Make (or update) the marker that lists what the run writes (seqdsl's one atomic writer: never through a
    link)."""
    real.mkdir(parents=True, exist_ok=True)
    listed = sorted({MARKER, *files} | _listed(real))
    marker = {"built_by": SIGNATURE, "made_by": "seqdsl train", "files": listed}
    seqdsl_files.write_text(real / MARKER, json.dumps(marker, indent=2) + "\n")


def clear(real: Path) -> None:
    """``--fresh``: remove what the earlier run wrote (only the files its marker lists; the check ran already)."""
    for name in _listed(real) - {MARKER}:
        try:
            (real / name).unlink()
        except FileNotFoundError:
            pass


def _listed(real: Path) -> set[str]:
    from ..publish import built_files

    return set(built_files(real, WORK) or ())
