"""Train/validation/test splits: by a hash of the prompt (so one prompt's pairs never straddle two splits), per
file, with optional oversampling of smaller files. Knows PreferencePair and DataConfig; knows nothing of tokenizers.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

from rmkit.config import DataConfig
from rmkit.data import PreferencePair, read_pairs, text_key


def split_by_prompt(pairs: list[PreferencePair], val_fraction: float, test_fraction: float, salt: str = "rmkit"
                    ) -> tuple[list[PreferencePair], list[PreferencePair], list[PreferencePair]]:
    """Split deterministically by a hash of the prompt, so that one prompt never lands in two splits.

    h = int(sha256(salt + "\\0" + prompt_key()).hexdigest()[:15], 16) / 16**15 ∈ [0, 1); test if h < test_fraction,
    val if h < test_fraction + val_fraction, else train. Each split keeps the input order. Implicit-prompt text
    pairs (prompt "") have no prompt to group by, so they are hashed by their chosen text instead.

    Returns:
        (train, val, test).
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name}={value} is outside [0, 1). Pass a fraction such as 0.1.")
    if not val_fraction + test_fraction < 1:
        raise ValueError(f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training data. "
                         "Make their sum less than 1.")
    train, val, test = [], [], []
    for p in pairs:
        key = p.prompt_key() or text_key(p.chosen)  # implicit-prompt text: no prompt to group by
        h = int(hashlib.sha256((salt + "\0" + key).encode()).hexdigest()[:15], 16) / 16**15
        (test if h < test_fraction else val if h < test_fraction + val_fraction else train).append(p)
    return train, val, test


def load_splits(cfg: DataConfig, seed: int, sources: Sequence[Any] | None = None) -> dict[str, list[PreferencePair]]:
    """Read every file, split each by prompt hash, and (optionally) oversample smaller files' training pairs.

    `sources` (datasets.Dataset objects, lists of dicts or paths) are read instead of cfg.paths when given."""
    per_file: list[list[PreferencePair]] = []
    val: list[PreferencePair] = []
    test: list[PreferencePair] = []
    held_rng = random.Random(seed)  # its own stream: capping evaluation leaves the training order unchanged
    for path in cfg.paths if sources is None else sources:
        pairs = read_pairs(path, format=cfg.format, skip_bad=cfg.skip_bad, **cfg.column_keys())
        train_part, val_part, test_part = split_by_prompt(pairs, cfg.val_fraction, cfg.test_fraction, cfg.split_salt)
        per_file.append(train_part)
        val += _cap(val_part, cfg.max_eval_pairs, held_rng)
        test += _cap(test_part, cfg.max_eval_pairs, held_rng)
    rng = random.Random(seed)
    if cfg.source_weights is not None and len(cfg.source_weights) != len(per_file):
        raise ValueError(f"data.source_weights has {len(cfg.source_weights)} weights for {len(per_file)} files")
    if cfg.balance_sources and len(per_file) > 1:
        weights = cfg.source_weights or [1.0] * len(per_file)
        target = max(len(part) for part in per_file)
        per_file = [_resample(part, round(target * w / max(weights)), rng) for part, w in zip(per_file, weights,
                                                                                               strict=True)]
    train = [pair for part in per_file for pair in part]
    rng.shuffle(train)
    if cfg.max_train_pairs is not None:
        train = train[: cfg.max_train_pairs]
    return {"train": train, "val": val, "test": test}


def _cap(pairs: list[PreferencePair], k: int | None, rng: random.Random) -> list[PreferencePair]:
    """At most k of the pairs, a random subset in their original order (all of them when k is None)."""
    if k is None or len(pairs) <= k:
        return pairs
    return [pairs[i] for i in sorted(rng.sample(range(len(pairs)), k))]


def _resample(pairs: list[PreferencePair], k: int, rng: random.Random) -> list[PreferencePair]:
    """k pairs: all of them plus random repeats when k is larger, a random subset when k is smaller."""
    if not pairs or k == len(pairs):
        return pairs
    return pairs + rng.choices(pairs, k=k - len(pairs)) if k > len(pairs) else rng.sample(pairs, k)
