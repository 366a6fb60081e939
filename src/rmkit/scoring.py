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
        """Rewards of token id lists: longest first, batched by the token budget, answered in input order."""
        out = np.empty(len(ids), dtype=np.float64)
        batches = token_budget_batches([len(s) for s in ids], self.max_tokens, self.max_batch)
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for batch in tqdm(batches, desc="scoring", unit="batch", disable=not self.progress):
                input_ids, mask = pad_sequences([ids[i] for i in batch], pad)
                rewards = self.model(input_ids.to(self.device), mask.to(self.device))  # (b,)
                out[batch] = rewards.float().cpu().numpy()
        return out.tolist()

    def score_pairs(self, pairs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(chosen rewards, rejected rewards) of PreferencePairs, in one scoring pass."""
        texts = [self.render(p.prompt, side) for p in pairs for side in (p.chosen, p.rejected)]
        scores = np.asarray(self.score_texts(texts))
        return scores[0::2], scores[1::2]


def split_row(row: dict[str, Any], origin: str) -> tuple[Any, Any]:
    """(prompt, response) of a row to score, from any of three shapes:

    - `prompt` + `response` (text or chat messages);
    - chat `messages` ending in the assistant turn;
    - a NeMo Gym rollout: `responses_create_params.input` + `response.output` (see gym_prompt and gym_response).
    """
    if not isinstance(row, dict):
        raise ValueError(f"{origin}: a row to score is a JSON object, got {type(row).__name__}")
    if "responses_create_params" in row:
        params, response = row["responses_create_params"], row.get("response")
        if not isinstance(params, dict) or "input" not in params or not isinstance(response, dict):
            raise ValueError(f"{origin}: a NeMo Gym row needs 'responses_create_params' with 'input' and a 'response' "
                             "object with 'output'")
        return gym_prompt(params["input"], origin), gym_response(response.get("output") or [], origin)
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
                or messages[-1].get("role") != "assistant":
            raise ValueError(f"{origin}: 'messages' must be a non-empty list ending with an assistant message")
        return messages[:-1], messages[-1:]
    if "prompt" in row and "response" in row:
        return row["prompt"], row["response"]
    raise ValueError(f"{origin}: a row to score needs 'prompt' and 'response', chat 'messages', or NeMo Gym "
                     f"'responses_create_params' + 'response' (found: {', '.join(sorted(map(str, row)))})")


_TEXT_PARTS = {"input_text", "output_text", "text", "refusal"}


def _content_text(content: Any, origin: str) -> str:
    """A message content as text: a string, or the text of its typed parts joined ('input_text', 'output_text',
    'refusal'; images and files are skipped)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise ValueError(f"{origin}: message content must be a string or a list of parts, got {type(content).__name__}")
    parts = [p.get("text") if p.get("type") != "refusal" else p.get("refusal") for p in content
             if isinstance(p, dict) and p.get("type", "text") in _TEXT_PARTS]
    return "".join(str(p) for p in parts if p)


def _tool_call_text(item: dict[str, Any]) -> str:
    return f"Tool call: {item.get('name', '')}({item.get('arguments', '')})"


def gym_prompt(input_: Any, origin: str = "row") -> str | list[dict[str, str]]:
    """The prompt of a NeMo Gym `responses_create_params.input`, as the reward model reads it.

    A string is the user's turn. In a list of items: messages keep their role (developer → system) with their text
    parts joined; `function_call` items become an assistant turn "Tool call: name(arguments)"; `function_call_output`
    items a `tool` turn holding the output; `reasoning` and any other item types are left out (the reward model
    judges what was said and done, not hidden reasoning).
    """
    if isinstance(input_, str):
        return input_
    if not isinstance(input_, list):
        raise ValueError(f"{origin}: responses_create_params.input must be a string or a list of items")
    messages = []
    for item in input_:
        if not isinstance(item, dict):
            raise ValueError(f"{origin}: each input item must be an object, got {type(item).__name__}")
        kind = item.get("type", "message")
        if kind == "message" and "role" in item:
            role = "system" if item["role"] == "developer" else str(item["role"])
            messages.append({"role": role, "content": _content_text(item.get("content"), origin)})
        elif kind == "function_call":
            messages.append({"role": "assistant", "content": _tool_call_text(item)})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": str(item.get("output", ""))})
    return messages


def gym_response(output: Any, origin: str = "row") -> str:
    """The response of a NeMo Gym `response.output`: one assistant text, its pieces joined by blank lines, in order.

    `message` items give their output_text (and refusal) parts; `function_call` items a line "Tool call:
    name(arguments)"; `reasoning` and other item types are left out, as in gym_prompt.
    """
    if not isinstance(output, list):
        raise ValueError(f"{origin}: response.output must be a list of items")
    pieces = []
    for item in output:
        if not isinstance(item, dict):
            raise ValueError(f"{origin}: each output item must be an object, got {type(item).__name__}")
        if item.get("type") == "message":
            pieces.append(_content_text(item.get("content"), origin))
        elif item.get("type") == "function_call":
            pieces.append(_tool_call_text(item))
    return "\n\n".join(p for p in pieces if p)


def compare(scorer: Scorer, prompt: Any, responses: Sequence[Any]) -> dict[str, Any]:
    """Scores of several responses to one prompt and P(first preferred over each other) = σ((r_0 − r_i) / T)."""
    from rmkit.metrics import bt_probability

    scores = scorer.score([prompt] * len(responses), list(responses))
    probs = [float(bt_probability(np.array([scores[0] - s]), scorer.card.temperature)[0]) for s in scores[1:]]
    return {"scores": scores, "p_first_preferred": probs, "temperature": scorer.card.temperature}


def score_file(
    model_dir: str | Path | Sequence[str | Path],
    input_path: str | Path,
    output_path: str | Path,
    batch_tokens: int = 8192,
    shaping: Any = None,
    device: str = "auto",
    max_length: int | None = None,
    max_batch: int = 128,
) -> int:
    """Copy a JSONL file of rows, adding rewards to each; returns the row count. The output is written atomically.

    Rows are `prompt` + `response`, chat `messages`, or NeMo Gym rollouts (see split_row). Each output row gets
    `reward` (shaped by `shaping`, a ShapingConfig; default: stored-stats normalisation, clip ±5) and `raw_reward`;
    `passed` when shaping has a reward_threshold; `member_rewards` and `reward_std` when several model directories
    form an ensemble.
    """
    import json

    from rmkit.ensemble import Ensemble
    from rmkit.rows import write_jsonl

    input_path, output_path = Path(input_path), Path(output_path)
    rows, prompts, responses = [], [], []
    with input_path.open() as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{input_path}:{lineno}: not JSON ({exc.msg})") from None
            prompt, response = split_row(row, f"{input_path}:{lineno}")
            rows.append(row)
            prompts.append(prompt)
            responses.append(response)
    dirs = [model_dir] if isinstance(model_dir, (str, Path)) else list(model_dir)
    ensemble = Ensemble.load(dirs, shaping, device=device, max_length=max_length, max_tokens=batch_tokens,
                             max_batch=max_batch, progress=True)
    out = ensemble.rewards(prompts, responses)
    write_jsonl(({**row, **out.item(i)} for i, row in enumerate(rows)), output_path)
    return len(rows)
