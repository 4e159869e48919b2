"""`seqdsl train`: a spec and an ``.npz`` in, a trained and checked build directory out.

    result = train("specs/adding_lstm.yaml", "train.npz", "build/adding", val="val.npz",
                   options=TrainOptions(steps=2000, lr=1e-2))

The steps: load the spec and check the data against it (every mistake is one SpecError, before any step); make
the module (the generated ``model.py``, so what trains is what ships); run the optimiser over the batch plan
(`batches`), clipping the global gradient norm; validate, log and checkpoint now and then; finally build ``DIR``
with the trained weights exactly as ``seqdsl build --weights`` does (model.py, weights.safetensors, model.onnx,
checked in onnxruntime against PyTorch). Metrics, plot and checkpoint go to the work directory (``DIR.train``
unless told), so that ``DIR`` holds the build and nothing else.

Under torchrun (or ``--nproc``) every process runs this; DDP averages the gradients and rank 0 alone writes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from seqdsl.errors import Location, SpecError

from ..build import BuildResult
from . import checkpoint as ckpt
from .batches import epoch_plan, shard, take
from .data import Dataset
from .distributed import World, join, leave
from .objective import Objective, baseline, real_values
from .options import TrainOptions
from .prepare import Prepared, prepare
from .report import MetricsLog, Progress, plot


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
    files: list[str] = field(default_factory=list)  # in the work directory
    build: BuildResult | None = None  # rank 0's


def train(spec: str | Path, data: str | Path, out_dir: str | Path | None = None, sizes: dict[str, int] | None = None,
          val: str | Path | None = None, options: TrainOptions | None = None) -> TrainResult:
    """Train ``spec`` on ``data`` and build ``out_dir`` (default ``build/<name>``) with the trained weights."""
    options = options or TrainOptions()
    prepared = prepare(spec, data, sizes, val, options, out_dir)
    threads = torch.get_num_threads()
    world = join(options.device)
    try:
        if options.threads:
            torch.set_num_threads(options.threads)
        return _Run(spec, sizes, out_dir, prepared, options, world).run()
    finally:
        torch.set_num_threads(threads)  # a library call leaves the process as it found it
        leave(world)


class _Run:
    def __init__(self, spec: str | Path, sizes: dict[str, int] | None, out_dir: str | Path | None,
                 prepared: Prepared, options: TrainOptions, world: World) -> None:
        from .. import torch_module

        self.spec, self.sizes, self.options, self.world = spec, sizes, options, world
        self.model, self.settings = prepared.model, prepared.settings
        self.train_set, self.val_set = prepared.train, prepared.val
        self.out = Path(out_dir) if out_dir is not None else Path("build") / self.model.name
        self.work = Path(options.work_dir) if options.work_dir is not None else \
            self.out.with_name(self.out.name + ".train")
        s = self.settings
        if s.batch_size < world.size:
            raise SpecError("E0707", f"a batch of {s.batch_size} cannot be shared by {world.size} processes",
                            Location("--batch-size", path="batch_size"), hint="the batch size is the global one")
        torch.manual_seed(s.seed)
        cls = torch_module.module_class(self.model)
        self.net = cls().to(world.device)
        self.output_index = list(cls.output_names).index(s.target.output)
        self.objective = Objective(s.target, self.train_set, self.output_index)
        bucket = options.bucket if options.bucket is not None else bool(self.train_set.lengths)
        self.crop = bucket and bool(self.train_set.lengths)
        self.lengths = self.train_set.sequence_lengths() if self.crop else None
        self.steps_per_epoch = len(epoch_plan(self.train_set.n, s.batch_size, s.seed, 0, self.lengths, world.size))
        if self.steps_per_epoch == 0:
            raise SpecError("E0707", f"the data holds {self.train_set.n} examples: too few for one batch on "
                            f"{world.size} processes", Location(self.train_set.file, path="--data"))
        self.total = s.steps if s.steps is not None else (s.epochs or 1) * self.steps_per_epoch
        self.log_every = options.log_every or max(1, self.total // 100)
        self.eval_every = options.eval_every or max(1, self.total // 10)
        params = list(self.net.parameters())
        if s.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=s.lr)
        else:
            self.optimizer = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum)
        self.data = {k: torch.from_numpy(v).to(world.device) for k, v in self.train_set.arrays.items()}
        self.val_data = ({k: torch.from_numpy(v).to(world.device) for k, v in self.val_set.arrays.items()}
                         if self.val_set is not None else None)

    # -- the loop

    def run(self) -> TrainResult:
        world, s = self.world, self.settings
        start = 0
        if self.options.resume:
            found = ckpt.load(self.work / ckpt.FILE, self.model.name, s.fingerprint(), self.net)
            ckpt.restore(found, self.net, self.optimizer)
            start = found.step
        if world.main:
            self.work.mkdir(parents=True, exist_ok=True)
        metrics_path = self.work / f"metrics.{self.options.metrics_format}"
        log = MetricsLog(metrics_path, keep_until=start if self.options.resume else None) if world.main else None
        model = self.net
        if world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            on_gpu = world.device.type == "cuda"
            model = DistributedDataParallel(self.net, device_ids=[world.device] if on_gpu else None)
        progress = Progress(self.options.progress if world.main else "quiet", self.total, start,
                            f"train {self.model.name}")
        began = time.perf_counter()
        interval = torch.zeros(3, dtype=torch.float64, device=world.device)
        interval_examples, interval_began = 0, time.perf_counter()
        last_train: dict[str, float] = {}
        val_metrics: dict[str, float] | None = None
        self.net.train()
        step = start
        epoch, within = divmod(step, self.steps_per_epoch)
        plan = epoch_plan(self.train_set.n, s.batch_size, s.seed, epoch, self.lengths, world.size)
        try:
            while step < self.total:
                if within == self.steps_per_epoch:
                    epoch, within = epoch + 1, 0
                    plan = epoch_plan(self.train_set.n, s.batch_size, s.seed, epoch, self.lengths, world.size)
                global_batch = plan[within]
                batch = take(self.data, self.train_set, shard(global_batch, world.rank, world.size), self.crop)
                count = world.sum(self.objective.count(batch))
                outputs = model(*(batch[n] for n in self.train_set.inputs))
                sums = self.objective.sums(outputs if isinstance(outputs, tuple) else (outputs,), batch)
                loss = sums.loss * (world.size / count.to(sums.loss.dtype))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), s.clip if s.clip > 0 else math.inf)
                stats = world.sum(sums.stacked())
                mean = float(stats[0] / stats[1])
                if not math.isfinite(mean) or not math.isfinite(float(norm)):
                    what = "loss" if not math.isfinite(mean) else "gradient norm"
                    raise SpecError("E0706", f"the {what} is {mean if what == 'loss' else float(norm)} at step "
                                    f"{step + 1}", Location(self.train_set.file, path="training"),
                                    hint=f"lower the learning rate (now {s.lr:g}), keep --clip on (now {s.clip:g}), "
                                         "check the data's scale")
                self.optimizer.step()
                step, within = step + 1, within + 1
                interval += stats
                interval_examples += len(global_batch)
                rate = interval_examples / max(time.perf_counter() - interval_began, 1e-9)
                progress.step(step, mean, rate)
                evaluate = step % self.eval_every == 0 or step == self.total
                if step % self.log_every == 0 or evaluate:
                    last_train = self._metrics(interval)
                    if evaluate and self.val_data is not None:
                        val_metrics = self.evaluate()
                    row = {"step": step, "epoch": epoch + 1, "loss": last_train["loss"],
                           "accuracy": last_train.get("accuracy"), "grad_norm": float(norm), "lr": s.lr,
                           "examples_per_s": rate, "seconds": time.perf_counter() - began,
                           **({"val_loss": val_metrics["loss"], "val_accuracy": val_metrics.get("accuracy")}
                              if evaluate and val_metrics is not None else {})}
                    if log is not None:
                        log.write(row)
                    if evaluate:
                        progress.row(row, self.total)
                    interval.zero_()
                    interval_examples, interval_began = 0, time.perf_counter()
                if evaluate and world.main:
                    ckpt.save(self.work / ckpt.FILE, step, self.model.name, s.fingerprint(), self.net, self.optimizer)
        finally:
            progress.close()
        seconds = time.perf_counter() - began
        if self.val_data is not None and val_metrics is None:
            val_metrics = self.evaluate()
        replica_diff = self._replica_diff()
        return self._finish(log, last_train, val_metrics, step, seconds, replica_diff)

    def _replica_diff(self) -> float | None:
        """How far any process's weights are from rank 0's (a broadcast and a max, independent of DDP's own
        synchronisation); None on one process."""
        if self.world.size == 1:
            return None
        flat = torch.cat([p.detach().reshape(-1) for p in self.net.parameters()])
        reference = flat.clone()
        self.world.broadcast(reference)
        return float(self.world.max((flat - reference).abs().max()))

    def _metrics(self, sums: torch.Tensor) -> dict[str, float]:
        loss, count, correct = (float(v) for v in sums)
        out = {"loss": loss / count if count else math.nan}
        if self.objective.has_accuracy:
            out["accuracy"] = correct / count if count else math.nan
        return out

    def evaluate(self) -> dict[str, float]:
        """Loss (and accuracy) over the whole validation set; each process takes a share, the sums are added."""
        assert self.val_set is not None and self.val_data is not None
        world, n = self.world, self.val_set.n
        lengths = self.val_set.sequence_lengths() if self.crop else None
        order = np.argsort(lengths, kind="stable") if lengths is not None else np.arange(n)
        total = torch.zeros(3, dtype=torch.float64, device=world.device)
        self.net.eval()
        with torch.no_grad():
            for start in range(0, n, self.settings.batch_size):
                index = shard(order[start:start + self.settings.batch_size], world.rank, world.size)
                if len(index) == 0:
                    continue
                batch = take(self.val_data, self.val_set, index, self.crop)
                outputs = self.net(*(batch[k] for k in self.val_set.inputs))
                total += self.objective.sums(outputs if isinstance(outputs, tuple) else (outputs,), batch).stacked()
        self.net.train()
        return self._metrics(world.sum(total))

    # -- the end: plot, build

    def _finish(self, log: MetricsLog | None, last_train: dict[str, float], val: dict[str, float] | None,
                step: int, seconds: float, replica_diff: float | None) -> TrainResult:
        s = self.settings
        reference = self.val_set or self.train_set
        name = s.target.name
        trivial = baseline(s.target, self._real(self.train_set, name), self._real(reference, name))
        result = TrainResult(name=self.model.name, out_dir=str(self.out), work_dir=str(self.work), loss=s.target.loss,
                             steps=step, epochs=step / self.steps_per_epoch, seconds=seconds,
                             world_size=self.world.size, rank=self.world.rank, replica_max_diff=replica_diff,
                             train=last_train, val=val, baseline=trivial)
        if not self.world.main:
            return result
        assert log is not None
        ckpt.save(self.work / ckpt.FILE, step, self.model.name, s.fingerprint(), self.net, self.optimizer)
        plot_path = self.work / "metrics.png"
        plot(log.rows, plot_path, f"{self.model.name}: {Path(str(self.spec)).name}",
             "MSE" if s.target.loss == "mse" else "cross entropy", self.objective.has_accuracy, trivial)
        result.files = [log.path.name, plot_path.name, ckpt.FILE]
        if self.options.build:
            result.build = self._build()
        return result

    def _real(self, dataset: Dataset, name: str) -> np.ndarray:
        symbols = dataset.axes[name]
        lengths = dataset.arrays[dataset.lengths[symbols[0]]] if symbols and symbols[0] in dataset.lengths else None
        mask = dataset.arrays[dataset.mask] if dataset.mask is not None else None
        return real_values(dataset.arrays[name], lengths, mask)

    def _build(self) -> BuildResult:
        from ..build import build

        weights = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        return build(self.spec, self.out, self.sizes, provider=self.options.provider,
                     max_params=self.options.max_params, weights=weights, root=self.options.root)


def summary_lines(result: TrainResult) -> list[str]:
    """What `seqdsl train` prints at the end."""
    metric = "MSE" if result.loss == "mse" else "cross entropy"
    lines = [f"trained {result.name}: {result.steps:,} steps ({result.epochs:.2f} epochs) in {result.seconds:.1f} s"
             + (f" on {result.world_size} processes" if result.world_size > 1 else "")]
    lines.append(f"  train {metric} {result.train.get('loss', math.nan):.4g}"
                 + (f", accuracy {result.train['accuracy']:.4f}" if "accuracy" in result.train else ""))
    if result.val is not None:
        lines.append(f"  validation {metric} {result.val['loss']:.4g}"
                     + (f", accuracy {result.val['accuracy']:.4f}" if "accuracy" in result.val else ""))
    trivial = "predicting the mean: MSE" if result.loss == "mse" else "the majority class: accuracy"
    lines.append(f"  trivial baseline ({trivial}) {result.baseline:.4g}")
    lines.append(f"  metrics, plot, checkpoint: {result.work_dir}/ ({', '.join(result.files)})")
    if result.replica_max_diff is not None:
        lines.append(f"  replicas: largest weight difference from rank 0: {result.replica_max_diff:.3g}")
    if result.build is None:
        lines.append("  no build (--no-build): the trained weights are in the checkpoint, under model/")
    else:
        worst = max(result.build.max_abs_diff.values(), default=0.0)
        lines.append(f"  build: {result.build.out_dir}/ ({', '.join(result.build.files)}); onnxruntime vs PyTorch "
                     f"max abs diff {worst:.2e} with the trained weights")
    return lines


__all__ = ["train", "prepare", "TrainResult", "TrainOptions", "summary_lines"]
