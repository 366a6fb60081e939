"""Plain-language warnings about a reward model, from numbers already measured: each rule is a pure function.

A reward model can score 70% and still be useless for RL. These rules turn the evaluation numbers into flags a
person can act on. Every threshold is a named constant below, and the tests pin each rule on both sides of it:

| flag          | fires when                                                                 | constant               |
|---------------|----------------------------------------------------------------------------|------------------------|
| `chance`      | the 95% interval of the accuracy includes 0.5                              | (Wilson interval)      |
| `length`      | accuracy − best length-only baseline < 0.02                                | LENGTH_BASELINE_MARGIN |
| `length`      | abs(Spearman(score, response length)) > 0.3                                | LENGTH_CORR_MAX        |
| `length`      | abs(acc(chosen longer) − acc(chosen shorter)) > 0.15, ≥ 20 pairs a side    | LENGTH_SPLIT_GAP       |
| `overfitting` | train accuracy − held-out accuracy > 0.1                                   | OVERFIT_GAP            |
| `no_heldout`  | the run's validation rows were measured on training pairs (val_fraction=0) | (always)               |
| `calibration` | ECE at the model's temperature > 0.1, on ≥ 50 pairs                        | ECE_MAX                |
| `position`    | swap consistency < 0.95                                                    | SWAP_CONSISTENCY_MIN   |
| `position`    | abs(acc(preferred A) − acc(preferred B)) > 0.1, ≥ 20 pairs a side          | POSITION_GAP           |
| `position`    | the labels pick A in < 40% or > 60% of the A/B rows (≥ 20 rows)            | LABEL_POSITION_SKEW    |
| `ratings`     | Spearman(score, human rating) < 0.2                                        | RATING_CORR_MIN        |
| `non-finite`  | some rewards are NaN or inf                                                | (always)               |
| `collapsed`   | std of the finite rewards < 0.05                                           | COLLAPSE_STD           |
| `extreme`     | some abs(r) > 20                                                           | EXTREME_ABS            |

A flag is a `Flag` (kind, message); `Flag.to_json` / `Flag.from_json` are its one JSON form, {"kind", "message"}, as
eval.json stores it under "flags".

Knows the summary dicts of `rmkit.evaluation`, reward arrays and the rows of a run's metrics.jsonl; knows nothing of models or files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

LENGTH_BASELINE_MARGIN = 0.02
"""A model must beat "pick the longer (or shorter) response" by at least this much accuracy."""
LENGTH_CORR_MAX = 0.3
"""|Spearman(score, length)| above which rewards track length more than a careful team accepts without a look."""
LENGTH_SPLIT_GAP = 0.15
"""Largest accuracy gap between pairs whose chosen response is longer and those where it is shorter."""
MIN_GROUP_N = 20
"""Pairs each side of a split needs before a gap between the sides is flagged (below that it is mostly noise)."""
OVERFIT_GAP = 0.1
"""Largest train − held-out accuracy gap before the model is called overfit."""
TRAIN_WINDOW = 5
"""`train_val_gap` averages this many of the last training rows of metrics.jsonl (each is itself a window)."""
ECE_MAX = 0.1
"""Largest expected calibration error (symmetric set, 10 bins) before P(A preferred) is called miscalibrated."""
MIN_CALIBRATION_PAIRS = 50
"""Pairs needed before calibration is judged: ECE over fewer is dominated by sampling noise."""
SWAP_CONSISTENCY_MIN = 0.95
"""Smallest fraction of pairs whose preference must flip when the two responses swap places."""
POSITION_GAP = 0.1
"""Largest accuracy gap between rows where A was preferred and rows where B was."""
LABEL_POSITION_SKEW = 0.1
"""Largest |share of labels picking A − 0.5| before the labels themselves look position-biased."""
RATING_CORR_MIN = 0.2
"""Smallest Spearman correlation with human ratings before the scores are called unrelated to them."""
COLLAPSE_STD = 0.05
"""Reward std below which the scores are flagged as collapsed (every response gets nearly the same score)."""
EXTREME_ABS = 20.0
"""|reward| above which a score is flagged as extreme: σ(Δ) saturates there, so the BT loss gives almost no gradient."""

LENGTH_BUCKETS = ("much shorter", "shorter", "similar", "longer", "much longer")
"""`length_difference_buckets` labels, in plotting order: the chosen response relative to the rejected one."""


FlagKind = Literal["chance", "length", "overfitting", "no_heldout", "calibration", "position", "ratings", "non-finite",
                   "collapsed", "extreme"]
"""What a flag is about; the table in the module docstring says when each fires."""


@dataclass(frozen=True)
class Flag:
    """One warning: `kind` groups it (length, overfitting, ...); `message` says what was seen and what to do."""

    kind: FlagKind
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def to_json(self) -> dict[str, str]:
        """The flag as eval.json stores it: {"kind": ..., "message": ...}."""
        return {"kind": self.kind, "message": self.message}

    @classmethod
    def from_json(cls, obj: dict[str, str]) -> Flag:
        """A flag read back from eval.json (`to_json`'s inverse)."""
        return cls(obj["kind"], obj["message"])


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def chance_flag(ci_low: float, ci_high: float) -> Flag | None:
    """Flag an accuracy whose 95% interval includes 0.5. Example: (0.45, 0.70) → Flag("chance", ...)."""
    if ci_low <= 0.5 <= ci_high:
        return Flag("chance", f"the 95% interval of the accuracy ({_pct(ci_low)}–{_pct(ci_high)}) includes 50%: on "
                              "this data the model is not distinguishable from a coin flip; evaluate more pairs or "
                              "train longer.")
    return None


def length_baseline_flag(accuracy: float, baseline: float, margin: float = LENGTH_BASELINE_MARGIN) -> Flag | None:
    """Flag a model that beats the best length-only rule by less than `margin`.

    Example: accuracy 0.61, baseline 0.60 → beats it by 0.01 < 0.02 → flagged; accuracy 0.70 → not flagged.
    """
    if accuracy - baseline >= margin:
        return None
    if accuracy < baseline:
        seen = f"accuracy {_pct(accuracy)} is below the length-only baseline ({_pct(baseline)})"
    else:
        seen = (f"accuracy {_pct(accuracy)} beats the length-only baseline ({_pct(baseline)}) by less than "
                f"{100 * margin:g} points")
    return Flag("length", f"{seen}: the model does little that counting characters does not; an RL policy trained "
                          "on it may learn to write longer (or shorter) answers rather than better ones.")


def length_correlation_flag(rho: float, limit: float = LENGTH_CORR_MAX) -> Flag | None:
    """Flag |Spearman(score, length)| > `limit`; nan (constant scores or lengths) is not flagged.

    Example: ρ = 0.45 → flagged; ρ = −0.2 → not.
    """
    if math.isfinite(rho) and abs(rho) > limit:
        side = "longer" if rho > 0 else "shorter"
        return Flag("length", f"rank correlation of reward with response length is {rho:+.2f} (|ρ| > {limit:g}): "
                              f"{side} responses get higher rewards; check that the preference data really favours "
                              f"{side} answers, or RL will exploit it.")
    return None


def length_split_flag(by_length: dict[str, float], gap: float = LENGTH_SPLIT_GAP, min_n: int = MIN_GROUP_N
                      ) -> Flag | None:
    """Flag accuracy that differs by more than `gap` between chosen-longer and chosen-shorter pairs.

    Args:
        by_length: `metrics.accuracy_by_length_preference` output.

    Example: acc_longer 0.9 (n 30), acc_shorter 0.6 (n 25) → gap 0.3 > 0.15 → flagged.
    """
    a, b = by_length["acc_longer"], by_length["acc_shorter"]
    if by_length["n_longer"] < min_n or by_length["n_shorter"] < min_n or not abs(a - b) > gap:
        return None
    favours = "longer" if a > b else "shorter"
    return Flag("length", f"accuracy is {_pct(a)} when the chosen response is the longer one but {_pct(b)} when it "
                          f"is the shorter one (gap > {_pct(gap)}): the model leans on length and favours "
                          f"{favours} responses.")


def overfitting_flag(train_accuracy: float, heldout_accuracy: float, gap: float = OVERFIT_GAP,
                     heldout: str = "held-out") -> Flag | None:
    """Flag train − held-out accuracy > `gap`. Example: 0.98 vs 0.70 → gap 0.28 → flagged; 0.80 vs 0.75 → not."""
    if train_accuracy - heldout_accuracy > gap:
        return Flag("overfitting", f"train accuracy {_pct(train_accuracy)} vs {heldout} {_pct(heldout_accuracy)} "
                                   f"(gap > {_pct(gap)}): the model memorised its training pairs; use fewer epochs, "
                                   "a lower learning rate, LoRA or more data.")
    return None


def calibration_flag(calibration: dict[str, Any], max_ece: float = ECE_MAX,
                     min_pairs: int = MIN_CALIBRATION_PAIRS) -> Flag | None:
    """Flag ECE > `max_ece` at the model's temperature; the best temperature on this data says which way it is off.

    Args:
        calibration: {"temperature", "fitted_temperature", "after": {"ece", "n_pairs", ...}} as in `summarize`.

    Example: T = 1, ECE 0.15 on 100 pairs, best T here 3.0 → over-confident → flagged.
    """
    after = calibration["after"]
    if after["n_pairs"] < min_pairs or not after["ece"] > max_ece:
        return None
    t, best = calibration["temperature"], calibration["fitted_temperature"]
    way = "over-confident" if best > t else "under-confident"
    return Flag("calibration", f"P(A preferred) is {way}: ECE {after['ece']:.3f} > {max_ece:g} at T = {t:.3g}, best "
                               f"T on this data {best:.3g}; run `rmkit calibrate` on a validation split.")


def swap_flag(consistency: float, minimum: float = SWAP_CONSISTENCY_MIN) -> Flag | None:
    """Flag swap consistency below `minimum`. Example: 0.9 → flagged; 1.0 → not."""
    if consistency < minimum:
        return Flag("position", f"only {_pct(consistency)} of preferences flip when A and B swap places "
                                f"(< {_pct(minimum)}): the model favours a position or ties; a pointwise reward model "
                                "only gets here through tied scores.")
    return None


def position_flags(position: dict[str, Any], gap: float = POSITION_GAP, skew: float = LABEL_POSITION_SKEW,
                   min_n: int = MIN_GROUP_N) -> list[Flag]:
    """Flags from the A/B rows: swap consistency, per-position accuracy gap, and labels skewed to one position.

    Args:
        position: {"n", "label_A_rate", "swap_consistency", "by_position": {"A": {"accuracy", "n"}, "B": ...}}.

    Example: n 100, label_A_rate 0.7 → |0.7 − 0.5| = 0.2 > 0.1 → a "position" flag about the labels.
    """
    flags = [f for f in [swap_flag(position["swap_consistency"])] if f]
    by = position["by_position"]
    if "A" in by and "B" in by and min(by["A"]["n"], by["B"]["n"]) >= min_n:
        a, b = by["A"]["accuracy"], by["B"]["accuracy"]
        if abs(a - b) > gap:
            flags.append(Flag("position", f"accuracy is {_pct(a)} where A was preferred but {_pct(b)} where B was "
                                          f"(gap > {_pct(gap)}); a pointwise model cannot see positions, so the "
                                          "labels of one position are likely noisier: look at those rows."))
    rate = position["label_A_rate"]
    if position["n"] >= min_n and abs(rate - 0.5) > skew:
        flags.append(Flag("position", f"the labels prefer A in {_pct(rate)} of {position['n']} rows: annotators may "
                                      "favour one position; randomise the order shown to them."))
    return flags


def rating_flag(rho: float, minimum: float = RATING_CORR_MIN) -> Flag | None:
    """Flag Spearman(score, human rating) below `minimum` (nan counts as below). Example: 0.1 → flagged."""
    if not (math.isfinite(rho) and rho >= minimum):
        return Flag("ratings", f"rank correlation of reward with the human ratings is {rho:.2f} (< {minimum:g}): "
                               "the rewards barely follow what people rated.")
    return None


def score_distribution_flags(scores, collapse_std: float = COLLAPSE_STD, extreme_abs: float = EXTREME_ABS
                             ) -> list[Flag]:
    """Flags about a reward distribution; an empty list means nothing looks wrong.

    Flags "non-finite" (NaN or inf scores), "collapsed" (std of the finite scores < `collapse_std`) and "extreme"
    (some |r| > `extreme_abs`). A large mean is not flagged: BT rewards are only defined up to a shift.

    Example: scores = [0.50, 0.51, 0.52] → std 0.00816 → [Flag("collapsed", "reward std 0.00816 < 0.05 — ...")].
    """
    scores = np.asarray(scores, dtype=float)  # (N,)
    flags = []
    finite = np.isfinite(scores)
    if not finite.all():
        flags.append(Flag("non-finite", f"{int((~finite).sum())} of {scores.size} rewards are NaN or inf — the model "
                                        "or its inputs are broken; check the training loss and the readout."))
    x = scores[finite]
    if x.size and x.std() < collapse_std:
        flags.append(Flag("collapsed", f"reward std {x.std():.3g} < {collapse_std:g} — the model gives every response "
                                       "nearly the same score."))
    frac = float(np.mean(np.abs(x) > extreme_abs)) if x.size else 0.0
    if frac > 0:
        flags.append(Flag("extreme", f"{100 * frac:.3g}% of rewards have |r| > {extreme_abs:g} — such rewards saturate "
                                     "σ(Δ), so those pairs give almost no training signal; consider centring rewards "
                                     "or a reward penalty."))
    return flags


def pair_flags(summary: dict[str, Any], train_accuracy: float | None = None) -> list[Flag]:
    """The flags of one preference data set read from its `evaluation.summarize` dict (keys read: accuracy,
    accuracy_ci95, length_baseline_accuracy, by_length, length_score_spearman, calibration, position); the score
    distribution's own flags come from `score_distribution_flags`.

    The length baseline used is the better of "pick the longer" and "pick the shorter" response.
    """
    by_length = summary["by_length"]
    n = summary["n_pairs"]
    best_baseline = max(summary["length_baseline_accuracy"], by_length["n_shorter"] / n)
    flags = [
        chance_flag(*summary["accuracy_ci95"]),
        length_baseline_flag(summary["accuracy"], best_baseline),
        length_correlation_flag(summary["length_score_spearman"]),
        length_split_flag(by_length),
        calibration_flag(summary["calibration"]),
        None if train_accuracy is None else overfitting_flag(train_accuracy, summary["accuracy"], heldout="this set"),
    ]
    if "position" in summary:
        flags += position_flags(summary["position"])
    return [f for f in flags if f]


def ratings_flags(summary: dict[str, Any]) -> list[Flag]:
    """The flags of one ratings data set read from its `evaluation.summarize_ratings` dict."""
    flags = [rating_flag(summary["spearman"]), length_correlation_flag(summary["length_score_spearman"])]
    return [f for f in flags if f]


def train_val_gap(rows: Sequence[dict[str, Any]], window: int = TRAIN_WINDOW) -> dict[str, float] | None:
    """Train vs validation accuracy from a run's metrics.jsonl rows; None without both kinds of row.

    Train accuracy is the mean over the last `window` train rows (measured on training batches as they were
    trained, dropout on, so it slightly understates the final train accuracy); validation accuracy is the last
    val row's.

    Example: train rows with accuracy 0.5, 0.9, 1.0 and window 2 → 0.95; last val 0.7 → gap 0.25.
    """
    train = [r for r in rows if r.get("split") == "train" and "accuracy" in r]
    val = [r for r in rows if r.get("split") == "val" and "accuracy" in r]
    if not train or not val:
        return None
    train_acc = float(np.mean([r["accuracy"] for r in train[-window:]]))
    val_acc = float(val[-1]["accuracy"])
    return {"train_accuracy": train_acc, "val_accuracy": val_acc, "gap": train_acc - val_acc,
            "train_step": int(train[-1]["step"]), "val_step": int(val[-1]["step"]),
            "val_heldout": bool(val[-1].get("heldout", True))}  # False: a run with data.val_fraction=0


def training_flag(gap: dict[str, Any]) -> Flag | None:
    """The overfitting flag from `train_val_gap`, or, when the run's "validation" rows were measured on training
    pairs (data.val_fraction=0), a flag saying that the curves cannot show overfitting at all."""
    if not gap.get("val_heldout", True):
        return Flag("no_heldout", f"the run's validation rows (accuracy {_pct(gap['val_accuracy'])}) were measured on "
                                  "training pairs (data.val_fraction=0), so they cannot show overfitting; hold out "
                                  "validation pairs, or compare with --train-data on a held-out set.")
    return overfitting_flag(gap["train_accuracy"], gap["val_accuracy"], heldout="validation")


def length_difference_buckets(chosen_len, rejected_len) -> list[str]:
    """Bucket each pair by d = (len_c − len_r) / max(len_c, len_r, 1), the chosen response's relative length.

    d < −0.5 "much shorter"; −0.5 ≤ d < −0.1 "shorter"; −0.1 ≤ d ≤ 0.1 "similar"; 0.1 < d ≤ 0.5 "longer";
    d > 0.5 "much longer".

    Example: (10, 40) → d = −0.75 → "much shorter"; (100, 95) → 0.05 → "similar"; (30, 20) → 1/3 → "longer".
    """
    c = np.asarray(chosen_len, dtype=float)
    r = np.asarray(rejected_len, dtype=float)
    d = (c - r) / np.maximum(np.maximum(c, r), 1.0)
    idx = np.select([d < -0.5, d < -0.1, d <= 0.1, d <= 0.5], [0, 1, 2, 3], default=4)
    return [LENGTH_BUCKETS[i] for i in idx.tolist()]
