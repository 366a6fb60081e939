"""Column names of every row shape (Keys), and the graded shapes that come as they are published: HelpSteer3
preference rows and UltraFeedback-style graded rows, read into (prompt, chosen, rejected, margin) parts or ranked
completions. Knows nothing of PreferencePair, files or tokenizers; `rmkit.data` validates the texts and builds pairs.

HelpSteer3 (nvidia/HelpSteer3, preference subset): `context` is the conversation so far (messages ending with the
user), `response1` and `response2` are two answers, `overall_preference` is an integer from −3 (response1 much better)
to 3 (response2 much better); 0 means about the same, a tie that carries no preference.
UltraFeedback (openbmb/UltraFeedback): `instruction`, and `completions`, each with a `response` and a numeric rating
(`overall_score` by default; `fine-grained_score` is the other published one). Higher ratings win; equal ratings tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

HELPSTEER3_RANGE = 3  # |overall_preference| ≤ 3


class RowError(ValueError):
    """What is wrong with a row and how to fix it; the reader adds file:line and the row's keys."""

    def __init__(self, what: str, fix: str):
        super().__init__(what)
        self.what, self.fix = what, fix


@dataclass(frozen=True)
class Keys:
    """The column name of each field of each row shape; every one can be renamed (DataConfig.*_key, read_pairs)."""

    prompt: str = "prompt"  # pairs, A/B, ratings; graded rows fall back to `instruction`
    chosen: str = "chosen"  # pairs
    rejected: str = "rejected"  # pairs
    margin: str = "margin"  # pairs: optional numeric margin
    label_prob: str = "judge_prob_chosen"  # pairs: optional soft label, P(chosen is better) in [0, 1]
    response: str = "response"  # ratings: the rated answer; graded: each completion's answer
    score: str = "score"  # ratings: the rating (HelpSteer2's `helpfulness` when absent)
    context: str = "context"  # ranked and HelpSteer3: the prompt
    completions: str = "completions"  # ranked and graded: the list of completions
    rank: str = "rank"  # ranked: each completion's rank, lower is better
    completion: str = "completion"  # ranked: each completion's answer
    response_a: str = "response_A"  # A/B
    response_b: str = "response_B"  # A/B
    preferred: str = "preferred"  # A/B: 'A' or 'B'
    response1: str = "response1"  # HelpSteer3
    response2: str = "response2"  # HelpSteer3
    preference: str = "overall_preference"  # HelpSteer3: −3..3, negative prefers response1
    instruction: str = "instruction"  # graded: the prompt when there is no `prompt` column
    rating: str = "overall_score"  # graded: each completion's rating, higher is better

    @classmethod
    def from_names(cls, **names: str) -> Keys:
        """Keys from `prompt_key="question", margin_key="weight", ...`; an unknown name is an error listing them."""
        known = {f"{f.name}_key": f.name for f in fields(cls)}
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(f"unknown column key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**{known[k]: v for k, v in names.items()})


def number(value: Any, field: str) -> float:
    """A finite float from a number or a numeric string (CSV cells are strings); RowError otherwise."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise RowError(f"{field!r} is {shown}, not a number", f"Give {field!r} a finite number.")
    if not math.isfinite(value):
        raise RowError(f"{field!r} is {value}", f"Give {field!r} a finite number.")
    return float(value)


def probability(value: Any, field: str) -> float:
    """A soft label: a number in [0, 1]."""
    p = number(value, field)
    if not 0 <= p <= 1:
        raise RowError(f"{field!r} is {p}, not a probability", f"Give {field!r} as P(chosen is better) in [0, 1].")
    return p


def _get(row: dict, key: str, hint: str) -> Any:
    if key not in row:
        raise RowError(f"missing key {key!r}", hint)
    return row[key]


def helpsteer3_parts(row: dict, k: Keys) -> tuple[Any, Any, Any, float, tuple[str, str, str]] | None:
    """(prompt, chosen, rejected, margin, names) of a HelpSteer3 row, or None for a tie (overall_preference 0).

    The margin is the preference strength |overall_preference| ∈ {1, 2, 3}. Example: preference −2 → response1 is
    chosen with margin 2.0; preference 3 → response2 with margin 3.0.
    """
    hint = f"A HelpSteer3 row needs {k.context!r}, {k.response1!r}, {k.response2!r} and {k.preference!r} (−3..3)."
    context, one, two = (_get(row, key, hint) for key in (k.context, k.response1, k.response2))
    preference = number(_get(row, k.preference, hint), k.preference)
    if preference != int(preference) or abs(preference) > HELPSTEER3_RANGE:
        raise RowError(f"{k.preference!r} is {preference:g}, not an integer from −3 to 3", hint)
    if preference == 0:
        return None
    if preference < 0:
        return context, one, two, abs(preference), (k.context, k.response1, k.response2)
    return context, two, one, abs(preference), (k.context, k.response2, k.response1)


def graded_parts(row: dict, k: Keys) -> tuple[Any, str, list[tuple[float, Any, str]]]:
    """(prompt, prompt name, [(rank, answer, answer name), ...]) of a graded row: rank = −rating, so that the ranked
    reader's "lower rank wins" makes the higher rating win and equal ratings tie.

    Example: ratings 7.5, 9, 7.5 → ranks −7.5, −9, −7.5 → pairs (c1 > c0) and (c1 > c2).
    """
    prompt_key = k.prompt if k.prompt in row else k.instruction
    hint = (f"A graded row needs {k.prompt!r} (or {k.instruction!r}) and {k.completions!r}: "
            f"[{{{k.response!r}: ..., {k.rating!r}: number}}, ...].")
    prompt, completions = _get(row, prompt_key, hint), _get(row, k.completions, hint)
    if not isinstance(completions, list) or len(completions) < 2:
        shown = repr(completions) if len(repr(completions)) <= 60 else repr(completions)[:57] + "..."
        raise RowError(f"{k.completions!r} is {shown}, not a list of 2 or more", hint)
    ranked = []
    for i, c in enumerate(completions):
        if not isinstance(c, dict) or k.response not in c or k.rating not in c:
            found = ", ".join(map(str, c)) if isinstance(c, dict) else type(c).__name__
            raise RowError(f"{k.completions}[{i}] lacks {k.response!r} or {k.rating!r} (found: {found})",
                           hint + " Pass rating_key=... for another rating column, e.g. 'fine-grained_score'.")
        rating = number(c[k.rating], f"{k.completions}[{i}].{k.rating}")
        ranked.append((-rating, c[k.response], f"{k.completions}[{i}].{k.response}"))
    return prompt, prompt_key, ranked


def is_graded(row: dict, k: Keys) -> bool:
    """A completions list whose first item carries a rating and no rank (else it is a ranked row)."""
    completions = row.get(k.completions)
    first = completions[0] if isinstance(completions, list) and completions else None
    if isinstance(first, dict):
        return k.rank not in first and (k.rating in first or k.response in first)
    return k.instruction in row and k.context not in row


def is_helpsteer3(row: dict, k: Keys) -> bool:
    return k.preference in row or (k.response1 in row and k.response2 in row)
