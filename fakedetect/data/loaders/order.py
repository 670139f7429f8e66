"""The order batches are drawn in, shared by the loaders that index a split themselves (memory, cached)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler


class EpochOrder(Sampler[Tensor]):
    """Batches of positions 0..n-1: shuffled anew each epoch from `seed`, sharded across DDP ranks; the memory and
    cached loaders draw from it, so the two give the same batches for a seed."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def _shard_size(self) -> int:
        n = self.n
        return n // self.world_size if self.drop_last else -(-(n - self.rank) // self.world_size)

    @property
    def _even(self) -> bool:
        """Several processes, shares that may differ by one image: each then draws as many batches as the largest
        share needs (none larger than batch_size), for the detector checks every scored batch with one collective
        call that every process must make (Detector.check_logits)."""
        return self.world_size > 1 and not self.drop_last

    def __len__(self) -> int:
        n = -(-self.n // self.world_size) if self._even else self._shard_size()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        self.epoch += 1
        order = order[self.rank :: self.world_size][: self._shard_size()]
        if self._even:
            yield from (batch for batch in torch.tensor_split(order, len(self)) if len(batch))
            return
        for b in range(len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]
