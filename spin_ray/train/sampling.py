"""A training stream that can be resumed exactly: endless shuffled epochs, each item seeded by its position.

Item k of the stream is a pure function of (seed, k): its dataset row comes from the permutation of
epoch k // N, and every random draw made while loading it (augmentation, the dataset mix) comes
from a torch generator seeded with (seed, k). So the data a run sees do not depend on DataLoader
workers or prefetching, and a resumed run restarts the stream at the item it had reached.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from spin_ray.errors import DataError


def _seed(*words: int) -> int:
    """A 63-bit seed mixing the given non-negative integers."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0] >> 1)


class StreamSampler(Sampler):
    """Endless stream of (row, item seed) starting at stream position `start`.

    With world > 1 it is data-parallel worker `rank`'s shard: positions start + rank, start + rank +
    world, ..., so the workers' batches of one step together hold the items one worker would take.
    """

    def __init__(self, size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        if size <= 0:
            raise DataError(f"cannot sample from an empty dataset (size {size})")
        if start < 0:
            raise DataError(f"stream start must be >= 0, got {start}")
        if world < 1 or not 0 <= rank < world:
            raise DataError(f"worker rank {rank} of {world}: need world >= 1 and 0 <= rank < world")
        self.size, self.seed, self.start = int(size), int(seed), int(start)
        self.rank, self.world = int(rank), int(world)

    def permutation(self, epoch: int) -> torch.Tensor:
        """Row order of one epoch."""
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(_seed(self.seed, 0, epoch)))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start + self.rank
        while True:
            epoch, offset = divmod(position, self.size)
            order = self.permutation(epoch)
            for row in order[offset::self.world].tolist():
                yield row, _seed(self.seed, 1, position)
                position += self.world


class SeededItems(Dataset):
    """Wraps a dataset so that item (row, seed) is loaded with torch's RNG seeded by seed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        row, seed = key
        # fork_rng: the caller's RNG (the trainer's, when loading in-process) is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[row]


def make_train_loader(dataset: Dataset, batch_size: int, seed: int, start: int = 0, num_workers: int = 0,
                      rank: int = 0, world: int = 1) -> DataLoader:
    """Endless batches of dataset, resumable at stream position `start` (items consumed so far, all workers).

    rank/world: data-parallel worker rank's shard of the stream (every world-th item from start + rank).
    """
    return DataLoader(
        SeededItems(dataset),
        batch_size=batch_size,
        sampler=StreamSampler(len(dataset), seed, start, rank, world),
        num_workers=num_workers,
        drop_last=True,
        persistent_workers=num_workers > 0,
        # Its own generator: starting an iterator draws a worker base seed, which must not come from
        # (and shift) the global RNG that dropout uses, or a resumed run would diverge.
        generator=torch.Generator().manual_seed(_seed(seed, 2, start)),
    )


def stream_start(loader: DataLoader) -> int | None:
    """Stream position the loader starts at, or None for a loader that is not resumable."""
    sampler = getattr(loader, "sampler", None)
    return sampler.start if isinstance(sampler, StreamSampler) else None
