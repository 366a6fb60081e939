"""RewardPath: THE way from inputs to rewards, for one model or an ensemble of several: encode (render and tokenise
once per member; members may use different tokenizers and templates) → forward (every member, item-major (N, M)) →
shape (rmkit.shaping). `score(encoded)` runs the whole path; the server runs forward in its micro-batcher and shape
per request. Used by the server, the RL reward function and `score_file` (`rmkit score`), which lives here.

Knows nothing of HTTP or queues; reads and writes files only in score_file.

Normalisation of an ensemble (normalize='stored'): each member's score is first normalised with that member's own
statistics ((r_m − mean_m)/std_m, the card's or the reward_mean/reward_std overrides), then members are combined,
then clipped. Members trained apart live on different scales; only after this do 'min' and 'mean − k·std' compare
like with like. normalize='running' combines the raw scores first and keeps one running mean/std of the result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rmkit import composition
from rmkit.config import Precision
from rmkit.encoding import Encoder
from rmkit.gym import split_row
from rmkit.protocols import content_text
from rmkit.rows import read_rows, write_jsonl
from rmkit.rules import ClassifierTerm
from rmkit.scoring import Scorer
from rmkit.shaping import ShapedRewards, ShapingConfig, combine_ensemble, response_length, running_moments, shape_rewards
from rmkit.sharding import barrier, current_shard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoded:
    """One input, tokenised for every member: ids[m] is member m's token ids; response_tokens is the response's length
    for length penalties, in the shaping's length_unit (tokens unless characters or words are asked for)."""

    ids: tuple[list[int], ...]
    response_tokens: int
    prompt: Any = None  # the prompt (text or messages) when known, for classifier terms
    response: str = ""  # the response text, for rule terms

    @property
    def tokens(self) -> int:
        return max(len(i) for i in self.ids)


def response_text(response: Any) -> str:
    """The text of a response given as a string or as chat messages: contents joined by blank lines."""
    if isinstance(response, str):
        return response
    return "\n\n".join(content_text(m.get("content"), "response") for m in response)


@dataclass(frozen=True)
class Member:
    """One model of a RewardPath as the server describes it."""

    name: str
    temperature: float
    max_length: int


