"""Reward-model metrics: accuracy, calibration, correlations and paired tests on arrays.

Pure: numpy arrays in, floats, dicts and lists out. Knows nothing about models, tokenizers, configs or files.
Throughout, `chosen` and `rejected` are 1-D reward arrays for the same pairs and Δ = chosen − rejected; a pair counts
as correct only when Δ > 0 strictly (ties are wrong), so a constant reward model scores 0, not 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

Z_95 = 1.959964
"""Standard-normal 97.5% quantile: the z of a two-sided 95% interval."""
T_BOUNDS = (0.05, 20.0)
"""Search range of `fit_temperature`."""
EXACT_MCNEMAR_BELOW = 25
"""`mcnemar_test` uses the exact binomial test when b + c is below this; the χ² approximation is poor there."""


def _vector(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}; pass one value per pair or response.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one value.")
    return arr


def _pair(a, b, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vector(a, name_a), _vector(b, name_b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has {a.size} values but {name_b} has {b.size}; they must describe the same items.")
    return a, b


def pairwise_accuracy(chosen, rejected) -> float:
    """Fraction of pairs with chosen > rejected, strictly (ties count as wrong).

    Args:
        chosen, rejected: (N,) rewards of the same pairs.

    Example: chosen = [3, 0, 1], rejected = [1, 1, 1] → Δ = [2, −1, 0] → 1/3.
    """
    chosen, rejected = _pair(chosen, rejected, "chosen", "rejected")
    return float(np.mean(chosen > rejected))


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); sane at 0/n and n/n, unlike p ± z·se.

    Example: 8 of 10 → p = 0.8, z²/n = 0.3842 → centre 0.9921/1.3842 = 0.7167, half-width 0.2264 → (0.490, 0.943).
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got successes={successes}, n={n}.")
    p, z2 = successes / n, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def margin_stats(chosen, rejected) -> dict[str, float]:
    """Mean, population std (ddof=0) and median of Δ = chosen − rejected.

    Example: Δ = [2, −1, 0] → mean 1/3, std √(14/9) = 1.247, median 0.
    """
    chosen, rejected = _pair(chosen, rejected, "chosen", "rejected")
    delta = chosen - rejected
    return {"mean": float(delta.mean()), "std": float(delta.std()), "median": float(np.median(delta))}


def score_stats(x) -> dict[str, float]:
    """Mean, population std, min, max and 5th/50th/95th percentiles (linear interpolation) of a score array.

    Example: x = [0, 1, 2, 3, 4] → mean 2, std √2, min 0, max 4, p05 0.2, p50 2, p95 3.8.
    """
    x = _vector(x, "x")
    p05, p50, p95 = np.percentile(x, [5, 50, 95])
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max()),
            "p05": float(p05), "p50": float(p50), "p95": float(p95)}


def length_baseline_accuracy(chosen_len, rejected_len, prefer: Literal["longer", "shorter"] = "longer") -> float:
    """Accuracy of the no-model rule "pick the longer (or shorter) response"; equal lengths count as wrong.

    Example: chosen_len = [10, 5, 7], rejected_len = [4, 9, 7] → longer is right on pair 0 only → 1/3;
    shorter is right on pair 1 only → 1/3.
    """
    if prefer not in ("longer", "shorter"):
        raise ValueError(f"prefer must be 'longer' or 'shorter', got {prefer!r}.")
    chosen_len, rejected_len = _pair(chosen_len, rejected_len, "chosen_len", "rejected_len")
    sign = 1.0 if prefer == "longer" else -1.0
    return pairwise_accuracy(sign * chosen_len, sign * rejected_len)


def accuracy_by_length_preference(delta, chosen_len, rejected_len) -> dict[str, float]:
    """Reward-model accuracy split by whether the chosen response is the longer or the shorter one.

    A model that leans on length is accurate where chosen is longer and poor where it is shorter.

    Returns:
        {"acc_longer", "n_longer", "acc_shorter", "n_shorter", "n_equal"}; an accuracy over no pairs is nan.

    Example: Δ = [1, −1, 2, 3], chosen_len = [9, 9, 2, 5], rejected_len = [1, 1, 8, 5] → longer: [1, −1] → 0.5
    (n 2); shorter: [2] → 1.0 (n 1); n_equal 1.
    """
    delta = _vector(delta, "delta")
    chosen_len, rejected_len = _pair(chosen_len, rejected_len, "chosen_len", "rejected_len")
    if delta.shape != chosen_len.shape:
        raise ValueError(f"delta has {delta.size} values but the lengths have {chosen_len.size}.")
    longer, shorter = chosen_len > rejected_len, chosen_len < rejected_len
    out: dict[str, float] = {}
    for name, mask in (("longer", longer), ("shorter", shorter)):
        out[f"acc_{name}"] = float(np.mean(delta[mask] > 0)) if mask.any() else math.nan
        out[f"n_{name}"] = int(mask.sum())
    out["n_equal"] = int(delta.size - longer.sum() - shorter.sum())
    return out


def accuracy_by_bucket(delta, keys: Sequence[str], z: float = Z_95) -> dict[str, dict[str, float]]:
    """Accuracy (Δ > 0) per subset, with its size and Wilson interval, keys in sorted order.

    Example: Δ = [1, −1, 2], keys = ["a", "a", "b"] → {"a": {"accuracy": 0.5, "n": 2, ...}, "b": {"accuracy": 1.0,
    "n": 1, ...}}, each with "ci_low" and "ci_high".
    """
    delta = _vector(delta, "delta")
    keys = np.asarray(keys, dtype=object)
    if keys.shape != delta.shape:
        raise ValueError(f"delta has {delta.size} values but keys has {keys.size}; give one key per pair.")
    out = {}
    for key in sorted(set(keys.tolist())):
        correct = delta[keys == key] > 0
        k, n = int(correct.sum()), int(correct.size)
        low, high = wilson_interval(k, n, z)
        out[str(key)] = {"accuracy": k / n, "n": n, "ci_low": low, "ci_high": high}
    return out


def bt_probability(delta, temperature: float = 1.0) -> np.ndarray:
    """Bradley–Terry P(chosen preferred) = σ(Δ / T), finite and in [0, 1] for any |Δ|.

    Example: Δ = [0, ln 3, −1e4], T = 1 → [0.5, 0.75, ≈0].
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    x = np.asarray(delta, dtype=float) / temperature
    e = np.exp(-np.abs(x))  # exp of a non-positive number never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _symmetric_nll(delta: np.ndarray, temperature: float) -> float:
    return float(np.mean(np.logaddexp(0.0, -delta / temperature)))  # −log σ(x) = softplus(−x), overflow-free


