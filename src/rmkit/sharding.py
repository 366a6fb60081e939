"""Sharding work over the processes of an `accelerate launch` (or torchrun) job: which items this process takes, and
gathering every process's answers back into input order on the main process. One process (no launcher) takes all.

Knows accelerate's PartialState and the WORLD_SIZE convention; knows nothing of models, rows or files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shard:
    """This process's share of n items: indices rank, rank + world, ... (strided, so long and short rows mix)."""

    rank: int
    world: int
    device: str | None  # the process's own device under a launcher ('cuda:1', 'cpu'); None without one

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def indices(self, n: int) -> list[int]:
        """shard(rank=1, world=2).indices(5) → [1, 3]."""
        return list(range(self.rank, n, self.world))

    def gather(self, indices: Sequence[int], values: Sequence[Any]) -> list[Any] | None:
        """Every process's (index, value) pairs, in input order, on the main process (None elsewhere)."""
        if self.world == 1:
            return list(values)
        from accelerate.utils import gather_object

        pairs = gather_object(list(zip(indices, values, strict=True)))  # all ranks' lists, concatenated
        return [v for _, v in sorted(pairs, key=lambda p: p[0])] if self.is_main else None


def current_shard() -> Shard:
    """The shard of this process: rank/world from the launcher's environment, or (0, 1) when run alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard(0, 1, None)
    import torch
    from accelerate import PartialState

    # cpu=True lets a launcher on a CPU machine form a gloo process group (accelerate needs the hint)
    state = PartialState(cpu=not torch.cuda.is_available())
    return Shard(state.process_index, state.num_processes, str(state.device))


def barrier(shard: Shard) -> None:
    """Wait for every process (so none exits before the main one has written)."""
    if shard.world > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
