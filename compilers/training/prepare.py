"""Everything `seqdsl train` checks before it trains: the spec, the data, the options (no torch imported here, so
that ``--nproc`` reports a mistake once, quickly, before it starts any process)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import seqdsl
from seqdsl.errors import Location, SpecError
from seqdsl.ir import Model

from .. import normalise
from ..build import check_size
from .data import Dataset, check, read_npz
from .options import Settings, TrainOptions, check_run_options, resolve


@dataclass
class Prepared:
    model: Model
    settings: Settings
    train: Dataset
    val: Dataset | None
    out: Path  # the build's directory (as given, or build/<name>)
    work: Path  # the work folder, checked (symlinks followed)
    normalisation: normalise.Normalisation | None = None  # the statistics the data files carry


def prepare(spec: str | Path, data: str | Path, sizes: dict[str, int] | None = None, val: str | Path | None = None,
            options: TrainOptions | None = None, out_dir: str | Path | None = None) -> Prepared:
    """Load the spec and check the data and options against it, and that the build may publish into ``out_dir``
    (default ``build/<name>``): every user mistake surfaces here (SpecError, OutputError), before any process
    starts or any step runs."""
    from ..publish import output_dir
    from . import workdir

    options = options or TrainOptions()
    check_run_options(options)
    check_provider(options.provider, usable=options.build)
    model = seqdsl.load(spec, sizes, root=options.root)
    out = Path(out_dir) if out_dir is not None else Path("build") / model.name
    if options.build:
        output_dir(out, spec)
    work = Path(options.work_dir) if options.work_dir is not None else out.with_name(out.name + ".train")
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0:  # the other ranks write nothing
        work = workdir.checked(work, spec, out if options.build else None, options.resume, options.fresh)
    check_size(model, options.max_params)
    arrays = read_npz(data, "--data", options.max_data)
    settings = resolve(model, options, arrays)
    train_set = check(model, arrays, str(data), settings.target)
    val_arrays = read_npz(val, "--val", options.max_data) if val is not None else None
    val_set = check(model, val_arrays, str(val), settings.target) if val_arrays is not None else None
    if val_set is not None and (train_set.mask is None) != (val_set.mask is None):
        has, lacks = (train_set, val_set) if val_set.mask is None else (val_set, train_set)
        raise SpecError("E0702", f"{has.file} holds `{has.mask}` and {lacks.file} does not: training and validation "
                        "would count different target elements", Location(lacks.file, path=has.mask),
                        hint="give both files the mask, or neither")
    target = settings.target
    stats = normalise.read(arrays, model, target.name, target.output, target.loss, str(data))
    if val_arrays is not None:
        normalise.check_same(stats, normalise.read(val_arrays, model, target.name, target.output, target.loss,
                                                   str(val)), str(val))
    if options.raw_io and stats is None:
        raise SpecError("E0710", f"--raw-io: {data} carries no normalisation statistics", Location(str(data),
                        path="--raw-io"), hint="write the data with `seqdsl data csv` (it stores x_mean, x_std, "
                                               "target_mean, target_std), or drop --raw-io")
    if options.metrics_format not in ("csv", "jsonl"):
        raise SpecError("E0707", f"--metrics-format {options.metrics_format!r}: csv or jsonl",
                        Location("--metrics-format", path="metrics_format"))
    if options.progress not in ("auto", "bar", "lines", "quiet"):
        raise SpecError("E0707", f"--progress {options.progress!r}: auto, bar, lines or quiet",
                        Location("--progress", path="progress"))
    if val_set is None:
        for needs, name in ((options.early_stop is not None, "early_stop"), (settings.schedule == "plateau",
                            "schedule"), (options.use == "best" and options.use_given, "use")):
            if needs:
                shown = {"early_stop": "--early-stop", "schedule": "--schedule plateau", "use": "--use best"}[name]
                raise SpecError("E0707", f"{shown} watches the validation loss, and there is no validation data",
                                Location(f"--{name.replace('_', '-')}", path=name),
                                hint="give --val FILE.npz")
    return Prepared(model, settings, train_set, val_set, out, work, stats)


def check_provider(provider: str | None, usable: bool = True) -> None:
    """The onnxruntime provider of the final build's check: a known name and (``usable``) one that works here,
    before any training (E0707)."""
    from ..onnx_runtime import RuntimeUnavailable, _normalize, available_providers

    try:
        available_providers(provider) if usable else _normalize(provider)
    except (ValueError, RuntimeUnavailable) as exc:
        raise SpecError("E0707", f"--provider: {exc}", Location("--provider", path="provider")) from None


