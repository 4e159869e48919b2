"""The options of `seqdsl train`: the command line's, else the spec's ``train:`` section's, else the defaults.

`resolve` settles them against the model and the data's targets, and reports a choice that cannot work as one
located error (E0707): on the spec's line when the spec made it, on the option when the command line did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqdsl.datafiles import MAX_DATA_BYTES
from seqdsl.errors import Location, SpecError, did_you_mean
from seqdsl.ir import Model

from .data import Target

DEFAULTS: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "clip": 1.0, "target": "target",
                            "epochs": 10}
LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "cosine", "step", "plateau")
USES = ("best", "last")
LOGGERS = ("csv", "tensorboard")
SEED_RANGE = (0, 2**32 - 1)  # numpy's and torch's seeds alike
#: The most optimiser steps a run (or its warm-up) may count: beyond any run a machine finishes, and an int64.
MAX_STEPS = 10**12


@dataclass
class TrainOptions:
    """Everything `seqdsl train` takes besides the spec, the data and the output directory. ``None`` means: the
    spec's ``train:`` section, else `DEFAULTS`."""

    loss: str | None = None  # cross_entropy | mse; by default from the targets' dtype
    target: str | None = None  # the targets' array in the data (default `target`)
    output: str | None = None  # the model output the loss reads (default: the only one, else the first)
    optimizer: str | None = None  # adam | sgd
    lr: float | None = None
    batch_size: int | None = None  # the global batch: split over the processes under DDP
    steps: int | None = None
    epochs: int | None = None
    clip: float | None = None  # largest global gradient norm; 0 turns clipping off
    momentum: float = 0.0  # SGD's
    seed: int = 0
    weight_decay: float = 0.0  # decoupled (AdamW) for adam; SGD's own for sgd
    schedule: str = "none"  # none | cosine | step | plateau (the learning rate over the run)
    warmup: int = 0  # optimiser steps of linear warm-up before the schedule
    accumulate: int = 1  # batches whose gradients make one optimiser step
    early_stop: int | None = None  # validations without a better validation loss before the run stops
    use_given: bool = False  # whether `use` was asked for (best is then an error without validation data)
    nproc: int = 1  # processes on this machine (Lightning's DDP strategy starts them)
    use: str = "best"  # the checkpoint the build takes: best (on the validation loss) | last
    logger: str = "csv"  # csv (metrics.csv/jsonl alone) | tensorboard (also TensorBoard event files)
    fresh: bool = False  # replace an earlier run's checkpoints and metrics in the work directory
    bucket: bool | None = None  # length bucketing; by default on when the model has `lengths:`
    metrics_format: str = "csv"  # csv | jsonl
    log_every: int | None = None  # steps between metrics rows (default: about 100 rows per run)
    eval_every: int | None = None  # steps between validations and checkpoints (default: about 10 per run)
    resume: bool = False
    work_dir: Path | None = None  # metrics, plot, checkpoint (default: <DIR>.train beside the build)
    device: str = "auto"  # auto | cpu | cuda
    progress: str = "auto"  # auto (a bar on a terminal, lines otherwise) | bar | lines | quiet
    threads: int | None = None
    provider: str | None = None  # onnxruntime provider of the final build's check
    max_params: int = 100_000_000
    max_data: int = MAX_DATA_BYTES  # the bytes the arrays of each data file may declare (seqdsl.datafiles)
    build: bool = True  # build DIR with the trained weights at the end (off: the weights stay in the checkpoint)
    raw_io: bool = False  # fold the data's normalisation statistics into model.onnx (seqdsl.compilers.normalise)
    root: Path | None = None  # the folder imports may read from (default: the spec's folder; --root)


