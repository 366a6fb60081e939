"""Training targets beyond plain pairs: ratings rows with one score per objective (regression), ranked lists rebuilt
from a ranked row's pairs (Plackett–Luce), and which objective a pair file labels. Records in, records out; knows
nothing of tokenizers, models or losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rmkit.data import PreferencePair, RatedResponse, Text, ratings_to_pairs
from rmkit.rows import DataError, read_rows, short_repr
from rmkit.splits import split_by_prompt

SCORE_KEYS = ("score", "helpfulness")  # a one-objective ratings row: 'score', or HelpSteer2's overall helpfulness


@dataclass(frozen=True)
class RatedRow:
    """One response with a rating per objective (None where the row has no rating for it)."""

    prompt: Text
    response: Text
    scores: tuple[float | None, ...]
    origin: str = ""

    def combined(self, weights: Sequence[float]) -> float | None:
        """Σ w_k · s_k over the rated objectives, None when a weighted objective is unrated."""
        if any(s is None and w for s, w in zip(self.scores, weights, strict=True)):
            return None
        return sum(w * s for s, w in zip(self.scores, weights, strict=True) if s is not None)


def _rating(row: dict, key: str, origin: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise DataError(f"{origin}: rating {key!r} is {short_repr(value)}, not a finite number. Give a number or drop it.")
    return number


def read_rated_rows(path: str | Path, objectives: Sequence[str]) -> list[RatedRow]:
    """Ratings rows {prompt, response, <one number per objective>}; one objective reads 'score' (or 'helpfulness').

    Example: objectives [helpfulness, verbosity], row {"prompt": "p", "response": "r", "helpfulness": 3} →
    RatedRow("p", "r", (3.0, None)).
    """
    out = []
    for origin, row in read_rows(str(path)):
        keys = [next((k for k in SCORE_KEYS if k in row), "score")] if len(objectives) == 1 else list(objectives)
        scores = tuple(_rating(row, k, origin) for k in keys)
        prompt, response = row.get("prompt"), row.get("response")
        if not isinstance(prompt, str | list) or not isinstance(response, str | list) or all(s is None for s in scores):
            raise DataError(f"{origin}: a ratings row needs 'prompt', 'response' and at least one rating of "
                            f"{', '.join(keys)} (found keys: {', '.join(sorted(map(str, row)))}).")
        out.append(RatedRow(prompt, response, scores, origin))
    return out


def split_rated(rows: list[RatedRow], val_fraction: float, test_fraction: float, salt: str
                ) -> tuple[list[RatedRow], list[RatedRow], list[RatedRow]]:
    """(train, val, test) by the same prompt hash as split_by_prompt, so a prompt never lands in two splits."""
    stand_ins = [PreferencePair(r.prompt, r.response, r.response, origin=str(i)) for i, r in enumerate(rows)]
    return tuple([rows[int(p.origin)] for p in part]
                 for part in split_by_prompt(stand_ins, val_fraction, test_fraction, salt))  # type: ignore[return-value]


def rated_pairs(rows: Sequence[RatedRow], weights: Sequence[float]) -> list[PreferencePair]:
    """Pairs of responses to the same prompt ordered by their weighted rating (for validation accuracy)."""
    rated = [RatedResponse(r.prompt, r.response, s, origin=r.origin) for r in rows
             if (s := r.combined(weights)) is not None]
    return ratings_to_pairs(rated)


def ranked_lists(pairs: Sequence[PreferencePair]) -> list[list[PreferencePair]]:
    """Group the pairs of each ranked row (same origin) back into one list; other pairs stay single.

    A group whose pairs form a strict total order (K responses, K(K−1)/2 pairs) becomes one list, its responses
    ordered by wins (the list's first pair holds the best); a group with ties stays as separate pairs.
    Returns lists of pairs; `best_first` gives the ordered responses.
    """
    groups: dict[str, list[PreferencePair]] = {}
    for p in pairs:
        groups.setdefault(p.origin or str(id(p)), []).append(p)
    out = []
    for group in groups.values():
        k = len(best_first(group))
        out += [group] if len(group) == k * (k - 1) // 2 else [[p] for p in group]
    return out


def best_first(group: Sequence[PreferencePair]) -> list[Text]:
    """The responses of one ranked group ordered by how many pairs each wins: pairs (a>b), (a>c), (b>c) → [a, b, c]."""
    wins: dict[str, int] = {}
    texts: dict[str, Text] = {}
    for p in group:
        for text, won in ((p.chosen, 1), (p.rejected, 0)):
            key = repr(text)
            texts[key] = text
            wins[key] = wins.get(key, 0) + won
    return [texts[k] for k in sorted(wins, key=wins.__getitem__, reverse=True)]


def objective_index(pair: PreferencePair, paths: Sequence[str], objective_of: Sequence[str] | None,
                    objectives: Sequence[str]) -> int:
    """Which output a pair trains: the objective its file is assigned in data.objective_of (default: the first)."""
    if objective_of is None:
        return 0
    source = pair.origin.rsplit(":", 1)[0]
    for path, name in zip(paths, objective_of, strict=True):
        if source == str(path):
            return objectives.index(name)
    raise ValueError(f"pair from {pair.origin!r} comes from none of data.paths")


def load_rated_splits(paths: Sequence[str], objectives: Sequence[str], weights: Sequence[float], val_fraction: float,
                      test_fraction: float, salt: str) -> tuple[list[RatedRow], list[PreferencePair], list[PreferencePair]]:
    """Every ratings file, split by prompt: (training rows, validation pairs, test pairs), the pairs ordered by the
    weighted rating so that validation accuracy means the same as for preference files."""
    train: list[RatedRow] = []
    val: list[PreferencePair] = []
    test: list[PreferencePair] = []
    for path in paths:
        tr, va, te = split_rated(read_rated_rows(path, objectives), val_fraction, test_fraction, salt)
        train += tr
        val += rated_pairs(va, weights)
        test += rated_pairs(te, weights)
    return train, val, test
