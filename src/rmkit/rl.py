"""RL adapters for a reward model: TRL GRPO reward functions (sync and async), the NeMo RL reward-model environment
and KL-shaped PPO rewards. Rewards come from in-process models through `ensemble.RewardPath` (the server's own scoring
and shaping path) or from a running `rmkit serve` through `client.RewardClient`. Knows nothing of policies,
generation or trainers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rmkit.card import LoadOptions
from rmkit.config import Precision
from rmkit.dialects import nemo_rl_reward_model
from rmkit.encoding import to_messages
from rmkit.ensemble import RewardPath
from rmkit.metrics import length_score_correlation
from rmkit.scoring import Scorer
from rmkit.shaping import (
    RunningMoments,
    ShapedRewards,
    ShapingConfig,
    kl_estimate,
    kl_shaped_rewards,
    response_length,
    running_moments,
    shape_rewards,
)

log = logging.getLogger(__name__)

__all__ = [
    "AsyncRewardFunction", "EnvironmentReturn", "RewardFunction", "RewardModelEnvironment", "is_url",
    "kl_estimate", "kl_shaped_rewards", "reward_function", "reward_stats",
]

URL_SCHEMES = ("http://", "https://")
URL_DEFAULTS = {"normalize": "none", "clip": None}
"""Shaping defaults for a server: its scores arrive already shaped by the server's own settings."""


def is_url(source: Any) -> bool:
    return isinstance(source, str) and source.startswith(URL_SCHEMES)


def reward_stats(rewards: Sequence[float], lengths: Sequence[int] | None = None) -> dict[str, float]:
    """Batch statistics of rewards (population std) and, given lengths, mean length and Spearman(reward, length).

    A Spearman near +1 while training says the policy gains reward mostly by growing longer: an early sign of reward
    hacking. Example: rewards [1, 2, 3], lengths [10, 30, 20] → mean 2, std √(2/3) ≈ 0.8165, min 1, max 3,
    completion_length 20, reward_length_spearman 0.5. Spearman is nan when either side is constant.
    """
    r = np.asarray(rewards, dtype=np.float64)
    stats = {"reward_mean": float(r.mean()), "reward_std": float(r.std()), "reward_min": float(r.min()),
             "reward_max": float(r.max())}
    if lengths is not None:
        stats["completion_length"] = float(np.mean(lengths))
        stats["reward_length_spearman"] = length_score_correlation(r, np.asarray(lengths, dtype=np.float64))
    return stats


