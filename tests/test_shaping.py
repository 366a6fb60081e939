"""Hand-worked tests for rmkit.shaping: every expected number is derived in the docstring."""

from __future__ import annotations

import math
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from rmkit.shaping import (
    RunningMoments,
    ShapingConfig,
    clip,
    combine_ensemble,
    dapo_length_penalty,
    kl_estimate,
    kl_shaped_rewards,
    linear_length_penalty,
    normalize,
    response_length,
    running_moments,
    shape_rewards,
)

NONE = ShapingConfig(normalize="none", clip=None)


def test_dapo_penalty_is_zero_then_ramps_then_minus_one():
    """Lmax 100, Lc 20: 80 ≤ 80 → 0; 90 → (80 − 90)/20 = −0.5; 100 → −1; 101 > Lmax → −1."""
    np.testing.assert_allclose(dapo_length_penalty(np.array([80, 90, 100, 101]), 100, 20), [0, -0.5, -1, -1])


def test_dapo_penalty_with_zero_cache_is_a_hard_cut_at_max_length():
    """Lmax 100, Lc 0: 100 → 0, 101 → −1 (no ramp, no division by zero)."""
    np.testing.assert_allclose(dapo_length_penalty(np.array([100, 101]), 100, 0), [0, -1])


def test_linear_length_penalty_counts_only_tokens_over_the_threshold():
    """threshold 10, coef 0.1: 5 → 0, 10 → 0, 30 → −0.1·20 = −2."""
    np.testing.assert_allclose(linear_length_penalty(np.array([5, 10, 30]), 10, 0.1), [0, 0, -2])


def test_default_config_normalises_with_stored_stats_then_clips_at_five():
    """mean 1, std 2: 13 → 6 → 5; −11 → −6 → −5; 3 → 1 (inside the clip)."""
    out = shape_rewards(np.array([13.0, -11.0, 3.0]), None, ShapingConfig(), stats=(1.0, 2.0))
    np.testing.assert_allclose(out.shaped, [5, -5, 1])
    np.testing.assert_allclose(out.raw, [13, -11, 3])
    assert out.members is None and out.member_std is None and out.passed is None


def test_config_mean_and_std_override_the_stored_stats():
    """Stored (100, 100) is ignored: (3 − 1)/2 = 1; with no stored stats at all the overrides suffice."""
    cfg = ShapingConfig(reward_mean=1.0, reward_std=2.0)
    np.testing.assert_allclose(shape_rewards(np.array([3.0]), None, cfg, stats=(100.0, 100.0)).shaped, [1])
    np.testing.assert_allclose(shape_rewards(np.array([3.0]), None, cfg, stats=None).shaped, [1])


def test_missing_stored_stats_raise_and_say_how_to_fix_it():
    with pytest.raises(ValueError, match="reward_mean and reward_std, or use normalize='none'"):
        shape_rewards(np.array([1.0]), None, ShapingConfig(), stats=None)


def test_normalize_and_clip_reject_non_positive_scales():
    with pytest.raises(ValueError, match="std must be positive"):
        normalize(np.array([1.0]), 0.0, 0.0)
    with pytest.raises(ValueError, match="clip bound must be positive"):
        clip(np.array([1.0]), 0.0)


def test_length_penalty_is_added_after_clipping_so_it_is_never_clipped_away():
    """Stored (1, 2), linear 0.5·(30 − 10) = 10: 13 → 6 → clip 5 → 5 − 10 = −5; 3 → 1 → 1 − 10 = −9, below −5."""
    cfg = ShapingConfig(length_penalty="linear", length_threshold=10, length_coef=0.5)
    out = shape_rewards(np.array([13.0, 3.0]), np.array([30, 30]), cfg, stats=(1.0, 2.0))
    np.testing.assert_allclose(out.shaped, [-5, -9])


def test_dapo_penalty_in_shape_rewards_uses_response_lengths():
    """No normalisation, no clip: 2 at L=90 → 2 − 0.5 = 1.5; 2 at L=101 → 1."""
    cfg = ShapingConfig(normalize="none", clip=None, length_penalty="dapo", dapo_max_length=100, dapo_cache=20)
    np.testing.assert_allclose(shape_rewards(np.array([2.0, 2.0]), np.array([90, 101]), cfg).shaped, [1.5, 1.0])
    with pytest.raises(ValueError, match="needs lengths"):
        shape_rewards(np.array([2.0, 2.0]), None, cfg)


