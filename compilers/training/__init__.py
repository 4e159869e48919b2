"""`seqdsl train`: train a spec on ``.npz`` data, on one process or many (DDP), and build it with the weights.

    from compilers.training import TrainOptions, train
    result = train("specs/adding_lstm.yaml", "train.npz", "build/adding", options=TrainOptions(steps=500))

One idea per module: `data` (reading and checking the arrays), `batches` (the batch plan, bucketing, sharding),
`objective` (losses, masks, the trivial baseline), `options` (command line, spec and defaults), `checkpoint`,
`report` (progress, metrics, plot), `distributed` (DDP, torchrun), `loop` (the training loop and the final build).
"""

from __future__ import annotations

from .loop import TrainResult, prepare, summary_lines, train
from .options import TrainOptions

__all__ = ["train", "prepare", "TrainOptions", "TrainResult", "summary_lines"]
