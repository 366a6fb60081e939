"""Active learning and label triage: which unlabelled pairs to send for labelling (`rmkit select`), and which
labelled pairs the model confidently contradicts, the likely label noise (`rmkit triage`).

Uncertainty, with p_m = σ(Δ_m / T_m) the probability model m gives to "A preferred" (Δ_m = r_A − r_B, T_m from
its rmkit.json):
  margin        1 − |2·mean_m(p_m) − 1|: 1 at p = 0.5, 0 at p ∈ {0, 1}; with one model, small |Δ| first.
  disagreement  std over the models of p_m (population): pairs the ensemble members answer differently.
Knows scorers and JSONL files; knows nothing of training or HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rmkit import metrics
from rmkit.data import read_pairs, read_rows
from rmkit.rows import write_jsonl

Method = Literal["auto", "margin", "disagreement"]
TRIAGE_MIN_PROB = 0.9
"""Default P(model prefers the rejected response) from which a labelled pair is listed as possible label noise."""


@dataclass(frozen=True)
class PoolItem:
    """One unlabelled pair: the row as read (written back out), its prompt and its two responses."""

    row: dict[str, Any]
    prompt: Any
    a: Any
    b: Any
    origin: str


def read_pool(source: Any) -> list[PoolItem]:
    """Unlabelled pairs: rows with `response_A` and `response_B` (a `preferred`, if any, is ignored), or with
    `chosen` and `rejected` read as A and B; `prompt` is optional ("" = implicit in the responses)."""
    items = []
    for origin, row in read_rows(source):
        keys = ("response_A", "response_B") if "response_A" in row or "response_B" in row else ("chosen", "rejected")
        missing = [k for k in keys if row.get(k) is None]
        if missing:
            raise ValueError(f"{origin}: missing {', '.join(map(repr, missing))} (found keys: {', '.join(row)}). A "
                             "pool row needs 'response_A' and 'response_B' (or 'chosen' and 'rejected'), and "
                             "optionally 'prompt'.")
        items.append(PoolItem(row, row.get("prompt") or "", row[keys[0]], row[keys[1]], origin))
    if not items:
        raise ValueError(f"{source}: no rows in the pool")
    return items


def uncertainty(probs, method: Method = "auto") -> np.ndarray:
    """Uncertainty of each pair from an (M, N) array of P(A preferred), one row per model.

    "auto" is "margin" for one model and "disagreement" for several.

    Example: probs = [[0.5, 0.75, 0.1]] → margin [1.0, 0.5, 0.2]; probs = [[0.2, 0.9], [0.8, 0.9]] → disagreement
    [0.3, 0.0].
    """
    p = np.atleast_2d(np.asarray(probs, dtype=float))  # (M, N)
    if method == "auto":
        method = "margin" if p.shape[0] == 1 else "disagreement"
    if method == "margin":
        return 1.0 - np.abs(2.0 * p.mean(0) - 1.0)
    if method == "disagreement":
        if p.shape[0] < 2:
            raise ValueError("method='disagreement' needs an ensemble of 2 or more models; pass --ensemble DIR ...")
        return p.std(0)
    raise ValueError(f"method={method!r} is unknown; use one of auto, margin, disagreement.")


def top_k(values, k: int) -> list[int]:
    """Indices of the k largest values, largest first; equal values keep their input order.

    Example: values = [0.2, 0.9, 0.2, 0.5], k = 3 → [1, 3, 0].
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    return np.argsort(-np.asarray(values, dtype=float), kind="stable")[:k].tolist()


def confident_disagreements(delta, temperature: float = 1.0, min_prob: float = TRIAGE_MIN_PROB
                            ) -> tuple[list[int], np.ndarray]:
    """Labelled pairs whose P(rejected preferred) = σ(−Δ / T) ≥ min_prob, most confident first.

    Returns:
        (indices, P(rejected preferred) of every pair).

    Example: Δ = [−3, 1, −1], T = 1, min_prob 0.7 → p = [σ(3), σ(−1), σ(1)] = [0.953, 0.269, 0.731] → [0, 2].
    """
    if not 0.5 <= min_prob <= 1:
        raise ValueError(f"min_prob must lie in [0.5, 1], got {min_prob}: below 0.5 the model agrees with the label.")
    p = metrics.bt_probability(-np.asarray(delta, dtype=float), temperature)
    order = np.argsort(-p, kind="stable")
    return [int(i) for i in order if p[i] >= min_prob], p


def select(model_dirs: Sequence[str | Path], pool: Any, k: int, out: str | Path, method: Method = "auto"
           ) -> list[dict[str, Any]]:
    """Rank a pool of unlabelled pairs by uncertainty and write the top k for labelling (`rmkit select`).

    Args:
        model_dirs: one rmkit model directory, or several for an ensemble.
        pool: a file (or rows) `read_pool` reads.
        k: how many pairs to write.
        out: the JSONL to write: each pool row unchanged plus "rank", "uncertainty", "p_A" (mean over models)
            and, for an ensemble, "p_A_by_model".
        method: see `uncertainty`.

    Returns:
        The rows written, most uncertain first.
    """
    from rmkit.scoring import Scorer

    items = read_pool(pool)
    prompts = [it.prompt for it in items]
    probs = []
    for model_dir in model_dirs:
        scorer = Scorer.load(model_dir, progress=True)
        scores = np.asarray(scorer.score(prompts + prompts, [it.a for it in items] + [it.b for it in items]))
        probs.append(metrics.bt_probability(scores[: len(items)] - scores[len(items):], scorer.card.temperature))
    probs = np.stack(probs)  # (M, N)
    u = uncertainty(probs, method)
    rows = []
    for rank, i in enumerate(top_k(u, k), start=1):
        extra = {"rank": rank, "uncertainty": float(u[i]), "p_A": float(probs[:, i].mean())}
        if len(model_dirs) > 1:
            extra["p_A_by_model"] = probs[:, i].tolist()
        rows.append({**items[i].row, **extra})
    write_jsonl(rows, out)
    return rows


def triage(model_dir: str | Path, data: Any, out: str | Path, min_prob: float = TRIAGE_MIN_PROB,
           top: int | None = None, format: str = "auto") -> list[dict[str, Any]]:
    """List labelled pairs the model confidently disagrees with, likely label noise (`rmkit triage`).

    Args:
        model_dir: an rmkit model directory (its calibrated temperature sets the probabilities).
        data: preference data `read_pairs` reads.
        out: the JSONL to write, one row per suspect pair, most confident first: "rank", "p_model_prefers_rejected",
            "reward_chosen", "reward_rejected", "origin", "id", "subset", "chosen_position", "prompt", "chosen",
            "rejected".
        min_prob: list pairs with P(rejected preferred) at least this.
        top: at most this many rows.

    Returns:
        The rows written.
    """
    from rmkit.scoring import Scorer

    pairs = read_pairs(data, format=format)
    scorer = Scorer.load(model_dir, progress=True)
    chosen, rejected = scorer.score_pairs(pairs)
    indices, p = confident_disagreements(np.asarray(chosen) - np.asarray(rejected), scorer.card.temperature, min_prob)
    rows = []
    for rank, i in enumerate(indices[:top], start=1):
        pair = pairs[i]
        rows.append({"rank": rank, "p_model_prefers_rejected": float(p[i]), "reward_chosen": float(chosen[i]),
                     "reward_rejected": float(rejected[i]), "origin": pair.origin, "id": pair.id,
                     "subset": pair.subset, "chosen_position": pair.chosen_position, "prompt": pair.prompt,
                     "chosen": pair.chosen, "rejected": pair.rejected})
    write_jsonl(rows, out)
    return rows
