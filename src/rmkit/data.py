"""Read preference data from files or datasets into PreferencePair records; knows nothing about tokenizers.

Formats (docs/protocols.md): TRL prompt/chosen/rejected in its four variants with configurable keys (`pairs`), HH-RLHF
transcripts (`hh`), NeMo RL ranked completions (`ranked`), A/B with a label (`ab`) and scalar ratings (`ratings`).
Containers (.jsonl, .json, .csv, .parquet, a `datasets` save_to_disk folder or object, a list of dicts) are read by
`rmkit.rows`; `read_rows` and `DataError` are re-exported from there.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from rmkit.protocols import Role
from rmkit.rows import DataError, rows_or_errors, short_repr
from rmkit.rows import read_rows as read_rows  # re-exported: callers import it from here

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Text = str | list[Message]
Format = Literal["auto", "pairs", "hh", "ranked", "ab", "ratings"]

ROLES: tuple[str, ...] = get_args(Role)
HH_MARKER = "\n\nAssistant:"
HELPSTEER_SCORE = "helpfulness"  # HelpSteer2 rows carry five 0–4 ratings; helpfulness is the overall one
SHAPES = {  # format → the keys that identify it (defaults shown), for error messages
    "pairs": "prompt (optional), chosen, rejected, margin (optional)",
    "hh": "chosen and rejected transcripts containing '\\n\\nAssistant:', no prompt",
    "ranked": "context, completions: [{rank, completion}, ...]",
    "ab": "prompt, response_A, response_B, preferred ('A' or 'B')",
    "ratings": f"prompt, response, score (or HelpSteer2's {HELPSTEER_SCORE}, correctness, ...)",
}


def text_key(text: Text) -> str:
    return text if isinstance(text, str) else json.dumps(text, sort_keys=True)


@dataclass(frozen=True)
class PreferencePair:
    """One preference: `chosen` beats `rejected` after `prompt`.

    Text rows hold strings (prompt "" when the prompt is implicit in the completions); conversational rows hold
    message lists: the prompt messages, then the assistant messages of each side.
    """

    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None = None
    subset: str = ""  # the row's `subset`, else the file stem, else "" (in memory)
    origin: str = ""  # "path:lineno" (1-based line for JSONL/CSV, 1-based row index for JSON/Parquet/datasets)
    chosen_position: Literal["A", "B"] | None = None  # A/B rows only: where the preferred answer stood
    id: str = ""

    def prompt_key(self) -> str:
        """A stable string for hashing: the prompt itself, or its JSON (sorted keys) for a message list."""
        return text_key(self.prompt)


@dataclass(frozen=True)
class RatedResponse:
    """One response with a scalar score (higher is better), from a ratings row."""

    prompt: Text
    response: Text
    score: float
    subset: str = ""
    origin: str = ""


class _RowError(Exception):
    """What is wrong with a row and how to fix it; the reader adds file:line and the row's keys."""

    def __init__(self, what: str, fix: str):
        super().__init__(what)
        self.what, self.fix = what, fix


def _get(row: dict, key: str, hint: str) -> Any:
    if key not in row:
        raise _RowError(f"missing key {key!r}", hint)
    return row[key]


def _number(value: Any, field: str) -> float:
    if isinstance(value, str):  # CSV cells are strings
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _RowError(f"{field!r} is {short_repr(value)}, not a number", f"Give {field!r} a finite number.")
    if not math.isfinite(value):
        raise _RowError(f"{field!r} is {value}", f"Give {field!r} a finite number.")
    return float(value)


def _message(m: Any, field: str, answer: bool) -> Message:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
        raise _RowError(f"{field} is {short_repr(m)}, not a message",
                        'Each message must be {"role": str, "content": str}.')
    if m["role"] not in ROLES:
        raise _RowError(f"{field} has role {m['role']!r}", f"Use one of the roles {', '.join(ROLES)}.")
    if not answer and not m["content"].strip():
        raise _RowError(f"{field} has empty content", "Give every prompt message text, or drop the row.")
    return {k: v for k, v in m.items() if v is not None}  # Arrow fills absent struct fields with None


def _text(value: Any, field: str, answer: bool = False) -> Text:
    """Check a prompt (non-empty text or messages) or an answer (may be empty: saying nothing is an answer)."""
    if isinstance(value, str):
        if not answer and not value.strip():
            raise _RowError(f"{field!r} is blank", f"Give {field!r} text, or drop the row.")
        return value
    if isinstance(value, list):
        if not value:
            raise _RowError(f"{field!r} is an empty message list", f"Give {field!r} at least one message.")
        return [_message(m, f"{field!r}[{i}]", answer) for i, m in enumerate(value)]
    raise _RowError(f"{field!r} is {type(value).__name__} {short_repr(value)}",
                    f"Give {field!r} a string or a list of chat messages.")