def test_running_moments_match_a_hand_computation_over_two_batches():
    """[1, 2, 3]: mean 2, var 2/3 → running mean 2, unbiased std 1.
    Then [4, 6] (mean 5, var 1): δ = 3, n = 5, old = 2/3·3 + 9·3·2/5 = 12.8, new = 2, var = 14.8/5 = 2.96,
    mean = 2 + 3·2/5 = 3.2, std = √(2.96·5/4) = √3.7 ≈ 1.9235 — the unbiased std of all five values."""
    rm = RunningMoments()
    assert rm.update(np.array([1.0, 2.0, 3.0])) == pytest.approx((2.0, 1.0))
    mean, std = rm.update(np.array([4.0, 6.0]))
    assert (mean, std) == pytest.approx((3.2, 1.9235), abs=1e-4)
    # The same from the stated formulas, with the 1e-24 starting count kept.
    m, v, c = 0.0, 1.0, 1e-24
    for xs in (np.array([1.0, 2.0, 3.0]), np.array([4.0, 6.0])):
        d, n = xs.mean() - m, c + xs.size
        v_new = (v * c + d**2 * c * xs.size / n + xs.var() * xs.size) / n
        m, s, v, c = m + d * xs.size / n, math.sqrt(v_new * n / (n - 1)), v_new, n
    assert (mean, std) == pytest.approx((m, s), rel=1e-12)
    assert std == pytest.approx(np.std([1, 2, 3, 4, 6], ddof=1), rel=1e-12)


def test_running_normalisation_merges_the_batch_before_scaling():
    """First batch [1, 2, 3] is merged first (mean 2, std 1), so it scales to [−1, 0, 1], not by the prior (0, 1)."""
    rm = RunningMoments()
    out = shape_rewards(np.array([1.0, 2.0, 3.0]), None, ShapingConfig(normalize="running"), running=rm)
    np.testing.assert_allclose(out.shaped, [-1, 0, 1], atol=1e-12)
    with pytest.raises(ValueError, match="RunningMoments"):
        shape_rewards(np.array([1.0]), None, ShapingConfig(normalize="running"))


def test_a_single_first_value_keeps_the_prior_std_of_one():
    """[5]: mean → 5, unbiased std undefined for one value, so std stays 1 and the reward scales to 0."""
    rm = RunningMoments()
    assert rm.update(np.array([5.0])) == pytest.approx((5.0, 1.0))


def test_running_moments_state_round_trips_and_rejects_unknown_keys():
    rm = RunningMoments()
    rm.update(np.array([1.0, 2.0, 3.0]))
    other = RunningMoments()
    other.load_state_dict(rm.state_dict())
    assert other.state_dict() == rm.state_dict()
    assert other.update(np.array([4.0, 6.0])) == rm.update(np.array([4.0, 6.0]))
    with pytest.raises(ValueError, match="exactly the keys"):
        other.load_state_dict({"mean": 0.0})


