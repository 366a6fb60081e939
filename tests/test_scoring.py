"""Tests for rmkit.scoring: batching by a token budget never changes a score, and order is kept."""

from __future__ import annotations

import numpy as np
import pytest

from rmkit.data import PreferencePair
from rmkit.scoring import Scorer, compare

PROMPTS = ["Name a prime.", "Say hi.", "Count to three, slowly and clearly, please."]
RESPONSES = ["7", "hi there, how are you today?", "one two three"]


def test_batched_scores_equal_one_at_a_time_scores_in_input_order(llama_scorer):
    together = llama_scorer.score(PROMPTS, RESPONSES)
    alone = [llama_scorer.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_a_tiny_token_budget_gives_the_same_scores(llama_scorer):
    small = Scorer(llama_scorer.model, llama_scorer.tokenizer, llama_scorer.card, max_tokens=1, max_batch=1)
    np.testing.assert_allclose(small.score(PROMPTS, RESPONSES), llama_scorer.score(PROMPTS, RESPONSES), atol=1e-5)


def test_score_pairs_returns_chosen_and_rejected_of_each_pair(llama_scorer):
    pairs = [PreferencePair(p, r, "no") for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    chosen, rejected = llama_scorer.score_pairs(pairs)
    np.testing.assert_allclose(chosen, llama_scorer.score(PROMPTS, RESPONSES), atol=1e-5)
    np.testing.assert_allclose(rejected, llama_scorer.score(PROMPTS, ["no"] * 3), atol=1e-5)


def test_mismatched_prompts_and_responses_are_an_error(llama_scorer):
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        llama_scorer.score(["a", "b"], ["x"])


def test_compare_gives_sigma_of_the_difference_over_the_temperature(llama_scorer):
    out = compare(llama_scorer, "Q", ["a", "b"])
    r_a, r_b = out["scores"]
    expected = 1 / (1 + np.exp(-(r_a - r_b) / llama_scorer.card.temperature))
    assert out["p_first_preferred"] == [pytest.approx(expected, abs=1e-9)]
