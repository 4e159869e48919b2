"""Everything `seqdsl train` checks before it trains: the spec, the data, the options (no torch imported here, so
that ``--nproc`` reports a mistake once, quickly, before it starts any process)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import seqdsl
from seqdsl.errors import Location, SpecError
from seqdsl.ir import Model

from ..build import check_size
from .data import Dataset, check, read_npz
from .options import Settings, TrainOptions, resolve


@dataclass
class Prepared:
    model: Model
    settings: Settings
    train: Dataset
    val: Dataset | None


def prepare(spec: str | Path, data: str | Path, sizes: dict[str, int] | None = None, val: str | Path | None = None,
            options: TrainOptions | None = None, out_dir: str | Path | None = None) -> Prepared:
    """Load the spec and check the data and options against it, and that the build may publish into ``out_dir``
    (default ``build/<name>``): every user mistake surfaces here (SpecError, OutputError), before any process
    starts or any step runs."""
    from ..publish import output_dir

    options = options or TrainOptions()
    model = seqdsl.load(spec, sizes, root=options.root)
    if options.build:
        output_dir(out_dir if out_dir is not None else Path("build") / model.name, spec)
    check_size(model, options.max_params)
    arrays = read_npz(data, "--data")
    settings = resolve(model, options, arrays)
    train_set = check(model, arrays, str(data), settings.target)
    val_set = check(model, read_npz(val, "--val"), str(val), settings.target) if val is not None else None
    if val_set is not None and (train_set.mask is None) != (val_set.mask is None):
        has, lacks = (train_set, val_set) if val_set.mask is None else (val_set, train_set)
        raise SpecError("E0702", f"{has.file} holds `{has.mask}` and {lacks.file} does not: training and validation "
                        "would count different target elements", Location(lacks.file, path=has.mask),
                        hint="give both files the mask, or neither")
    if options.metrics_format not in ("csv", "jsonl"):
        raise SpecError("E0707", f"--metrics-format {options.metrics_format!r}: csv or jsonl",
                        Location("--metrics-format", path="metrics_format"))
    if options.progress not in ("auto", "bar", "lines", "quiet"):
        raise SpecError("E0707", f"--progress {options.progress!r}: auto, bar, lines or quiet",
                        Location("--progress", path="progress"))
    return Prepared(model, settings, train_set, val_set)