def _norm(text: Text) -> Any:
    """What a tie compares: stripped text, or messages with stripped content."""
    if isinstance(text, str):
        return text.strip()
    return [{k: v.strip() if isinstance(v, str) else v for k, v in m.items()} for m in text]


def _as_messages(prompt: Text, *answers: Text) -> tuple[Text, ...]:
    """If any part is a message list, make all lists: a str prompt → one user message, a str answer → assistant."""
    parts = (prompt, *answers)
    if all(isinstance(t, str) for t in parts):
        return parts
    roles = ("user", *["assistant"] * len(answers))
    return tuple([{"role": r, "content": t}] if isinstance(t, str) else t for r, t in zip(roles, parts, strict=True))


def _split_conversations(chosen: list[Message], rejected: list[Message], names: tuple[str, str]) -> tuple[Text, ...]:
    """Implicit conversational prompt: the longest shared message prefix; both remainders start with the assistant."""
    n = 0
    while n < min(len(chosen), len(rejected)) and _norm([chosen[n]]) == _norm([rejected[n]]):
        n += 1
    fix = "Both conversations must share the prompt messages and differ from an assistant reply on; or give 'prompt'."
    for name, rest in zip(names, (chosen[n:], rejected[n:]), strict=True):
        if rest and rest[0]["role"] != "assistant":
            raise _RowError(f"{name!r} and the other side differ at message {n}, a {rest[0]['role']!r} message", fix)
    if not chosen[n:] or not rejected[n:]:
        raise _RowError(f"{names[0]!r} and {names[1]!r} are the same conversation or one extends the other", fix)
    return chosen[:n], chosen[n:], rejected[n:]


def _pair(prompt: Any, chosen: Any, rejected: Any, names: tuple[str, str, str], **meta: Any) -> PreferencePair:
    """Validate one pair in any TRL variant; a None or "" prompt means implicit (split conversations, else "")."""
    chosen, rejected = _text(chosen, names[1], answer=True), _text(rejected, names[2], answer=True)
    if prompt is None or prompt == "":
        if isinstance(chosen, str) != isinstance(rejected, str):
            raise _RowError(f"{names[1]!r} and {names[2]!r} mix text and messages",
                            "Without a prompt both must be strings or both message lists.")
        if isinstance(chosen, list):
            prompt, chosen, rejected = _split_conversations(chosen, rejected, names[1:])
            prompt = _text(prompt, names[1]) if prompt else prompt  # shared messages are prompt: no blank content
        else:
            prompt = ""
    else:
        prompt, chosen, rejected = _as_messages(_text(prompt, names[0]), chosen, rejected)
    if _norm(chosen) == _norm(rejected):
        raise _RowError(f"{names[1]!r} and {names[2]!r} are the same (a tie carries no preference)",
                        "Drop the row, or fix the side that was copied.")
    return PreferencePair(prompt, chosen, rejected, **meta)


@dataclass(frozen=True)
class _Keys:
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    margin: str = "margin"
    response: str = "response"
    score: str = "score"


def _read_pairs_row(row: dict, k: _Keys, meta: dict) -> list[PreferencePair]:
    hint = f"A pairs row needs {k.chosen!r} and {k.rejected!r} (and optionally {k.prompt!r}, {k.margin!r})."
    chosen, rejected = _get(row, k.chosen, hint), _get(row, k.rejected, hint)
    margin = _number(row[k.margin], k.margin) if k.margin in row else None
    return [_pair(row.get(k.prompt), chosen, rejected, (k.prompt, k.chosen, k.rejected), margin=margin, **meta)]


def _read_hh_row(row: dict, k: _Keys, meta: dict) -> list[PreferencePair]:
    hint = f"An HH row needs {k.chosen!r} and {k.rejected!r} transcripts."
    parts = []
    for key in (k.chosen, k.rejected):
        text = _get(row, key, hint)
        cut = text.rfind(HH_MARKER) if isinstance(text, str) else -1
        if cut < 0:
            raise _RowError(f"{key!r} is not a transcript containing {HH_MARKER!r}",
                            "Use format='pairs' for rows that are not HH-RLHF transcripts.")
        parts.append((text[: cut + len(HH_MARKER)], text[cut + len(HH_MARKER) :]))
    (prompt, chosen), (other_prompt, rejected) = parts
    if prompt != other_prompt:
        at = len(os.path.commonprefix([prompt, other_prompt]))
        raise _RowError(f"the dialogues before the last {HH_MARKER!r} differ (from character {at})",
                        "Both transcripts must share everything before the final assistant turn.")
    return [_pair(prompt, chosen, rejected, ("prompt", k.chosen, k.rejected), **meta)]


