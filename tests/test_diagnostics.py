"""Hand-worked checks of rmkit.diagnostics (each rule on both sides of its threshold) and of the diagnostics that
rmkit.evaluation.summarize adds: length, calibration before/after, position, ratings correlations and flags."""

import json
import math

import numpy as np
import pytest

from rmkit import diagnostics, metrics
from rmkit.data import PreferencePair, RatedResponse
from rmkit.diagnostics import (
    Flag,
    calibration_flag,
    chance_flag,
    length_baseline_flag,
    length_correlation_flag,
    length_difference_buckets,
    length_split_flag,
    overfitting_flag,
    position_flags,
    rating_flag,
    score_distribution_flags,
    swap_flag,
    train_val_gap,
    training_flag,
)
from rmkit.evaluation import dataset_names, position_summary, summarize, summarize_ratings

# --- single rules ---------------------------------------------------------------------------------------------------


def test_chance_is_flagged_when_the_interval_includes_one_half():
    """(0.45, 0.70) contains 0.5 → flagged; (0.55, 0.80) does not; (0.5, 0.9) touches it → flagged."""
    assert chance_flag(0.45, 0.70).kind == "chance"
    assert chance_flag(0.55, 0.80) is None
    assert chance_flag(0.5, 0.9) is not None


def test_length_baseline_flag_fires_within_two_points_of_the_baseline():
    """0.61 − 0.60 = 0.01 < 0.02 → flagged; 0.70 − 0.60 = 0.10 → not; 0.55 is below the baseline → flagged."""
    assert length_baseline_flag(0.61, 0.60).kind == "length"
    assert length_baseline_flag(0.70, 0.60) is None
    assert length_baseline_flag(0.55, 0.60) is not None
    assert diagnostics.LENGTH_BASELINE_MARGIN == 0.02


def test_length_correlation_flag_fires_above_three_tenths_either_way():
    """|0.45| > 0.3 → flagged (longer favoured); |−0.45| → flagged (shorter); 0.2 → not; nan → not."""
    assert "longer responses get higher rewards" in length_correlation_flag(0.45).message
    assert "shorter responses get higher rewards" in length_correlation_flag(-0.45).message
    assert length_correlation_flag(0.2) is None
    assert length_correlation_flag(math.nan) is None


def test_length_split_flag_needs_a_gap_and_enough_pairs_each_side():
    """0.9 (n 30) vs 0.6 (n 25): gap 0.3 > 0.15 → flagged; with only 10 shorter pairs → not; gap 0.1 → not."""
    by = {"acc_longer": 0.9, "n_longer": 30, "acc_shorter": 0.6, "n_shorter": 25, "n_equal": 0}
    assert "favours longer" in length_split_flag(by).message
    assert length_split_flag({**by, "n_shorter": 10}) is None
    assert length_split_flag({**by, "acc_shorter": 0.8}) is None


def test_overfitting_flag_fires_above_a_ten_point_gap():
    """0.98 − 0.70 = 0.28 > 0.1 → flagged; 0.80 − 0.75 = 0.05 → not."""
    assert overfitting_flag(0.98, 0.70).kind == "overfitting"
    assert overfitting_flag(0.80, 0.75) is None


def test_calibration_flag_names_the_direction_from_the_best_temperature():
    """ECE 0.15 > 0.1 on 100 pairs: best T 3 > T 1 → probabilities too extreme → over-confident; best T 0.5 →
    under-confident; ECE 0.05 → not flagged; 10 pairs → too few to judge."""
    cal = {"temperature": 1.0, "fitted_temperature": 3.0, "after": {"ece": 0.15, "n_pairs": 100}}
    assert "over-confident" in calibration_flag(cal).message
    assert "under-confident" in calibration_flag({**cal, "fitted_temperature": 0.5}).message
    assert calibration_flag({**cal, "after": {"ece": 0.05, "n_pairs": 100}}) is None
    assert calibration_flag({**cal, "after": {"ece": 0.15, "n_pairs": 10}}) is None


def test_swap_flag_fires_below_ninety_five_percent():
    assert swap_flag(0.9).kind == "position"
    assert swap_flag(1.0) is None


