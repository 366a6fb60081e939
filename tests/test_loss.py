import math

import pytest
import torch

from rmkit.loss import (
    bradley_terry_loss,
    hinge_loss,
    length_correlation_penalty,
    plackett_luce_loss,
    regression_loss,
    soft_bradley_terry_loss,
)


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



def test_length_correlation_penalty_is_the_squared_slope_on_standardised_lengths():
    # [1,2,3] vs [3,2,1]: x = [-1,0,1], y/std = [1.2247, 0, -1.2247]; cov = -2.449/3 = -0.8165 → 0.6667
    assert length_correlation_penalty(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])).item() == pytest.approx(2 / 3)
    # [1,2,3] vs [2,2,5]: y/std = [-0.7071, -0.7071, 1.4142]; cov = 2.1213/3 = 0.7071 → 0.5
    assert length_correlation_penalty(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 5.0])).item() == pytest.approx(0.5)
    # lengths are standardised (their scale does not matter); rewards are not (10x rewards → 100x penalty)
    assert length_correlation_penalty(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([20.0, 20.0, 50.0])).item() == pytest.approx(0.5)
    assert length_correlation_penalty(torch.tensor([10.0, 20.0, 30.0]), torch.tensor([2.0, 2.0, 5.0])).item() == pytest.approx(50.0)


def test_length_correlation_penalty_is_zero_without_length_spread_and_keeps_the_graph():
    delta = torch.tensor([0.5, -0.2, 0.1], requires_grad=True)
    value = length_correlation_penalty(delta, torch.tensor([4.0, 4.0, 4.0]))
    assert value.item() == 0.0
    value.backward()
    assert delta.grad is not None and torch.all(delta.grad == 0)
    assert length_correlation_penalty(torch.tensor([1.0]), torch.tensor([2.0])).item() == 0.0


def test_length_correlation_penalty_gradient_pushes_towards_zero_correlation():
    delta = torch.tensor([1.0, 2.0, 3.5], requires_grad=True)
    lengths = torch.tensor([1.0, 2.0, 3.0])
    before = length_correlation_penalty(delta, lengths)
    before.backward()
    after = length_correlation_penalty((delta - 0.1 * delta.grad).detach(), lengths)
    assert after < before


def test_hinge_loss_matches_hand_worked_values():
    """Δ = [2, 0.5, −1], m = 1: max(0, 1 − Δ) = [0, 0.5, 2]; mean 2.5 / 3 ≈ 0.8333."""
    loss = hinge_loss(torch.tensor([2.0, 0.5, -1.0]), torch.zeros(3), margin=1.0)
    assert loss.item() == pytest.approx(2.5 / 3)


def test_hinge_loss_takes_a_margin_per_row():
    """Δ = [1, 1], m = [0.5, 3]: [0, 2] → mean 1."""
    loss = hinge_loss(torch.tensor([1.0, 1.0]), torch.zeros(2), margin=torch.tensor([0.5, 3.0]))
    assert loss.item() == pytest.approx(1.0)


def test_plackett_luce_matches_hand_worked_values():
    """[ln 3, 0, 0]: first pick −log(3/5) = ln 5 − ln 3 ≈ 0.5108; second −log(1/2) ≈ 0.6931; total ≈ 1.2040."""
    loss = plackett_luce_loss(torch.tensor([[math.log(3), 0.0, 0.0]]))
    assert loss.item() == pytest.approx(math.log(5) - math.log(3) + math.log(2), abs=1e-6)


