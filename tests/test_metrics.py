"""Hand-worked checks of rmkit.metrics: the arithmetic of each expected value is in the test's docstring."""

import math

import numpy as np
import pytest

from rmkit import metrics
from rmkit.metrics import (
    accuracy_by_bucket,
    accuracy_by_length_preference,
    brier_score,
    bt_probability,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    length_baseline_accuracy,
    length_score_correlation,
    log_loss,
    margin_stats,
    mcnemar_test,
    paired_bootstrap_accuracy_diff,
    pairwise_accuracy,
    pearson,
    reliability_bins,
    score_stats,
    spearman,
    swap_consistency,
    wilson_interval,
)

# --- accuracy -----------------------------------------------------------------------------------------------------


def test_pairwise_accuracy_counts_ties_as_wrong():
    """Δ = [3−1, 0−1, 1−1] = [2, −1, 0]: 1 of 3 strictly positive → 1/3."""
    assert pairwise_accuracy([3, 0, 1], [1, 1, 1]) == pytest.approx(1 / 3)


def test_pairwise_accuracy_of_a_constant_model_is_zero():
    """Every Δ = 0: no pair is strictly right → 0, not 0.5."""
    assert pairwise_accuracy(np.ones(5), np.ones(5)) == 0.0


def test_pairwise_accuracy_rejects_empty_and_mismatched_input():
    with pytest.raises(ValueError, match="empty"):
        pairwise_accuracy([], [])
    with pytest.raises(ValueError, match="same items"):
        pairwise_accuracy([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="1-D"):
        pairwise_accuracy([[1.0]], [[0.0]])


def test_wilson_interval_matches_hand_worked_values():
    """8 of 10, z = 1.959964: z² = 3.8415, z²/n = 0.38415, denom 1.38415; centre (0.8 + 0.19207)/1.38415 = 0.71673;
    half = 1.959964/1.38415 · √(0.016 + 0.0096038) = 1.41600 · 0.160012 = 0.22658 → (0.49015, 0.94331)."""
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49015, abs=1e-4)
    assert high == pytest.approx(0.94331, abs=1e-4)


def test_wilson_interval_stays_inside_zero_one_at_the_extremes():
    """0 of 5: p = 0 → centre = half-width = (z²/10)/(1 + z²/5) = 0.38415/1.76830 = 0.21724 → (0, 0.4345)."""
    low, high = wilson_interval(0, 5)
    assert low == pytest.approx(0.0, abs=1e-12)
    assert high == pytest.approx(0.43449, abs=1e-4)
    low, high = wilson_interval(5, 5)
    assert high == pytest.approx(1.0, abs=1e-12) and low == pytest.approx(1 - 0.43449, abs=1e-4)


def test_wilson_interval_rejects_impossible_counts():
    for successes, n in [(1, 0), (-1, 5), (6, 5)]:
        with pytest.raises(ValueError):
            wilson_interval(successes, n)


def test_margin_stats_match_hand_worked_values():
    """Δ = [2, −1, 0]: mean 1/3; deviations 5/3, −4/3, −1/3 → variance (25 + 16 + 1)/27 = 14/9, std 1.2472; median 0."""
    stats = margin_stats([3, 0, 1], [1, 1, 1])
    assert stats == pytest.approx({"mean": 1 / 3, "std": math.sqrt(14 / 9), "median": 0.0})


def test_score_stats_match_hand_worked_values():
    """x = 0..4: mean 2, variance (4+1+0+1+4)/5 = 2, p05 = 0.05·4 = 0.2, p95 = 0.95·4 = 3.8 (linear interpolation)."""
    stats = score_stats([4, 0, 3, 1, 2])
    expected = {"mean": 2, "std": math.sqrt(2), "min": 0, "max": 4, "p05": 0.2, "p50": 2, "p95": 3.8}
    assert stats == pytest.approx(expected)


def test_score_stats_rejects_empty_input():
    with pytest.raises(ValueError, match="empty"):
        score_stats([])


# --- length -------------------------------------------------------------------------------------------------------


