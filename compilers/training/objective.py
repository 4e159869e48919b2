"""The loss: cross entropy for integer targets against a named output, MSE for float targets, masked by lengths.

The loss of a step is a *sum* over the counted elements divided by their number in the whole global batch, so
that W processes (whose gradients DDP averages) compute exactly the gradient of one process holding the global
batch, even when a mask counts different numbers of steps in each share. Padded steps (``t >= lengths[b]`` on a
target's time axis, for a block with ``lengths:``) are not counted, nor are the elements a ``<target>_mask`` array
of the data marks False (the copy task scores its recall phase only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data import Dataset, Target


@dataclass
class Sums:
    """Per-batch sums: the loss over counted elements, how many were counted, how many were classified right."""

    loss: torch.Tensor
    count: torch.Tensor
    correct: torch.Tensor

    def stacked(self) -> torch.Tensor:
        return torch.stack([self.loss.detach().double(), self.count.double(), self.correct.double()])


class Objective:
    """The loss of ``target`` against output number ``output_index``; ``length_input`` names the lengths of the
    targets' time axis (padded steps do not count), ``mask_input`` the array of a batch, where present, of the
    target elements that count."""

    def __init__(self, target: Target, length_input: str | None, mask_input: str | None, output_index: int) -> None:
        self.target = target
        self.output_index = output_index
        self.length_input = length_input
        self.mask_input = mask_input

    @classmethod
    def for_dataset(cls, target: Target, dataset: Dataset, output_index: int) -> "Objective":
        symbols = dataset.axes[target.name]
        return cls(target, dataset.lengths.get(symbols[0]) if symbols and symbols[0] else None, dataset.mask,
                   output_index)

    @property
    def has_accuracy(self) -> bool:
        return self.target.loss == "cross_entropy"

    def mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """True at the target elements that count (the targets' shape), or None when every element counts."""
        y = batch[self.target.name]
        keep = batch.get(self.mask_input) if self.mask_input is not None else None
        if self.length_input is None or y.ndim < 2:
            return keep
        lengths = batch[self.length_input]
        real = torch.arange(y.shape[1], device=lengths.device)[None, :] < lengths[:, None]
        real = real.reshape(real.shape + (1,) * (y.ndim - 2)).expand_as(y)
        return real if keep is None else real & keep

    def count(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """How many elements of this batch the loss counts (known before the forward pass), as float64."""
        y = batch[self.target.name]
        mask = self.mask(batch)
        if mask is None:
            return torch.tensor(float(y.numel()), dtype=torch.float64, device=y.device)
        return mask.sum().to(torch.float64)

    def sums(self, outputs: tuple[torch.Tensor, ...], batch: dict[str, torch.Tensor]) -> Sums:
        pred = outputs[self.output_index]
        y = batch[self.target.name]
        mask = self.mask(batch)
        if self.target.loss == "cross_entropy":
            logits = pred.reshape(-1, pred.shape[-1])
            labels = y.reshape(-1)
            if mask is not None:
                keep = mask.reshape(-1)
                logits, labels = logits[keep], labels[keep]
            loss = F.cross_entropy(logits, labels, reduction="sum")
            correct = (logits.argmax(-1) == labels).sum()
            return Sums(loss, torch.tensor(labels.numel(), device=y.device), correct)
        err = (pred - y) ** 2
        if mask is not None:
            weights = mask.to(err.dtype)
            err = err * weights
            counted = weights.sum()
        else:
            counted = torch.tensor(y.numel(), device=y.device)
        return Sums(err.sum(), counted, torch.zeros((), device=y.device))


def real_values(values: np.ndarray, lengths: np.ndarray | None, mask: np.ndarray | None = None) -> np.ndarray:
    """The elements of ``values`` (N, ...) the loss counts: all, or those at steps below each row's length, and
    only where ``mask`` (of the shape of ``values``) is True."""
    keep = np.ones(values.shape, dtype=bool) if mask is None else mask
    if lengths is not None and values.ndim > 1:
        real = np.arange(values.shape[1])[None, :] < lengths[:, None]
        keep = keep & real.reshape(real.shape + (1,) * (values.ndim - 2))
    return values[keep].reshape(-1)


def baseline(target: Target, train: np.ndarray, evaluated: np.ndarray) -> float:
    """What the trivial model scores on the counted elements ``evaluated``: for MSE, always predicting the mean of
    the counted training targets ``train`` (its MSE); for cross entropy, always the training targets' most frequent
    class (its accuracy on ``evaluated``, which may be below 1/classes' share where the two sets differ)."""
    if target.loss == "mse":
        return float(((evaluated.astype(np.float64) - train.astype(np.float64).mean()) ** 2).mean())
    majority = np.bincount(train).argmax()
    return float((evaluated == majority).mean())
