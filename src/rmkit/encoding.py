"""render(): THE text format of a (prompt, response); tokenising with left truncation; pair batches of 2B×T.

Training, evaluation, scoring and serving all call `render` and `encode_texts`, so the model never sees one
format in training and another in production. Knows tokenizers and tensors, nothing of models or files.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rmkit.protocols import to_messages as to_messages  # re-exported: callers import it from here

Template = Literal["chat", "plain", "sentence_pair"]
_PLAIN_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def render(prompt: str | Sequence[dict], response: str | Sequence[dict], tokenizer: Any, template: Template) -> str:
    """The one text a reward model reads for a (prompt, response); every rmkit path calls this.

    'chat' applies the tokenizer's own chat template to prompt messages + the assistant response. 'plain' (for
    models without a template, such as BERT encoders) writes each turn as "Role: content", separated by blank lines:
    "User: Name a prime.\\n\\nAssistant: 7". 'sentence_pair' (encoders) puts the tokenizer's separator between
    the plain prompt and the response text: "User: Name a prime. [SEP] 7", read as [CLS] prompt [SEP] response [SEP].
    HH transcripts become real turns either way.
    """
    if template == "sentence_pair":
        if not getattr(tokenizer, "sep_token", None):
            raise ValueError("template 'sentence_pair' needs a tokenizer with a separator token (an encoder such as BERT)")
        answer = " ".join(m["content"] for m in to_messages(response, role="assistant"))
        return f"{_plain(to_messages(prompt))} {tokenizer.sep_token} {answer}"
    messages = to_messages(prompt) + to_messages(response, role="assistant")
    if template == "chat":
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return _plain(messages)


def _plain(messages: list[dict[str, str]]) -> str:
    return "\n\n".join(f"{_PLAIN_ROLES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)


def default_template(tokenizer: Any) -> Template:
    return "chat" if getattr(tokenizer, "chat_template", None) else "plain"


@dataclass(frozen=True)
class Encoder:
    """Tokenises rendered text the same way everywhere: special tokens kept, the start cut when too long.

    `prefix`/`suffix` are the special tokens the tokenizer adds around a text ([CLS] … [SEP] for BERT); cutting
    from the left drops prompt tokens first and keeps the end of the response, never the specials.
    """

    tokenizer: Any
    max_length: int
    add_special_tokens: bool

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
        bodies = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [prefix + ids[-budget:] + suffix for ids in bodies]


@dataclass(frozen=True)
class EncodedPair:
    chosen: list[int]
    rejected: list[int]
    margin: float | None
    index: int  # position in the list of pairs it came from

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
        out.append(EncodedPair(chosen, rejected, pair.margin, i))
    return out, identical


@dataclass(frozen=True)
class Batch:
    """Chosen rows first, then rejected: input_ids (2B, T), attention_mask (2B, T), margin (B,) or None."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    margin: torch.Tensor | None

    def to(self, device: torch.device | str) -> Batch:
        margin = None if self.margin is None else self.margin.to(device)
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), margin)


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
    return Batch(ids, mask, margin)


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