def test_position_flags_catch_an_accuracy_gap_and_skewed_labels():
    """A 0.9 vs B 0.6 on 30 rows each: gap 0.3 > 0.1 → one flag; labels 70% A of 100 rows: |0.7 − 0.5| > 0.1 → one
    more; a balanced, consistent set gives none."""
    by = {"A": {"accuracy": 0.9, "n": 30}, "B": {"accuracy": 0.6, "n": 30}}
    gap = position_flags({"n": 60, "label_A_rate": 0.5, "swap_consistency": 1.0, "by_position": by})
    assert [f.kind for f in gap] == ["position"] and "where A was preferred" in gap[0].message
    skew = position_flags({"n": 100, "label_A_rate": 0.7, "swap_consistency": 1.0,
                           "by_position": {"A": {"accuracy": 0.8, "n": 70}, "B": {"accuracy": 0.8, "n": 30}}})
    assert len(skew) == 1 and "prefer A in 70.0%" in skew[0].message
    even = {"A": {"accuracy": 0.8, "n": 30}, "B": {"accuracy": 0.75, "n": 30}}
    assert position_flags({"n": 60, "label_A_rate": 0.5, "swap_consistency": 1.0, "by_position": even}) == []


def test_rating_flag_fires_below_two_tenths_and_on_nan():
    assert rating_flag(0.1).kind == "ratings"
    assert rating_flag(math.nan) is not None
    assert rating_flag(0.5) is None


def test_train_val_gap_averages_the_last_training_rows():
    """Train rows 0.5, 0.9, 1.0 with window 2 → (0.9 + 1.0)/2 = 0.95; last val 0.7 → gap 0.25."""
    rows = [{"step": 1, "split": "train", "accuracy": 0.5}, {"step": 2, "split": "train", "accuracy": 0.9},
            {"step": 2, "split": "val", "accuracy": 0.6}, {"step": 3, "split": "train", "accuracy": 1.0},
            {"step": 3, "split": "val", "accuracy": 0.7}]
    gap = train_val_gap(rows, window=2)
    assert gap["train_accuracy"] == pytest.approx(0.95)
    assert gap["val_accuracy"] == 0.7 and gap["gap"] == pytest.approx(0.25)
    assert (gap["train_step"], gap["val_step"]) == (3, 3)
    assert train_val_gap([r for r in rows if r["split"] == "train"]) is None
    assert gap["val_heldout"] is True  # rows without the field (older runs) count as held out


def test_training_flag_checks_overfitting_only_against_held_out_rows():
    rows = [{"step": 1, "split": "train", "accuracy": 1.0}, {"step": 1, "split": "val", "accuracy": 0.6}]
    assert training_flag(train_val_gap(rows)).kind == "overfitting"  # gap 0.4 > 0.1
    assert training_flag(train_val_gap([rows[0], {**rows[1], "accuracy": 0.95}])) is None
    stand_in = training_flag(train_val_gap([rows[0], {**rows[1], "heldout": False, "accuracy": 1.0}]))
    assert stand_in.kind == "no_heldout" and "training pairs (data.val_fraction=0)" in stand_in.message


def test_length_difference_buckets_match_hand_worked_ratios():
    """d = (c − r)/max(c, r): (10, 40) −0.75; (8, 10) −0.2; (5, 10) −0.5 (not < −0.5); (100, 95) 0.05;
    (100, 90) 0.1 (≤ 0.1); (30, 20) 1/3; (40, 10) 0.75; (0, 0) 0."""
    got = length_difference_buckets([10, 8, 5, 100, 100, 30, 40, 0], [40, 10, 10, 95, 90, 20, 10, 0])
    assert got == ["much shorter", "shorter", "shorter", "similar", "similar", "longer", "much longer", "similar"]


def test_score_distribution_flags_are_empty_for_a_healthy_distribution():
    assert score_distribution_flags(np.linspace(-3, 3, 50)) == []


def test_score_distribution_flags_report_a_collapsed_model():
    """[0.50, 0.51, 0.52]: deviations ±0.01, 0 → std √(0.0002/3) = 0.008165 < 0.05 → one "collapsed" flag."""
    flags = score_distribution_flags([0.50, 0.51, 0.52])
    assert len(flags) == 1 and str(flags[0]).startswith("collapsed: reward std 0.00816 < 0.05")


