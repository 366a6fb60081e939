"""Reward shaping shared by the server, batch scoring and the RL adapters: ensembles, normalisation, clipping, length
penalties, pass/fail thresholds and KL-shaped PPO rewards. Arrays in, arrays out; knows nothing
of models, HTTP or files, and imports torch only inside the per-token KL functions."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rmkit.rules import RuleTerm

if TYPE_CHECKING:
    import torch

Ensemble = Literal["mean", "min", "mean_minus_std", "weighted"]
KLEstimator = Literal["k1", "k2", "k3"]
LengthUnit = Literal["tokens", "chars", "words"]


class ShapingConfig(BaseModel):
    """How raw reward-model scores become rewards. Order: ensemble → normalise → clip → length penalty → threshold
    (with length_on='raw' the penalty comes first, on the raw score: ensemble → length penalty → normalise → clip)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    normalize: Literal["none", "stored", "running"] = "stored"
    """'stored': (r − mean)/std with the model directory's statistics (or the overrides below); 'running': TRL
    v0.11.4 RunningMoments, (r − μ)/(σ + eps) with the batch merged in first; 'none': raw scores."""
    reward_mean: float | None = None
    """normalize='stored': overrides the stored mean. normalize='running': the running mean's starting point (a
    prior that the first batch replaces, TRL's count 1e-24), default 0."""
    reward_std: float | None = Field(None, gt=0)
    """normalize='stored': overrides the stored std. normalize='running': the running std's starting point, kept
    until more than one value has been seen, default 1. Must be positive."""
    clip: float | None = Field(5.0, gt=0)
    """Symmetric clip [−clip, +clip] applied after normalisation and before any length penalty; None turns it off."""
    length_penalty: Literal["none", "linear", "dapo"] = "none"
    """Penalty added after clipping (so it is never clipped away): 'linear' −coef·max(0, L − threshold), or 'dapo'
    soft overlong punishment (DAPO Eq. 13), in [−1, 0]."""
    length_unit: LengthUnit = "tokens"
    """What a response's length counts: 'tokens' (the policy's completion_ids when given, else the reward model's
    tokenizer), 'chars' (characters of the response text) or 'words' (whitespace-separated words)."""
    length_on: Literal["shaped", "raw"] = "shaped"
    """Where the penalty is added: 'shaped', after normalising and clipping (so it is never clipped away); 'raw', to
    the raw score before normalising and clipping, as NeMo Gym applies its length penalty (its example: characters
    over 500 at 0.001 each is length_unit='chars', length_threshold=500, length_coef=0.001, length_on='raw'). /verify's
    reward_components then give the penalty in raw-score units and the model part as the rest of the reward."""
    length_threshold: int = Field(0, ge=0)
    """linear: response length (in length_unit) above which the penalty starts."""
    length_coef: float = Field(0.0, ge=0)
    """linear: penalty per length_unit over length_threshold."""
    dapo_max_length: int | None = Field(None, gt=0)
    """dapo: Lmax, the maximum completion length (in length_unit); longer responses get −1."""
    dapo_cache: int = Field(0, ge=0)
    """dapo: Lc, the soft-punishment cache; the penalty ramps from 0 at Lmax − Lc to −1 at Lmax."""
    reward_threshold: float | None = None
    """If set, each reward also gets a pass flag: final shaped reward ≥ threshold."""
    ensemble: Ensemble = "mean"
    """Member scores (M, N) combined by 'mean', 'min', 'mean_minus_std' or 'weighted' (Σ w_m r_m / Σ w_m)."""
    ensemble_k: float = Field(1.0, ge=0)
    """k in mean − k·std for ensemble='mean_minus_std' (std is the population std over members)."""
    member_weights: list[float] | None = None
    """ensemble='weighted': one non-negative weight per model directory, in order."""
    objective_weights: dict[str, float] | None = None
    """Multi-objective models: Σ weight · objective score, overriding rmkit.json's weights (missing names: 0); the
    stored normalisation statistics were measured under the saved weights."""
    objective_gates: dict[str, float] = {}
    """Objective name → threshold: below it, the model reward is objective_gate_value instead of the weighted sum."""
    objective_gate_value: float = 0.0
    """The model reward (raw units, before normalisation) of an item that fails an objective gate."""
    rules: list[RuleTerm] = []
    """Named terms added to the shaped reward, each a reward component (rmkit.rules): length, regex, keyword, and
    classifier (another model directory or served URL, as a penalty or a gate)."""

    @model_validator(mode="after")
    def _no_ignored_fields(self) -> ShapingConfig:
        defaults = type(self).model_fields
        needs = {
            "reward_mean": ("normalize", ("stored", "running")),
            "reward_std": ("normalize", ("stored", "running")),
            "length_unit": ("length_penalty", ("linear", "dapo")),
            "length_on": ("length_penalty", ("linear", "dapo")),
            "length_threshold": ("length_penalty", "linear"),
            "length_coef": ("length_penalty", "linear"),
            "dapo_max_length": ("length_penalty", "dapo"),
            "dapo_cache": ("length_penalty", "dapo"),
            "ensemble_k": ("ensemble", "mean_minus_std"),
            "member_weights": ("ensemble", "weighted"),
        }
        for name, (switch, value) in needs.items():
            allowed = value if isinstance(value, tuple) else (value,)
            if getattr(self, name) != defaults[name].default and getattr(self, switch) not in allowed:
                shown = " or ".join(repr(v) for v in allowed)
                raise ValueError(f"{name}={getattr(self, name)!r} only applies with {switch}={shown} "
                                 f"(got {switch}={getattr(self, switch)!r}); set {switch} or drop {name}.")
        if self.ensemble == "weighted" and (not self.member_weights or min(self.member_weights) < 0 or sum(self.member_weights) <= 0):
            raise ValueError("ensemble='weighted' needs member_weights: one non-negative weight per model, not all 0.")
        if self.length_penalty == "linear" and self.length_coef == 0:
            raise ValueError("length_penalty='linear' needs length_coef > 0 (penalty per token over the threshold).")
        if self.length_penalty == "dapo" and (self.dapo_max_length is None or self.dapo_cache > self.dapo_max_length):
            raise ValueError(f"length_penalty='dapo' needs dapo_max_length set and dapo_cache ≤ dapo_max_length "
                             f"(got {self.dapo_max_length}, {self.dapo_cache}).")
        return self


