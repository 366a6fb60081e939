"""Rule terms and reward composition: hand-worked values, components that sum to the reward, config errors."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from rmkit.rules import (
    ClassifierTerm,
    KeywordTerm,
    LengthTerm,
    RegexTerm,
    RuleTerm,
    compose,
    keyword_term,
    length_term,
    regex_term,
    weigh_objectives,
)


def test_length_term_counts_words_or_characters_over_the_threshold():
    """words: "a b c d" is 4 words, threshold 2, coef 0.5 → −1; chars: "abcdef" is 6, threshold 4, coef 1 → −2."""
    assert length_term(["a b c d", "a"], "words", 2, 0.5).tolist() == [-1.0, 0.0]
    assert length_term(["abcdef"], "chars", 4, 1.0).tolist() == [-2.0]


def test_regex_term_rewards_a_format_and_keyword_term_flags_refusals():
    assert regex_term(["it is 7", "seven"], r"\d+", 1.0, -1.0).tolist() == [1.0, -1.0]
    assert keyword_term(["I CAN'T help with that", "Sure"], ["i can't"], -2.0).tolist() == [-2.0, 0.0]
    assert keyword_term(["I CAN'T help"], ["i can't"], -2.0, case_sensitive=True).tolist() == [0.0]


def test_objective_weighting_and_gates_match_hand_worked_values():
    """[[1, 3], [2, −1]] · [1, 0.5] = [2, 2.5]; gating objective 1 at 0 sends item 2 (−1 < 0) to gate_value −4."""
    scores = np.array([[1.0, 3.0], [2.0, -1.0]])
    assert weigh_objectives(scores, [1.0, 0.5]).tolist() == [2.0, 2.5]
    assert weigh_objectives(scores, [1.0, 0.5], {1: 0.0}, gate_value=-4.0).tolist() == [2.0, -4.0]
    with pytest.raises(ValueError, match="K = 3"):
        weigh_objectives(scores, [1.0, 0.5, 0.2])


def test_components_sum_to_the_reward_with_every_kind_of_term():
    """learned [1, 2]; length −1·max(0, words − 3): [0, −2]; regex miss −1 on the first; refusal −1 on the second;
    safety penalty −0.5 · [2, 0]; gate on 'gate' (scores [1, −1] < 0 fails item 2) → reward −5 there."""
    texts = ["The answer is 42", "I cannot help with this request"]
    terms = TypeAdapter(list[RuleTerm]).validate_python([
        {"kind": "length", "name": "length", "threshold": 3, "coef": 1.0},
        {"kind": "regex", "name": "format", "pattern": r"\d", "match": 0.0, "miss": -1.0},
        {"kind": "keyword", "name": "refusal", "keywords": ["cannot"], "value": -1.0},
        {"kind": "classifier", "name": "safety", "source": "unused", "coef": -0.5},
        {"kind": "classifier", "name": "gate", "source": "unused", "mode": "gate", "threshold": 0.0, "gate_value": -5},
    ])
    total, parts = compose(np.array([1.0, 2.0]), texts, terms, {"safety": np.array([2.0, 0.0]),
                                                                "gate": np.array([1.0, -1.0])})
    # item 1: 1 + (−1) + 0 + 0 + (−1) = −1; item 2: 2 + (−3) + (−1) + (−1) + 0 = −3 → gated to −5
    assert parts["length"].tolist() == [-1.0, -3.0]
    assert total.tolist() == [-1.0, -5.0]
    np.testing.assert_allclose(sum(parts.values()), total)
    assert parts["gate"].tolist() == [0.0, -2.0]


def test_rule_configs_refuse_bad_patterns_names_and_duplicates():
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        RegexTerm(name="f", pattern="(")
    with pytest.raises(ValidationError):
        KeywordTerm(name="has space", keywords=["x"])
    with pytest.raises(ValueError, match="two components are named"):
        compose(np.zeros(1), ["x"], [LengthTerm(name="a", coef=1.0), KeywordTerm(name="a", keywords=["x"])])
    with pytest.raises(ValueError, match="needs the scores of its classifier"):
        compose(np.zeros(1), ["x"], [ClassifierTerm(name="c", source="m")])
