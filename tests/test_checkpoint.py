"""Tests for rmkit.checkpoint: a committed checkpoint restores weights, optimiser, scheduler, RNG and the train state."""

from __future__ import annotations

import random

import torch

from rmkit import checkpoint


def make(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s))
    return model, optimizer, scheduler


def step(model, optimizer, scheduler) -> None:
    model(torch.randn(4, 3)).pow(2).mean().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_a_resumed_run_continues_exactly_like_the_uninterrupted_one(tmp_path):
    model, optimizer, scheduler = make(0)
    step(model, optimizer, scheduler)
    checkpoint.save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {"best_accuracy": 0.5})
    checkpoint.commit_checkpoint(tmp_path, 1)
    step(model, optimizer, scheduler)
    expected, expected_random = model.weight.detach().clone(), random.random()

    other, other_opt, other_sched = make(1)  # different weights, fresh optimiser
    state = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(tmp_path), other, other_opt, other_sched)
    assert state == {"step": 1, "best_accuracy": 0.5}
    step(other, other_opt, other_sched)
    torch.testing.assert_close(other.weight, expected)
    assert random.random() == expected_random  # Python's RNG was restored too


def test_only_the_newest_checkpoints_are_kept_and_latest_points_at_the_newest(tmp_path):
    model, optimizer, scheduler = make(0)
    for s in (1, 2, 3):
        checkpoint.save_checkpoint(tmp_path, s, model, optimizer, scheduler, {})
        checkpoint.commit_checkpoint(tmp_path, s, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-2", "step-3"]
    assert checkpoint.latest_checkpoint(tmp_path) == tmp_path / "step-3"


def test_an_uncommitted_checkpoint_is_not_resumed_from(tmp_path):
    model, optimizer, scheduler = make(0)
    checkpoint.save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {})
    assert checkpoint.latest_checkpoint(tmp_path) is None
