"""Training objectives as batches and losses: which loss a batch of pairs gets (Bradley–Terry, soft-label
Bradley–Terry or hinge), ranked lists (Plackett–Luce, or pairs that train one objective of a multi-objective head),
ratings rows (MSE or Huber regression), the step plan that keeps every batch one kind, and `batch_loss`, the loss of one micro-batch.
Knows tensors, encoded ids and rmkit.loss; knows nothing of files, optimisers or the loop around it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rmkit.config import TrainingConfig
from rmkit.data import PreferencePair
from rmkit.encoding import EncodedPair, Encoder, Template, collate, encode_pairs, length_grouped_batches, pad_sequences, render
from rmkit.loss import (
    bradley_terry_loss,
    hinge_loss,
    length_correlation_penalty,
    plackett_luce_loss,
    regression_loss,
    soft_bradley_terry_loss,
)
from rmkit.targets import RatedRow, best_first, ranked_lists


@dataclass(frozen=True)
class EncodedList:
    """K ≥ 2 responses to one prompt, best first, training output `objective` (a pair is a list of two)."""

    responses: tuple[list[int], ...]
    objective: int
    margin: float | None
    index: int
    label_prob: float | None = None  # soft label of a list of two (a pair), P(first is better)

    @property
    def length(self) -> int:
        return max(len(r) for r in self.responses)


@dataclass(frozen=True)
class EncodedRating:
    """One response with a rating per objective (None: unrated)."""

    ids: list[int]
    scores: tuple[float | None, ...]
    index: int

    @property
    def length(self) -> int:
        return len(self.ids)


Item = EncodedPair | EncodedList | EncodedRating


def pair_loss(tc: TrainingConfig, chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None,
              label_prob: torch.Tensor | None = None) -> torch.Tensor:
    """The configured loss on (B,) chosen and rejected rewards: hinge (the row's margin, where it has one, else
    train.hinge_margin, as m), Bradley–Terry (margin as an offset), or soft Bradley–Terry against each pair's label
    probability (NaN or None: 1 − train.label_smoothing, which plain BT also uses when set); plus the centering
    term when train.center_coef is set."""
    if tc.objective == "hinge":
        m = tc.hinge_margin if margin is None else torch.where(margin > 0, margin, torch.full_like(margin, tc.hinge_margin))
        center = tc.center_coef * (chosen + rejected).pow(2).mean() if tc.center_coef else 0.0
        return hinge_loss(chosen, rejected, m) + center
    if tc.objective != "soft_bradley_terry" and not tc.label_smoothing:
        return bradley_terry_loss(chosen, rejected, margin, tc.center_coef)
    prob = torch.full_like(chosen, 1.0 - tc.label_smoothing)  # (B,)
    if tc.objective == "soft_bradley_terry" and label_prob is not None:
        prob = torch.where(torch.isnan(label_prob), prob, label_prob.to(prob.device, prob.dtype))
    return soft_bradley_terry_loss(chosen, rejected, prob, margin, tc.center_coef)


def encode_lists(groups: Sequence[Sequence[PreferencePair]], objectives: Sequence[int], encoder: Encoder,
                 template: Template) -> tuple[list[EncodedList], int]:
    """Render and tokenise ranked groups (see targets.ranked_lists); drops (and counts) lists with two responses
    identical after truncation."""
    out, dropped = [], 0
    for i, (group, objective) in enumerate(zip(groups, objectives, strict=True)):
        texts = [render(group[0].prompt, r, encoder.tokenizer, template) for r in best_first(group)]
        ids = encoder.encode(texts)
        if len({tuple(x) for x in ids}) < len(ids):
            dropped += 1
            continue
        one = len(group) == 1  # a pair: its margin and soft label carry over
        out.append(EncodedList(tuple(ids), objective, group[0].margin if one else None, i,
                               group[0].label_prob if one else None))
    return out, dropped


def encode_ratings(rows: Sequence[RatedRow], encoder: Encoder, template: Template) -> list[EncodedRating]:
    ids = encoder.encode([render(r.prompt, r.response, encoder.tokenizer, template) for r in rows])
    return [EncodedRating(x, r.scores, i) for i, (x, r) in enumerate(zip(ids, rows, strict=True))]


def encode_training(pairs: Sequence[PreferencePair], pair_objectives: Sequence[int], ratings: Sequence[RatedRow],
                    encoder: Encoder, template: Template, tc: TrainingConfig, n_objectives: int
                    ) -> tuple[list[Item], int]:
    """The training items of the configured objective: plain pairs (one output, BT or hinge), lists (Plackett–Luce,
    or any pairs of a multi-objective head), plus ratings; 'regression' trains on the ratings alone.

    Returns:
        (items, number of pairs or lists dropped as identical after truncation).
    """
    items: list[Item] = []
    dropped = 0
    if tc.objective != "regression":
        if tc.objective == "plackett_luce" or n_objectives > 1:
            by_origin = {id(p): k for p, k in zip(pairs, pair_objectives, strict=True)}
            groups = ranked_lists(pairs) if tc.objective == "plackett_luce" else [[p] for p in pairs]
            lists, dropped = encode_lists(groups, [by_origin[id(g[0])] for g in groups], encoder, template)
            items += lists
        else:
            encoded, dropped = encode_pairs(pairs, encoder, template)
            items += encoded
    return items + encode_ratings(ratings, encoder, template), dropped


def plan_batches(items: Sequence[Item], batch_size: int, seed: int, group: bool) -> list[list[int]]:
    """Length-grouped batches of one item kind each, in a seeded random order (one kind: as length_grouped_batches)."""
    by_kind: dict[type, list[int]] = {}
    for i, item in enumerate(items):
        by_kind.setdefault(type(item), []).append(i)
    batches = []
    for idx in by_kind.values():
        lengths = [items[i].length for i in idx]
        batches += [[idx[j] for j in b] for b in length_grouped_batches(lengths, batch_size, seed, group)]
    if len(by_kind) > 1:
        random.Random(seed).shuffle(batches)
    return batches


@dataclass
class StepStats:
    """What the loop logs of a micro-batch: the reward gap of its pairs (best minus second for lists), None for
    ratings."""

    delta: torch.Tensor | None


def _pairs_loss(model: nn.Module, items: Sequence[EncodedPair], pad_id: int, device: torch.device,
                tc: TrainingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collate(items, pad_id).to(device)
    scores = model(batch.input_ids, batch.attention_mask)  # (2b,)
    chosen, rejected = scores.float().chunk(2)  # (b,), (b,)
    loss = pair_loss(tc, chosen, rejected, batch.margin, batch.label_prob)
    if tc.length_decorrelation:
        chosen_len, rejected_len = batch.attention_mask.sum(1).float().chunk(2)  # (b,), (b,)
        loss = loss + tc.length_decorrelation * length_correlation_penalty(chosen - rejected, chosen_len - rejected_len)
    return loss, chosen - rejected


def _lists_loss(model: nn.Module, items: Sequence[EncodedList], pad_id: int, device: torch.device,
                tc: TrainingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [r for item in items for r in item.responses]
    ids, mask = pad_sequences(rows, pad_id)
    out = model(ids.to(device), mask.to(device), per_objective=True).float()  # (R, K)
    objective = torch.tensor([item.objective for item in items for _ in item.responses], device=device)
    flat = out.gather(1, objective[:, None])[:, 0]  # (R,): each response's score on its list's objective
    width = max(len(item.responses) for item in items)
    scores = flat.new_zeros(len(items), width)  # (B, Kmax)
    valid = torch.zeros(len(items), width, dtype=torch.bool, device=device)
    start = 0
    for b, item in enumerate(items):
        k = len(item.responses)
        scores[b, :k], valid[b, :k] = flat[start : start + k], True
        start += k
    if tc.objective == "plackett_luce":
        loss = plackett_luce_loss(scores, valid)
    else:
        margins, probs = [item.margin for item in items], [item.label_prob for item in items]
        margin = None if all(m is None for m in margins) else torch.tensor([m or 0.0 for m in margins], device=device)
        prob = None if all(p is None for p in probs) else torch.tensor(
            [math.nan if p is None else p for p in probs], device=device)
        loss = pair_loss(tc, scores[:, 0], scores[:, 1], margin, prob)
    return loss, scores[:, 0] - scores[:, 1]


def _ratings_loss(model: nn.Module, items: Sequence[EncodedRating], pad_id: int, device: torch.device,
                  tc: TrainingConfig) -> torch.Tensor:
    ids, mask = pad_sequences([item.ids for item in items], pad_id)
    out = model(ids.to(device), mask.to(device), per_objective=True).float()  # (b, K)
    target = torch.tensor([[s if s is not None else 0.0 for s in item.scores] for item in items], device=device)
    rated = torch.tensor([[s is not None for s in item.scores] for item in items], device=device)
    return regression_loss(out, target, tc.regression_loss, tc.huber_delta, rated)


def batch_loss(model: nn.Module, items: Sequence[Item], pad_id: int, device: torch.device,
               tc: TrainingConfig) -> tuple[torch.Tensor, StepStats]:
    """The weighted loss of one micro-batch of a single item kind (plan_batches never mixes kinds)."""
    if isinstance(items[0], EncodedRating):
        return tc.ratings_weight * _ratings_loss(model, items, pad_id, device, tc), StepStats(None)
    if isinstance(items[0], EncodedList):
        loss, delta = _lists_loss(model, items, pad_id, device, tc)
    else:
        loss, delta = _pairs_loss(model, items, pad_id, device, tc)
    return tc.pairs_weight * loss, StepStats(delta.detach())