@dataclass(frozen=True)
class Settings:
    """The options that decide what is computed, settled."""

    target: Target
    optimizer: str
    lr: float
    batch_size: int
    steps: int | None
    epochs: int | None
    clip: float
    momentum: float
    seed: int
    weight_decay: float = 0.0
    schedule: str = "none"
    warmup: int = 0
    accumulate: int = 1

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must agree with to be resumed."""
        return {"optimizer": self.optimizer, "target": self.target.name, "output": self.target.output,
                "loss": self.target.loss, "accumulate": self.accumulate}


def _option_loc(name: str) -> Location:
    return Location(f"--{name.replace('_', '-')}", path=name)


def resolve(model: Model, options: TrainOptions, arrays: dict[str, np.ndarray]) -> Settings:
    """Settle the options for ``model`` and the training ``arrays`` (whose targets' dtype gives the default loss;
    a missing target array is `data.check`'s to report)."""
    spec = model.train.values

    def pick(name: str) -> tuple[Any, Location]:
        given = getattr(options, name)
        if given is not None:
            return given, _option_loc(name)
        if name in spec:
            return spec[name], model.train.locs[name]
        return DEFAULTS.get(name), _option_loc(name)

    def fail(message: str, loc: Location, **kw: Any) -> SpecError:
        return SpecError("E0707", message, loc, **kw)

    outputs = model.graph.outputs
    output, out_loc = pick("output")
    if output is None:
        output = next(iter(outputs))
    elif output not in outputs:
        raise fail(f"the model has no output `{output}`", out_loc, expected=", ".join(f"`{o}`" for o in outputs),
                   hint=did_you_mean(output, outputs) or "name one of the outputs the spec declares")
    node = model.graph[outputs[output]]
    target_name, _ = pick("target")
    targets = arrays.get(target_name)
    loss, loss_loc = pick("loss")
    if loss is None:
        floating = targets is not None and np.issubdtype(targets.dtype, np.floating)
        loss = "mse" if floating or targets is None else "cross_entropy"
    elif loss not in LOSSES:
        raise fail(f"unknown loss `{loss}`", loss_loc, expected=" or ".join(LOSSES), hint=did_you_mean(loss, LOSSES))
    if node.dtype != "float32":
        raise fail(f"output `{output}` is {node.dtype} (ids), not a value a loss can differentiate", out_loc,
                   hint="train on the output of logits or values, e.g. before an argmax")
    if loss == "cross_entropy":
        if len(node.shape) < 2 or not isinstance(node.shape[-1], int) or node.shape[-1] < 2:
            raise fail(f"cross entropy needs an output whose last axis holds two classes or more; `{output}` is "
                       f"[{', '.join(map(str, node.shape))}]", loss_loc,
                       hint="use --loss mse for real-valued targets")
        target = Target(target_name, output, loss, tuple(node.shape[:-1]), int(node.shape[-1]))
    else:
        target = Target(target_name, output, loss, tuple(node.shape), None)
    if target_name in model.inputs:
        raise fail(f"the targets `{target_name}` have the name of a model input", _option_loc("target"),
                   hint="store the targets under another name and pass --target NAME")

    from_cli = options.steps is not None or options.epochs is not None
    steps, epochs = (options.steps, options.epochs) if from_cli else (spec.get("steps"), spec.get("epochs"))
    if steps is not None and epochs is not None:
        where = _option_loc("steps") if from_cli else model.train.locs["steps"]
        raise fail("both steps and epochs are given; a run is one or the other", where,
                   hint="keep --steps N (optimiser steps) or --epochs N (passes over the data)")
    if steps is None and epochs is None:
        epochs = DEFAULTS["epochs"]
    optimizer, opt_loc = pick("optimizer")
    if optimizer not in OPTIMIZERS:
        raise fail(f"unknown optimiser `{optimizer}`", opt_loc, expected=" or ".join(OPTIMIZERS),
                   hint=did_you_mean(str(optimizer), OPTIMIZERS))
    lr, lr_loc = pick("lr")
    batch_size, batch_loc = pick("batch_size")
    clip, clip_loc = pick("clip")
    for value, loc, what, positive in [(lr, lr_loc, "the learning rate", True), (batch_size, batch_loc,
                                       "the batch size", True), (clip, clip_loc, "the clipping norm", False),
                                       (steps, _option_loc("steps"), "the step count", True),
                                       (epochs, _option_loc("epochs"), "the epoch count", True)]:
        if value is not None and not (value > 0 if positive else value >= 0):  # also refuses NaN
            raise fail(f"{what} must be {'positive' if positive else 'zero or positive'}, got {value}", loc)
    if options.momentum < 0 or (options.momentum and optimizer != "sgd"):
        raise fail("--momentum is SGD's, zero or positive", _option_loc("momentum"))
    if steps is not None and steps > MAX_STEPS:
        raise fail(f"the step count must be at most {MAX_STEPS}, got {steps}", _option_loc("steps"))
    if epochs is not None and epochs > MAX_STEPS:
        raise fail(f"the epoch count must be at most {MAX_STEPS}, got {epochs}", _option_loc("epochs"))
    check_run_options(options)
    if steps is not None:
        check_warmup(options.warmup, int(steps))
    return Settings(target, optimizer, float(lr), int(batch_size), steps, epochs, float(clip),
                    float(options.momentum), int(options.seed), float(options.weight_decay), options.schedule,
                    int(options.warmup), int(options.accumulate))


def check_warmup(warmup: int, total: int) -> None:
    """A warm-up shorter than the run (``total`` optimiser steps, known from --steps, or from --epochs once the
    data is read), else one E0707 naming --warmup: a run that is all warm-up never reaches its learning rate."""
    if warmup and warmup >= total:
        raise SpecError("E0707", f"--warmup {warmup} is not shorter than the run's {total} optimiser steps",
                        _option_loc("warmup"), hint="give fewer warm-up steps than the run has, or more --steps")


def check_run_options(options: TrainOptions) -> None:
    """The options that need neither the model nor the data: each bad value is one E0707 naming the option."""
    def fail(name: str, message: str, hint: str | None = None) -> SpecError:
        return SpecError("E0707", f"--{name.replace('_', '-')} {message}", _option_loc(name), hint=hint)

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    low, high = SEED_RANGE
    if not whole(options.seed) or not low <= options.seed <= high:
        raise fail("seed", f"expects an integer in [{low}, {high}], got {options.seed!r}")
    decay = options.weight_decay
    if not isinstance(decay, (int, float)) or not 0 <= decay < float("inf"):  # also refuses NaN
        raise fail("weight_decay", f"expects a finite number, zero or positive, got {decay!r}",
                   hint="AdamW's decoupled weight decay, e.g. --weight-decay 0.01")
    for name, choices in (("schedule", SCHEDULES), ("use", USES), ("logger", LOGGERS)):
        value = getattr(options, name)
        if value not in choices:
            raise fail(name, f"expects one of {', '.join(choices)}, got {value!r}",
                       hint=did_you_mean(str(value), choices))
    if not whole(options.warmup) or not 0 <= options.warmup <= MAX_STEPS:
        raise fail("warmup", f"expects a number of steps in [0, {MAX_STEPS}], got {options.warmup!r}")
    if not whole(options.accumulate) or options.accumulate < 1:
        raise fail("accumulate", f"expects a positive number of batches, got {options.accumulate!r}")
    if options.early_stop is not None and (not whole(options.early_stop) or options.early_stop < 1):
        raise fail("early_stop", f"expects a positive number of validations (the patience), got "
                                 f"{options.early_stop!r}")
    if options.resume and options.fresh:
        raise fail("fresh", "replaces the run that --resume continues: give one or the other")