def test_score_distribution_flags_report_the_share_of_extreme_rewards():
    """3 of 100 rewards at ±25 > 20 → "extreme: 3% of rewards have |r| > 20"."""
    scores = np.r_[np.linspace(-2, 2, 97), [25.0, -25.0, 30.0]]
    flags = score_distribution_flags(scores)
    assert len(flags) == 1 and str(flags[0]).startswith("extreme: 3% of rewards have |r| > 20")


def test_score_distribution_flags_report_non_finite_rewards():
    """One nan among [nan, 0, 1, 2]: flag it, and judge the rest (std 0.816, no |r| > 20) on the finite values."""
    flags = score_distribution_flags([math.nan, 0.0, 1.0, 2.0])
    assert len(flags) == 1 and str(flags[0]).startswith("non-finite: 1 of 4 rewards")


def test_a_flag_reads_back_from_its_json_and_prints_as_kind_colon_message():
    flag = Flag("collapsed", "reward std 0.001 < 0.05")
    assert flag.to_json() == {"kind": "collapsed", "message": "reward std 0.001 < 0.05"}
    assert Flag.from_json(json.loads(json.dumps(flag.to_json()))) == flag
    assert str(flag) == "collapsed: reward std 0.001 < 0.05"


# --- summarize: the diagnostics a report carries -------------------------------------------------------------------


def _pairs():
    """Lengths chosen/rejected: (4, 1), (2, 4), (6, 2), (1, 3); the first two are A/B rows (A, then B preferred)."""
    return [PreferencePair("p", "aaaa", "b", chosen_position="A"),
            PreferencePair("p", "cc", "dddd", chosen_position="B"),
            PreferencePair("q", "eeeeee", "ff", subset="s"), PreferencePair("q", "g", "hhh", subset="s")]


def test_summarize_reports_accuracy_length_and_position_by_hand():
    """Δ = [1, −1, 2, 0.5] → accuracy 3/4; chosen is longer in pairs 0 and 2 → baseline 1/2, acc_longer 1.0 and
    acc_shorter 1/2; relative lengths 0.75, −0.5, 2/3, −2/3 → much longer ×2, shorter, much shorter; A/B rows:
    A preferred (Δ 1, right) and B preferred (Δ −1, wrong) → label_A_rate 0.5, no ties → swap consistency 1."""
    s = summarize(np.array([1.0, 0.0, 2.0, 0.5]), np.array([0.0, 1.0, 0.0, 0.0]), _pairs())
    assert s["accuracy"] == 0.75 and s["length_baseline_accuracy"] == 0.5
    assert (s["by_length"]["acc_longer"], s["by_length"]["acc_shorter"]) == (1.0, 0.5)
    buckets = s["by_length_difference"]
    assert {k: v["n"] for k, v in buckets.items()} == {"much longer": 2, "shorter": 1, "much shorter": 1}
    assert buckets["shorter"]["accuracy"] == 0.0
    pos = s["position"]
    assert pos["n"] == 2 and pos["label_A_rate"] == 0.5 and pos["swap_consistency"] == 1.0
    assert pos["by_position"]["A"]["accuracy"] == 1.0 and pos["by_position"]["B"]["accuracy"] == 0.0
    assert s["length_score_spearman"] == pytest.approx(
        metrics.spearman([1, 0, 2, 0.5, 0, 1, 0, 0], [4, 2, 6, 1, 1, 4, 2, 3]))
    assert set(s["subsets"]) == {"all", "s"}


def test_summarize_shows_calibration_at_t_one_and_at_the_model_temperature():
    """"before" is σ(Δ) and "after" σ(Δ/T) with the model's T = 2: Δ = ln 3 → p 0.75 before, σ(ln 3 / 2) = √3/(1+√3)
    = 0.634 after."""
    delta = math.log(3)
    s = summarize(np.array([delta]), np.array([0.0]), [PreferencePair("p", "a", "b")], temperature=2.0)
    cal = s["calibration"]
    assert cal["before"]["temperature"] == 1.0 and cal["after"]["temperature"] == 2.0
    assert cal["before"]["brier"] == pytest.approx(0.0625)  # (0.25² + 0.25²)/2
    assert cal["after"]["brier"] == pytest.approx((1 - math.sqrt(3) / (1 + math.sqrt(3))) ** 2)
    assert cal["fitted_temperature"] == pytest.approx(metrics.fit_temperature([delta]))


