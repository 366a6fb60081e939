"""Scorer: batch scoring of (prompt, response) pairs or rendered text, sorted by length, batched by a token budget,
order restored, under torch.inference_mode(). Knows the model directory; knows nothing of HTTP or shaping."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rmkit.encoding import Encoder, pad_sequences, render, token_budget_batches
from rmkit.metrics import bt_probability
from rmkit.model import ModelCard, RewardModel, load_model

log = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Scorer:
    """Rewards from a reward model, many texts at a time.

    Args:
        model: the reward model (eval mode is set here).
        tokenizer: its tokenizer.
        card: its rmkit.json (template, pooling, max_length, normalisation stats).
        max_tokens: padded tokens per forward (rows × longest row); bounds memory, sets throughput.
        max_batch: most rows per forward.
    """

    def __init__(self, model: RewardModel, tokenizer: Any, card: ModelCard, name: str = "rmkit",
                 max_tokens: int = 8192, max_batch: int = 128, progress: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.card = card
        self.name = name
        self.max_tokens = max_tokens
        self.max_batch = max_batch
        self.progress = progress
        self.encoder = Encoder(tokenizer, card.max_length, card.add_special_tokens)
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto", dtype: torch.dtype = torch.float32, **kwargs: Any) -> Scorer:
        model, tokenizer, card = load_model(model_dir, pick_device(device), dtype)
        return cls(model, tokenizer, card, name=Path(model_dir).resolve().name, **kwargs)

    def render(self, prompt: str | Sequence[dict], response: str | Sequence[dict]) -> str:
        return render(prompt, response, self.tokenizer, self.card.template)

    def score(self, prompts: Sequence[Any], responses: Sequence[Any]) -> list[float]:
        """Rewards of (prompt, response) pairs; prompts and responses are text or chat message lists."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return self.score_texts([self.render(p, r) for p, r in zip(prompts, responses, strict=True)])

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """Rewards of text that is already rendered (for example a policy's decoded prompt + completion)."""
        return self.score_ids(self.encoder.encode(texts)) if texts else []

    def score_ids(self, ids: Sequence[Sequence[int]]) -> list[float]:
        """Rewards of token id lists: longest first, batched by the token budget, answered in input order. A
        multi-objective model's reward is its saved weighting of the objectives (rmkit.json objective_weights)."""
        return self._forward(ids, per_objective=False)[:, 0].tolist()

    def score_objectives_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """(N, K) per-objective outputs of token id lists (K = len(card.objectives)), in input order."""
        return self._forward(ids, per_objective=True)

    def _forward(self, ids: Sequence[Sequence[int]], per_objective: bool) -> np.ndarray:
        out = np.empty((len(ids), len(self.card.objectives) if per_objective else 1), dtype=np.float64)
        batches = token_budget_batches([len(s) for s in ids], self.max_tokens, self.max_batch)
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for batch in tqdm(batches, desc="scoring", unit="batch", disable=not self.progress):
                input_ids, mask = pad_sequences([ids[i] for i in batch], pad)
                rewards = self.model(input_ids.to(self.device), mask.to(self.device), per_objective=per_objective)
                out[batch] = rewards.float().cpu().numpy().reshape(len(batch), -1)  # (b, K) or (b, 1)
        return out

    def score_pairs(self, pairs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(chosen rewards, rejected rewards) of PreferencePairs, in one scoring pass."""
        texts = [self.render(p.prompt, side) for p in pairs for side in (p.chosen, p.rejected)]
        scores = np.asarray(self.score_texts(texts))
        return scores[0::2], scores[1::2]


def compare(scorer: Scorer, prompt: Any, responses: Sequence[Any]) -> dict[str, Any]:
    """Scores of several responses to one prompt and P(first preferred over each other) = σ((r_0 − r_i) / T)."""
    scores = scorer.score([prompt] * len(responses), list(responses))
    probs = [float(bt_probability(np.array([scores[0] - s]), scorer.card.temperature)[0]) for s in scores[1:]]
    return {"scores": scores, "p_first_preferred": probs, "temperature": scorer.card.temperature}