def test_length_baseline_accuracy_counts_equal_lengths_as_wrong():
    """chosen_len = [10, 5, 7], rejected_len = [4, 9, 7]: "longer" is right on pair 0 only → 1/3; "shorter" on pair 1
    only → 1/3; pair 2 (7 = 7) is wrong for both."""
    assert length_baseline_accuracy([10, 5, 7], [4, 9, 7]) == pytest.approx(1 / 3)
    assert length_baseline_accuracy([10, 5, 7], [4, 9, 7], prefer="shorter") == pytest.approx(1 / 3)


def test_length_baseline_accuracy_rejects_an_unknown_preference():
    with pytest.raises(ValueError, match="'longer' or 'shorter'"):
        length_baseline_accuracy([1], [2], prefer="long")  # type: ignore[arg-type]


def test_accuracy_by_length_preference_splits_pairs_by_which_side_is_longer():
    """Δ = [1, −1, 2, 3]; chosen longer on pairs 0, 1 → Δ [1, −1] → 0.5; shorter on pair 2 → Δ [2] → 1.0;
    pair 3 has equal lengths."""
    out = accuracy_by_length_preference([1, -1, 2, 3], [9, 9, 2, 5], [1, 1, 8, 5])
    assert out == {"acc_longer": 0.5, "n_longer": 2, "acc_shorter": 1.0, "n_shorter": 1, "n_equal": 1}


def test_accuracy_by_length_preference_is_nan_for_an_empty_side():
    """Chosen is always longer: no "shorter" pairs → acc_shorter nan, n_shorter 0."""
    out = accuracy_by_length_preference([1, 1], [5, 6], [1, 1])
    assert math.isnan(out["acc_shorter"]) and out["n_shorter"] == 0 and out["acc_longer"] == 1.0


def test_length_score_correlation_is_one_when_rewards_grow_with_length():
    """scores increase with lengths [10, 20, 30] → ranks identical → Spearman 1."""
    assert length_score_correlation([0.1, 0.5, 0.9], [10, 20, 30]) == pytest.approx(1.0)


# --- buckets ------------------------------------------------------------------------------------------------------


def test_accuracy_by_bucket_gives_accuracy_size_and_wilson_interval_per_key():
    """Δ = [1, −1, 2], keys a, a, b → a: 1 of 2 → 0.5; b: 1 of 1 → 1.0; intervals equal wilson_interval(k, n)."""
    out = accuracy_by_bucket([1, -1, 2], ["a", "a", "b"])
    assert list(out) == ["a", "b"]
    assert out["a"]["accuracy"] == 0.5 and out["a"]["n"] == 2
    assert out["b"]["accuracy"] == 1.0 and out["b"]["n"] == 1
    assert (out["a"]["ci_low"], out["a"]["ci_high"]) == wilson_interval(1, 2)


def test_accuracy_by_bucket_rejects_one_key_too_few():
    with pytest.raises(ValueError, match="one key per pair"):
        accuracy_by_bucket([1, 2], ["a"])


# --- Bradley–Terry probabilities and temperature ------------------------------------------------------------------


def test_bt_probability_matches_hand_worked_values():
    """σ(0) = 0.5; σ(ln 3) = 3/(3+1) = 0.75; with T = 2, σ(2 ln 3 / 2) = 0.75 again."""
    assert bt_probability([0.0, math.log(3)]) == pytest.approx([0.5, 0.75])
    assert bt_probability([2 * math.log(3)], temperature=2.0) == pytest.approx([0.75])


def test_bt_probability_stays_finite_at_large_margins():
    """σ(1e4) = 1 and σ(−1e4) ≈ e^−10000 = 0, with no overflow or nan (exp may underflow to 0, harmlessly)."""
    with np.errstate(over="raise", invalid="raise"):
        p = bt_probability([1e4, -1e4])
    assert np.all(np.isfinite(p)) and p[0] == 1.0 and p[1] == pytest.approx(0.0, abs=1e-300)


def test_bt_probability_is_symmetric_under_swapping_the_pair():
    """σ(Δ) + σ(−Δ) = 1 for every Δ."""
    delta = np.array([-30.0, -1.5, 0.0, 0.2, 7.0])
    assert bt_probability(delta) + bt_probability(-delta) == pytest.approx(np.ones(5))


def test_bt_probability_rejects_a_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        bt_probability([1.0], temperature=0.0)


