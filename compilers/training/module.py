"""`SpecModule`: a Lightning module over any spec, what `seqdsl train` runs and what a user can hand to their own
``lightning.Trainer``:

    import lightning, seqdsl
    from seqdsl.compilers.training import SpecModule

    module = SpecModule.for_spec("specs/adding_lstm.yaml", {"h": 32}, loss="mse", lr=1e-2)
    lightning.Trainer(max_steps=500).fit(module, train_loader, val_loader)   # batches: {array name: tensor}

A batch is a dict of tensors keyed as in the ``.npz`` data: one per model input, the targets (``target``) and, where
given, their mask (``target_mask``). ``module.net`` is the generated ``model.py`` module; its ``state_dict()`` is
what `seqdsl build --weights` reads. The loss of a batch is a sum over the counted elements divided by their
number in the whole global batch (all processes), so that DDP's averaged gradients are those of one process with
the global batch. Logged: ``train_loss`` per step, ``val_loss`` (and ``val_accuracy``) per validation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

from seqdsl.errors import Location, SpecError
from seqdsl.ir import Model

from .data import Target, lengths_inputs, mask_name
from .objective import Objective
from .options import SCHEDULES, Settings, TrainOptions, resolve

#: "step" multiplies the learning rate by this at half and at three quarters of the steps after the warm-up.
STEP_GAMMA = 0.1
#: "plateau" (torch's ReduceLROnPlateau on the validation loss): the factor, and how many validations without
#: improvement it waits.
PLATEAU_FACTOR, PLATEAU_PATIENCE = 0.5, 2


def lr_factor(schedule: str, warmup: int, total: int, step: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) over the base one: a linear warm-up over ``warmup``
    steps, then the schedule over the rest of ``total`` (plateau's reductions come on top, from its scheduler)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule in ("none", "plateau"):
        return 1.0
    span = max(1, total - warmup)
    done = min(step - warmup, span) / span
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * done))
    return STEP_GAMMA ** ((done >= 0.5) + (done >= 0.75))  # "step"


class SpecModule(L.LightningModule):
    """A Lightning module training the spec ``model``'s generated module against ``target``."""

    def __init__(self, model: Model, settings: Settings, total_steps: int | None = None, data_file: str = "data",
                 seed_weights: bool = True) -> None:
        from .. import torch_module

        super().__init__()
        self.model, self.settings = model, settings
        self.total_steps = total_steps if total_steps is not None else settings.steps
        self.data_file = data_file
        if seed_weights:
            torch.manual_seed(settings.seed)
        cls = torch_module.module_class(model)
        self.net = cls()
        self.input_names = [n.name for n in model.input_nodes()]
        target = settings.target
        time_axis = target.shape[1] if len(target.shape) > 1 and isinstance(target.shape[1], str) else None
        self.objective = Objective(target, lengths_inputs(model).get(time_axis) if time_axis else None,
                                   mask_name(target.name), list(cls.output_names).index(target.output))
        self.last_stats: torch.Tensor | None = None  # the last step's (loss sum, count, correct), all processes
        self.last_grad_norm = math.nan
        self._val = torch.zeros(3, dtype=torch.float64)
        self.validated = False  # set by each validation, read (and reset) by the plateau scheduler's step
        self.log_to_logger = True  # val_loss/val_accuracy to the Trainer's loggers (seqdsl train logs rows itself)

    @classmethod
    def for_spec(cls, spec: str | Path, sizes: dict[str, int] | None = None, *, loss: str = "mse",
                 target: str | None = None, output: str | None = None, optimizer: str | None = None,
                 lr: float | None = None, weight_decay: float = 0.0, schedule: str = "none", warmup: int = 0,
                 steps: int | None = None, clip: float | None = None, seed: int = 0,
                 root: str | Path | None = None) -> "SpecModule":
        """The module for a spec file, its options settled as `seqdsl train` settles them (a mistake is one
        SpecError). ``steps`` is needed by the cosine and step schedules (the run's length); ``root``: the folder
        its imports may read from (default: the spec's folder)."""
        import seqdsl

        model = seqdsl.load(spec, sizes, root=root)
        options = TrainOptions(loss=loss, target=target, output=output, optimizer=optimizer, lr=lr, steps=steps,
                               clip=clip, seed=seed, weight_decay=weight_decay, schedule=schedule, warmup=warmup)
        settings = resolve(model, options, {})
        if settings.schedule in ("cosine", "step") and steps is None:
            raise SpecError("E0707", f"the {settings.schedule} schedule needs the run's length",
                            Location("--steps", path="steps"), hint="pass steps=N")
        return cls(model, settings, steps)

    # -- the steps

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        outputs = self.net(*(batch[n] for n in self.input_names))
        return outputs if isinstance(outputs, tuple) else (outputs,)

    def _sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the processes (itself alone)."""
        if self._trainer is not None and self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(values, reduce_op="sum")
        return values

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        count = self._sum(self.objective.count(batch))
        sums = self.objective.sums(self(batch), batch)
        world = self.trainer.world_size if self._trainer is not None else 1
        loss = sums.loss * (world / count.to(sums.loss.dtype))
        self.last_stats = self._sum(sums.stacked())
        self.log("train_loss", float(self.last_stats[0] / self.last_stats[1]), prog_bar=True, logger=False)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the global gradient norm (DDP's averaged gradients), and stop on a loss or norm that is not finite
        (every process sees the same summed figures, so all stop together)."""
        s = self.settings
        norm = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), s.clip if s.clip > 0 else math.inf))
        self.last_grad_norm = norm
        mean = float(self.last_stats[0] / self.last_stats[1]) if self.last_stats is not None else 0.0
        if not math.isfinite(mean) or not math.isfinite(norm):
            what, value = ("loss", mean) if not math.isfinite(mean) else ("gradient norm", norm)
            raise SpecError("E0706", f"the {what} is {value} at step {self.trainer.global_step + 1}",
                            Location(self.data_file, path="training"),
                            hint=f"lower the learning rate (now {s.lr:g}), keep --clip on (now {s.clip:g}), "
                                 "check the data's scale")

    def on_validation_epoch_start(self) -> None:
        self._val = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._val += self.objective.sums(self(batch), batch).stacked()

    def on_validation_epoch_end(self) -> None:
        loss, count, correct = (float(v) for v in self._sum(self._val))
        self.val_metrics = {"loss": loss / count if count else math.nan}
        if self.objective.has_accuracy:
            self.val_metrics["accuracy"] = correct / count if count else math.nan
        self.log("val_loss", self.val_metrics["loss"], prog_bar=True, logger=self.log_to_logger)
        if "accuracy" in self.val_metrics:
            self.log("val_accuracy", self.val_metrics["accuracy"], prog_bar=True, logger=self.log_to_logger)
        self.validated = True

    # -- optimiser and schedule

    def configure_optimizers(self) -> Any:
        s = self.settings
        params = self.net.parameters()
        if s.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum,
                                                               weight_decay=s.weight_decay)
        elif s.weight_decay > 0:
            optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        else:
            optimizer = torch.optim.Adam(params, lr=s.lr)
        total = self.total_steps or 1
        factor = lambda step: lr_factor(s.schedule, s.warmup, total, step)  # noqa: E731
        schedulers: list[dict[str, Any]] = []
        if s.schedule != "none" or s.warmup:
            schedulers.append({"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
                               "interval": "step", "name": "lr"})
        if s.schedule == "plateau":
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=PLATEAU_FACTOR,
                                                                 patience=PLATEAU_PATIENCE)
            schedulers.append({"scheduler": plateau, "interval": "step", "monitor": "val_loss", "strict": False})
        return {"optimizer": optimizer, "lr_scheduler": schedulers[0]} if len(schedulers) == 1 else \
            ([optimizer], schedulers) if schedulers else optimizer

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if self.validated:  # once per validation, not at every step with the last value again
                self.validated = False
                scheduler.step(metric)
        elif self.settings.schedule != "plateau" or scheduler.last_epoch < self.settings.warmup:
            scheduler.step()  # with plateau, the warm-up's scheduler stops at its end: plateau's cuts then stand

    # -- the checkpoint: what `--resume` needs beyond Lightning's own state

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["seqdsl"] = {"format": CHECKPOINT_FORMAT, "model": self.model.name,
                                "fingerprint": self.settings.fingerprint(), "rng": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("seqdsl") or {}
        if isinstance(state.get("rng"), torch.Tensor):
            torch.set_rng_state(state["rng"])  # dropout masks continue as in an uninterrupted run


CHECKPOINT_FORMAT = "seqdsl-lightning-1"