def test_position_summary_counts_ties_as_swap_inconsistent():
    """A pointwise model gives Δ_BA = −Δ_AB: only the tie (Δ = 0) fails to flip → 1/2 → a position flag."""
    pos = position_summary(np.array([1.0, 0.0, 2.0]), ["A", "B", None])
    assert pos["n"] == 2 and pos["swap_consistency"] == 0.5
    assert [f.kind for f in position_flags(pos)] == ["position"]
    assert position_summary(np.array([1.0]), [None]) is None


def test_summarize_flags_a_collapsed_model_and_length_reliance():
    """Every reward ≈ 0.5 (std < 0.05) → "collapsed"; 40 pairs with chosen longer in 30, model right exactly there
    → accuracy 0.75 = the length-only baseline → "length"."""
    pairs = [PreferencePair("p", "long answer", "no") for _ in range(30)]
    pairs += [PreferencePair("p", "no", "long answer") for _ in range(10)]
    chosen = np.r_[np.full(30, 0.51), np.full(10, 0.49)]
    rejected = np.r_[np.full(30, 0.49), np.full(10, 0.51)]
    kinds = {f["kind"] for f in summarize(chosen, rejected, pairs)["flags"]}
    assert {"collapsed", "length"} <= kinds


def test_summarize_ratings_reports_spearman_and_pearson_by_hand():
    """scores [1, 2, 3] vs ratings [1, 2, 5]: same order → Spearman 1; Pearson 4/√(2·26/3) = 0.9608; equal lengths
    → length correlation nan, no flags."""
    rated = [RatedResponse("p", "ab", 1.0), RatedResponse("p", "cd", 2.0), RatedResponse("q", "ef", 5.0)]
    s = summarize_ratings(np.array([1.0, 2.0, 3.0]), rated)
    assert s["kind"] == "ratings" and s["n_responses"] == 3
    assert s["spearman"] == pytest.approx(1.0)
    assert s["pearson"] == pytest.approx(0.9608, abs=1e-4)
    assert math.isnan(s["length_score_spearman"]) and s["flags"] == []


def test_dataset_names_use_the_folder_for_pairs_jsonl_and_number_repeats():
    assert dataset_names(["data/hh/pairs.jsonl", "x/test.jsonl", "y/test.jsonl"]) == ["hh", "test", "test-2"]
    assert dataset_names(["data/ae/pairs.jsonl.gz", "x/test.jsonl.gz"]) == ["ae", "test"]


def test_summarize_breaks_accuracy_down_by_source_file_with_its_length_baseline():
    """Δ = [1, −1, 2]; pairs 1–2 from data/a/pairs.jsonl (chosen longer in pair 1 only), pair 3 from b.jsonl.gz
    (chosen shorter) → a: accuracy 1/2, baseline 1/2; b: accuracy 1, baseline 0."""
    pairs = [PreferencePair("p", "long answer", "x", origin="data/a/pairs.jsonl:1"),
             PreferencePair("q", "y", "long answer", origin="data/a/pairs.jsonl:2"),
             PreferencePair("r", "z", "long answer", origin="b.jsonl.gz:7")]
    s = summarize(np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, 0.0]), pairs)
    a, b = s["by_source"]["a"], s["by_source"]["b"]
    assert (a["n_pairs"], a["accuracy"], a["length_baseline_accuracy"]) == (2, 0.5, 0.5)
    assert (b["n_pairs"], b["accuracy"], b["length_baseline_accuracy"]) == (1, 1.0, 0.0)
    assert b["accuracy_ci95"] == pytest.approx(list(metrics.wilson_interval(1, 1)))
    assert "by_source" not in summarize(np.array([1.0]), np.array([0.0]), pairs[:1])  # one source: nothing to split
