"""`seqdsl train`: train a spec on ``.npz`` data with Lightning (one process or DDP), and build it with the weights.

    from seqdsl.compilers.training import TrainOptions, train
    result = train("specs/adding_lstm.yaml", "train.npz", "build/adding", options=TrainOptions(steps=500))

    from seqdsl.compilers.training import SpecModule          # the same module, in your own lightning.Trainer
    module = SpecModule.for_spec("specs/adding_lstm.yaml", loss="mse", lr=1e-2)

One idea per module: `data` (reading and checking the arrays), `prepare` (every check before training),
`workdir` (the work folder's ownership), `batches` (the batch plan, bucketing, sharding), `objective` (losses,
masks, the trivial baseline), `options` (command line, spec and defaults), `module` (the LightningModule),
`report` (metrics file, plot), `run` (the Trainer, its callbacks and the final build). `prepare` and
`TrainOptions` import no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .options import TrainOptions
from .prepare import Prepared, prepare

__all__ = ["train", "prepare", "Prepared", "TrainOptions", "TrainResult", "Interrupted", "SpecModule",
           "summary_lines"]


def train(spec: str | Path, data: str | Path, out_dir: str | Path | None = None, sizes: dict[str, int] | None = None,
          val: str | Path | None = None, options: TrainOptions | None = None) -> Any:
    """Train ``spec`` on ``data`` and build ``out_dir`` (default ``build/<name>``) with the trained weights: every
    check first (`prepare`), then Lightning (imported only once there is something to train)."""
    options = options or TrainOptions()
    prepared = prepare(spec, data, sizes, val, options, out_dir)
    from .run import train as run

    return run(spec, data, out_dir, sizes, val, options, prepared=prepared)


def __getattr__(name: str) -> Any:  # torch and Lightning: only when they are used
    if name in ("TrainResult", "summary_lines", "Interrupted"):
        from . import run

        return getattr(run, name)
    if name == "SpecModule":
        from .module import SpecModule

        return SpecModule
    raise AttributeError(name)
