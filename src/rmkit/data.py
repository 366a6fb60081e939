"""Read preference data from files or datasets into PreferencePair records; knows nothing about tokenizers.

Formats (docs/protocols.md): TRL prompt/chosen/rejected in its four variants with configurable keys (`pairs`), HH-RLHF
transcripts (`hh`), NeMo RL ranked completions (`ranked`), A/B with a label (`ab`) and scalar ratings (`ratings`);
HelpSteer3 preference rows (`helpsteer3`) and UltraFeedback-style graded completions (`graded`) as published, read
through `rmkit.rowshapes`. Every column name is configurable (`rowshapes.Keys`).
Containers (.jsonl, .json, .csv, .parquet, a `datasets` save_to_disk folder or object, a list of dicts) are read by
`rmkit.rows`; `read_rows` and `DataError` are re-exported from there.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from rmkit.protocols import Role, to_messages
from rmkit.rows import DataError, rows_or_errors, short_repr
from rmkit.rows import read_rows as read_rows  # re-exported: callers import it from here
from rmkit.rowshapes import Keys, graded_parts, helpsteer3_parts, is_graded, is_helpsteer3
from rmkit.rowshapes import RowError as _RowError
from rmkit.rowshapes import number as _number
from rmkit.rowshapes import probability as _probability

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Text = str | list[Message]
Format = Literal["auto", "pairs", "hh", "ranked", "ab", "ratings", "helpsteer3", "graded"]

ROLES: tuple[str, ...] = get_args(Role)
HH_MARKER = "\n\nAssistant:"
HELPSTEER_SCORE = "helpfulness"  # HelpSteer2 rows carry five 0–4 ratings; helpfulness is the overall one
SHAPES = {  # format → the keys that identify it (defaults shown), for error messages
    "pairs": "prompt (optional), chosen, rejected, margin (optional)",
    "hh": "chosen and rejected transcripts containing '\\n\\nAssistant:', no prompt",
    "ranked": "context, completions: [{rank, completion}, ...]",
    "ab": "prompt, response_A, response_B, preferred ('A' or 'B')",
    "ratings": f"prompt, response, score (or HelpSteer2's {HELPSTEER_SCORE}, correctness, ...)",
    "helpsteer3": "context, response1, response2, overall_preference (-3..3)",
    "graded": "instruction (or prompt), completions: [{response, overall_score}, ...]",
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
    label_prob: float | None = None  # soft label: P(chosen is better) as the labeller gave it, e.g. a judge's 0.83

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


def _get(row: dict, key: str, hint: str) -> Any:
    if key not in row:
        raise _RowError(f"missing key {key!r}", hint)
    return row[key]


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
    """If any part is a message list, make all lists, as `render` would read the text parts (`to_messages`): a str
    prompt → its user turn (an HH transcript: its turns), a str answer → an assistant message; lists stay as given."""
    parts = (prompt, *answers)
    if all(isinstance(t, str) for t in parts):
        return parts
    roles = ("user", *["assistant"] * len(answers))
    return tuple(to_messages(t, role=r) if isinstance(t, str) else t for r, t in zip(roles, parts, strict=True))


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


def _read_pairs_row(row: dict, k: Keys, meta: dict) -> list[PreferencePair]:
    hint = (f"A pairs row needs {k.chosen!r} and {k.rejected!r} (and optionally {k.prompt!r}, {k.margin!r}, "
            f"{k.label_prob!r}).")
    chosen, rejected = _get(row, k.chosen, hint), _get(row, k.rejected, hint)
    margin = _number(row[k.margin], k.margin) if k.margin in row else None
    prob = _probability(row[k.label_prob], k.label_prob) if k.label_prob in row else None
    return [_pair(row.get(k.prompt), chosen, rejected, (k.prompt, k.chosen, k.rejected), margin=margin,
                  label_prob=prob, **meta)]


def _read_hh_row(row: dict, k: Keys, meta: dict) -> list[PreferencePair]:
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


def _ranked_pairs(prompt: Any, prompt_name: str, ranked: list[tuple[float, Any, str]], meta: dict
                  ) -> list[PreferencePair]:
    """One pair per ordered (better, worse) couple: lower rank wins; equal ranks give no pair."""
    return [_pair(prompt, a, b, (prompt_name, na, nb), **meta)
            for ra, a, na in ranked for rb, b, nb in ranked if ra < rb]


def _read_ranked_row(row: dict, k: Keys, meta: dict) -> list[PreferencePair]:
    hint = f"A ranked row needs {k.context!r} and {k.completions!r}: [{{{k.rank!r}: int, {k.completion!r}: ...}}, ...]."
    context, completions = _get(row, k.context, hint), _get(row, k.completions, hint)
    if not isinstance(completions, list) or len(completions) < 2:
        raise _RowError(f"{k.completions!r} is {short_repr(completions)}, not a list of 2 or more", hint)
    ranked = []
    for i, c in enumerate(completions):
        if not isinstance(c, dict) or k.rank not in c or k.completion not in c:
            raise _RowError(f"{k.completions}[{i}] is {short_repr(c)}", hint)
        name = f"{k.completions}[{i}]"
        ranked.append((_number(c[k.rank], f"{name}.{k.rank}"), c[k.completion], f"{name}.{k.completion}"))
    pairs = _ranked_pairs(context, k.context, ranked, meta)
    if not pairs:
        raise _RowError("every completion has the same rank, so there is no preference", "Give distinct ranks.")
    return pairs


def _read_graded_row(row: dict, k: Keys, meta: dict) -> list[PreferencePair]:
    """UltraFeedback-style: every pair of differently rated completions; all ratings equal gives no pair (a tie)."""
    prompt, prompt_name, ranked = graded_parts(row, k)
    return _ranked_pairs(prompt, prompt_name, ranked, meta)


def _read_helpsteer3_row(row: dict, k: Keys, meta: dict) -> list[PreferencePair]:
    """HelpSteer3: the preferred response, margin |overall_preference|; a 0 preference is a tie and gives no pair."""
    parts = helpsteer3_parts(row, k)
    if parts is None:
        return []
    prompt, chosen, rejected, margin, names = parts
    return [_pair(prompt, chosen, rejected, names, margin=margin, **meta)]


def _read_ab_row(row: dict, k: Keys, meta: dict) -> list[PreferencePair]:
    hint = f"An A/B row needs {k.response_a!r}, {k.response_b!r} and {k.preferred!r} (and optionally {k.prompt!r})."
    a, b, preferred = (_get(row, key, hint) for key in (k.response_a, k.response_b, k.preferred))
    if preferred not in ("A", "B"):
        raise _RowError(f"{k.preferred!r} is {short_repr(preferred)}", "Allowed values are exactly 'A' and 'B'.")
    chosen, rejected = (a, b) if preferred == "A" else (b, a)
    names = (k.prompt, *((k.response_a, k.response_b) if preferred == "A" else (k.response_b, k.response_a)))
    return [_pair(row.get(k.prompt), chosen, rejected, names, chosen_position=preferred, **meta)]


def _read_rated_row(row: dict, k: Keys, meta: dict) -> RatedResponse:
    hint = f"A ratings row needs {k.prompt!r}, {k.response!r} and {k.score!r} (or {HELPSTEER_SCORE!r})."
    prompt = _text(_get(row, k.prompt, hint), k.prompt)
    response = _text(_get(row, k.response, hint), k.response, answer=True)
    score_key = k.score if k.score in row or HELPSTEER_SCORE not in row else HELPSTEER_SCORE
    score = _number(_get(row, score_key, hint), score_key)
    prompt, response = _as_messages(prompt, response)
    return RatedResponse(prompt, response, score, meta["subset"], meta["origin"])


_READERS: dict[str, Callable[[dict, Keys, dict], list[PreferencePair]]] = {
    "pairs": _read_pairs_row, "hh": _read_hh_row, "ranked": _read_ranked_row, "ab": _read_ab_row,
    "helpsteer3": _read_helpsteer3_row, "graded": _read_graded_row}


def _detect(row: dict, k: Keys) -> str:
    """The row's format, from its keys; a partial match picks the format so its reader names the missing key."""
    if k.chosen in row or k.rejected in row:
        c, r = row.get(k.chosen), row.get(k.rejected)
        transcripts = all(isinstance(t, str) and HH_MARKER in t for t in (c, r))
        return "hh" if k.prompt not in row and transcripts else "pairs"
    if is_helpsteer3(row, k):  # before ranked: HelpSteer3 rows also carry `context`
        return "helpsteer3"
    if k.completions in row or k.context in row or k.instruction in row:
        return "graded" if is_graded(row, k) else "ranked"
    if {k.response_a, k.response_b, k.preferred} & row.keys():
        return "ab"
    if k.response in row:
        return "ratings"
    shapes = "; ".join(f"{name}: {keys}" for name, keys in SHAPES.items())
    raise _RowError("unrecognised row shape", f"Expected one of {shapes}. Rename the columns, pass chosen_key=... "
                    "and friends, or pass format=...")


