"""`seqdsl train`: train a spec on ``.npz`` data, on one process or many (DDP), and build it with the weights.

    from compilers.training import TrainOptions, train
    result = train("specs/adding_lstm.yaml", "train.npz", "build/adding", options=TrainOptions(steps=500))

One idea per module: `data` (reading and checking the arrays), `prepare` (every check before training),
`batches` (the batch plan, bucketing, sharding), `objective` (losses, masks, the trivial baseline), `options`
(command line, spec and defaults), `checkpoint`, `report` (progress, metrics, plot), `distributed` (DDP,
torchrun), `loop` (the training loop and the final build). `prepare` and `TrainOptions` import no torch.
"""

from __future__ import annotations

from typing import Any

from .options import TrainOptions
from .prepare import Prepared, prepare

__all__ = ["train", "prepare", "Prepared", "TrainOptions", "TrainResult", "summary_lines"]


def __getattr__(name: str) -> Any:  # the loop imports torch: only when it is used
    if name in ("train", "TrainResult", "summary_lines"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(name)