def test_concurrent_updates_give_the_moments_of_all_values():
    """8 threads × 50 batches of 4: final mean/std equal those of the 1600 values, whatever the interleaving."""
    rng = np.random.default_rng(0)
    batches = rng.normal(3.0, 2.0, size=(8, 50, 4))
    rm = RunningMoments()
    threads = [threading.Thread(target=lambda b=b: [rm.update(x) for x in b]) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = rm.state_dict()
    assert state["count"] == pytest.approx(1600)
    assert state["mean"] == pytest.approx(batches.mean(), rel=1e-9)
    assert state["std"] == pytest.approx(batches.std(ddof=1), rel=1e-9)


def test_ensembles_mean_min_and_mean_minus_k_std_on_a_2x2_example():
    """Members [[1, 3], [3, 3]]: mean [2, 3]; min [1, 3]; population std [1, 0]; mean − 2·std [0, 3]."""
    scores = np.array([[1.0, 3.0], [3.0, 3.0]])
    mean, std = combine_ensemble(scores, "mean")
    np.testing.assert_allclose(mean, [2, 3])
    np.testing.assert_allclose(std, [1, 0])
    np.testing.assert_allclose(combine_ensemble(scores, "min")[0], [1, 3])
    np.testing.assert_allclose(combine_ensemble(scores, "mean_minus_std", k=2.0)[0], [0, 3])
    with pytest.raises(ValueError, match="unknown ensemble"):
        combine_ensemble(scores, "max")


def test_a_single_member_ensemble_has_zero_std():
    mean, std = combine_ensemble(np.array([[1.5, -2.0]]))
    np.testing.assert_allclose(mean, [1.5, -2.0])
    np.testing.assert_allclose(std, [0, 0])


def test_shape_rewards_on_a_member_matrix_keeps_members_and_member_std():
    """[[1, 3], [3, 3]], mean − 1·std → raw [1, 3]; stored (1, 2) → shaped [0, 1]; member_std [1, 0] in raw units."""
    cfg = ShapingConfig(ensemble="mean_minus_std")
    out = shape_rewards(np.array([[1.0, 3.0], [3.0, 3.0]]), None, cfg, stats=(1.0, 2.0))
    np.testing.assert_allclose(out.raw, [1, 3])
    np.testing.assert_allclose(out.shaped, [0, 1])
    np.testing.assert_allclose(out.member_std, [1, 0])
    np.testing.assert_allclose(out.members, [[1, 3], [3, 3]])


def test_threshold_flags_pass_on_the_final_shaped_reward():
    """Threshold 0.5 after DAPO: [1 − 0, 1 − 0.5, 0.4 − 0] → [1, 0.5, 0.4] → [pass, pass (≥), fail]."""
    cfg = ShapingConfig(normalize="none", reward_threshold=0.5, length_penalty="dapo", dapo_max_length=100,
                        dapo_cache=20)
    out = shape_rewards(np.array([1.0, 1.0, 0.4]), np.array([10, 90, 10]), cfg)
    assert out.passed.tolist() == [True, True, False]
    assert out.passed.dtype == bool


@pytest.mark.parametrize(
    "kwargs",
    [
        {"normalize": "none", "reward_mean": 1.0},
        {"length_coef": 0.1},
        {"length_penalty": "linear"},
        {"dapo_max_length": 100},
        {"length_penalty": "dapo"},
        {"length_penalty": "dapo", "dapo_max_length": 10, "dapo_cache": 20},
        {"ensemble_k": 2.0},
        {"clip": 0.0},
        {"reward_std": -1.0},
        {"normalise": "stored"},
    ],
)
def test_config_rejects_ignored_inconsistent_or_unknown_settings(kwargs):
    with pytest.raises(ValidationError):
        ShapingConfig(**kwargs)


def test_config_is_frozen_and_every_field_has_a_docstring():
    cfg = ShapingConfig()
    assert (cfg.normalize, cfg.clip) == ("stored", 5.0)
    with pytest.raises(ValidationError):
        cfg.clip = 1.0
    assert all(f.description for f in ShapingConfig.model_fields.values())


def test_kl_estimators_on_hand_numbers():
    """log_ratio = ln 2: k1 = 0.6931; k2 = 0.6931²/2 = 0.2402; k3 = e^(−ln 2) − 1 + ln 2 = 0.5 − 1 + 0.6931 = 0.1931."""
    logp, ref = torch.tensor([[math.log(2.0)]]), torch.tensor([[0.0]])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(0.6931, abs=1e-4)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.2402, abs=1e-4)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.1931, abs=1e-4)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(logp, ref, "k4")


def test_kl_shaped_rewards_put_the_score_at_the_last_attended_token_with_right_and_left_padding():
    """β 0.5, log_ratio ln 2 on every token (k1 0.6931 → −0.3466), score 2.
    Right padding [1, 1, 1, 0] → [−0.3466, −0.3466, 1.6534, 0];
    left padding [0, 1, 1, 1] → [0, −0.3466, −0.3466, 1.6534]."""
    logp, ref = torch.full((2, 4), math.log(2.0)), torch.zeros(2, 4)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    out = kl_shaped_rewards(torch.tensor([2.0, 2.0]), logp, ref, mask, beta=0.5)
    k = -0.5 * math.log(2.0)
    expected = torch.tensor([[k, k, 2 + k, 0.0], [0.0, k, k, 2 + k]])
    torch.testing.assert_close(out, expected)


