import math

import pytest
import torch

from rmkit.loss import bradley_terry_loss


def test_bt_loss_matches_hand_worked_values():
    """Δ = [0, ln 3]: -log σ(0) = ln 2 ≈ 0.6931; -log σ(ln 3) = ln(4/3) ≈ 0.2877; mean ≈ 0.4904."""
    loss = bradley_terry_loss(torch.tensor([1.0, math.log(3)]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(0.4904, abs=1e-4)


def test_margin_is_subtracted_from_the_reward_gap():
    """Δ = 2, margin = 2 → -log σ(0) = ln 2."""
    loss = bradley_terry_loss(torch.tensor([3.0]), torch.tensor([1.0]), margin=torch.tensor([2.0]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_loss_is_finite_for_huge_gaps_either_way():
    """Δ = -1e4 → loss 1e4 (not inf); Δ = +1e4 → 0."""
    bad = bradley_terry_loss(torch.tensor([-1e4]), torch.tensor([0.0]))
    good = bradley_terry_loss(torch.tensor([1e4]), torch.tensor([0.0]))
    assert bad.item() == pytest.approx(1e4) and good.item() == pytest.approx(0.0)
    chosen = torch.tensor([-1e4], requires_grad=True)
    bradley_terry_loss(chosen, torch.tensor([0.0])).backward()
    assert chosen.grad.item() == pytest.approx(-1.0)


def test_centering_term_adds_mean_squared_reward_sum():
    """r_c = 1, r_r = 1: Δ = 0 → ln 2; centering 0.01 · (1 + 1)² = 0.04; total ≈ 0.7331."""
    loss = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0]), center_coef=0.01)
    assert loss.item() == pytest.approx(math.log(2) + 0.04, abs=1e-6)


def test_mismatched_shapes_are_an_error():
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))
