"""Rollouts: N sampled completions per prompt from a causal-LM policy, scored by a reward model and written as NeMo Gym
rollout rows; best-of-N reranking checked against a held-out reward model. Knows HF generation and the rollout row
shape; rewards come from `rl.reward_function`. Knows nothing of training.

A row (one JSON line): the task fields of the prompt row echoed, plus
`responses_create_params: {"input": [{"role", "content", "type": "message"}, ...], ...}`, `response: {"output":
[{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": ...}]}], "usage": ..., ...}`,
`reward` (shaped), `raw_reward`, `_ng_task_index`, `_ng_rollout_index` and `agent_ref`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmkit.backbones import resolve
from rmkit.data import DataError, read_rows
from rmkit.encoding import to_messages
from rmkit.gym import gym_prompt, gym_response
from rmkit.rl import is_url, reward_function
from rmkit.rows import write_jsonl
from rmkit.scoring import pick_device

log = logging.getLogger(__name__)

PROMPT_KEYS = ("prompt", "messages", "responses_create_params")
"""Keys a prompt row may carry its prompt under (the first found wins); every other key is a task field."""
AGENT_NAME = "rmkit_collect"
STANDARDISED = {"normalize": "stored", "clip": None}
"""Shaping of rerank: each model's (r − mean)/std from its card, unclipped, so gains of two models compare."""


def prompt_messages(row: dict[str, Any], origin: str) -> list[dict[str, str]]:
    """A row's prompt as chat messages, from `prompt` (text, an HH transcript or messages), `messages` (a chat; a
    final assistant turn is dropped) or NeMo Gym's `responses_create_params.input`."""
    if "prompt" in row:
        messages = to_messages(row["prompt"])
    elif "messages" in row:
        messages = to_messages(row["messages"])
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
    elif isinstance(row.get("responses_create_params"), dict):
        messages = to_messages(gym_prompt(row["responses_create_params"].get("input"), origin))
    else:
        raise DataError(f"{origin}: no prompt found (keys: {', '.join(sorted(row))}). A prompt row needs one of "
                        f"{', '.join(PROMPT_KEYS)} (responses_create_params with an 'input').")
    if not messages:
        raise DataError(f"{origin}: the prompt is empty")
    return messages


def read_prompts(paths: str | Path | Iterable[str | Path], limit: int | None = None
                 ) -> list[tuple[list[dict[str, str]], dict[str, Any]]]:
    """(prompt messages, task fields) of each row of prompt files, in order; preference files work too."""
    out: list[tuple[list[dict[str, str]], dict[str, Any]]] = []
    for path in [paths] if isinstance(paths, str | Path) else paths:
        for origin, row in read_rows(path):
            if limit is not None and len(out) >= limit:
                return out
            out.append((prompt_messages(row, origin), {k: v for k, v in row.items() if k not in PROMPT_KEYS}))
    return out


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]  # generated ids up to and including the first EOS
    prompt_tokens: int
    finished: bool  # False when max_new_tokens cut it off