def test_fit_temperature_matches_the_hand_worked_optimum():
    """Δ = [2, 2, 2, −2], u = 1/T: d/du [3 softplus(−2u) + softplus(2u)] = 0 at σ(2u) = 3/4, so u = ln 3 / 2,
    T = 2/ln 3 = 1.8205."""
    assert fit_temperature([2, 2, 2, -2]) == pytest.approx(2 / math.log(3), rel=1e-4)


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    """Margins s ~ N(0, 3²); the chosen side is really preferred with probability σ(s/2), otherwise the pair is
    flipped (Δ = −s). The maximum-likelihood T over 20,000 pairs should be 2 within 15%."""
    rng = np.random.default_rng(0)
    s = rng.normal(0.0, 3.0, size=20_000)
    keep = rng.random(s.size) < bt_probability(s, temperature=2.0)
    delta = np.where(keep, s, -s)
    assert fit_temperature(delta) == pytest.approx(2.0, rel=0.15)


def test_fit_temperature_hits_the_lower_bound_when_every_pair_is_right():
    """All Δ > 0: mean softplus(−Δ/T) falls as T → 0, so the search ends at the lower bound 0.05; all Δ = 0 → 1."""
    assert fit_temperature([1.0, 2.0, 3.0]) == pytest.approx(metrics.T_BOUNDS[0], rel=1e-3)
    assert fit_temperature([0.0, 0.0]) == 1.0


# --- calibration --------------------------------------------------------------------------------------------------


def test_reliability_bins_group_probabilities_into_equal_width_bins():
    """probs [0.1, 0.3, 0.35, 0.9, 1.0], labels [0, 1, 0, 1, 1], 2 bins: [0, 0.5) gets 3 (conf 0.25, acc 1/3);
    [0.5, 1] gets 0.9 and 1.0 (p = 1 goes to the last bin): conf 0.95, acc 1."""
    bins = reliability_bins([0.1, 0.3, 0.35, 0.9, 1.0], [0, 1, 0, 1, 1], n_bins=2)
    assert bins == [
        {"lower": 0.0, "upper": 0.5, "confidence": pytest.approx(0.25), "accuracy": pytest.approx(1 / 3), "count": 3},
        {"lower": 0.5, "upper": 1.0, "confidence": pytest.approx(0.95), "accuracy": 1.0, "count": 2},
    ]


def test_expected_calibration_error_matches_hand_worked_value():
    """Same data: (3/5)·|1/3 − 0.25| + (2/5)·|1 − 0.95| = 0.05 + 0.02 = 0.07."""
    ece = expected_calibration_error([0.1, 0.3, 0.35, 0.9, 1.0], [0, 1, 0, 1, 1], n_bins=2)
    assert ece == pytest.approx(0.07)


def test_expected_calibration_error_is_zero_when_confidence_equals_frequency():
    """Four pairs at p = 0.75 with labels [1, 1, 1, 0]: accuracy 3/4 = confidence → ECE 0."""
    assert expected_calibration_error([0.75] * 4, [1, 1, 1, 0]) == pytest.approx(0.0)


def test_calibration_inputs_are_validated():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier_score([1.5], [1])
    with pytest.raises(ValueError, match="0 or 1"):
        log_loss([0.5], [2])
    with pytest.raises(ValueError, match="empty"):
        expected_calibration_error([], [])


def test_brier_score_matches_hand_worked_value():
    """probs [0.9, 0.2], labels [1, 1]: (0.1² + 0.8²)/2 = (0.01 + 0.64)/2 = 0.325."""
    assert brier_score([0.9, 0.2], [1, 1]) == pytest.approx(0.325)


def test_log_loss_matches_hand_worked_value():
    """probs [0.75, 0.5], labels [1, 0]: (−ln 0.75 − ln 0.5)/2 = (0.28768 + 0.69315)/2 = 0.49041."""
    assert log_loss([0.75, 0.5], [1, 0]) == pytest.approx(0.49041, abs=1e-5)


def test_log_loss_stays_finite_for_confident_mistakes():
    """p = σ(−1e4) = 0 with label 1 is clipped to 1e-12: −ln 1e-12 = 27.631."""
    loss = log_loss(bt_probability([-1e4]), [1])
    assert math.isfinite(loss) and loss == pytest.approx(-math.log(1e-12), rel=1e-6)