def test_kl_shaped_rewards_with_zero_kl_and_clip_kl():
    """Zero KL leaves only the score ([[0, 0, 3, 0]]); a log_ratio of 50 clamped at 10 gives −0.1·10 = −1 per token."""
    mask = torch.tensor([[0, 1, 1, 0]])
    zero = kl_shaped_rewards(torch.tensor([3.0]), torch.zeros(1, 4), torch.zeros(1, 4), mask, beta=0.1)
    torch.testing.assert_close(zero, torch.tensor([[0.0, 0.0, 3.0, 0.0]]))
    big = kl_shaped_rewards(torch.tensor([0.0]), torch.full((1, 4), 50.0), torch.zeros(1, 4), mask, 0.1, clip_kl=10.0)
    torch.testing.assert_close(big, torch.tensor([[0.0, -1.0, -1.0, 0.0]]))


def test_kl_shaped_rewards_reject_an_empty_mask_row_and_mismatched_shapes():
    logp = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="at least one response token"):
        kl_shaped_rewards(torch.tensor([1.0]), logp, logp, torch.zeros(1, 3), beta=0.1)
    with pytest.raises(ValueError, match="expected score"):
        kl_shaped_rewards(torch.tensor([1.0, 2.0]), logp, logp, torch.ones(1, 3), beta=0.1)


def test_importing_shaping_does_not_import_torch():
    code = "import sys, rmkit.shaping; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- length in characters or words, on the raw score


def test_response_length_counts_characters_or_words_of_text_and_messages():
    """"Hi  there": 9 characters, 2 words; messages [a b] and [c]: "a b\\n\\nc" is 6 characters, 3 words."""
    msgs = [{"role": "assistant", "content": "a b"}, {"role": "assistant", "content": "c"}]
    assert [response_length("Hi  there", u) for u in ("chars", "words")] == [9, 2]
    assert [response_length(msgs, u) for u in ("chars", "words")] == [6, 3]
    with pytest.raises(ValueError, match="tokens need a tokenizer"):
        response_length("x", "tokens")


def test_nemo_gym_length_example_penalises_characters_over_500_on_the_raw_score():
    """Raw 2 at 400, 500, 1500 characters, 0.001 per character over 500 → 2, 2, 2 − 1 = 1; raw_reward stays 2."""
    cfg = ShapingConfig(normalize="none", clip=None, length_penalty="linear", length_unit="chars",
                        length_threshold=500, length_coef=0.001, length_on="raw")
    out = shape_rewards(np.array([2.0, 2.0, 2.0]), np.array([400, 500, 1500]), cfg)
    assert out.shaped.tolist() == pytest.approx([2.0, 2.0, 1.0])
    assert out.raw.tolist() == [2.0, 2.0, 2.0]


def test_a_raw_stage_penalty_is_normalised_and_clipped_with_the_score():
    """Stored (0, 1), clip 5: raw 8 with penalty −6 → raw stage 2 → 2; shaped stage clip(8) = 5, then −6 → −1."""
    kwargs = dict(reward_mean=0.0, reward_std=1.0, length_penalty="linear", length_threshold=0, length_coef=1.0)
    raw_stage = shape_rewards(np.array([8.0]), np.array([6]), ShapingConfig(**kwargs, length_on="raw"))
    shaped_stage = shape_rewards(np.array([8.0]), np.array([6]), ShapingConfig(**kwargs))
    assert (raw_stage.shaped[0], shaped_stage.shaped[0]) == (2.0, -1.0)


def test_running_statistics_start_from_the_configured_mean_and_std():
    """Seed (10, 4): one value 12 → mean 12 (the prior's count is 1e-24), std stays 4 → (12 − 12)/4 = 0.
    Then 14: mean 13, unbiased std √2 → (14 − 13)/√2 ≈ 0.7071."""
    cfg = ShapingConfig(normalize="running", reward_mean=10.0, reward_std=4.0, clip=None)
    running = running_moments(cfg)
    assert (running.mean, running.std) == (10.0, 4.0)
    assert shape_rewards(np.array([12.0]), None, cfg, running=running).shaped[0] == pytest.approx(0.0)
    assert shape_rewards(np.array([14.0]), None, cfg, running=running).shaped[0] == pytest.approx(1 / math.sqrt(2))
    assert (running_moments(ShapingConfig(normalize="running")).mean, RunningMoments().std) == (0.0, 1.0)


@pytest.mark.parametrize("kwargs", [{"length_unit": "chars"}, {"length_on": "raw"},
                                    {"normalize": "none", "reward_std": 2.0}])
def test_length_unit_and_stage_need_a_length_penalty_and_seeds_need_normalisation(kwargs):
    with pytest.raises(ValidationError, match="only applies with"):
        ShapingConfig(**kwargs)
