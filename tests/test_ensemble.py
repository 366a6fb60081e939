"""Tests for rmkit.ensemble: the one reward path (encode → forward → shape), item-major, for one model or several."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rmkit.ensemble import RewardPath, score_file
from rmkit.shaping import ShapingConfig

RAW = ShapingConfig(normalize="none", clip=None)
PROMPTS, RESPONSES = ["Q1", "Q2", "Q3"], ["a", "bb bb", "c c c"]


def test_one_model_path_gives_the_scorer_scores_unshaped(llama_scorer):
    out = RewardPath([llama_scorer], RAW).rewards(PROMPTS, RESPONSES)
    np.testing.assert_allclose(out.shaped, llama_scorer.score(PROMPTS, RESPONSES), atol=1e-6)
    assert out.members is None and out.length_penalty is None


def test_forward_is_item_major(llama_scorer):
    path = RewardPath([llama_scorer, llama_scorer], RAW)
    encoded = path.encode_pairs(PROMPTS, RESPONSES)
    raw = path.forward(encoded)
    assert raw.shape == (3, 2)  # (N items, M members)
    np.testing.assert_allclose(raw[:, 0], raw[:, 1])


def test_two_identical_members_have_zero_spread_and_the_mean_is_the_score(llama_scorer):
    out = RewardPath([llama_scorer, llama_scorer], RAW).rewards(PROMPTS, RESPONSES)
    np.testing.assert_allclose(out.shaped, llama_scorer.score(PROMPTS, RESPONSES), atol=1e-6)
    np.testing.assert_allclose(out.member_std, 0, atol=1e-9)
    assert out.members.shape == (2, 3)


def test_the_length_penalty_is_a_component_that_sums_to_the_reward(llama_scorer):
    shaping = ShapingConfig(normalize="none", clip=None, length_penalty="linear", length_coef=0.5)
    out = RewardPath([llama_scorer], shaping).rewards(PROMPTS, RESPONSES)
    assert (out.length_penalty < 0).all()  # every response has > 0 tokens and the threshold is 0
    for i in range(3):
        parts = out.components(i)
        assert parts["reward_model"] + parts["length_penalty"] == pytest.approx(out.shaped[i])
        assert parts["reward_model"] == pytest.approx(out.raw[i])


def test_score_is_forward_then_shape(llama_scorer):
    path = RewardPath([llama_scorer], RAW)
    encoded = path.encode_pairs(PROMPTS, RESPONSES)
    np.testing.assert_allclose(path.score(encoded).shaped, path.shape(path.forward(encoded), encoded).shaped)


def test_score_file_names_the_bad_line(tmp_path, llama_dir):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"prompt": "Q", "response": "a"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"rows.jsonl:2"):
        score_file(llama_dir, src, tmp_path / "out.jsonl", shaping=RAW, device="cpu")
    assert not (tmp_path / "out.jsonl").exists()