def _read_ranked_row(row: dict, k: _Keys, meta: dict) -> list[PreferencePair]:
    hint = 'A ranked row needs "context" and "completions": [{"rank": int, "completion": ...}, ...].'
    context, completions = _get(row, "context", hint), _get(row, "completions", hint)
    if not isinstance(completions, list) or len(completions) < 2:
        raise _RowError(f"'completions' is {short_repr(completions)}, not a list of 2 or more", hint)
    ranked = []
    for i, c in enumerate(completions):
        if not isinstance(c, dict) or "rank" not in c or "completion" not in c:
            raise _RowError(f"completions[{i}] is {short_repr(c)}", hint)
        ranked.append((_number(c["rank"], f"completions[{i}].rank"), c["completion"], f"completions[{i}].completion"))
    pairs = [_pair(context, a, b, ("context", na, nb), **meta)
             for ra, a, na in ranked for rb, b, nb in ranked if ra < rb]  # lower rank wins; equal ranks: no pair
    if not pairs:
        raise _RowError("every completion has the same rank, so there is no preference", "Give distinct ranks.")
    return pairs


def _read_ab_row(row: dict, k: _Keys, meta: dict) -> list[PreferencePair]:
    hint = f"An A/B row needs 'response_A', 'response_B' and 'preferred' (and optionally {k.prompt!r})."
    a, b, preferred = (_get(row, key, hint) for key in ("response_A", "response_B", "preferred"))
    if preferred not in ("A", "B"):
        raise _RowError(f"'preferred' is {short_repr(preferred)}", "Allowed values are exactly 'A' and 'B'.")
    chosen, rejected = (a, b) if preferred == "A" else (b, a)
    names = (k.prompt, f"response_{preferred}", "response_" + "AB"[preferred == "A"])
    return [_pair(row.get(k.prompt), chosen, rejected, names, chosen_position=preferred, **meta)]


def _read_rated_row(row: dict, k: _Keys, meta: dict) -> RatedResponse:
    hint = f"A ratings row needs {k.prompt!r}, {k.response!r} and {k.score!r} (or {HELPSTEER_SCORE!r})."
    prompt = _text(_get(row, k.prompt, hint), k.prompt)
    response = _text(_get(row, k.response, hint), k.response, answer=True)
    score_key = k.score if k.score in row or HELPSTEER_SCORE not in row else HELPSTEER_SCORE
    score = _number(_get(row, score_key, hint), score_key)
    prompt, response = _as_messages(prompt, response)
    return RatedResponse(prompt, response, score, meta["subset"], meta["origin"])


_READERS: dict[str, Callable[[dict, _Keys, dict], list[PreferencePair]]] = {
    "pairs": _read_pairs_row, "hh": _read_hh_row, "ranked": _read_ranked_row, "ab": _read_ab_row}


def _detect(row: dict, k: _Keys) -> str:
    """The row's format, from its keys; a partial match picks the format so its reader names the missing key."""
    if k.chosen in row or k.rejected in row:
        c, r = row.get(k.chosen), row.get(k.rejected)
        transcripts = all(isinstance(t, str) and HH_MARKER in t for t in (c, r))
        return "hh" if k.prompt not in row and transcripts else "pairs"
    if "completions" in row or "context" in row:
        return "ranked"
    if {"response_A", "response_B", "preferred"} & row.keys():
        return "ab"
    if k.response in row:
        return "ratings"
    shapes = "; ".join(f"{name}: {keys}" for name, keys in SHAPES.items())
    raise _RowError("unrecognised row shape", f"Expected one of {shapes}. Rename the columns, pass chosen_key=... "
                    "and friends, or pass format=...")