def test_calibration_report_scores_each_pair_in_both_orders():
    """Δ = [ln 3] → p = 0.75; set {(0.75, 1), (0.25, 0)}: brier (0.0625 + 0.0625)/2 = 0.0625;
    log loss (ln(4/3) + ln(4/3))/2 = 0.28768; ECE (½·|1 − 0.75| + ½·|0 − 0.25|) = 0.25;
    bins [0.2, 0.3) and [0.7, 0.8)."""
    report = calibration_report([math.log(3)])
    assert report["n_pairs"] == 1 and report["temperature"] == 1.0
    assert report["brier"] == pytest.approx(0.0625)
    assert report["log_loss"] == pytest.approx(math.log(4 / 3))
    assert report["ece"] == pytest.approx(0.25)
    assert [(b["lower"], b["count"]) for b in report["bins"]] == [(pytest.approx(0.2), 1), (pytest.approx(0.7), 1)]


def test_calibration_report_stays_finite_at_large_margins():
    """Δ = [1e4, −1e4]: one certain right pair (loss 0) and one certain wrong pair (loss −ln 1e-12 = 27.631) in each
    order → log loss 27.631/2 = 13.816, brier 1/2, ECE 1/2."""
    report = calibration_report([1e4, -1e4])
    assert report["log_loss"] == pytest.approx(-math.log(1e-12) / 2, rel=1e-6)
    assert report["brier"] == pytest.approx(0.5) and report["ece"] == pytest.approx(0.5)


def test_calibration_report_improves_with_the_fitted_temperature():
    """Labels drawn from σ(s/2), scored at T = 1 (overconfident) and at the fitted T ≈ 2: log loss must drop."""
    rng = np.random.default_rng(1)
    s = rng.normal(0.0, 3.0, size=5_000)
    delta = np.where(rng.random(s.size) < bt_probability(s, temperature=2.0), s, -s)
    raw, fitted = calibration_report(delta), calibration_report(delta, temperature=fit_temperature(delta))
    assert fitted["log_loss"] < raw["log_loss"] and fitted["ece"] < raw["ece"]


# --- correlations -------------------------------------------------------------------------------------------------


def test_pearson_matches_hand_worked_value():
    """x = [1, 2, 3], y = [1, 2, 5]: dx = [−1, 0, 1], dy = [−5/3, −2/3, 7/3]; Σdx·dy = 4, Σdx² = 2, Σdy² = 26/3
    → 4/√(52/3) = 0.96077."""
    assert pearson([1, 2, 3], [1, 2, 5]) == pytest.approx(0.96077, abs=1e-5)


def test_spearman_gives_tied_values_their_average_rank():
    """x = [1, 2, 2, 3] → ranks [1, 2.5, 2.5, 4]; y = [1, 3, 2, 4] → ranks [1, 3, 2, 4]; deviations from 2.5:
    [−1.5, 0, 0, 1.5] and [−1.5, 0.5, −0.5, 1.5] → 4.5/√(4.5 · 5) = 0.94868."""
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.94868, abs=1e-5)


def test_spearman_depends_only_on_order():
    """y = exp(x) is monotone in x: Pearson < 1 but Spearman = 1; reversing y gives −1."""
    x = np.array([0.0, 1.0, 2.0, 5.0])
    assert pearson(x, np.exp(x)) < 0.99
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -np.exp(x)) == pytest.approx(-1.0)


def test_correlations_are_nan_when_one_side_is_constant():
    assert math.isnan(pearson([1, 2, 3], [4, 4, 4]))
    assert math.isnan(spearman([7, 7, 7], [1, 2, 3]))
    assert math.isnan(length_score_correlation([0.5], [10]))


# --- paired comparisons -------------------------------------------------------------------------------------------


def test_paired_bootstrap_accuracy_diff_matches_hand_worked_difference():
    """a right on [1, 1, 1, 0] (3/4), b on [1, 0, 0, 0] (1/4) → diff 0.5; the 95% interval contains it."""
    out = paired_bootstrap_accuracy_diff([1, 1, 1, 0], [1, 0, 0, 0])
    assert out["diff"] == pytest.approx(0.5) and out["n"] == 4 and out["n_boot"] == 2000
    assert -1.0 <= out["ci_low"] <= 0.5 <= out["ci_high"] <= 1.0


