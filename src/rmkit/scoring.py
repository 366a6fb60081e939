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

from rmkit.card import LoadOptions
from rmkit.config import Precision
from rmkit.encoding import Encoder, pad_sequences, render, token_budget_batches
from rmkit.metrics import bt_probability
from rmkit.model import ModelCard, RewardModel, bf16_supported, load_model, quantize_int8

log = logging.getLogger(__name__)
__all__ = ["LoadOptions", "Precision", "Scorer"]  # their homes: rmkit.card, rmkit.config

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def torch_dtype(precision: Precision | torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the weights load in: 'auto' → bf16 on a CUDA device that supports it, else fp32."""
    if isinstance(precision, torch.dtype):
        return precision
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and bf16_supported() else torch.float32
    if precision not in _DTYPES:
        raise ValueError(f"dtype={precision!r}; choose one of auto, {', '.join(_DTYPES)}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"dtype='int8' is CPU scoring (dynamic quantisation); the device is {device}: use bf16 there")
    return _DTYPES[precision]


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
        self.encoder = Encoder(tokenizer, card.max_length, card.add_special_tokens, card.truncation)
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto", dtype: Precision | torch.dtype = "fp32",
             tokenizer: str | None = None, trust_remote_code: bool = False, **kwargs: Any) -> Scorer:
        """A Scorer of an rmkit model directory, or of a plain HF reward model folder or hub id (rmkit.card's rule).

        Args:
            device: 'auto' (CUDA when present), 'cpu', 'cuda:1', ...
            dtype: see Precision.
            tokenizer: a separate tokenizer folder or hub id (default: the model's own).
            trust_remote_code: run the model repository's own code (off unless asked).
            kwargs: Scorer options (max_tokens, max_batch, progress).
        """
        where = pick_device(device)
        model, tok, card = load_model(model_dir, where, torch_dtype(dtype, where), tokenizer, trust_remote_code)
        if dtype == "int8":
            quantize_int8(model)
        name = Path(model_dir).resolve().name if Path(model_dir).exists() else str(model_dir).rstrip("/").split("/")[-1]
        return cls(model, tok, card, name=name, **kwargs)

    @classmethod
    def from_options(cls, model_dir: str | Path, options: LoadOptions, progress: bool = False) -> Scorer:
        o = options
        return cls.load(model_dir, o.device, o.dtype, o.tokenizer, o.trust_remote_code, max_tokens=o.batch_tokens,
                        max_batch=o.max_batch, progress=progress)

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
        model with several outputs gives its saved weighting of them (card.weights: objective_weights, or one-hot at
        a plain HF model's reward_index)."""
        return self._forward(ids, per_objective=False)[:, 0].tolist()

    def score_objectives_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """(N, K) outputs of token id lists (K = len(card.outputs)), in input order."""
        return self._forward(ids, per_objective=True)

    def score_attributes(self, prompts: Sequence[Any], responses: Sequence[Any]) -> dict[str, list[float]]:
        """Every named output of a multi-output model (card.outputs: a trained model's objectives or a plain HF
        model's id2label labels): {name: one value per pair}."""
        if len(self.card.outputs) < 2:
            raise ValueError(f"{self.name} has one output, the reward: use score()")
        texts = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        out = self.score_objectives_ids(self.encoder.encode(texts))  # (N, K)
        return {name: out[:, i].tolist() for i, name in enumerate(self.card.outputs)}

    def _forward(self, ids: Sequence[Sequence[int]], per_objective: bool) -> np.ndarray:
        """THE forward of every scoring call: (N, K) outputs, or (N, 1) rewards; longest first, in input order."""
        out = np.empty((len(ids), len(self.card.outputs) if per_objective else 1), dtype=np.float64)
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