def _check_lengths(prompts: Sequence[Any], completions: Sequence[Any]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")


def _items(prompts: Sequence[Any], completions: Sequence[Any]) -> list[dict[str, Any]]:
    """/score items; text goes as it is, messages cut to role and content (no token ids or other extras)."""
    _check_lengths(prompts, completions)

    def side(x: Any) -> Any:
        return x if isinstance(x, str) else to_messages(x)

    return [{"prompt": side(p), "response": side(c)} for p, c in zip(prompts, completions, strict=True)]


class RewardFunction:
    """Rewards from a reward model, with TRL GRPO's `reward_funcs` signature; build it with `reward_function`.

    `f(prompts, completions, completion_ids=None, **kwargs) -> list[float]` takes TRL's standard (text) or
    conversational (message list) prompts and completions, B·G of each, and ignores every other keyword (dataset
    columns, trainer_state, log_extra). When TRL passes `log_metric`, the batch's `reward_stats` are logged under
    `{__name__}/...`. Loaded models are dropped when pickled and reloaded on first use, so it pickles cheaply into
    TRL's async rollout worker. `acall` is the awaitable variant; `AsyncRewardFunction` wraps it for TRL.

    Local models score through `ensemble.RewardPath`, the server's own path (each model's chat template, per-member
    normalisation, then shaping); a length penalty counts the policy's tokens (`completion_ids`) when given, else
    the first member's. A server is called through `client.RewardClient`; its shaped `rewards` are the input of
    any shaping given here, and `raw` is its `raw_rewards`.

    Args:
        source: an rmkit model directory or plain HF reward model (folder or hub id), a list of them (an ensemble,
            combined by `shaping.ensemble`), loaded `Scorer`s, the URL of an `rmkit serve`, or a list of URLs
            (replicas of one server, requests spread over them).
        shaping: how scores become rewards (normalise, clip, length penalty, ensemble).
        name: the callable's `__name__`: TRL logs `rewards/{name}/mean`.
        options: how local models are loaded: device, dtype, tokenizer, batch_tokens, max_batch.
        timeout: seconds per HTTP request to a server.
    """

    def __init__(self, source: Any, shaping: ShapingConfig, name: str = "rmkit", options: LoadOptions | None = None,
                 timeout: float = 180.0):
        members = list(source) if isinstance(source, list | tuple) else [source]
        urls = [is_url(m) for m in members]
        if not members or (any(urls) and not all(urls)):
            raise ValueError(f"source {source!r}: give a model directory, a non-empty list of model directories "
                             "(an ensemble), or server URLs (replicas); models and servers cannot be mixed.")
        if all(urls):
            self.source: Any = source.rstrip("/") if isinstance(source, str) else [u.rstrip("/") for u in members]
        else:
            self.source = members
        self.shaping, self.__name__, self.timeout = shaping, name, timeout
        self.options = options or LoadOptions()
        self._backend: Any = None  # the RewardPath or RewardClient, made on first use
        self._lock = threading.Lock()  # one local forward at a time; also guards the lazy load
        self._running = running_moments(shaping)  # shared with the RewardPath, so that it survives pickling

    def __repr__(self) -> str:
        return f"RewardFunction({self.source!r}, name={self.__name__!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_backend", "_lock", "_running")}
        state["_running_state"] = self._running.state_dict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        running = state.pop("_running_state")
        self.__dict__.update(state)
        self._backend, self._lock, self._running = None, threading.Lock(), RunningMoments()
        self._running.load_state_dict(running)

    @property
    def is_remote(self) -> bool:
        return isinstance(self.source, str) or is_url(self.source[0])

    def backend(self) -> Any:
        """The `RewardPath` of local models (loaded on first use), or the `RewardClient` of the server."""
        with self._lock:
            if self._backend is None and self.is_remote:
                from rmkit.client import RewardClient

                self._backend = RewardClient(self.source, timeout=self.timeout)
            elif self._backend is None:
                scorers = [Scorer.from_options(m, self.options) if isinstance(m, str | Path) else m for m in self.source]
                self._backend = RewardPath(scorers, self.shaping)
                self._backend.running = self._running
            return self._backend

    def score(self, prompts: Sequence[Any], completions: Sequence[Any],
              completion_ids: Sequence[Sequence[int]] | None = None) -> ShapedRewards:
        """Raw and shaped rewards of B·G (prompt, completion) pairs; see `shaping.ShapedRewards`."""
        return self._score(prompts, completions, self._lengths(completions, completion_ids))

    def _lengths(self, completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None
                 ) -> list[int] | None:
        """Lengths for a length penalty: characters or words of each completion, or the policy's token counts."""
        unit = self.shaping.length_unit
        if unit != "tokens":
            return [response_length(c if isinstance(c, str) else to_messages(c), unit) for c in completions]
        return None if completion_ids is None else [len(ids) for ids in completion_ids]

    def _score(self, prompts: Sequence[Any], completions: Sequence[Any], lengths: Sequence[int] | None
               ) -> ShapedRewards:
        if self.is_remote:
            return self._shape_served(self.backend().score_items(_items(prompts, completions)), lengths)
        _check_lengths(prompts, completions)
        path = self.backend()
        with self._lock:
            encoded = path.encode_pairs(prompts, completions)
            if lengths is not None:  # the policy's own token counts (or characters, words), not the RM's tokens
                encoded = [dataclasses.replace(e, response_tokens=int(n))
                           for e, n in zip(encoded, lengths, strict=True)]
            return path.score(encoded)

    def _shape_served(self, answer: dict[str, Any], lengths: Sequence[int] | None) -> ShapedRewards:
        if self.shaping.length_penalty != "none" and lengths is None:
            raise ValueError("a length penalty on served rewards needs the policy's completion_ids (token counts)")
        served = np.asarray(answer["rewards"], dtype=np.float64)
        out = shape_rewards(served, None if lengths is None else np.asarray(lengths), self.shaping,
                            running=self._running)
        return dataclasses.replace(out, raw=np.asarray(answer["raw_rewards"], dtype=np.float64))

    async def ascore(self, prompts: Sequence[Any], completions: Sequence[Any],
                     completion_ids: Sequence[Sequence[int]] | None = None) -> ShapedRewards:
        """`score` without blocking the event loop: an async HTTP request, or the local forward in a thread."""
        if not self.is_remote:
            return await asyncio.to_thread(self.score, prompts, completions, completion_ids)
        answer = await self.backend().ascore_items(_items(prompts, completions))
        return self._shape_served(answer, self._lengths(completions, completion_ids))

    def _log(self, out: ShapedRewards, completion_ids: Any, log_metric: Callable[[str, float], None] | None) -> None:
        if callable(log_metric):
            lengths = None if completion_ids is None else [len(ids) for ids in completion_ids]
            for key, value in reward_stats(out.shaped, lengths).items():
                log_metric(f"{self.__name__}/{key}", value)
            for group, values in (("objective", out.objectives), ("component", out.parts)):
                for key, array in (values or {}).items():  # per-objective scores and reward components, batch means
                    log_metric(f"{self.__name__}/{group}/{key}", float(np.mean(array)))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 completion_ids: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> list[float]:
        out = self.score(prompts, completions, completion_ids)
        self._log(out, completion_ids, kwargs.get("log_metric"))
        return out.shaped.tolist()

    async def acall(self, prompts: Sequence[Any], completions: Sequence[Any],
                    completion_ids: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> list[float]:
        out = await self.ascore(prompts, completions, completion_ids)
        self._log(out, completion_ids, kwargs.get("log_metric"))
        return out.shaped.tolist()

    def token_rewards(self, prompts: Sequence[Any], completions: Sequence[Any], logp: Any, ref_logp: Any, mask: Any,
                      beta: float, estimator: str = "k1", clip_kl: float | None = None) -> Any:
        """PPO per-token rewards r_t = −β·KL_t, plus the shaped score at the last response token.

        Args:
            prompts, completions: the B sampled (prompt, completion) pairs.
            logp, ref_logp: (B, T) log-probs of the sampled tokens under the policy and the reference.
            mask: (B, T) 1 on completion tokens (any padding side).
            beta, estimator, clip_kl: see `shaping.kl_shaped_rewards` ('k1' or 'k3' as in TRL's PPO).

        Returns:
            (B, T) float tensor; the score is shaped (normalised, clipped) before the KL term is added.
        """
        import torch

        lengths = self._lengths(completions, None)  # characters or words, when that is the unit
        if lengths is None:
            lengths = mask.long().sum(1).cpu().numpy()  # (B,) completion tokens, for a length penalty
        score = torch.tensor(self._score(prompts, completions, lengths).shaped, dtype=logp.dtype)  # (B,)
        return kl_shaped_rewards(score, logp, ref_logp, mask, beta, estimator, clip_kl)  # (B, T)


class AsyncRewardFunction:
    """The awaitable face of a RewardFunction: TRL runs `async def __call__` reward functions concurrently."""

    def __init__(self, fn: RewardFunction):
        self.fn, self.__name__ = fn, fn.__name__

    def __repr__(self) -> str:
        return f"AsyncRewardFunction({self.fn!r})"

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                       completion_ids: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> list[float]:
        return await self.fn.acall(prompts, completions, completion_ids, **kwargs)


def reward_function(source: Any, *, name: str = "rmkit", asynchronous: bool = False, device: str = "auto",
                    dtype: Precision = "fp32", tokenizer: str | None = None, batch_tokens: int = 8192,
                    max_batch: int = 128, timeout: float = 180.0, **shaping: Any) -> RewardFunction | AsyncRewardFunction:
    """A TRL GRPO reward function backed by an rmkit reward model.

    Args:
        source: a model directory, a list of them (ensemble), loaded Scorers, or a server URL (http://...).
        name: `__name__` of the callable (TRL's metric prefix).
        asynchronous: return an `AsyncRewardFunction` (async def __call__) instead.
        device, dtype, tokenizer, batch_tokens, max_batch: how local models are loaded (rmkit.card.LoadOptions).
        timeout: seconds per request to a server.
        **shaping: `ShapingConfig` fields. Defaults for model directories: the stored mean/std, clip ±5. For a URL
            the served scores are used as they come (the server normalises and clips with its own settings), so
            the defaults are normalize='none', clip=None; what is given here is applied on top.

    Example:
        >>> f = reward_function("runs/tiny/model", length_penalty="dapo", dapo_max_length=128, dapo_cache=32)
        >>> f(prompts=["Name a prime."], completions=["7"], completion_ids=[[22]])  # doctest: +SKIP
        [0.81]
    """
    remote = is_url(source) or (isinstance(source, list | tuple) and bool(source) and all(map(is_url, source)))
    cfg = ShapingConfig(**{**URL_DEFAULTS, **shaping}) if remote else ShapingConfig(**shaping)
    options = LoadOptions(device=device, dtype=dtype, tokenizer=tokenizer, batch_tokens=batch_tokens,
                          max_batch=max_batch)
    fn = RewardFunction(source, cfg, name=name, options=options, timeout=timeout)
    return AsyncRewardFunction(fn) if asynchronous else fn


class EnvironmentReturn(NamedTuple):
    """NeMo RL's `EnvironmentReturn` (nemo_rl/environments/interfaces.py), same field names and order."""

    observations: list[dict[str, str]]
    metadata: list[Any]
    next_stop_strings: list[list[str] | None]
    rewards: Any  # float32 Tensor[B], on CPU
    terminateds: Any  # bool Tensor[B], all True
    answers: list[str | None]


class RewardModelEnvironment:
    """NeMo RL's reward-model environment contract without Ray or NeMo: one step, rewarded by an rmkit model.

    Each message log is the conversation ending with the policy's assistant turn; everything before it is the
    prompt, rendered with the reward model's own template. Rewards are shaped like every other rmkit path.

    Args:
        source: a RewardFunction, or anything `reward_function` takes (then **options apply: shaping fields and
            the load options device, dtype, tokenizer, batch_tokens, max_batch, as NeMo RL's precision/batch_size).
    """

    METRIC_PREFIX = "reward_model_env"

    def __init__(self, source: Any, **shaping: Any):
        if isinstance(source, AsyncRewardFunction):
            source = source.fn
        if isinstance(source, RewardFunction):
            if shaping:
                raise ValueError(f"shaping {sorted(shaping)} given with a ready RewardFunction; set it there instead")
            self.reward = source
        else:
            self.reward = reward_function(source, **shaping)

    @classmethod
    def from_nemo_rl_config(cls, config: dict[str, Any], **shaping: Any) -> RewardModelEnvironment:
        """Build from NeMo RL's `env.reward_model` config dict as NeMo RL passes it (resolved), loading the model now.

        Each key is mapped or refused by `dialects.nemo_rl_reward_model` (model_name → model directory, precision →
        dtype, batch_size → rows per forward, max_model_len → max_length, resources → device). Rewards are the raw
        scores, as NeMo RL's environment returns them, unless **shaping (ShapingConfig fields) says otherwise.
        """
        import torch

        settings = nemo_rl_reward_model(config)
        cfg = ShapingConfig(**{**URL_DEFAULTS, **shaping})  # raw scores by default, as upstream
        path = RewardPath.load([settings.model_dir], cfg, device=settings.device, max_length=settings.max_length,
                               dtype=getattr(torch, settings.precision), max_batch=settings.batch_size)
        return cls(RewardFunction(path.scorers, cfg, name=cls.METRIC_PREFIX))

    def step(self, message_logs: list[list[dict[str, Any]]], env_infos: list[dict[str, Any]] | None = None
             ) -> EnvironmentReturn:
        """Score B conversations; every episode ends here. `env_infos` is unused, as upstream."""
        import torch

        for i, message_log in enumerate(message_logs):
            if not message_log or message_log[-1].get("role") != "assistant":
                raise ValueError(f"message_logs[{i}] must end with the assistant turn to score; got roles "
                                 f"{[m.get('role') for m in message_log]}")
        prompts = [message_log[:-1] for message_log in message_logs]
        responses = [message_log[-1:] for message_log in message_logs]
        rewards = torch.tensor(self.reward.score(prompts, responses).shaped, dtype=torch.float32)  # (B,)
        n = len(message_logs)
        return EnvironmentReturn(
            observations=[{"role": "environment", "content": f"Environment: {float(r)}"} for r in rewards.tolist()],
            metadata=[None] * n,
            next_stop_strings=[None] * n,
            rewards=rewards,
            terminateds=torch.ones(n, dtype=torch.bool),
            answers=[message_log[-1]["content"] for message_log in message_logs],
        )

    def global_post_process_and_metrics(self, batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        """(batch unchanged, metrics): num_samples, and mean/std/min/max of `batch["rewards"]` when it is a tensor.

        std is torch's unbiased std; for a single sample, where that is undefined (NaN), it is reported as 0.0.
        """
        import torch

        p = self.METRIC_PREFIX
        metrics: dict[str, float] = {f"{p}/num_samples": len(batch["message_log"])}
        rewards = batch.get("rewards")
        if isinstance(rewards, torch.Tensor) and rewards.numel() > 0:
            r = rewards.detach().float().cpu()
            metrics.update({
                f"{p}/mean_reward": r.mean().item(),
                f"{p}/std_reward": r.std().item() if r.numel() > 1 else 0.0,
                f"{p}/min_reward": r.min().item(),
                f"{p}/max_reward": r.max().item(),
            })
        return batch, metrics

    def shutdown(self) -> None:
        """Drop the loaded models or the server connection (NeMo RL calls this on its Ray actor)."""
        self.reward._backend = None
