"""Rule-based reward terms and their composition with a learned reward: a length term, a regex/format term, a
refusal/keyword term, an external-classifier term (penalty or gate), per-objective weighting (fixed weights or
per-objective gates) and `compose`, which adds the terms to the shaped learned reward and keeps each one as a named
component. Configs (pydantic) and pure functions over texts and arrays; knows nothing of models, HTTP or files:
classifier scores arrive as arrays computed elsewhere (rmkit.ensemble).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

MODEL_COMPONENT = "reward_model"  # the learned reward's component name (NeMo Gym reward_components)


class _Term(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Component name, shown in reward_components and scored rows."""


class LengthTerm(_Term):
    kind: Literal["length"] = "length"
    unit: Literal["chars", "words"] = "words"
    """What is counted in the response text."""
    threshold: int = Field(0, ge=0)
    """Length above which the term starts."""
    coef: float = Field(gt=0)
    """Penalty per unit over the threshold: term = −coef · max(0, L − threshold)."""


class RegexTerm(_Term):
    kind: Literal["regex"] = "regex"
    pattern: str
    """Python regular expression searched in the response (re.search; use ^...$ with (?s) for a full match)."""
    match: float = 0.0
    """Term when the pattern is found."""
    miss: float = -1.0
    """Term when it is not (a format reward: match 0, miss −1)."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pattern {value!r} is not a valid regular expression: {exc}") from None
        return value


class KeywordTerm(_Term):
    kind: Literal["keyword"] = "keyword"
    keywords: list[str] = Field(min_length=1)
    """Phrases looked for in the response (case-insensitive unless case_sensitive), e.g. refusal phrases."""
    value: float = -1.0
    """Term when any keyword occurs, 0 otherwise."""
    case_sensitive: bool = False
    """Match keywords with their case."""


class ClassifierTerm(_Term):
    kind: Literal["classifier"] = "classifier"
    source: str
    """Another rmkit model directory, or the URL of an `rmkit serve` (its raw_rewards are used)."""
    mode: Literal["penalty", "gate"] = "penalty"
    """'penalty': term = coef · score (a negative coef penalises a high 'unsafe' score); 'gate': when score <
    threshold the whole reward becomes gate_value (the term is what it takes to get there), else the term is 0."""
    coef: float = -1.0
    """penalty: multiplier of the classifier's raw score."""
    threshold: float = 0.0
    """gate: the score an item must reach to keep its reward."""
    gate_value: float = -5.0
    """gate: the reward of an item that fails the gate."""


RuleTerm = Annotated[LengthTerm | RegexTerm | KeywordTerm | ClassifierTerm, Field(discriminator="kind")]


def length_term(texts: Sequence[str], unit: str, threshold: int, coef: float) -> np.ndarray:
    """−coef · max(0, L − threshold). words, threshold 2, coef 0.5: ["a b c d", "a"] → [−1, 0]."""
    lengths = np.array([len(t) if unit == "chars" else len(t.split()) for t in texts], dtype=np.float64)
    return -coef * np.maximum(0.0, lengths - threshold)


def regex_term(texts: Sequence[str], pattern: str, match: float, miss: float) -> np.ndarray:
    """match where re.search finds the pattern, miss elsewhere. r"\\d+", 1, −1: ["it is 7", "seven"] → [1, −1]."""
    compiled = re.compile(pattern)
    return np.array([match if compiled.search(t) else miss for t in texts], dtype=np.float64)


def keyword_term(texts: Sequence[str], keywords: Sequence[str], value: float, case_sensitive: bool = False) -> np.ndarray:
    """value where any keyword occurs, else 0. ["I can't"], −2: ["I can't help", "Sure"] → [−2, 0]."""
    fold = (lambda s: s) if case_sensitive else str.casefold
    needles = [fold(k) for k in keywords]
    return np.array([value if any(k in fold(t) for k in needles) else 0.0 for t in texts], dtype=np.float64)


def weigh_objectives(scores: np.ndarray, weights: Sequence[float], gates: Mapping[int, float] | None = None,
                     gate_value: float = 0.0) -> np.ndarray:
    """One reward from (K, N) objective scores: Σ_k w_k · s_k, or gate_value where a gated objective k scores below
    its threshold. Example: scores [[1, 3], [2, −1]], weights [1, 0.5], gate {1: 0} → [2, 1.5 → gate_value]."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(weights):
        raise ValueError(f"scores must be (K, N) with K = {len(weights)} objectives, got shape {scores.shape}")
    combined = np.asarray(weights, dtype=np.float64) @ scores  # (N,)
    for k, threshold in (gates or {}).items():
        combined = np.where(scores[k] < threshold, gate_value, combined)
    return combined


def rule_values(term: RuleTerm, texts: Sequence[str], classifier: np.ndarray | None = None) -> np.ndarray:
    """The (N,) term of one rule before gating; a classifier term needs its (N,) raw scores."""
    if isinstance(term, LengthTerm):
        return length_term(texts, term.unit, term.threshold, term.coef)
    if isinstance(term, RegexTerm):
        return regex_term(texts, term.pattern, term.match, term.miss)
    if isinstance(term, KeywordTerm):
        return keyword_term(texts, term.keywords, term.value, term.case_sensitive)
    if classifier is None:
        raise ValueError(f"rule {term.name!r} needs the scores of its classifier {term.source!r}")
    return term.coef * np.asarray(classifier, dtype=np.float64) if term.mode == "penalty" else np.zeros(len(texts))


def compose(learned: np.ndarray, texts: Sequence[str], terms: Sequence[RuleTerm],
            classifier_scores: Mapping[str, np.ndarray] | None = None,
            extra: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The final reward and its components: learned + Σ rule terms, then classifier gates (a failed gate sets the
    reward to its gate_value; its component is the difference), so the components always sum to the reward.

    Args:
        learned: (N,) shaped reward-model rewards.
        texts: the N response texts the rules read.
        terms: the rule terms, in order.
        classifier_scores: name → (N,) raw scores, for classifier terms.
        extra: further named (N,) parts computed elsewhere (the length penalty), added before any gate.

    Returns:
        (reward (N,), {"reward_model": learned, name: term, ...}). Example: learned [1, 2], keyword −1 on the
        second text → reward [1, 1], components {reward_model: [1, 2], refusal: [0, −1]}.
    """
    scores = classifier_scores or {}
    parts = {MODEL_COMPONENT: np.asarray(learned, dtype=np.float64), **(extra or {})}
    for term in terms:
        if term.name in parts:
            raise ValueError(f"two components are named {term.name!r}; give each rule term its own name")
        parts[term.name] = rule_values(term, texts, scores.get(term.name))
    total = sum(parts.values())
    for term in terms:
        if isinstance(term, ClassifierTerm) and term.mode == "gate":
            failed = np.asarray(scores[term.name]) < term.threshold
            parts[term.name] = np.where(failed, term.gate_value - (total - parts[term.name]), parts[term.name])
            total = np.where(failed, term.gate_value, total)
    return np.asarray(total, dtype=np.float64), parts
