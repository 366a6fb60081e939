"""render(): THE text format of a (prompt, response); tokenising with truncation; pair batches of 2B×T.

Truncation ('left' or 'instruction'): 'left' keeps the end of the text; 'instruction' keeps the last user turn and
cuts the middle of a long instruction or a long answer, dropping older turns first (it needs the spans `render`
records, so text rendered elsewhere is cut from the left).

Training, evaluation, scoring and serving all call `render` and `encode_texts`, so the model never sees one
format in training and another in production. Knows tokenizers and tensors, nothing of models or files.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rmkit.protocols import to_messages as to_messages  # re-exported: callers import it from here

Template = Literal["chat", "plain", "sentence_pair"]
Truncation = Literal["left", "instruction"]
_PLAIN_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


@dataclass(frozen=True)
class Spans:
    """Character ranges of a rendered text: [0, history_end) the older turns; `instruction` the content of the last
    user message; `response` from the first message after it to the end of the answer. The rest is template glue."""

    history_end: int
    instruction: tuple[int, int]
    response: tuple[int, int]


class Rendered(str):
    """A rendered text that also carries its Spans (None when they could not be found). Any edit (slicing,
    concatenation) gives a plain str, so spans never outlive the exact text they describe."""

    spans: Spans | None

    def __new__(cls, text: str, spans: Spans | None) -> Rendered:
        obj = super().__new__(cls, text)
        obj.spans = spans
        return obj


def _find_spans(text: str, messages: list[dict[str, str]], n_prompt: int) -> Spans | None:
    """Locate each message's content in order; None when a template rewrote one or the prompt has no user turn."""
    found, pos = [], 0
    for m in messages:
        content = m["content"].strip()
        start = text.find(content, pos)
        if start < 0:
            return None
        found.append((start, start + len(content)))
        pos = start + len(content)
    users = [i for i in range(n_prompt) if messages[i]["role"] == "user"]
    if not users:
        return None
    u = users[-1]
    instruction = found[u]
    response = (found[u + 1][0], found[-1][1]) if u + 1 < len(found) else (instruction[1], instruction[1])
    return Spans(found[u - 1][1] if u else 0, instruction, response)