def load_policy(path: str, device: str = "auto") -> tuple[Any, Any]:
    """(causal LM in eval mode, tokenizer padding on the left) from a folder, hub id or backbone alias."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, dev = resolve(path), pick_device(device)
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(dev).eval()
    return model, tokenizer


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def policy_inputs(tokenizer: Any, messages: list[dict[str, str]]) -> Any:
    """The policy's prompt tokens: its chat template with the generation prompt, else "Role: text" turns."""
    if getattr(tokenizer, "chat_template", None):
        turns = [{**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in messages]
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    text = "\n\n".join(f"{m['role'].title()}: {m['content']}" for m in messages) + "\n\nAssistant:"
    return tokenizer(text, return_tensors="pt")


def sample(model: Any, tokenizer: Any, messages: list[dict[str, str]], n: int, max_new_tokens: int,
           temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> list[Completion]:
    """N sampled completions of one prompt; the same seed gives the same completions."""
    import torch

    enc = policy_inputs(tokenizer, messages).to(model.device)
    prompt_len = enc["input_ids"].shape[1]
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                             max_new_tokens=max_new_tokens, num_return_sequences=n,
                             pad_token_id=tokenizer.pad_token_id)
    eos, completions = _eos_ids(model, tokenizer), []
    for row in out[:, prompt_len:].tolist():  # (n, ≤ max_new_tokens)
        end = next((i + 1 for i, t in enumerate(row) if t in eos), None)
        ids = row[:end] if end else row
        completions.append(Completion(tokenizer.decode(ids, skip_special_tokens=True), ids, prompt_len, bool(end)))
    return completions


def rollout_row(task: int, k: int, messages: list[dict[str, str]], c: Completion, policy: str,
                sampling: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """One NeMo Gym rollout row, without its reward fields."""
    status = "completed" if c.finished else "incomplete"
    return {
        **fields,
        "responses_create_params": {"input": [{**m, "type": "message"} for m in messages], **sampling},
        "response": {
            "id": f"resp_{task}_{k}", "object": "response", "created_at": time.time(), "model": policy,
            "status": status, "incomplete_details": None if c.finished else {"reason": "max_output_tokens"},
            "output": [{"type": "message", "id": f"msg_{task}_{k}", "role": "assistant", "status": status,
                        "content": [{"type": "output_text", "text": c.text, "annotations": []}]}],
            "usage": {"input_tokens": c.prompt_tokens, "output_tokens": len(c.token_ids),
                      "total_tokens": c.prompt_tokens + len(c.token_ids)},
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        },
        "_ng_task_index": task,
        "_ng_rollout_index": k,
        "agent_ref": {"name": AGENT_NAME},
    }


def collect(prompts: str | Path | Sequence[str | Path], policy: str, reward: Any, out: str | Path, n: int = 4,
            max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
            limit: int | None = None, device: str = "auto", **shaping: Any) -> int:
    """Sample N completions per prompt, score them and write NeMo Gym rollout rows; returns the row count.

    Args:
        prompts: prompt file(s): rows with `prompt`, `messages` or `responses_create_params.input`.
        policy: the causal LM (folder, hub id or alias).
        reward: what `rl.reward_function` takes: a model directory, a list of them, or a server URL.
        out: the JSONL file to write (atomically).
        n: completions per prompt.
        max_new_tokens, temperature, top_p: sampling; prompt i is sampled with seed + i.
        limit: use only the first `limit` prompts.
        device: where the policy and local reward models run.
        **shaping: `ShapingConfig` fields; `reward` is the shaped reward, `raw_reward` the model's score.
    """
    if n < 1:
        raise ValueError(f"n={n}: ask for at least one completion per prompt")
    tasks = read_prompts(prompts, limit)
    model, tokenizer = load_policy(policy, device)
    sampling = {"temperature": temperature, "top_p": top_p, "max_output_tokens": max_new_tokens}
    rows, completions = [], []
    for task, (messages, fields) in enumerate(tasks):
        for k, c in enumerate(sample(model, tokenizer, messages, n, max_new_tokens, temperature, top_p, seed + task)):
            rows.append(rollout_row(task, k, messages, c, Path(policy).name, sampling, fields))
            completions.append(c)
    log.info("sampled %d completions for %d prompts; scoring", len(rows), len(tasks))
    fn = reward_function(reward, device=device, **shaping)
    scored = fn.score([tasks[r["_ng_task_index"]][0] for r in rows], [c.text for c in completions],
                      [c.token_ids for c in completions])
    for i, row in enumerate(rows):
        row["reward"], row["raw_reward"] = float(scored.shaped[i]), float(scored.raw[i])
        if scored.member_std is not None:
            row["reward_member_std"] = float(scored.member_std[i])
        if scored.passed is not None:
            row["passed"] = bool(scored.passed[i])
    write_jsonl(rows, out)
    return len(rows)


def response_text(row: dict[str, Any]) -> str:
    """The response of a rollout row as the reward model reads it (`scoring.gym_response`: assistant text, tool calls
    as "Tool call: name(arguments)" lines, reasoning left out)."""
    return gym_response(row["response"].get("output") or [], "rollout row")


def best_of_n(tasks: Sequence[int], reward: Sequence[float], heldout: Sequence[float]
              ) -> tuple[dict[str, float], list[int]]:
    """Best-of-N by `reward` per task, and its gain over a random pick by `reward` and by a held-out model.

    The random pick's reward is its expectation, the group mean (exact, no sampling noise). A held-out gain well
    below the in-model gain means the selection exploits quirks of the reward model: over-optimisation.
    Example: tasks [0, 0, 1, 1], reward [1, 3, 2, 0], heldout [2, 0, 1, 1] → picks [1, 2]; gain (3−2 + 2−1)/2 = 1;
    heldout gain (0−1 + 1−1)/2 = −0.5; heldout oracle (2−1 + 1−1)/2 = 0.5; agreement 1/2.

    Returns:
        (report, index of the picked row per task, in task order).
    """
    t, a, b = np.asarray(tasks), np.asarray(reward, dtype=np.float64), np.asarray(heldout, dtype=np.float64)
    picks, rows = [], {"best": [], "mean": [], "best_h": [], "mean_h": [], "oracle_h": [], "agree": []}
    for task in dict.fromkeys(t.tolist()):  # first-seen order
        idx = np.flatnonzero(t == task)
        pick, oracle = idx[np.argmax(a[idx])], idx[np.argmax(b[idx])]
        picks.append(int(pick))
        for key, value in (("best", a[pick]), ("mean", a[idx].mean()), ("best_h", b[pick]), ("mean_h", b[idx].mean()),
                           ("oracle_h", b[oracle]), ("agree", float(pick == oracle))):
            rows[key].append(value)
    m = {key: float(np.mean(values)) for key, values in rows.items()}
    report = {"tasks": len(picks), "rollouts": int(t.size), "best_reward": m["best"], "random_reward": m["mean"],
              "gain": m["best"] - m["mean"], "best_heldout_reward": m["best_h"], "random_heldout_reward": m["mean_h"],
              "heldout_gain": m["best_h"] - m["mean_h"], "heldout_oracle_gain": m["oracle_h"] - m["mean_h"],
              "agreement": m["agree"]}
    return report, picks


def rerank(rollouts: str | Path, reward: Any, heldout: Any, out: str | Path | None = None,
           device: str = "auto") -> dict[str, Any]:
    """Best-of-N selection of rollout rows by `reward`, checked by a held-out reward model.

    Both models score in their own standardised units (stored mean/std, no clipping), so the two gains compare; a
    server URL's rewards are taken as served (shaped by the server's own settings).

    Args:
        rollouts: rollout rows (as `collect` writes them), grouped by `_ng_task_index`.
        reward: the selecting reward model (anything `rl.reward_function` takes).
        heldout: a second reward model, not used for selection.
        out: if given, write the picked row of each task here, with `rerank_reward` and `heldout_reward` added.
        device: where the reward models run.

    Returns:
        The `best_of_n` report plus the two model names.
    """
    origins, rows = zip(*read_rows(rollouts), strict=True)
    for origin, row in zip(origins, rows, strict=True):
        if "_ng_task_index" not in row or "response" not in row:
            raise DataError(f"{origin}: not a rollout row (keys: {', '.join(sorted(row))}); write rows with "
                            "`rmkit collect`, which adds _ng_task_index and response")
    prompts = [prompt_messages(row, origin) for origin, row in zip(origins, rows, strict=True)]
    texts = [response_text(row) for row in rows]
    a, b = (reward_function(src, device=device, **({} if is_url(src) else STANDARDISED)).score(prompts, texts).shaped
            for src in (reward, heldout))
    report, picks = best_of_n([row["_ng_task_index"] for row in rows], a, b)
    if out is not None:
        write_jsonl(({**rows[i], "rerank_reward": float(a[i]), "heldout_reward": float(b[i])} for i in picks), out)
    return {"reward_model": str(reward), "heldout_model": str(heldout), **report}


def format_rerank(report: dict[str, Any]) -> str:
    """The rerank report in four lines, gains signed; a held-out gain far below the first is over-optimisation."""
    return "\n".join([
        f"best-of-N over {report['tasks']} prompts ({report['rollouts']} rollouts), picked by {report['reward_model']}",
        f"  gain over a random pick, same model: {report['gain']:+.4f}",
        f"  gain over a random pick, held-out:   {report['heldout_gain']:+.4f}   ({report['heldout_model']})",
        f"  held-out oracle gain {report['heldout_oracle_gain']:+.4f}, picks agree on {report['agreement']:.0%}",
    ])