def test_plackett_luce_with_two_items_is_bradley_terry_and_padding_is_ignored():
    """K = 2 rows equal BT; a 3-column row whose third entry is masked equals its 2-column self."""
    scores = torch.tensor([[1.0, math.log(3) - 1.0], [0.5, 2.0]])
    bt = bradley_terry_loss(scores[:, 0], scores[:, 1])
    assert plackett_luce_loss(scores).item() == pytest.approx(bt.item(), abs=1e-6)
    padded = torch.cat([scores, torch.tensor([[100.0], [-7.0]])], dim=1)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    assert plackett_luce_loss(padded, mask).item() == pytest.approx(bt.item(), abs=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        plackett_luce_loss(padded, torch.tensor([[True, False, False], [True, True, False]]))


def test_regression_loss_mse_and_huber_match_hand_worked_values():
    """pred [0, 0], target [1, 3]: mse (1 + 9)/2 = 5; huber δ=1: 0.5·1² = 0.5 and 1·(3 − 0.5) = 2.5 → 1.5."""
    pred, target = torch.zeros(2), torch.tensor([1.0, 3.0])
    assert regression_loss(pred, target, "mse").item() == pytest.approx(5.0)
    assert regression_loss(pred, target, "huber", delta=1.0).item() == pytest.approx(1.5)


def test_regression_loss_averages_only_rated_entries():
    """(2, 2) with one missing rating: errors 1, 4, 9 over three rated entries → mse 14/3."""
    pred = torch.zeros(2, 2)
    target = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert regression_loss(pred, target, "mse", mask=mask).item() == pytest.approx(14 / 3)
    with pytest.raises(ValueError, match="unknown regression loss"):
        regression_loss(pred, target, "l1")
def test_soft_bt_loss_matches_hand_worked_values():
    """p = 0.75. Δ = 0: -(0.75 ln ½ + 0.25 ln ½) = ln 2 ≈ 0.6931. Δ = ln 3: σ = ¾, σ(−Δ) = ¼:
    0.75·ln(4/3) + 0.25·ln 4 = 0.2158 + 0.3466 = 0.5623. Mean ≈ 0.6277."""
    loss = soft_bradley_terry_loss(torch.tensor([1.0, math.log(3)]), torch.tensor([1.0, 0.0]), torch.tensor([0.75, 0.75]))
    assert loss.item() == pytest.approx(0.6277, abs=1e-4)


def test_soft_bt_with_certain_labels_is_the_hard_bt_loss():
    chosen, rejected = torch.tensor([0.3, -2.0, 5.0]), torch.tensor([1.0, 0.5, -1.0])
    margin = torch.tensor([0.5, 0.0, 1.0])
    soft = soft_bradley_terry_loss(chosen, rejected, torch.ones(3), margin, center_coef=0.1)
    assert soft.item() == pytest.approx(bradley_terry_loss(chosen, rejected, margin, center_coef=0.1).item(), abs=1e-6)


def test_soft_bt_gradient_vanishes_where_the_gap_equals_the_label_logit():
    """d/dΔ = σ(Δ) − p: zero at Δ = logit(0.8) = ln 4; at Δ = 0 it is 0.5 − 0.8 = −0.3 (push the gap up)."""
    chosen = torch.tensor([math.log(4), 0.0], requires_grad=True)
    soft_bradley_terry_loss(chosen, torch.zeros(2), torch.tensor([0.8, 0.8])).backward()
    assert chosen.grad.tolist() == pytest.approx([0.0, -0.3 / 2], abs=1e-6)  # the mean over 2 pairs halves it


def test_soft_bt_with_label_half_asks_for_no_preference():
    """p = ½: the loss is smallest (ln 2) at Δ = 0 and equal for ±Δ."""
    zero = soft_bradley_terry_loss(torch.zeros(1), torch.zeros(1), torch.tensor([0.5]))
    plus = soft_bradley_terry_loss(torch.tensor([2.0]), torch.zeros(1), torch.tensor([0.5]))
    minus = soft_bradley_terry_loss(torch.tensor([-2.0]), torch.zeros(1), torch.tensor([0.5]))
    assert zero.item() == pytest.approx(math.log(2)) and plus.item() == pytest.approx(minus.item())
    assert plus.item() > zero.item()


def test_soft_bt_mismatched_prob_shape_is_an_error():
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        soft_bradley_terry_loss(torch.zeros(2), torch.zeros(2), torch.zeros(3))