@dataclass(frozen=True)
class ShapedRewards:
    """Everything shape_rewards computed; arrays are float64 unless noted."""

    raw: np.ndarray  # (N,) ensemble-combined raw scores, before normalisation
    shaped: np.ndarray  # (N,) final rewards
    members: np.ndarray | None  # (M, N) raw member scores, None for a single model
    member_std: np.ndarray | None  # (N,) population std over members in raw units, None for a single model
    passed: np.ndarray | None  # (N,) bool, shaped >= reward_threshold; None when no threshold is set
    length_penalty: np.ndarray | None = None  # (N,) the length-penalty part of shaped; None when no penalty is on
    objectives: dict[str, np.ndarray] | None = None  # name → (N,) raw objective scores of multi-objective models
    parts: dict[str, np.ndarray] | None = None  # name → (N,) named parts summing to `shaped` when rule terms are on

    def item(self, i: int) -> dict[str, Any]:
        """Item i's fields as scored rows and NeMo Gym /verify answers carry them: `reward` (shaped), `raw_reward`,
        `passed` when a threshold is set, `member_rewards` and `reward_std` for an ensemble, `objective_rewards` for
        multi-objective models and `reward_components` (summing to `reward`) when rule terms apply."""
        fields: dict[str, Any] = {"reward": float(self.shaped[i]), "raw_reward": float(self.raw[i])}
        if self.passed is not None:
            fields["passed"] = bool(self.passed[i])
        if self.members is not None:
            fields.update(member_rewards=self.members[:, i].tolist(), reward_std=float(self.member_std[i]))
        if self.objectives:
            fields["objective_rewards"] = {k: float(v[i]) for k, v in self.objectives.items()}
        if self.parts:
            fields["reward_components"] = self.components(i)
        return fields

    def components(self, i: int) -> dict[str, float] | None:
        """Item i's reward as named parts summing to it (reward_model, length_penalty, rule terms); None when there is
        only the model: NeMo Gym's reward_components."""
        if self.parts:
            return {k: float(v[i]) for k, v in self.parts.items()}
        if self.length_penalty is None:
            return None
        penalty = float(self.length_penalty[i])
        return {"reward_model": float(self.shaped[i]) - penalty, "length_penalty": penalty}


