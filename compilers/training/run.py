"""`seqdsl train`: a spec and an ``.npz`` in, a trained and checked build directory out, on Lightning's Trainer.

    result = train("specs/adding_lstm.yaml", "train.npz", "build/adding", val="val.npz",
                   options=TrainOptions(steps=2000, lr=1e-2, schedule="cosine", warmup=100))

The steps: every check first (`prepare`: spec, data, options, the build's directory and the work folder); then
Lightning's ``Trainer`` fits a `SpecModule` over the run's batch plan (`batches.RunBatches`), validating every
``eval_every`` steps and at the end; ``ModelCheckpoint`` keeps ``last.ckpt`` and ``best.ckpt`` (lowest validation
loss), ``EarlyStopping`` stops a run that no longer improves; finally ``DIR`` is built with the best weights (or
the last, ``use="last"``) exactly as ``seqdsl build --weights`` does, and build.json says which step and value.
Metrics, plot and checkpoints go to the work folder (``DIR.train`` unless told), so that ``DIR`` holds the build.

On several processes (``nproc``, or under torchrun) Lightning's DDP strategy runs it: gloo on the CPU, NCCL on
GPUs; every process trains, rank 0 alone writes. Ctrl-C stops at the next optimiser step, saves ``last.ckpt`` and
raises `Interrupted`; ``resume=True`` then continues bit for bit as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar

from seqdsl.datafiles import MAX_DATA_BYTES, DataFileError
from seqdsl.errors import Location, SpecError

from ..build import BuildResult
from . import workdir
from .batches import EvalBatches, Loader, Rows, RunBatches, epoch_plan
from .data import Dataset
from .module import CHECKPOINT_FORMAT, SpecModule
from .objective import baseline, real_values
from .options import TrainOptions, check_warmup
from .prepare import Prepared, prepare
from .report import MetricsLog, plot, progress_mode


class Interrupted(Exception):
    """Ctrl-C during training: the run stopped after an optimiser step and saved it (exit 130)."""


@dataclass
class TrainResult:
    name: str
    out_dir: str
    work_dir: str
    loss: str  # cross_entropy | mse
    steps: int
    epochs: float
    seconds: float
    world_size: int
    rank: int  # this process's (0 alone writes files and holds `build`)
    replica_max_diff: float | None  # under DDP: the largest difference of any weight from rank 0's (0 when in step)
    train: dict[str, float]  # the last logged interval: loss (and accuracy)
    val: dict[str, float] | None  # the final validation: loss (and accuracy)
    baseline: float  # the trivial model on the validation data (else the training data): MSE or accuracy
    weights: dict[str, Any] = field(default_factory=dict)  # the checkpoint the build took: which, its step, value
    stopped_early: bool = False
    files: list[str] = field(default_factory=list)  # in the work directory
    build: BuildResult | None = None  # rank 0's


def train(spec: str | Path, data: str | Path, out_dir: str | Path | None = None, sizes: dict[str, int] | None = None,
          val: str | Path | None = None, options: TrainOptions | None = None,
          prepared: Prepared | None = None) -> TrainResult:
    """Train ``spec`` on ``data`` and build ``out_dir`` (default ``build/<name>``) with the trained weights
    (``prepared``: what `prepare` gave for these arguments, if it ran already)."""
    options = options or TrainOptions()
    prepared = prepared or prepare(spec, data, sizes, val, options, out_dir)
    threads = torch.get_num_threads()
    joined = _distributed()  # a process group the caller made is the caller's
    try:
        torch.set_num_threads(_threads(prepared, options))
        with _quiet_lightning():
            return _Run(spec, sizes, prepared, options).run()
    finally:
        torch.set_num_threads(threads)  # a library call leaves the process as it found it
        if not joined and _distributed():
            _end_process_group()


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _end_process_group() -> None:
    """Close the process group Lightning opened for this run, now rather than at the interpreter's exit: DDP's
    reducer holds the gloo group, and a group whose threads still run while Python shuts down aborts the process
    ("terminate called without an active exception", SIGABRT) at random under load."""
    import gc

    gc.collect()  # the run's DistributedDataParallel wrapper, in reference cycles, goes first
    torch.distributed.destroy_process_group()


def _threads(prepared: Prepared, options: TrainOptions) -> int:
    """The rule of `seqdsl.compilers.threads` for this run (``--threads`` wins); rank 0 says what the rule chose."""
    from ..threads import choose_threads, describe, step_work

    processes = max(options.nproc, int(os.environ.get("WORLD_SIZE", "1")))
    batch = max(1, prepared.settings.batch_size // processes)
    threads, why = choose_threads(step_work(prepared.model.param_count, batch), options.threads,
                                  processes=processes)
    if options.threads is None and int(os.environ.get("RANK", "0")) == 0 and options.progress != "quiet":
        print(describe(threads, why), file=sys.stderr, flush=True)
    return threads


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's start-up banner (devices, tips) and the warnings that do not apply here stay out of the output."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for text in (".*does not have many workers.*", ".*Checkpoint directory .* exists and is not empty.*",
                     ".*ReduceLROnPlateau conditioned on metric.*", ".*is smaller than the logging interval.*",
                     ".*`training_step` returned `None`.*", ".*GPU available but not used.*",
                     ".*You defined a `validation_step` but have no `val_dataloader`.*", ".*treespec.*LeafSpec.*"):
            warnings.filterwarnings("ignore", message=text)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _env_world() -> tuple[int, int]:
    """(rank, world size) as torchrun or Lightning's launcher set them for this process; (0, 1) alone."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    return rank, int(os.environ.get("WORLD_SIZE", "1") or 1)