def _each_row(source: Any, handle: Callable[[dict, dict], None], skip_bad: bool) -> None:
    """Call handle(row, meta) on every row (nulls dropped: null means absent), meta being the PreferencePair fields
    subset, origin and id; raise each bad row as a DataError, or skip it with one warning at the end."""
    name, stem = (str(source), Path(str(source).removesuffix(".gz")).stem) if isinstance(source, str | Path) else ("<memory>", "")
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
               rejected_key: str = "rejected", margin_key: str = "margin", skip_bad: bool = False, **other_keys: str
               ) -> list[PreferencePair]:
    """Read preference pairs from a file, a `datasets` folder or object, or a list of dicts.

    Args:
        source: path to .jsonl/.json/.csv/.parquet or a save_to_disk folder; a `datasets.Dataset`; a list of dicts.
        format: "auto" detects each row's format from its keys; any other value reads every row as that format.
        prompt_key, chosen_key, rejected_key, margin_key: column names for `pairs` rows (`prompt_key` also for
            `ab`, `ratings` and `graded`).
        skip_bad: skip bad rows with one warning instead of raising (still raises if every row is bad).
        **other_keys: the other column names, `<field>_key` for each field of `rowshapes.Keys` (label_prob_key: a
            pairs row's soft label P(chosen is better), AlpacaEval's `judge_prob_chosen`; response_key,
            score_key, context_key, completions_key, rank_key, completion_key, response_a_key, response_b_key,
            preferred_key, response1_key, response2_key, preference_key, instruction_key, rating_key).

    Returns:
        The pairs in row order; ranked and graded rows give one pair per ordered (better, worse) couple; HelpSteer3
        rows one pair with margin |overall_preference|; ratings rows are paired at the end by `ratings_to_pairs`.
        Rows that carry no preference (HelpSteer3's 0, every rating of a graded row equal) give no pair and are
        counted in one warning.

    Raises:
        DataError: "<file>:<line>: what is wrong (found keys: ...). How to fix."
    """
    if format not in get_args(Format):
        raise ValueError(f"format={format!r} is unknown; use one of {', '.join(get_args(Format))}.")
    keys = Keys.from_names(prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key,
                           margin_key=margin_key, **other_keys)
    pairs: list[PreferencePair] = []
    rated: list[RatedResponse] = []
    ties: list[str] = []

    def handle(row: dict, meta: dict) -> None:
        kind = _detect(row, keys) if format == "auto" else format
        if kind == "ratings":
            rated.append(_read_rated_row(row, keys, meta))
            return
        got = _READERS[kind](row, keys, meta)
        if not got:
            ties.append(meta["origin"])
        pairs.extend(got)

    _each_row(source, handle, skip_bad)
    pairs += ratings_to_pairs(rated)
    name = source if isinstance(source, str | Path) else "<memory>"
    if ties:
        logger.warning("%s: %d rows carried no preference (a tie: HelpSteer3 overall_preference 0, or equal ratings) "
                       "and gave no pair; first: %s", name, len(ties), ", ".join(ties[:3]))
    if not pairs:
        raise DataError(f"{name}: no pairs: {len(ties)} rows are ties, and ratings pair up only between responses to "
                        "the same prompt with different scores. Check the preference or rating columns.")
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
    keys, rated = Keys(prompt=prompt_key, response=response_key, score=score_key), []
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