def render(prompt: str | Sequence[dict], response: str | Sequence[dict], tokenizer: Any, template: Template
           ) -> Rendered:
    """The one text a reward model reads for a (prompt, response); every rmkit path calls this.

    'chat' applies the tokenizer's own chat template to prompt messages + the assistant response. 'plain' (for
    models without a template, such as BERT encoders) writes each turn as "Role: content", separated by blank lines:
    "User: Name a prime.\\n\\nAssistant: 7". 'sentence_pair' (encoders) puts the tokenizer's separator between
    the plain prompt and the response text: "User: Name a prime. [SEP] 7", read as [CLS] prompt [SEP] response [SEP].
    HH transcripts become real turns either way. The result is a str that also carries its Spans, which
    'instruction' truncation reads.
    """
    prompt_messages = to_messages(prompt)
    response_messages = to_messages(response, role="assistant")
    messages = prompt_messages + response_messages
    if template == "sentence_pair":
        if not getattr(tokenizer, "sep_token", None):
            raise ValueError("template 'sentence_pair' needs a tokenizer with a separator token (an encoder such as BERT)")
        answer = " ".join(m["content"] for m in response_messages)
        text = f"{_plain(prompt_messages)} {tokenizer.sep_token} {answer}"
    elif template == "chat":  # an empty conversation is one empty assistant turn: chat templates refuse an empty list
        messages = messages or [{"role": "assistant", "content": ""}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    else:
        text = _plain(messages)
    return Rendered(text, _find_spans(text, messages, len(prompt_messages)))


def _plain(messages: list[dict[str, str]]) -> str:
    return "\n\n".join(f"{_PLAIN_ROLES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)


def _cut_middle(items: list[int], keep: int) -> list[int]:
    """The first ⌈keep/2⌉ and the last ⌊keep/2⌋ items: [1, 2, 3, 4, 5], 3 → [1, 2, 5]."""
    if keep >= len(items):
        return items
    tail = keep // 2
    return items[: keep - tail] + (items[len(items) - tail :] if tail else [])


def keep_instruction(ids: Sequence[int], starts: Sequence[int], spans: Spans, budget: int) -> list[int]:
    """Cut token ids to `budget`, keeping the instruction: template glue always; then the last user turn and the
    answer, each at least half of the room left (the middle of a longer one is cut); then the newest older turns.

    Args:
        ids: the text's token ids. starts: each token's first character in the text (from the tokenizer offsets).
        spans: where the older turns, the instruction and the response lie in the text.

    Example: 6 history ids, 1 glue, 4 instruction, 1 glue, 8 response (20 ids), budget 10 → glue 2, room 8:
    the instruction whole (4), the response's first 2 and last 2 ids, no history.
    """
    if len(ids) <= budget:
        return list(ids)
    (i0, i1), (r0, r1) = spans.instruction, spans.response
    at: dict[str, list[int]] = {"h": [], "i": [], "r": [], "g": []}  # region → token positions
    for j, s in enumerate(starts):
        at["h" if s < spans.history_end else "i" if i0 <= s < i1 else "r" if r0 <= s < r1 else "g"].append(j)
    room = budget - len(at["g"])
    if room <= 0:
        return list(ids[-budget:])  # only template tokens would fit: nothing better to keep
    n_i, n_r = len(at["i"]), len(at["r"])
    keep_i = n_i if n_i + n_r <= room else min(n_i, max(room // 2, room - n_r))
    keep_r = min(n_r, room - keep_i)
    keep_h = room - keep_i - keep_r
    kept = at["g"] + (at["h"][len(at["h"]) - keep_h :] if keep_h else [])
    kept += _cut_middle(at["i"], keep_i) + _cut_middle(at["r"], keep_r)
    return [ids[j] for j in sorted(kept)]


def default_template(tokenizer: Any) -> Template:
    return "chat" if getattr(tokenizer, "chat_template", None) else "plain"


@dataclass(frozen=True)
class Encoder:
    """Tokenises rendered text the same way everywhere: special tokens kept, `truncation` when too long.

    `prefix`/`suffix` are the special tokens the tokenizer adds around a text ([CLS] … [SEP] for BERT), never cut.
    'left' drops tokens from the start (old turns, then the instruction) and keeps the end of the response;
    'instruction' applies `keep_instruction` to texts from `render` (others are cut from the left).
    """

    tokenizer: Any
    max_length: int
    add_special_tokens: bool
    truncation: Truncation = "left"

    @property
    def affixes(self) -> tuple[list[int], list[int]]:
        if not self.add_special_tokens:
            return [], []
        bare = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("x", add_special_tokens=True)["input_ids"]
        start = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
        return full[:start], full[start + len(bare) :]

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, at most max_length long."""
        if not texts:
            return []
        prefix, suffix = self.affixes
        budget = self.max_length - len(prefix) - len(suffix)
        if budget < 1:
            raise ValueError(f"max_length={self.max_length} leaves no room beside {len(prefix) + len(suffix)} special tokens")
        structured = self.truncation == "instruction"
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=structured)
        out = []
        for k, ids in enumerate(enc["input_ids"]):
            spans = getattr(texts[k], "spans", None) if structured else None
            if spans is not None and len(ids) > budget:
                body = keep_instruction(ids, [start for start, _ in enc["offset_mapping"][k]], spans, budget)
            else:
                body = ids[-budget:]
            out.append(prefix + body + suffix)
        return out


@dataclass(frozen=True)
class EncodedPair:
    chosen: list[int]
    rejected: list[int]
    margin: float | None
    index: int  # position in the list of pairs it came from
    label_prob: float | None = None  # soft label, P(chosen is better)

    @property
    def length(self) -> int:
        return max(len(self.chosen), len(self.rejected))


def encode_pairs(pairs: Sequence[Any], encoder: Encoder, template: Template) -> tuple[list[EncodedPair], int]:
    """Render and tokenise preference pairs; drops (and counts) pairs whose two sides are identical after cutting.

    Returns:
        (encoded pairs, number dropped as identical after truncation).
    """
    texts = [render(p.prompt, side, encoder.tokenizer, template) for p in pairs for side in (p.chosen, p.rejected)]
    ids = encoder.encode(texts)
    out, identical = [], 0
    for i, pair in enumerate(pairs):
        chosen, rejected = ids[2 * i], ids[2 * i + 1]
        if chosen == rejected:
            identical += 1
            continue
        out.append(EncodedPair(chosen, rejected, pair.margin, i, getattr(pair, "label_prob", None)))
    return out, identical


@dataclass(frozen=True)
class Batch:
    """Chosen rows first, then rejected: input_ids (2B, T), attention_mask (2B, T), margin (B,) or None,
    label_prob (B,) or None (NaN for a pair without a soft label)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    margin: torch.Tensor | None
    label_prob: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        margin = None if self.margin is None else self.margin.to(device)
        prob = None if self.label_prob is None else self.label_prob.to(device)
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), margin, prob)


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """[[5, 6], [7]] → ids [[5, 6], [7, pad]], mask [[1, 1], [1, 0]] (right side); shapes (N, T)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def collate(pairs: Sequence[EncodedPair], pad_id: int) -> Batch:
    """B pairs → one Batch of 2B rows, so chosen and rejected go through the model in a single forward."""
    ids, mask = pad_sequences([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    margins = [p.margin for p in pairs]
    margin = None if all(m is None for m in margins) else torch.tensor([m or 0.0 for m in margins])
    probs = [p.label_prob for p in pairs]
    prob = None if all(p is None for p in probs) else torch.tensor([math.nan if p is None else p for p in probs])
    return Batch(ids, mask, margin, prob)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, group: bool = True) -> list[list[int]]:
    """Shuffled batches of indices; with `group`, each batch holds pairs of similar length.

    Indices are shuffled, cut into chunks of 50 batches, sorted by length inside a chunk, split into batches,
    and the batches shuffled again: random order, little padding. The same seed gives the same batches.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group:
        chunk = 50 * batch_size
        order = [i for s in range(0, len(order), chunk) for i in sorted(order[s : s + chunk], key=lengths.__getitem__)]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if group:
        rng.shuffle(batches)
    return batches


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_batch: int,
                         min_fill: float = 0.75) -> list[list[int]]:
    """Indices sorted by length, longest first, cut into batches whose padded size (rows × longest) stays within
    max_tokens and whose rows are all at least `min_fill` × the longest: a short row never pads up to a long one,
    which matters when a few dozen texts of mixed length arrive together (the reward server's batches).

    Example: lengths [100, 90, 10, 9], a large budget → [[0, 1], [2, 3]] (10 < 0.75 × 100 starts a new batch).
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    batches: list[list[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            longest = lengths[batch[0]]
            if len(batch) < max_batch and (len(batch) + 1) * longest <= max_tokens and lengths[i] >= min_fill * longest:
                batch.append(i)
                continue
        batches.append([i])
    return batches