def test_paired_bootstrap_interval_is_a_point_when_the_models_agree_on_every_pair():
    """Identical correctness vectors: every resample has diff 0 → interval (0, 0)."""
    out = paired_bootstrap_accuracy_diff([1, 0, 1], [1, 0, 1])
    assert (out["diff"], out["ci_low"], out["ci_high"]) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_matches_index_resampling_in_distribution():
    """The multinomial shortcut and explicit index resampling should give intervals within 0.01 of each other.
    200 pairs: a right on 120, b on 100, disagreeing on 60 pairs (40 a-only, 20 b-only)."""
    a = np.r_[np.ones(40), np.zeros(20), np.ones(80), np.zeros(60)]
    b = np.r_[np.zeros(40), np.ones(20), np.ones(80), np.zeros(60)]
    out = paired_bootstrap_accuracy_diff(a, b, n_boot=20_000, seed=3)
    idx = np.random.default_rng(4).integers(0, a.size, size=(20_000, a.size))
    low, high = np.percentile(a[idx].mean(1) - b[idx].mean(1), [2.5, 97.5])
    assert out["diff"] == pytest.approx(0.1)
    assert out["ci_low"] == pytest.approx(low, abs=0.01) and out["ci_high"] == pytest.approx(high, abs=0.01)


def test_paired_bootstrap_is_reproducible_for_a_seed():
    a, b = [1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 1, 1]
    assert paired_bootstrap_accuracy_diff(a, b, seed=7) == paired_bootstrap_accuracy_diff(a, b, seed=7)


def test_mcnemar_test_uses_the_exact_binomial_for_few_disagreements():
    """b = 1 (a right, b wrong), c = 5: n = 6 < 25 → p = 2·(C(6,0) + C(6,1))/2⁶ = 2·7/64 = 0.21875;
    statistic (|1 − 5| − 1)²/6 = 9/6 = 1.5."""
    a = [1, 0, 0, 0, 0, 0, 1, 0]
    b = [0, 1, 1, 1, 1, 1, 1, 0]
    out = mcnemar_test(a, b)
    assert (out["b"], out["c"], out["method"]) == (1, 5, "exact")
    assert out["p_value"] == pytest.approx(0.21875) and out["statistic"] == pytest.approx(1.5)


def test_mcnemar_test_uses_chi_square_for_many_disagreements():
    """b = 10, c = 20: n = 30 ≥ 25 → statistic (|10 − 20| − 1)²/30 = 81/30 = 2.7; p = erfc(√1.35) = 0.10035."""
    a = np.r_[np.ones(10), np.zeros(20), np.ones(5)]
    b = np.r_[np.zeros(10), np.ones(20), np.ones(5)]
    out = mcnemar_test(a, b)
    assert (out["b"], out["c"], out["method"]) == (10, 20, "chi2")
    assert out["statistic"] == pytest.approx(2.7) and out["p_value"] == pytest.approx(0.10035, abs=1e-5)


def test_mcnemar_test_gives_p_one_without_disagreements_or_with_balanced_ones():
    """b = c = 0 → p = 1, statistic 0; b = c = 3 → exact 2·(1+6+15+20)/64 = 84/64, capped at 1."""
    assert mcnemar_test([1, 0], [1, 0])["p_value"] == 1.0
    balanced = mcnemar_test([1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1])
    assert balanced["p_value"] == 1.0 and balanced["statistic"] == 0.0


def test_swap_consistency_requires_a_strict_sign_flip():
    """Δ_ab = [1, 2, 0, −1], Δ_ba = [−1, 3, 0, 2]: item 0 flips, item 1 does not, item 2 ties (wrong), item 3 flips
    → 2/4 = 0.5."""
    assert swap_consistency([1, 2, 0, -1], [-1, 3, 0, 2]) == pytest.approx(0.5)


def test_swap_consistency_is_one_for_a_pointwise_reward_model():
    """Δ_ba = −Δ_ab with no zeros → every item flips → 1."""
    delta = np.array([0.3, -2.0, 5.0])
    assert swap_consistency(delta, -delta) == 1.0


def test_metrics_imports_neither_torch_nor_scipy():
    """metrics.py is a pure module: numpy and the standard library only."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(metrics.__file__).read_text())
    nodes = list(ast.walk(tree))
    imported = {a.name.split(".")[0] for n in nodes if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in nodes if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "math", "collections", "typing", "numpy"}
