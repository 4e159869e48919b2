"""Which examples each step trains on: one plan of global batches per epoch, the same in every process.

The plan for epoch ``e`` is a function of (seed, e) only, so a run is reproducible, a resumed run takes the same
batches as an uninterrupted one, and under DDP each of the W processes takes its share ``batch[rank::W]`` of
the same global batch: W processes with a batch of G/W each compute the same steps as one process with G.

Length bucketing (seed 004: padding every sequence to the longest wastes the work of the padded steps): the
shuffled examples are cut into chunks of `BUCKET_BATCHES` batches, each chunk is sorted by length and split into
batches, and the batches are shuffled; each batch is then cut to its own longest sequence (`take`).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .data import Dataset

BUCKET_BATCHES = 50  # batches per sorted chunk: similar lengths within a batch, still random across batches


def epoch_plan(n: int, batch_size: int, seed: int, epoch: int, lengths: np.ndarray | None = None,
               world: int = 1) -> list[np.ndarray]:
    """The global batches (arrays of example indices) of ``epoch``; bucketed by ``lengths`` when given.

    A last batch smaller than ``world`` is dropped: every process needs at least one example per step.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if lengths is None:
        batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    else:
        batches = []
        chunk = batch_size * BUCKET_BATCHES
        for start in range(0, n, chunk):
            part = order[start:start + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return [b for b in batches if len(b) >= world]


def shard(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This process's share of a global batch."""
    return batch[rank::world]


def take(data: dict[str, torch.Tensor], dataset: Dataset, index: np.ndarray, crop: bool) -> dict[str, torch.Tensor]:
    """The rows ``index`` of every array; with ``crop``, each time axis that has lengths is cut to the longest
    sequence of these rows (the rest is padding, which a block with ``lengths:`` ignores)."""
    idx = torch.from_numpy(index).to(next(iter(data.values())).device)
    rows = {name: t.index_select(0, idx) for name, t in data.items()}
    if not crop or not dataset.lengths:
        return rows
    longest = {axis: int(rows[name].max()) for axis, name in dataset.lengths.items()}
    for name, symbols in dataset.axes.items():
        for axis, symbol in enumerate(symbols, start=1):
            if symbol in longest and rows[name].shape[axis] > longest[symbol]:
                rows[name] = rows[name].narrow(axis, 0, longest[symbol])
    return rows


class RunBatches(torch.utils.data.Sampler):
    """The batches of a whole run, the epochs' plans one after another: ``total`` batches in all, of which this
    process takes its share. ``place()`` says, when iteration starts, how many batches are done already (a resumed
    run starts there) and this process's rank and the number of processes."""

    def __init__(self, n: int, batch_size: int, seed: int, lengths: np.ndarray | None, total: int,
                 place: Callable[[], tuple[int, int, int]]) -> None:
        self.n, self.batch_size, self.seed, self.lengths, self.total, self.place = \
            n, batch_size, seed, lengths, total, place

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[np.ndarray]:
        start, rank, world = self.place()
        per_epoch = len(epoch_plan(self.n, self.batch_size, self.seed, 0, self.lengths, world))
        epoch, plan = -1, []
        for index in range(start, self.total):
            if index // per_epoch != epoch:
                epoch = index // per_epoch
                plan = epoch_plan(self.n, self.batch_size, self.seed, epoch, self.lengths, world)
            yield shard(plan[index % per_epoch], rank, world)


class EvalBatches(torch.utils.data.Sampler):
    """The validation set in batches (sorted by length when cropping), each process its share of each."""

    def __init__(self, n: int, batch_size: int, lengths: np.ndarray | None, place: Callable[[], tuple[int, int, int]]):
        self.order = np.argsort(lengths, kind="stable") if lengths is not None else np.arange(n)
        self.batch_size, self.place = batch_size, place

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        _, rank, world = self.place()
        for start in range(0, len(self.order), self.batch_size):
            index = shard(self.order[start:start + self.batch_size], rank, world)
            if len(index):
                yield index


class Rows(torch.utils.data.Dataset):
    """``rows[index]``: the batch of those examples (see `take`), tensors keyed as in the data."""

    def __init__(self, dataset: Dataset, crop: bool) -> None:
        self.dataset, self.crop = dataset, crop
        self.tensors = {k: torch.from_numpy(v) for k, v in dataset.arrays.items()}

    def __len__(self) -> int:
        return self.dataset.n

    def __getitem__(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        return take(self.tensors, self.dataset, index, self.crop)


class Loader(torch.utils.data.DataLoader):
    """A DataLoader that Lightning counts as resumable: where it starts is a function of the restored step
    (`RunBatches.place`), so there is no state of its own to save."""

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        pass