class RewardPath:
    """M ≥ 1 scorers plus the shaping that turns their (N, M) raw scores into N rewards.

    Args:
        scorers: the members, each with its own tokenizer, template and card statistics.
        shaping: normalisation, clipping, length penalty, threshold and ensemble rule.
    """

    def __init__(self, scorers: Sequence[Scorer], shaping: ShapingConfig | None = None,
                 classifiers: dict[str, composition.Classify] | None = None):
        if not scorers:
            raise ValueError("a RewardPath needs at least one scorer")
        self.scorers = list(scorers)
        self.shaping = shaping or ShapingConfig()
        self.running = running_moments(self.shaping)
        terms = [t for t in self.shaping.rules if isinstance(t, ClassifierTerm)]
        device = str(getattr(self.scorers[0], "device", "cpu")) if terms else "cpu"
        self.classifiers = classifiers if classifiers is not None else {
            t.name: composition.load_classifier(t, device) for t in terms}
        if self.shaping.ensemble == "weighted" and len(self.shaping.member_weights or []) != len(self.scorers):
            raise ValueError(f"shaping.member_weights has {len(self.shaping.member_weights or [])} weights for "
                             f"{len(self.scorers)} models")
        for s in self.scorers:  # unknown objective names fail at start-up, not on the first request
            if len(s.card.outputs) > 1:
                composition.objective_weighting(s.card.outputs, s.card.weights, self.shaping)
        if self.shaping.normalize == "stored" and self.shaping.reward_std is None:
            bad = [s.name for s in self.scorers if not s.card.reward_std > 0]
            if bad:  # found at start-up, not as an error on every request
                raise ValueError(f"{', '.join(bad)}: stored reward_std must be positive for normalize='stored'; "
                                 "pass shaping.reward_std or use shaping.normalize='none'")

    @classmethod
    def load(cls, model_dirs: Sequence[str | Path], shaping: ShapingConfig | None = None,
             device: str | Sequence[str] = "auto", max_length: int | None = None, **scorer_kwargs: Any) -> RewardPath:
        """Load each model directory once; `max_length` (if set) overrides each card's, capped with a warning at what
        the model's position embeddings can take (NeMo Gym's default 2048 exceeds a BERT's 512); the rest goes to
        Scorer. `device` is one device for every member, or one per member (members on different GPUs): each
        member's forward runs on its own device and only its (N,) scores come back to the CPU."""
        devices = [device] * len(model_dirs) if isinstance(device, str) else list(device)
        if len(devices) != len(model_dirs):
            raise ValueError(f"{len(devices)} devices for {len(model_dirs)} models: give one device, or one per model")
        scorers = [Scorer.load(d, device=dev, **scorer_kwargs) for d, dev in zip(model_dirs, devices, strict=True)]
        for s in scorers if max_length is not None else []:
            limit = getattr(s.model.hf.config, "max_position_embeddings", None) or max_length
            if max_length > limit:
                log.warning("%s: max_length %d exceeds its %d positions; using %d", s.name, max_length, limit, limit)
            s.encoder = Encoder(s.tokenizer, min(max_length, limit), s.card.add_special_tokens, s.card.truncation)
        return cls(scorers, shaping)

    @property
    def name(self) -> str:
        return "+".join(self.member_names)

    @property
    def member_names(self) -> list[str]:
        return [s.name for s in self.scorers]

    @property
    def max_length(self) -> int:
        return min(s.encoder.max_length for s in self.scorers)

    def _response_tokens(self, responses: Sequence[str]) -> list[int]:
        if self.shaping.length_penalty == "none":
            return [0] * len(responses)  # tokenising only to throw the counts away would cost time
        if self.shaping.length_unit != "tokens":
            return [response_length(r, self.shaping.length_unit) for r in responses]
        return self.count_tokens(responses)

    def encode_pairs(self, prompts: Sequence[Any], responses: Sequence[Any]) -> list[Encoded]:
        """(prompt, response) pairs, text or chat messages, rendered with each member's own template."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return []
        pairs = list(zip(prompts, responses, strict=True))
        per_member = [s.encoder.encode([s.render(p, r) for p, r in pairs]) for s in self.scorers]
        texts = [response_text(r) for r in responses]
        return _pack(per_member, self._response_tokens(texts), list(prompts), texts)

    def encode_texts(self, texts: Sequence[str], prompts: Sequence[str | None] | None = None,
                     add_special_tokens: bool | None = None) -> list[Encoded]:
        """Already-rendered texts (a policy's decoded prompt + completion), tokenised as they are.

        Args:
            texts: the full texts.
            prompts: optional prompt prefix of each text; the rest is the response measured by length penalties
                (without a matching prefix the whole text counts).
            add_special_tokens: None keeps each card's setting (as Scorer.score_texts); True adds the tokenizer's own
                special tokens (a doubled leading BOS is then dropped); False adds none.
        """
        if not texts:
            return []
        per_member = []
        for s in self.scorers:
            encoder = s.encoder if add_special_tokens is None else Encoder(s.tokenizer, s.encoder.max_length,
                                                                           add_special_tokens, s.encoder.truncation)
            per_member.append([_drop_double_bos(ids, s.tokenizer.bos_token_id) for ids in encoder.encode(texts)])
        prompts = prompts or [None] * len(texts)
        tails = [t[len(p):] if p and t.startswith(p) else t for t, p in zip(texts, prompts, strict=True)]
        return _pack(per_member, self._response_tokens(tails), list(prompts), tails)

    def members(self) -> list[Member]:
        """Each member's name, calibrated temperature and token window (what the playground shows)."""
        return [Member(s.name, s.card.temperature, s.encoder.max_length) for s in self.scorers]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Each text's length in tokens of the first member's tokenizer (the one length penalties count with)."""
        return [len(ids) for ids in self.scorers[0].tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    @property
    def vocab_size(self) -> int:
        """Token ids every member accepts: 0..vocab_size-1 (the smallest tokenizer or embedding table)."""
        return min(min(len(s.tokenizer), s.model.hf.get_input_embeddings().num_embeddings) for s in self.scorers)

    def encode_ids(self, ids: Sequence[Sequence[int]]) -> list[Encoded]:
        """Token ids given by the caller, passed to every member as they are (left-cut to max_length).

        Raises ValueError for an id outside a member's vocabulary, so one bad request never fails a shared batch.
        """
        cut, vocab = self.max_length, self.vocab_size
        bad = next((t for row in ids for t in row if not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the vocabulary of {self.name} (0..{vocab - 1})")
        return _pack([[list(row[-cut:]) for row in ids] for _ in self.scorers], [len(row) for row in ids])

    def forward(self, encoded: Sequence[Encoded]) -> np.ndarray:
        """(N, R) raw scores, item-major (row i: item i's outputs): each member's reward (K columns for a K-objective
        member), then one column per classifier term; each member batches by its own token budget, longest first."""
        if not encoded:
            return np.zeros((0, self.n_outputs))
        cols: list[np.ndarray] = []
        for m, s in enumerate(self.scorers):
            ids = [e.ids[m] for e in encoded]
            cols += list(s.score_objectives_ids(ids).T) if len(s.card.outputs) > 1 else [np.asarray(s.score_ids(ids))]
        prompts, responses = [e.prompt for e in encoded], [e.response for e in encoded]
        cols += [classify(prompts, responses) for classify in self.classifiers.values()]
        return np.array(cols).T

    @property
    def n_outputs(self) -> int:
        """Columns of forward(): one per objective of each member, one per classifier term."""
        return sum(len(s.card.outputs) for s in self.scorers) + len(self.classifiers)

    def shape(self, raw: np.ndarray, encoded: Sequence[Encoded]) -> ShapedRewards:
        """Shape (N, R) forward outputs: objectives weighed into member rewards, members normalised and combined (see
        the module docstring), then rule terms added as named parts (rmkit.composition)."""
        cfg, rows = self.shaping, np.asarray(raw, dtype=np.float64).reshape(len(encoded), self.n_outputs).T  # (R, N)
        if not encoded:
            return self._shape_members(np.zeros((len(self.scorers), 0)), encoded)
        n_members = rows.shape[0] - len(self.classifiers)
        classifier_scores = dict(zip(self.classifiers, rows[n_members:], strict=True))
        members, objectives = composition.reduce_members(
            rows[:n_members], [s.card.outputs for s in self.scorers], [s.card.weights for s in self.scorers],
            self.member_names, cfg)
        out = self._shape_members(members, encoded)
        return composition.finish(out, cfg, [e.response for e in encoded], objectives, classifier_scores)

    def _shape_members(self, raw: np.ndarray, encoded: Sequence[Encoded]) -> ShapedRewards:
        """Shape (M, N) member rewards: normalise, combine, clip, length penalty, threshold."""
        cfg = self.shaping
        if raw.shape[1] == 0:
            empty = np.zeros(0)
            members = None if len(self.scorers) == 1 else raw
            passed = None if cfg.reward_threshold is None else np.zeros(0, dtype=bool)
            penalty = None if cfg.length_penalty == "none" else empty
            return ShapedRewards(empty, empty, members, None if members is None else empty, passed, penalty)
        lengths = np.array([e.response_tokens for e in encoded], dtype=np.float64)
        if len(self.scorers) == 1:
            card = self.scorers[0].card
            return shape_rewards(raw[0], lengths, cfg, stats=(card.reward_mean, card.reward_std), running=self.running)
        if cfg.normalize != "stored":
            return shape_rewards(raw, lengths, cfg, running=self.running)
        means = np.array([cfg.reward_mean if cfg.reward_mean is not None else s.card.reward_mean for s in self.scorers])
        stds = np.array([cfg.reward_std if cfg.reward_std is not None else s.card.reward_std for s in self.scorers])
        z = (raw - means[:, None]) / stds[:, None]  # (M, N): every member on its own unit scale
        unit = cfg.model_copy(update={"reward_mean": None, "reward_std": None})
        out = shape_rewards(z, lengths, unit, stats=(0.0, 1.0))
        combined, std = combine_ensemble(raw, cfg.ensemble, cfg.ensemble_k, cfg.member_weights)  # (N,), (N,) raw units
        return replace(out, raw=combined, members=raw, member_std=std)

    def score(self, encoded: Sequence[Encoded]) -> ShapedRewards:
        """The whole path on encoded items: forward, then shape."""
        return self.shape(self.forward(encoded), encoded)

    def rewards(self, prompts: Sequence[Any], responses: Sequence[Any]) -> ShapedRewards:
        """Encode, forward and shape (prompt, response) pairs in one call."""
        return self.score(self.encode_pairs(prompts, responses))


Ensemble = RewardPath
"""The former name, kept so that callers written against it still work."""


def score_file(
    model_dir: str | Path | Sequence[str | Path],
    input_path: str | Path,
    output_path: str | Path,
    batch_tokens: int = 8192,
    shaping: ShapingConfig | None = None,
    device: str | Sequence[str] = "auto",
    max_length: int | None = None,
    max_batch: int = 128,
    dtype: Precision = "fp32",
    tokenizer: str | None = None,
) -> int:
    """Copy a JSONL file of rows, adding rewards to each; returns the row count. The output is written atomically.

    Rows are `prompt` + `response`, chat `messages`, or NeMo Gym rollouts (see gym.split_row). Each output row gets
    `reward` (shaped by `shaping`; default: stored-stats normalisation, clip ±5) and `raw_reward`; `passed` when
    shaping has a reward_threshold; `member_rewards` and `reward_std` when several model directories form an ensemble.
    Under `accelerate launch -m rmkit score ...` each process scores every world-th row on its own device and the
    main process writes the one output, in input order (shaping.normalize='running' keeps one estimate per process).
    """
    rows, prompts, responses = [], [], []
    for origin, row in read_rows(Path(input_path)):
        prompt, response = split_row(row, origin)
        rows.append(row)
        prompts.append(prompt)
        responses.append(response)
    shard = current_shard()
    if shard.device is not None and device == "auto":
        device = shard.device
    mine = shard.indices(len(rows))
    dirs = [model_dir] if isinstance(model_dir, (str, Path)) else list(model_dir)
    path = RewardPath.load(dirs, shaping, device=device, max_length=max_length, max_tokens=batch_tokens,
                           max_batch=max_batch, progress=shard.is_main, dtype=dtype, tokenizer=tokenizer)
    out = path.rewards([prompts[i] for i in mine], [responses[i] for i in mine])
    fields = shard.gather(mine, [out.item(j) for j in range(len(mine))])
    if fields is not None:
        write_jsonl(({**row, **f} for row, f in zip(rows, fields, strict=True)), output_path)
    barrier(shard)
    return len(rows)


def _pack(per_member: list[list[list[int]]], lengths: list[int], prompts: Sequence[Any] | None = None,
          responses: Sequence[str] | None = None) -> list[Encoded]:
    """Member-major ids (M lists of N) → N Encoded; an empty token sequence is an error (no token to read)."""
    for m, rows in enumerate(per_member):
        empty = next((i for i, ids in enumerate(rows) if not ids), None)
        if empty is not None:
            raise ValueError(f"item {empty} has no tokens for member {m} (empty text): nothing to score")
    prompts = prompts or [None] * len(lengths)
    responses = responses or [""] * len(lengths)
    return [Encoded(tuple(rows[i] for rows in per_member), lengths[i], prompts[i], responses[i])
            for i in range(len(lengths))]


def _drop_double_bos(ids: list[int], bos: int | None) -> list[int]:
    """[BOS, BOS, x] → [BOS, x]: text that already starts with BOS must not get a second (RewardBench, Skywork)."""
    return ids[1:] if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos else ids