def pick_device(asked: str) -> str:
    """Lightning's accelerator for ``--device``."""
    if asked not in ("auto", "cpu", "cuda"):
        raise SpecError("E0707", f"--device {asked!r}: one of auto, cpu, cuda", Location("--device", path="device"))
    if asked == "cuda" and not torch.cuda.is_available():
        raise SpecError("E0707", "--device cuda: no usable CUDA device here", Location("--device", path="device"),
                        hint="use --device cpu (or auto)")
    return "gpu" if asked != "cpu" and torch.cuda.is_available() else "cpu"


class _Run:
    def __init__(self, spec: str | Path, sizes: dict[str, int] | None, prepared: Prepared,
                 options: TrainOptions) -> None:
        self.spec, self.sizes, self.options, self.prepared = spec, sizes, options, prepared
        self.model, self.settings = prepared.model, prepared.settings
        self.train_set, self.val_set = prepared.train, prepared.val
        self.out, self.work = prepared.out, prepared.work
        self.accelerator = pick_device(options.device)
        env_rank, env_world = _env_world()
        self.world = options.nproc if options.nproc > 1 else env_world
        self.main = env_rank == 0
        s = self.settings
        if s.batch_size < self.world:
            raise SpecError("E0707", f"a batch of {s.batch_size} cannot be shared by {self.world} processes",
                            Location("--batch-size", path="batch_size"), hint="the batch size is the global one")
        bucket = options.bucket if options.bucket is not None else bool(self.train_set.lengths)
        self.crop = bucket and bool(self.train_set.lengths)
        self.lengths = self.train_set.sequence_lengths() if self.crop else None
        self.batches_per_epoch = len(epoch_plan(self.train_set.n, s.batch_size, s.seed, 0, self.lengths, self.world))
        if self.batches_per_epoch == 0:
            raise SpecError("E0707", f"the data holds {self.train_set.n} examples: too few for one batch on "
                            f"{self.world} processes", Location(self.train_set.file, path="--data"))
        n = s.accumulate
        self.total = s.steps if s.steps is not None else max(1, (s.epochs or 1) * self.batches_per_epoch // n)
        check_warmup(s.warmup, self.total)  # an --epochs run's step count is known only now, before training
        self.log_every = options.log_every or max(1, self.total // 100)
        self.eval_every = options.eval_every or max(1, self.total // 10)
        self.module = SpecModule(self.model, s, self.total, self.train_set.file)
        self.module.log_to_logger = False  # the metrics rows (`_Rows`) go to the loggers instead

    # -- the run

    def run(self) -> TrainResult:
        s, options = self.settings, self.options
        last = self.work / workdir.LAST
        if options.resume:
            _check_resumable(last, self.module, options.max_data)
        if self.main:
            if options.fresh:
                workdir.clear(self.work)
            # what the run will write, claimed before it writes (a run killed at any point leaves a folder it owns)
            workdir.claim(self.work, [f"metrics.{options.metrics_format}", "metrics.png", workdir.LAST,
                                      *([workdir.BEST] if self.val_set is not None else [])])
        trainer = self._trainer()
        place = lambda: (trainer.global_step * s.accumulate, trainer.global_rank, trainer.world_size)  # noqa: E731
        train_loader = Loader(Rows(self.train_set, self.crop), batch_size=None,
                              sampler=RunBatches(self.train_set.n, s.batch_size, s.seed, self.lengths,
                                                 self.total * s.accumulate, place))
        val_loader = None
        if self.val_set is not None:
            lengths = self.val_set.sequence_lengths() if self.crop else None
            val_loader = Loader(Rows(self.val_set, self.crop), batch_size=None,
                                sampler=EvalBatches(self.val_set.n, s.batch_size, lengths, place))
        began = time.perf_counter()
        with _ctrl_c() as asked:
            self.rows.asked = asked
            try:
                trainer.fit(self.module, train_loader, val_loader, ckpt_path=str(last) if options.resume else None,
                            weights_only=True)
            except _Stop:
                pass
        seconds = time.perf_counter() - began
        if self.rows.interrupted is not None:
            raise Interrupted(f"interrupted at step {self.rows.interrupted} of {self.total}: saved to {last}; "
                              "continue with the same command and --resume")
        return self._finish(trainer, seconds)

    def _trainer(self) -> L.Trainer:
        s, options = self.settings, self.options
        self.rows = _Rows(self)
        callbacks: list[Callback] = [self.rows]
        has_val = self.val_set is not None
        if has_val:
            self.checkpoints = ModelCheckpoint(dirpath=self.work, filename="best", monitor="val_loss", mode="min",
                                               save_top_k=1, save_last=True, auto_insert_metric_name=False,
                                               enable_version_counter=False)
        else:
            self.checkpoints = ModelCheckpoint(dirpath=self.work, save_top_k=0, save_last=True,
                                               every_n_train_steps=self.eval_every, enable_version_counter=False)
        callbacks.append(self.checkpoints)
        if options.early_stop is not None:
            self.early = EarlyStopping(monitor="val_loss", mode="min", patience=options.early_stop,
                                       check_on_train_epoch_end=False)
            callbacks.append(self.early)
        bar = progress_mode(options.progress) == "bar" and self.main
        if bar:
            callbacks.append(_Bar(self.model.name))
        loggers: list[Any] = []
        if options.logger == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(save_dir=str(self.work), name="", version="", default_hp_metric=False))
        devices: Any = 1
        strategy: Any = "auto"
        nodes = 1
        if options.nproc > 1:
            devices, strategy = options.nproc, "ddp"
        elif self.world > 1:  # under torchrun: the processes exist already, Lightning joins them
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
            devices, strategy, nodes = local, "ddp", max(1, self.world // local)
        return L.Trainer(accelerator=self.accelerator, devices=devices, num_nodes=nodes, strategy=strategy,
                         max_steps=self.total, max_epochs=-1, accumulate_grad_batches=s.accumulate,
                         val_check_interval=self.eval_every * s.accumulate if has_val else None,
                         check_val_every_n_epoch=None if has_val else 1, limit_val_batches=1.0 if has_val else 0,
                         num_sanity_val_steps=0, logger=loggers or False, callbacks=callbacks,
                         enable_progress_bar=bar, enable_model_summary=False, use_distributed_sampler=False,
                         log_every_n_steps=1, gradient_clip_val=None, default_root_dir=str(self.work))

    # -- the end: plot, build

    def _finish(self, trainer: L.Trainer, seconds: float) -> TrainResult:
        s = self.settings
        reference = self.val_set or self.train_set
        name = s.target.name
        trivial = baseline(s.target, _real(self.train_set, name), _real(reference, name))
        steps = trainer.global_step
        val = self.module.val_metrics if self.val_set is not None else None
        result = TrainResult(name=self.model.name, out_dir=str(self.out), work_dir=str(self.work),
                             loss=s.target.loss, steps=steps,
                             epochs=steps * s.accumulate / self.batches_per_epoch, seconds=seconds,
                             world_size=trainer.world_size, rank=trainer.global_rank,
                             replica_max_diff=self.rows.replica_diff, train=self.rows.last_train, val=val,
                             baseline=trivial, stopped_early=steps < self.total)
        if trainer.global_rank != 0:
            return result
        plot_path = self.work / "metrics.png"
        plot(self.rows.metrics.rows, plot_path, f"{self.model.name}: {Path(str(self.spec)).name}",
             "MSE" if s.target.loss == "mse" else "cross entropy", self.module.objective.has_accuracy, trivial)
        result.files = sorted(p.name for p in self.work.iterdir() if workdir.writes(p.name))
        workdir.claim(self.work, result.files)
        result.weights = self._chosen(steps)
        if self.options.build:
            result.build = self._build(result.weights)
        return result

    def _chosen(self, last_step: int) -> dict[str, Any]:
        """Which checkpoint the build takes: the best on the validation loss (when there is validation data and
        ``use`` is best), else the last."""
        best = self.work / workdir.BEST
        if self.options.use == "best" and self.val_set is not None and best.is_file():
            stored = _load(best, self.options.max_data)
            return {"checkpoint": workdir.BEST, "use": "best", "step": int(stored.get("global_step", 0)),
                    "monitor": "val_loss", "value": float(self.checkpoints.best_model_score),
                    "last_step": last_step}
        why = "asked (--use last)" if self.options.use == "last" else "no validation data (--val)"
        return {"checkpoint": workdir.LAST, "use": "last", "step": last_step, "reason": why}

    def _build(self, chosen: dict[str, Any]) -> BuildResult:
        from ..build import build
        from ..weights import checkpoint_weights

        weights = checkpoint_weights(self.work / chosen["checkpoint"], self.options.max_data)
        return build(self.spec, self.out, self.sizes, provider=self.options.provider,
                     max_params=self.options.max_params, weights=weights, training=chosen,
                     normalisation=self.prepared.normalisation, raw_io=self.options.raw_io,
                     root=self.options.root)


def _real(dataset: Dataset, name: str) -> np.ndarray:
    symbols = dataset.axes[name]
    lengths = dataset.arrays[dataset.lengths[symbols[0]]] if symbols and symbols[0] in dataset.lengths else None
    mask = dataset.arrays[dataset.mask] if dataset.mask is not None else None
    return real_values(dataset.arrays[name], lengths, mask)


def _load(path: Path, max_bytes: int = MAX_DATA_BYTES) -> dict[str, Any]:
    """A Lightning checkpoint, bounded before it is read and read without unpickling any object (tensors and plain
    containers only): `seqdsl.compilers.weights.load_checkpoint`."""
    from ..weights import load_checkpoint

    return load_checkpoint(path, max_bytes)


def _check_resumable(path: Path, module: SpecModule, max_bytes: int = MAX_DATA_BYTES) -> None:
    """``--resume``: the checkpoint is seqdsl's, written for this model and these options (E0708)."""
    where = Location(str(path), path="--resume")
    try:
        stored = _load(path, max_bytes)
    except Exception as exc:  # noqa: BLE001 - an unreadable or hostile file is the user's to replace
        reason = exc.line() if isinstance(exc, DataFileError) else \
            (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SpecError("E0708", f"--resume: {path} is not a readable checkpoint ({reason})", where) from None
    meta = stored.get("seqdsl") if isinstance(stored, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise SpecError("E0708", f"--resume: {path} is not a seqdsl checkpoint", where)
    fingerprint = module.settings.fingerprint()
    found = meta.get("fingerprint") or {}
    if meta.get("model") != module.model.name or found != fingerprint:
        differ = {k: (found.get(k), v) for k, v in fingerprint.items() if found.get(k) != v}
        what = f"model `{meta.get('model')}`" if meta.get("model") != module.model.name else \
            ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in differ.items())
        raise SpecError("E0708", f"--resume: the checkpoint was written for {what}", where,
                        hint="resume with the options of the run that wrote it, or start again with --fresh")
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in (stored.get("state_dict") or {}).items()}
    if got != expected:
        raise SpecError("E0708", "--resume: the checkpoint's weights do not fit the model", where,
                        hint="resume with the spec and --set sizes of the run that wrote it")


@contextlib.contextmanager
def _ctrl_c() -> Iterator[list[bool]]:
    """While training, Ctrl-C asks the run to stop after the current optimiser step (a second one stops at once)."""
    asked = [False]

    def handler(signum: int, frame: Any) -> None:
        if asked[0]:
            raise KeyboardInterrupt
        asked[0] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: Ctrl-C is not ours to handle
        yield asked
        return
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)


class _Rows(Callback):
    """Per optimiser step: the metrics rows (metrics.csv/jsonl and any Lightning logger), the plain progress
    lines, a validation at the last step, Ctrl-C, and under DDP the replicas' agreement at the end."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.asked: list[bool] = [False]
        self.interrupted: int | None = None
        self.replica_diff: float | None = None
        self.last_train: dict[str, float] = {}
        self.metrics: Any = None
        self.pending: dict[str, Any] | None = None
        self.lines = progress_mode(run.options.progress) == "lines" and run.main

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        run = self.run
        self.began = self.interval_began = time.perf_counter()
        self.interval = torch.zeros(3, dtype=torch.float64)
        self.examples, self.seen_step = 0, trainer.global_step
        if trainer.is_global_zero:
            path = run.work / f"metrics.{run.options.metrics_format}"
            self.metrics = MetricsLog(path, keep_until=trainer.global_step if run.options.resume else None)
            for logger in trainer.loggers:
                getattr(logger, "experiment", None)  # TensorBoard makes its event file now: claim it
            workdir.claim(run.work, [path.name] + [p.name for p in run.work.iterdir() if workdir.writes(p.name)])
        if self.lines:
            print(f"train {run.model.name}: steps {trainer.global_step + 1}-{run.total}", file=sys.stderr, flush=True)

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        run = self.run
        if module.last_stats is not None:
            self.interval += module.last_stats.detach().cpu()
        self.examples += len(next(iter(batch.values()))) * trainer.world_size
        step = trainer.global_step
        if step == self.seen_step:  # inside an accumulation: no optimiser step yet
            return
        self.seen_step = step
        if trainer.world_size > 1:
            flag = torch.tensor([float(self.asked[0])], device=module.device)
            self.asked[0] = bool(trainer.strategy.reduce(flag, reduce_op="sum").item())
        evaluates = run.val_set is not None and (step % run.eval_every == 0 or step == run.total)
        if step == run.total and run.val_set is not None and step % run.eval_every:
            trainer.should_stop = True  # Lightning validates once more before it stops: the last step's figures
        # Ctrl-C on a step that validates waits for the next step: the saved state then holds that validation (the
        # best checkpoint, plateau, early stopping), as the uninterrupted run's does; with --eval-every 1 it skips it
        stop = self.asked[0] and (not evaluates or run.eval_every == 1)
        if step % run.log_every == 0 or evaluates or step == run.total or stop:
            row = self._row(trainer, module, step)
            if evaluates and not stop:
                self.pending = row  # completed by this step's validation
            else:
                self._write(trainer, row)
        if stop:
            self.interrupted = step
            trainer.save_checkpoint(str(run.work / "last.ckpt"))
            trainer.should_stop = True
            raise _Stop

    def on_validation_end(self, trainer: L.Trainer, module: Any) -> None:
        if self.pending is not None and getattr(module, "val_metrics", None):
            row, self.pending = self.pending, None
            row["val_loss"] = module.val_metrics["loss"]
            row["val_accuracy"] = module.val_metrics.get("accuracy")
            self._write(trainer, row)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        if self.pending is not None:
            self._write(trainer, self.pending)
            self.pending = None
        if trainer.world_size > 1:
            import torch.distributed as dist

            flat = torch.cat([p.detach().reshape(-1) for p in module.net.parameters()])
            reference = flat.clone()
            dist.broadcast(reference, 0)
            gap = (flat - reference).abs().max()
            dist.all_reduce(gap, op=dist.ReduceOp.MAX)
            self.replica_diff = float(gap)
        if self.interrupted is None and trainer.global_step != _saved_step(self.run.checkpoints):
            trainer.save_checkpoint(str(self.run.work / "last.ckpt"))  # the final state, whatever the interval

    def _row(self, trainer: L.Trainer, module: Any, step: int) -> dict[str, Any]:
        loss, count, correct = (float(v) for v in self.interval)
        self.last_train = {"loss": loss / count if count else math.nan}
        if module.objective.has_accuracy:
            self.last_train["accuracy"] = correct / count if count else math.nan
        now = time.perf_counter()
        rate = self.examples / max(now - self.interval_began, 1e-9)
        self.interval.zero_()
        self.examples, self.interval_began = 0, now
        s = self.run.settings
        return {"step": step, "epoch": (step * s.accumulate - 1) // self.run.batches_per_epoch + 1,
                "loss": self.last_train["loss"], "accuracy": self.last_train.get("accuracy"),
                "grad_norm": module.last_grad_norm, "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "examples_per_s": rate, "seconds": now - self.began}

    def _write(self, trainer: L.Trainer, row: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(row)
        for logger in trainer.loggers:
            logger.log_metrics({k: float(v) for k, v in row.items() if v is not None and k != "step"}, row["step"])
        if self.lines and row.get("val_loss") is not None or self.lines and row["step"] == self.run.total:
            parts = [f"step {row['step']}/{self.run.total}", f"epoch {row['epoch']}", f"loss {row['loss']:.4g}"]
            for key in ("accuracy", "val_loss", "val_accuracy"):
                if row.get(key) is not None:
                    parts.append(f"{key} {row[key]:.4g}")
            parts.append(f"{row['examples_per_s']:,.0f} ex/s")
            print("  ".join(parts), file=sys.stderr, flush=True)


class _Bar(RichProgressBar):
    """Lightning's rich bar, titled by the model: a run here is one long epoch of steps (its count is the bar's)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.title = f"train {name}"

    def _get_train_description(self, current_epoch: int) -> str:
        return self.title


class _Stop(Exception):
    """Raised from a callback to end `fit` at once after Ctrl-C (Lightning tears down and re-raises it)."""


def _saved_step(checkpoints: ModelCheckpoint) -> int | None:
    return getattr(checkpoints, "_last_global_step_saved", None)


def summary_lines(result: TrainResult) -> list[str]:
    """What `seqdsl train` prints at the end."""
    metric = "MSE" if result.loss == "mse" else "cross entropy"
    lines = [f"trained {result.name}: {result.steps:,} steps ({result.epochs:.2f} epochs) in {result.seconds:.1f} s"
             + (f" on {result.world_size} processes" if result.world_size > 1 else "")
             + (" (stopped early: no better validation loss)" if result.stopped_early else "")]
    lines.append(f"  train {metric} {result.train.get('loss', math.nan):.4g}"
                 + (f", accuracy {result.train['accuracy']:.4f}" if "accuracy" in result.train else ""))
    if result.val is not None:
        lines.append(f"  validation {metric} {result.val['loss']:.4g}"
                     + (f", accuracy {result.val['accuracy']:.4f}" if "accuracy" in result.val else ""))
    scored = "validation" if result.val is not None else "training"
    trivial = "predicting the training mean: MSE" if result.loss == "mse" else \
        f"always the training data's most frequent class: accuracy on the {scored} data"
    lines.append(f"  trivial baseline ({trivial}) {result.baseline:.4g}")
    lines.append(f"  metrics, plot, checkpoints: {result.work_dir}/ ({', '.join(result.files)})")
    if result.replica_max_diff is not None:
        lines.append(f"  replicas: largest weight difference from rank 0: {result.replica_max_diff:.3g}")
    chosen = result.weights
    if chosen.get("use") == "best":
        lines.append(f"  weights: the best, from step {chosen['step']:,} (validation {metric} {chosen['value']:.4g})")
    elif chosen:
        lines.append(f"  weights: the last, step {chosen['step']:,} ({chosen['reason']})")
    if result.build is None:
        lines.append(f"  no build (--no-build): build it with seqdsl build SPEC --weights "
                     f"{result.work_dir}/{chosen.get('checkpoint', workdir.BEST)}")
    else:
        from ..parity import check_line

        lines.append(f"  build: {result.build.out_dir}/ ({', '.join(result.build.files)}); onnxruntime vs PyTorch "
                     f"with the trained weights: {check_line(result.build.check)}")
    return lines


__all__ = ["train", "prepare", "TrainResult", "TrainOptions", "Interrupted", "summary_lines"]
