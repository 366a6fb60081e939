"""The step plan and the metrics window of a training run: which items each optimiser step sees (fixed by the seed,
so that a resumed run sees the same batches) and the training sums between two metrics.jsonl lines."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rmkit import objectives


@dataclass
class StepPlan:
    """Which items each optimiser step sees: length-grouped global batches per epoch, one item kind each (pairs,
    lists or ratings; objectives.plan_batches), fixed by the seed, so that step s always sees the same items and resume
    is exact."""

    items: list[objectives.Item]
    global_batch: int
    world: int
    seed: int
    grouping: bool
    grad_accum: int
    _epochs: dict[int, list[list[int]]] = field(default_factory=dict, repr=False)

    def epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            batches = objectives.plan_batches(self.items, self.global_batch, self.seed + epoch, self.grouping)
            self._epochs[epoch] = [b for b in batches if len(b) >= self.world]
        return self._epochs[epoch]

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.epoch(0)) / self.grad_accum)

    def micro_batches(self, step: int) -> list[list[int]]:
        """The grad_accum global batches (pair indices) of optimiser step `step`."""
        epoch, k = divmod(step, self.steps_per_epoch)
        return self.epoch(epoch)[k * self.grad_accum : (k + 1) * self.grad_accum]


@dataclass
class Window:
    """Training sums since the last metrics.jsonl line."""

    loss: float = 0.0
    correct: int = 0
    margin: float = 0.0
    pairs: int = 0
    compared: int = 0
    seconds: float = 0.0

    def add(self, loss: float, n: int, delta: torch.Tensor | None) -> None:
        """One micro-batch of n items: its mean loss and the (n,) reward differences chosen − rejected (best minus
        second of a list; None for ratings, which have no pairs to be right about)."""
        self.loss += loss * n
        self.pairs += n
        if delta is not None:
            self.correct += int((delta > 0).sum())
            self.margin += float(delta.sum())
            self.compared += len(delta)