def fit_temperature(delta, bounds: tuple[float, float] = T_BOUNDS, tol: float = 1e-6) -> float:
    """The T that minimises the BT negative log-likelihood mean(−log σ(Δ / T)) of the observed preferences.

    Fitting on the symmetric set (each pair both ways: σ(Δ/T) with label 1 and σ(−Δ/T) with label 0) gives the same
    objective, since −log(1 − σ(−x)) = −log σ(x). It is convex in 1/T, hence unimodal in log T, so a golden-section
    search over log T in `bounds` finds it. When every Δ > 0 the optimum is T → 0 and the lower bound is returned;
    when every Δ = 0 the objective is flat (ln 2) and T = 1 is returned.

    Example: Δ = [2, 2, 2, −2] → mean(softplus(−2/T)·3 + softplus(2/T))/4 is smallest where σ(2/T) = 3/4, i.e.
    T = 2 / ln 3 = 1.820.
    """
    delta = _vector(delta, "delta")
    if not np.any(delta):
        return 1.0
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    invphi = (math.sqrt(5) - 1) / 2
    a, b = hi - invphi * (hi - lo), lo + invphi * (hi - lo)
    fa, fb = _symmetric_nll(delta, math.exp(a)), _symmetric_nll(delta, math.exp(b))
    while hi - lo > tol:
        if fa <= fb:  # minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - invphi * (hi - lo)
            fa = _symmetric_nll(delta, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + invphi * (hi - lo)
            fb = _symmetric_nll(delta, math.exp(b))
    return math.exp((lo + hi) / 2)


def _probs_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = _pair(probs, labels, "probs", "labels")
    if np.any((probs < 0) | (probs > 1)) or np.isnan(probs).any():
        raise ValueError("probs must lie in [0, 1]; pass probabilities, not logits (see bt_probability).")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 or 1.")
    return probs, labels


def reliability_bins(probs, labels, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-width bins on [0, 1] for a reliability diagram; empty bins are left out.

    A probability p goes to bin min(⌊p·n_bins⌋, n_bins − 1), so p = 1 lands in the last bin.

    Returns:
        One dict per non-empty bin: "lower", "upper", "confidence" (mean p), "accuracy" (mean label), "count".

    Example: probs = [0.1, 0.3, 0.35], labels = [0, 1, 0], n_bins = 2 → one bin [0, 0.5): confidence 0.25,
    accuracy 1/3, count 3.
    """
    probs, labels = _probs_labels(probs, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    idx = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    bins = []
    for i in np.unique(idx).tolist():  # Python ints, so the dicts hold plain floats
        m = idx == i
        bins.append({"lower": i / n_bins, "upper": (i + 1) / n_bins, "confidence": float(probs[m].mean()),
                     "accuracy": float(labels[m].mean()), "count": int(m.sum())})
    return bins


def expected_calibration_error(probs, labels, n_bins: int = 10) -> float:
    """ECE = Σ_bins (count / N) · |accuracy − confidence| over equal-width bins (see `reliability_bins`).

    Example: probs = [0.1, 0.3, 0.35], labels = [0, 1, 0], n_bins = 2 → one bin, |1/3 − 0.25| = 0.0833.
    """
    bins = reliability_bins(probs, labels, n_bins)
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins))


def brier_score(probs, labels) -> float:
    """Mean squared error mean((p − y)²) of probabilities against 0/1 labels.

    Example: probs = [0.9, 0.2], labels = [1, 1] → (0.01 + 0.64) / 2 = 0.325.
    """
    probs, labels = _probs_labels(probs, labels)
    return float(np.mean((probs - labels) ** 2))


def log_loss(probs, labels, eps: float = 1e-12) -> float:
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 − eps] so it stays finite.

    Example: probs = [0.75, 0.5], labels = [1, 0] → (ln(4/3) + ln 2) / 2 = 0.4904.
    """
    probs, labels = _probs_labels(probs, labels)
    p = np.clip(probs, eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def calibration_report(delta, temperature: float = 1.0, n_bins: int = 10) -> dict:
    """Calibration of P(chosen preferred) = σ(Δ / T), on the symmetric set (each pair in both orders).

    Every pair is scored twice, as (p, label 1) and (1 − p, label 0), so the set has both labels and the bins are
    symmetric about 0.5; otherwise every label would be 1 and ECE would reward pushing every p to 1.

    Returns:
        {"temperature", "n_pairs", "ece", "brier", "log_loss", "bins"}, bins as in `reliability_bins`.

    Example: Δ = [ln 3], T = 1 → p = 0.75; set {(0.75, 1), (0.25, 0)} → brier 0.0625, log loss ln(4/3) = 0.2877,
    ECE with 10 bins: (|1 − 0.75| + |0 − 0.25|) / 2 = 0.25.
    """
    delta = _vector(delta, "delta")
    p = bt_probability(delta, temperature)
    probs = np.concatenate([p, bt_probability(-delta, temperature)])  # (2N,): 1 − p computed without cancellation
    labels = np.concatenate([np.ones_like(p), np.zeros_like(p)])  # (2N,)
    return {"temperature": float(temperature), "n_pairs": int(delta.size),
            "ece": expected_calibration_error(probs, labels, n_bins), "brier": brier_score(probs, labels),
            "log_loss": log_loss(probs, labels), "bins": reliability_bins(probs, labels, n_bins)}


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])  # first index of each run of equal values
    ends = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # mean of 1-based ranks start+1 … end
    return ranks


def pearson(x, y) -> float:
    """Pearson correlation; nan when either side is constant (the correlation is undefined there).

    Example: x = [1, 2, 3], y = [1, 2, 5] → deviations [−1, 0, 1] and [−5/3, −2/3, 7/3] → 4 / √(2 · 26/3) = 0.9608.
    """
    x, y = _pair(x, y, "x", "y")
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / denom if denom > 0 else math.nan


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson of the ranks, tied values sharing their average rank; nan if constant.

    Example: x = [1, 2, 2, 3], y = [1, 3, 2, 4] → ranks [1, 2.5, 2.5, 4] and [1, 3, 2, 4] → 4.5 / √(4.5 · 5) = 0.9487.
    """
    x, y = _pair(x, y, "x", "y")
    return pearson(_average_ranks(x), _average_ranks(y))


def length_score_correlation(scores, lengths) -> float:
    """Spearman correlation between rewards and response lengths: near 1 means the model mostly rewards length.

    Example: scores = [0.1, 0.5, 0.9], lengths = [10, 20, 30] → 1.0.
    """
    return spearman(scores, lengths)


def _correct_pair(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _pair(correct_a, correct_b, "correct_a", "correct_b")
    return a.astype(bool), b.astype(bool)


def paired_bootstrap_accuracy_diff(correct_a, correct_b, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """acc_a − acc_b with a 95% percentile bootstrap interval, resampling pairs (the same indices for both models).

    A resampled difference depends only on how many drawn pairs have a right and b wrong (+1) or the reverse (−1),
    so we draw those counts from a multinomial: the same distribution as index resampling, O(n_boot) memory.

    Returns:
        {"diff", "ci_low", "ci_high", "n", "n_boot"}.

    Example: correct_a = [1, 1, 1, 0], correct_b = [1, 0, 0, 0] → diff 3/4 − 1/4 = 0.5.
    """
    a, b = _correct_pair(correct_a, correct_b)
    n = a.size
    d = a.astype(int) - b.astype(int)  # (N,) in {−1, 0, 1}
    p = np.array([np.mean(d == 1), np.mean(d == -1), np.mean(d == 0)])
    counts = np.random.default_rng(seed).multinomial(n, p, size=n_boot)  # (n_boot, 3)
    diffs = (counts[:, 0] - counts[:, 1]) / n
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"diff": float(d.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(n), "n_boot": int(n_boot)}


def mcnemar_test(correct_a, correct_b) -> dict[str, float]:
    """McNemar's test that models a and b have equal accuracy on the same pairs.

    b = pairs a gets right and b wrong, c = the reverse. Statistic (max(|b − c| − 1, 0))² / (b + c), with continuity
    correction; p-value from χ² with 1 dof, p = erfc(√(stat / 2)), or the exact two-sided binomial test
    p = min(1, 2 · Σ_{k ≤ min(b, c)} C(b + c, k) / 2^(b + c)) when b + c < 25. b + c = 0 gives p = 1.

    Returns:
        {"b", "c", "statistic", "p_value", "method"}, method "exact" or "chi2".

    Example: b = 1, c = 5 → exact: 2 · (1 + 6) / 64 = 0.2188.
    """
    a, bb = _correct_pair(correct_a, correct_b)
    b, c = int(np.sum(a & ~bb)), int(np.sum(~a & bb))
    n = b + c
    stat = max(abs(b - c) - 1, 0) ** 2 / n if n else 0.0
    if n == 0:
        p, method = 1.0, "exact"
    elif n < EXACT_MCNEMAR_BELOW:
        p, method = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n), "exact"
    else:
        p, method = math.erfc(math.sqrt(stat / 2)), "chi2"
    return {"b": b, "c": c, "statistic": float(stat), "p_value": float(p), "method": method}


def swap_consistency(delta_ab, delta_ba) -> float:
    """Fraction of items whose preference flips when the two responses swap places: sign(Δ_ab) = −sign(Δ_ba) ≠ 0.

    A pairwise judge that prefers whichever response comes first scores 0; a pointwise reward model scores 1
    unless it ties.

    Example: Δ_ab = [1, 2, 0, −1], Δ_ba = [−1, 3, 0, 2] → items 0 and 3 flip → 0.5.
    """
    ab, ba = _pair(delta_ab, delta_ba, "delta_ab", "delta_ba")
    return float(np.mean((np.sign(ab) == -np.sign(ba)) & (ab != 0)))