def combine_ensemble(
    member_scores: np.ndarray, how: Ensemble = "mean", k: float = 1.0, weights: list[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Combine (M, N) member scores into one (N,) score and the (N,) population std (ddof=0) over members.

    [[1, 3], [3, 3]] → mean [2, 3], min [1, 3], std [1, 0], mean − 1·std [1, 3], weighted [3, 1] → [1.5, 3].
    M = 1 gives std 0.
    """
    scores = np.asarray(member_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 1:
        raise ValueError(f"member_scores must be an (M, N) matrix with M ≥ 1, got shape {scores.shape}")
    mean, std = scores.mean(axis=0), scores.std(axis=0)  # (N,), (N,)
    if how == "mean":
        return mean, std
    if how == "min":
        return scores.min(axis=0), std
    if how == "mean_minus_std":
        return mean - k * std, std
    if how == "weighted":
        if weights is None or len(weights) != scores.shape[0]:
            raise ValueError(f"ensemble='weighted' needs {scores.shape[0]} member_weights, got {weights}")
        w = np.asarray(weights, dtype=np.float64)
        return w @ scores / w.sum(), std
    raise ValueError(f"unknown ensemble {how!r}; expected one of {get_args(Ensemble)}")


def normalize(r: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(r − mean)/std; std must be positive. normalize([3], 1, 2) → [1]."""
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}; check the stored statistics or pass reward_std.")
    return (np.asarray(r, dtype=np.float64) - mean) / std


def clip(r: np.ndarray, bound: float) -> np.ndarray:
    """Clamp to [−bound, +bound]; bound must be positive. clip([6, -7, 1], 5) → [5, −5, 1]."""
    if not bound > 0:
        raise ValueError(f"clip bound must be positive, got {bound}")
    return np.clip(np.asarray(r, dtype=np.float64), -bound, bound)


def linear_length_penalty(lengths: np.ndarray, threshold: int, coef: float) -> np.ndarray:
    """−coef·max(0, L − threshold). (threshold 10, coef 0.1) at [5, 10, 30] → [0, 0, −2]."""
    return -coef * np.maximum(0, np.asarray(lengths, dtype=np.float64) - threshold)


def response_length(response: str | list[dict[str, Any]], unit: Literal["chars", "words"]) -> int:
    """Characters or whitespace-separated words of a response, text or chat messages (contents joined by blank lines).

    "Hi  there" → 9 chars, 2 words; [{"role": "assistant", "content": "a b"}] → 3 chars, 2 words.
    """
    text = response if isinstance(response, str) else "\n\n".join(str(m.get("content") or "") for m in response)
    if unit == "chars":
        return len(text)
    if unit == "words":
        return len(text.split())
    raise ValueError(f"response_length counts 'chars' or 'words', got {unit!r} (tokens need a tokenizer)")


def dapo_length_penalty(lengths: np.ndarray, max_length: int, cache: int) -> np.ndarray:
    """DAPO Eq. 13 (TRL's soft overlong punishment): 0 for L ≤ Lmax − Lc, ((Lmax − Lc) − L)/Lc up to Lmax, −1 above.

    (Lmax 100, Lc 20) at [80, 90, 100, 101] → [0, −0.5, −1, −1]. Lc = 0 is a hard cut at Lmax.
    """
    length = np.asarray(lengths, dtype=np.float64)
    start = max_length - cache
    ramp = (start - length) / max(cache, 1)  # the ramp branch is empty when cache == 0
    return np.where(length <= start, 0.0, np.where(length <= max_length, ramp, -1.0))


def length_penalties(cfg: ShapingConfig, lengths: np.ndarray) -> np.ndarray:
    """The (N,) length-penalty term of cfg for (N,) response lengths; zeros when cfg.length_penalty is 'none'."""
    if cfg.length_penalty == "linear":
        return linear_length_penalty(lengths, cfg.length_threshold, cfg.length_coef)
    if cfg.length_penalty == "dapo":
        return dapo_length_penalty(lengths, cfg.dapo_max_length, cfg.dapo_cache)
    return np.zeros(np.shape(lengths))


class RunningMoments:
    """Running mean/std of a reward stream, TRL v0.11.4 semantics (docs/protocols.md §4); thread-safe.

    Starts at mean 0, var 1, count 1e-24, or at a given mean and std: a starting point that the first batch replaces,
    except that the std is kept until more than one value has been seen. Each batch is merged in (parallel mean/var
    merge) before it is scaled; `std` is the unbiased running std. Until more than one value has been seen the std
    stays at its prior, 1 by default (TRL would divide by zero there).
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if not std > 0:
            raise ValueError(f"the starting std must be positive, got {std}")
        self.mean, self.var, self.std, self.count = float(mean), float(std) ** 2, float(std), 1e-24
        self._lock = threading.Lock()

    def update(self, x: np.ndarray) -> tuple[float, float]:
        """Merge a batch and return the running (mean, std) after the merge, read under the lock.

        Unlike TRL, which returns the batch's own moments for logging, this returns the statistics to scale with,
        so concurrent callers never mix one thread's merge with another's statistics.
        """
        xs = np.asarray(x, dtype=np.float64).ravel()
        if xs.size == 0:
            raise ValueError("RunningMoments.update needs at least one value")
        xs_mean, xs_var, xs_count = xs.mean(), xs.var(), xs.size  # biased batch var, as torch.var_mean(unbiased=False)
        with self._lock:
            delta = xs_mean - self.mean
            tot_count = self.count + xs_count
            old_sum = self.var * self.count + delta**2 * self.count * xs_count / tot_count
            new_var = (old_sum + xs_var * xs_count) / tot_count
            self.mean += delta * xs_count / tot_count
            if tot_count > 1:
                self.std = float(np.sqrt(new_var * tot_count / (tot_count - 1)))
            self.var, self.count = float(new_var), float(tot_count)
            return float(self.mean), self.std

    def state_dict(self) -> dict[str, float]:
        with self._lock:
            return {"mean": float(self.mean), "var": self.var, "std": self.std, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        keys = {"mean", "var", "std", "count"}
        if set(state) != keys:
            raise ValueError(f"RunningMoments state needs exactly the keys {sorted(keys)}, got {sorted(state)}")
        with self._lock:
            self.mean, self.var, self.std, self.count = (float(state[k]) for k in ("mean", "var", "std", "count"))


def running_moments(cfg: ShapingConfig) -> RunningMoments:
    """A fresh RunningMoments starting from cfg's reward_mean/reward_std (0 and 1 when unset)."""
    return RunningMoments(0.0 if cfg.reward_mean is None else cfg.reward_mean,
                          1.0 if cfg.reward_std is None else cfg.reward_std)


def _normalised(scores: np.ndarray, cfg: ShapingConfig, stats: tuple[float, float] | None,
                running: RunningMoments | None) -> np.ndarray:
    if cfg.normalize == "stored":
        mean = cfg.reward_mean if cfg.reward_mean is not None else (stats[0] if stats else None)
        std = cfg.reward_std if cfg.reward_std is not None else (stats[1] if stats else None)
        if mean is None or std is None:
            raise ValueError("normalize='stored' needs the model's mean/std statistics, but none were found; "
                             "pass reward_mean and reward_std, or use normalize='none'.")
        return normalize(scores, mean, std)
    if cfg.normalize == "running":
        if running is None:
            raise ValueError("normalize='running' needs a RunningMoments instance (running=...).")
        mean, std = running.update(scores)
        return normalize(scores, mean, std + np.finfo(np.float64).eps)
    return scores


def shape_rewards(
    raw: np.ndarray,
    lengths: np.ndarray | None,
    cfg: ShapingConfig,
    stats: tuple[float, float] | None = None,
    running: RunningMoments | None = None,
) -> ShapedRewards:
    """Apply cfg to raw scores: ensemble combine → normalise → clip → add length penalty → threshold.

    The length penalty is added after clipping so a large penalty is never clipped away; with length_on='raw' it is
    added to the raw score before normalising instead (`raw` stays the model's score).

    Args:
        raw: (N,) scores of one model, or (M, N) scores of M ensemble members.
        lengths: (N,) response lengths in cfg.length_unit; needed only when cfg.length_penalty is not 'none'.
        cfg: the shaping settings.
        stats: stored (mean, std) from the model directory, for normalize='stored'; cfg overrides win.
        running: the shared RunningMoments, for normalize='running'; it is updated with this batch first.

    Returns:
        ShapedRewards. Example: r = 13, stored (1, 2), clip 5 → (13 − 1)/2 = 6 → 5. With length_on='raw', chars,
        threshold 500, coef 0.001, normalize 'none': r = 2 at 1500 characters → 2 − 1 = 1.
    """
    scores = np.asarray(raw, dtype=np.float64)
    members = member_std = None
    if scores.ndim == 2:
        members = scores
        scores, member_std = combine_ensemble(scores, cfg.ensemble, cfg.ensemble_k, cfg.member_weights)  # (N,), (N,)
    elif scores.ndim != 1:
        raise ValueError(f"raw must be (N,) or (M, N), got shape {scores.shape}")
    penalty = None
    if cfg.length_penalty != "none":
        if lengths is None or np.shape(lengths) != scores.shape:
            raise ValueError(f"length_penalty={cfg.length_penalty!r} needs lengths of shape {scores.shape}, "
                             f"got {None if lengths is None else np.shape(lengths)}")
        penalty = length_penalties(cfg, np.asarray(lengths))
    raw_stage = penalty is not None and cfg.length_on == "raw"
    shaped = _normalised(scores + penalty if raw_stage else scores, cfg, stats, running)
    if cfg.clip is not None:
        shaped = clip(shaped, cfg.clip)
    if penalty is not None and not raw_stage:
        shaped = shaped + penalty
    passed = None if cfg.reward_threshold is None else shaped >= cfg.reward_threshold
    return ShapedRewards(raw=scores, shaped=shaped, members=members, member_std=member_std, passed=passed,
                         length_penalty=penalty)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate from (B, T) log-probs, with log_ratio = logp − ref_logp.

    k1 = log_ratio; k2 = log_ratio²/2; k3 = exp(−log_ratio) − 1 + log_ratio.
    log_ratio = ln 2 → k1 ≈ 0.6931, k2 ≈ 0.2402, k3 = 0.5 − 1 + 0.6931 ≈ 0.1931.
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return log_ratio.pow(2) / 2
    if estimator == "k3":
        return (-log_ratio).exp() - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {get_args(KLEstimator)}")


def kl_shaped_rewards(
    score: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    estimator: KLEstimator = "k1",
    clip_kl: float | None = None,
) -> torch.Tensor:
    """PPO per-token rewards: −β·KL_t on response tokens, plus the score at the last attended token; 0 where masked.

    Args:
        score: (B,) sequence scores, already clipped (clipping happens before KL is added, docs/protocols.md §4).
        logp, ref_logp: (B, T) log-probs of the sampled tokens under the policy and the reference.
        mask: (B, T) 1 on response tokens, any padding side; every row needs at least one 1.
        beta: KL coefficient.
        estimator: 'k1', 'k2' or 'k3' (see kl_estimate).
        clip_kl: if set, KL estimates are clamped to [−clip_kl, clip_kl] (OpenRLHF uses 10).

    Returns:
        (B, T) rewards. Example: mask [[0, 1, 1, 0]], KL 0, score 2 → [[0, 0, 2, 0]].
    """
    import torch

    from rmkit.loss import last_attended_index  # here, not at the top: importing shaping must not load torch

    if logp.shape != ref_logp.shape or logp.shape != mask.shape or logp.dim() != 2 or score.shape != logp.shape[:1]:
        raise ValueError(f"expected score (B,) and logp, ref_logp, mask (B, T); got {tuple(score.shape)}, "
                         f"{tuple(logp.shape)}, {tuple(ref_logp.shape)}, {tuple(mask.shape)}")
    attended = mask.bool()
    if not attended.any(dim=1).all():
        raise ValueError("every row of mask needs at least one response token to place the score on")
    kl = kl_estimate(logp, ref_logp, estimator)  # (B, T)
    if clip_kl is not None:
        kl = kl.clamp(-clip_kl, clip_kl)
    rewards = torch.where(attended, -beta * kl, torch.zeros_like(kl))  # (B, T)
    last = last_attended_index(mask)  # (B,) index of the last 1, any padding side
    rows = torch.arange(mask.size(0), device=mask.device)
    rewards[rows, last] += score.to(rewards.dtype)
    return rewards