def _each_row(source: Any, handle: Callable[[dict, dict], None], skip_bad: bool) -> None:
    """Call handle(row, meta) on every row (nulls dropped: null means absent), meta being the PreferencePair fields
    subset, origin and id; raise each bad row as a DataError, or skip it with one warning at the end."""
    name, stem = (str(source), Path(source).stem) if isinstance(source, str | Path) else ("<memory>", "")
    total, errors = 0, []
    for origin, row in rows_or_errors(source):
        total += 1
        try:
            if isinstance(row, DataError):
                raise row
            meta = {"subset": str(row.get("subset") or stem), "origin": origin, "id": str(row.get("id") or "")}
            handle({key: v for key, v in row.items() if v is not None}, meta)
            continue
        except _RowError as e:
            error = DataError(f"{origin}: {e.what} (found keys: {', '.join(map(str, row))}). {e.fix}")
        except DataError as e:
            error = e
        if not skip_bad:
            raise error from None
        errors.append(str(error))
    if total == 0:
        raise DataError(f"{name}: no rows found. Check that the file is not empty.")
    if len(errors) == total:
        raise DataError(f"{name}: all {total} rows are bad; the first: {errors[0]}")
    if errors:
        logger.warning("%s: skipped %d bad rows of %d; first: %s", name, len(errors), total, " | ".join(errors[:3]))


def read_pairs(source: Any, *, format: Format = "auto", prompt_key: str = "prompt", chosen_key: str = "chosen",
               rejected_key: str = "rejected", margin_key: str = "margin", skip_bad: bool = False
               ) -> list[PreferencePair]:
    """Read preference pairs from a file, a `datasets` folder or object, or a list of dicts.

    Args:
        source: path to .jsonl/.json/.csv/.parquet or a save_to_disk folder; a `datasets.Dataset`; a list of dicts.
        format: "auto" detects each row's format from its keys; any other value reads every row as that format.
        prompt_key, chosen_key, rejected_key, margin_key: column names for `pairs` rows (`prompt_key` also for
            `ab` and `ratings`).
        skip_bad: skip bad rows with one warning instead of raising (still raises if every row is bad).

    Returns:
        The pairs in row order; ranked rows give one pair per ordered rank pair; ratings rows are paired at the
        end by `ratings_to_pairs`.

    Raises:
        DataError: "<file>:<line>: what is wrong (found keys: ...). How to fix."
    """
    if format not in get_args(Format):
        raise ValueError(f"format={format!r} is unknown; use one of {', '.join(get_args(Format))}.")
    keys = _Keys(prompt_key, chosen_key, rejected_key, margin_key)
    pairs: list[PreferencePair] = []
    rated: list[RatedResponse] = []

    def handle(row: dict, meta: dict) -> None:
        kind = _detect(row, keys) if format == "auto" else format
        if kind == "ratings":
            rated.append(_read_rated_row(row, keys, meta))
        else:
            pairs.extend(_READERS[kind](row, keys, meta))

    _each_row(source, handle, skip_bad)
    pairs += ratings_to_pairs(rated)
    if not pairs:  # only ratings rows can get here
        raise DataError(f"{source if isinstance(source, str | Path) else '<memory>'}: no pairs: ratings pair up only "
                        "between responses to the same prompt with different scores, and no prompt has two.")
    return pairs


def read_ratings(source: Any, *, prompt_key: str = "prompt", response_key: str = "response", score_key: str = "score",
                 skip_bad: bool = False) -> list[RatedResponse]:
    """Read scalar ratings rows ({prompt, response, score}, or HelpSteer2 with score = helpfulness).

    Args:
        source: as for `read_pairs`.
        prompt_key, response_key, score_key: column names.
        skip_bad: skip bad rows with one warning instead of raising (still raises if every row is bad).

    Returns:
        One RatedResponse per row, in order; a str response to a message-list prompt becomes an assistant message.
    """
    keys, rated = _Keys(prompt=prompt_key, response=response_key, score=score_key), []
    _each_row(source, lambda row, meta: rated.append(_read_rated_row(row, keys, meta)), skip_bad)
    return rated


def ratings_to_pairs(rated: Iterable[RatedResponse]) -> list[PreferencePair]:
    """Pair responses to the same prompt: the higher score is chosen, margin None, origin "<chosen>,<rejected>".

    Equal scores, and identical responses, carry no preference and give no pair. Example: scores 4, 1, 4 for one
    prompt → pairs (r0 > r1) and (r2 > r1).
    """
    by_prompt: dict[str, list[RatedResponse]] = {}
    for r in rated:
        by_prompt.setdefault(text_key(r.prompt), []).append(r)
    pairs = []
    for group in by_prompt.values():
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                if a.score == b.score or _norm(a.response) == _norm(b.response):
                    continue
                hi, lo = (a, b) if a.score > b.score else (b, a)
                pairs.append(PreferencePair(hi.prompt, hi.response, lo.response, subset=hi.subset,
                                            origin=f"{hi.origin},{lo.origin}"))
    return pairs
