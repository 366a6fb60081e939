"""Reward composition around an ensemble's forward: a multi-objective member's K outputs weighed into its reward
(the serve-time weighting, or the one saved in rmkit.json), external classifiers (another model directory or a
served URL) scored beside the members, and the final reward assembled from the shaped learned reward, the length
penalty and rmkit.rules terms as named components. Used by rmkit.ensemble; knows nothing of HTTP routes or files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from rmkit.rules import ClassifierTerm, compose, weigh_objectives
from rmkit.shaping import ShapedRewards, ShapingConfig

Classify = Callable[[Sequence[Any], Sequence[str]], np.ndarray]  # (prompts, responses) → (N,) raw scores


def load_classifier(term: ClassifierTerm, device: str = "auto") -> Classify:
    """A classifier term's scorer: an rmkit model directory scored in process, or an `rmkit serve` URL (raw_rewards)."""
    if term.source.startswith(("http://", "https://")):
        from rmkit.client import RewardClient

        client = RewardClient(term.source)

        def served(prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray:
            items = [{"prompt": p if p is not None else "", "response": r} for p, r in zip(prompts, responses, strict=True)]
            return np.asarray(client.score_items(items)["raw_rewards"], dtype=np.float64)

        return served
    from rmkit.scoring import Scorer

    scorer = Scorer.load(term.source, device=device)
    return lambda prompts, responses: np.asarray(scorer.score([p if p is not None else "" for p in prompts],
                                                              list(responses)), dtype=np.float64)


def objective_weighting(names: Sequence[str], saved: Sequence[float], cfg: ShapingConfig
                        ) -> tuple[list[float], dict[int, float]]:
    """(weights, gates by objective index) of one multi-objective model under cfg; unknown names are an error."""
    for name in [*(cfg.objective_weights or {}), *cfg.objective_gates]:
        if name not in names:
            raise ValueError(f"shaping names objective {name!r}, but the model's objectives are {list(names)}")
    weights = list(saved) if cfg.objective_weights is None else [cfg.objective_weights.get(n, 0.0) for n in names]
    return weights, {names.index(n): t for n, t in cfg.objective_gates.items()}


def member_rows(objectives: Sequence[int]) -> list[slice]:
    """Row slices of each member in the forward's output: a K-objective member takes K rows. [1, 3, 1] → 0:1, 1:4, 4:5."""
    starts = np.cumsum([0, *objectives])
    return [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def reduce_members(raw: np.ndarray, names: Sequence[Sequence[str]], saved: Sequence[Sequence[float]],
                   member_names: Sequence[str], cfg: ShapingConfig
                   ) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """(M, N) member rewards from the forward's member rows, plus each objective's (N,) raw scores (named
    'member/objective' in an ensemble) when any member has several objectives."""
    rows, objectives = [], {}
    for m, part in enumerate(member_rows([len(n) for n in names])):
        block = raw[part]  # (K_m, N)
        if block.shape[0] == 1:
            rows.append(block[0])
            continue
        weights, gates = objective_weighting(names[m], saved[m], cfg)
        rows.append(weigh_objectives(block, weights, gates, cfg.objective_gate_value))
        prefix = f"{member_names[m]}/" if len(names) > 1 else ""
        objectives.update({f"{prefix}{n}": block[k] for k, n in enumerate(names[m])})
    return np.array(rows), objectives or None


def finish(out: ShapedRewards, cfg: ShapingConfig, responses: Sequence[str],
           objectives: dict[str, np.ndarray] | None, classifier_scores: dict[str, np.ndarray]) -> ShapedRewards:
    """Add rule terms to the shaped reward and record the parts (reward_model, length_penalty, each rule), which sum
    to the final reward; re-applies the pass threshold to the final reward."""
    if not cfg.rules:
        return replace(out, objectives=objectives)
    penalty = out.length_penalty
    learned = out.shaped - (penalty if penalty is not None else 0.0)
    extra = {} if penalty is None else {"length_penalty": penalty}
    total, parts = compose(learned, responses, cfg.rules, classifier_scores, extra)
    passed = None if cfg.reward_threshold is None else total >= cfg.reward_threshold
    return replace(out, shaped=total, passed=passed, objectives=objectives, parts=parts)
