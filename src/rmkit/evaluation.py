"""evaluate(scorer, pairs) -> a JSON-ready report: accuracy with its 95% interval, margins, score statistics,
per-subset accuracy, length bias, calibration before and after the model's temperature, position checks and
plain-language flags (rmkit.diagnostics); ratings files get Spearman and Pearson against the human scores.
evaluate_files is `rmkit eval`; compare_models is `rmkit eval --compare`. Knows scores and metrics; knows nothing
of training, except that a model directory inside a run has the run's metrics.jsonl beside it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmkit import diagnostics, metrics
from rmkit.data import read_pairs, read_ratings, read_rows
from rmkit.diagnostics import Flag
from rmkit.protocols import text_chars
from rmkit.report import write_report
from rmkit.rows import write_json as write_json  # re-exported: callers import it from here

SWAP_NOTE = ("a pointwise reward model scores each response on its own, so swapping A and B negates Δ exactly: "
             "swap consistency is the share of pairs that are not tied; a position bias can only show in the data, "
             "as accuracy by the preferred position and the labels' share of A.")


response_length = text_chars
"""Characters of a response (text, or the contents of its messages): tokenizer-independent, for bias checks."""


def position_summary(delta: np.ndarray, positions: Sequence[str | None]) -> dict[str, Any] | None:
    """Position checks over the A/B rows (those with a chosen_position); None when there are none.

    Example: Δ = [1, −1, 2], positions = ["A", "B", None] → n 2, label_A_rate 0.5, by_position A: 1.0, B: 0.0.
    """
    mask = np.array([p is not None for p in positions])
    if not mask.any():
        return None
    pos = [p for p in positions if p is not None]
    d = delta[mask]
    delta_ab = np.where(np.array(pos) == "A", d, -d)  # r_A − r_B
    return {"n": int(mask.sum()), "label_A_rate": pos.count("A") / len(pos),
            "by_position": metrics.accuracy_by_bucket(d, pos),
            "swap_consistency": metrics.swap_consistency(delta_ab, -delta_ab),  # pointwise: Δ_BA = −Δ_AB
            "swap_note": SWAP_NOTE}


def source_summary(delta: np.ndarray, chosen_len: np.ndarray, rejected_len: np.ndarray, pairs: Sequence[Any]
                   ) -> dict[str, dict[str, Any]] | None:
    """Accuracy with its 95% interval and the length-only baseline per source file (from each pair's origin
    "path:line"), named as `dataset_names` names files; None when the pairs come from fewer than two files."""
    files = [str(getattr(p, "origin", "")).split(",")[0].rsplit(":", 1)[0] for p in pairs]  # ranked: "a:1,a:2"
    unique = list(dict.fromkeys(files))
    if len(unique) < 2:
        return None
    out = {}
    for name, path in zip(dataset_names(unique), unique, strict=True):
        m = np.array([f == path for f in files])
        correct, n = int((delta[m] > 0).sum()), int(m.sum())
        out[name] = {"path": path, "n_pairs": n, "accuracy": correct / n,
                     "accuracy_ci95": list(metrics.wilson_interval(correct, n)),
                     "length_baseline_accuracy": metrics.length_baseline_accuracy(chosen_len[m], rejected_len[m], "longer")}
    return out


def summarize(chosen: np.ndarray, rejected: np.ndarray, pairs: Sequence[Any], temperature: float = 1.0,
              train_accuracy: float | None = None) -> dict[str, Any]:
    """The report of one preference data set from its pairs' rewards (a pure function of arrays and pair metadata).

    Args:
        chosen, rejected: (N,) rewards of the pairs.
        pairs: the N PreferencePairs (lengths, subsets and A/B positions are read from them).
        temperature: the model's calibration temperature (card.temperature); calibration is shown at T = 1
            ("before") and at this T ("after").
        train_accuracy: accuracy on the training data, when known, for the overfitting flag.
    """
    chosen, rejected = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    n = len(chosen)
    delta = chosen - rejected
    correct = int((delta > 0).sum())
    low, high = metrics.wilson_interval(correct, n)
    chosen_len = np.array([response_length(p.chosen) for p in pairs])
    rejected_len = np.array([response_length(p.rejected) for p in pairs])
    scores = np.concatenate([chosen, rejected])
    calibration = {"temperature": float(temperature), "fitted_temperature": metrics.fit_temperature(delta),
                   "before": metrics.calibration_report(delta, 1.0),
                   "after": metrics.calibration_report(delta, temperature)}
    summary = {
        "kind": "pairs",
        "n_pairs": n,
        "accuracy": correct / n,
        "accuracy_ci95": [low, high],
        "margin": metrics.margin_stats(chosen, rejected),
        "chosen_scores": metrics.score_stats(chosen),
        "rejected_scores": metrics.score_stats(rejected),
        "length_baseline_accuracy": metrics.length_baseline_accuracy(chosen_len, rejected_len, "longer"),
        "by_length": metrics.accuracy_by_length_preference(delta, chosen_len, rejected_len),
        "by_length_difference": metrics.accuracy_by_bucket(
            delta, diagnostics.length_difference_buckets(chosen_len, rejected_len)),
        "length_score_spearman": metrics.length_score_correlation(scores, np.concatenate([chosen_len, rejected_len])),
        "calibration": calibration,
        "subsets": metrics.accuracy_by_bucket(delta, [p.subset or "all" for p in pairs]),
    }
    sources = source_summary(delta, chosen_len, rejected_len, pairs)
    if sources is not None:
        summary["by_source"] = sources
    position = position_summary(delta, [getattr(p, "chosen_position", None) for p in pairs])
    if position is not None:
        summary["position"] = position
    flags = [*diagnostics.pair_flags(summary, train_accuracy), *diagnostics.score_distribution_flags(scores)]
    summary["flags"] = [f.to_json() for f in flags]
    return summary


def summarize_ratings(scores: np.ndarray, rated: Sequence[Any]) -> dict[str, Any]:
    """The report of one scalar-ratings data set: Spearman and Pearson of reward against the human scores.

    Args:
        scores: (N,) rewards of the N RatedResponses in `rated`.
    """
    scores = np.asarray(scores, dtype=float)
    ratings = np.array([r.score for r in rated], dtype=float)
    lengths = np.array([response_length(r.response) for r in rated])
    keys = np.array([r.subset or "all" for r in rated], dtype=object)
    subsets = {}
    for key in sorted(set(keys.tolist())):
        m = keys == key
        subsets[key] = {"n": int(m.sum()), "spearman": metrics.spearman(scores[m], ratings[m]),
                        "pearson": metrics.pearson(scores[m], ratings[m])}
    summary = {"kind": "ratings", "n_responses": len(scores), "spearman": metrics.spearman(scores, ratings),
               "pearson": metrics.pearson(scores, ratings), "scores": metrics.score_stats(scores),
               "ratings": metrics.score_stats(ratings),
               "length_score_spearman": metrics.length_score_correlation(scores, lengths), "subsets": subsets}
    flags = [*diagnostics.ratings_flags(summary), *diagnostics.score_distribution_flags(scores)]
    summary["flags"] = [f.to_json() for f in flags]
    return summary


def evaluate(scorer: Any, pairs: Sequence[Any]) -> dict[str, Any]:
    """Score every pair with `scorer` (a Scorer) and summarise; calibration "after" uses scorer.card.temperature.

    The length-only baseline always picks the longer response: a model that cannot beat it has learned nothing
    a character count does not already know.
    """
    if not pairs:
        raise ValueError("no pairs to evaluate")
    chosen, rejected = scorer.score_pairs(pairs)
    return summarize(np.asarray(chosen), np.asarray(rejected), pairs, scorer.card.temperature)


def format_summary(name: str, report: dict[str, Any]) -> str:
    """One line a person reads: accuracy, its interval, and the length-only baseline next to it (or, for ratings,
    the correlations), then the number of flags."""
    if report.get("kind") == "ratings":
        line = (f"{name}: Spearman {report['spearman']:.3f} | Pearson {report['pearson']:.3f} with human ratings "
                f"(n={report['n_responses']})")
    else:
        low, high = report["accuracy_ci95"]
        line = (f"{name}: accuracy {report['accuracy']:.3f} (95% CI {low:.3f}–{high:.3f}, n={report['n_pairs']}) | "
                f"length-only baseline {report['length_baseline_accuracy']:.3f} | "
                f"mean margin {report['margin']['mean']:.3f}")
    flags = [Flag.from_json(f) for f in report.get("flags", [])]
    return line + (f" | {len(flags)} flag(s): {', '.join(sorted({f.kind for f in flags}))}" if flags else "")


def dataset_names(paths: Sequence[str | Path]) -> list[str]:
    """A name per file: the parent folder for pairs.jsonl(.gz), else the stem; repeats get -2, -3, ...

    Example: ["data/hh/pairs.jsonl", "x/test.jsonl", "y/test.jsonl.gz"] → ["hh", "test", "test-2"].
    """
    names: list[str] = []
    for path in paths:
        path = Path(path)
        stem = Path(path.stem).stem if path.suffix.lower() == ".gz" else path.stem
        base = path.parent.name if stem == "pairs" and path.parent.name else stem
        name, i = base, 1
        while name in names:
            i += 1
            name = f"{base}-{i}"
        names.append(name)
    return names


def is_ratings_file(path: str | Path) -> bool:
    """True when the first row is a scalar rating (prompt + response + score, no pair keys)."""
    for _, row in read_rows(path):
        return "response" in row and not {"chosen", "rejected", "response_A", "response_B", "completions"} & row.keys()
    return False


def training_log(model_dir: str | Path) -> list[dict[str, Any]] | None:
    """The rows of metrics.jsonl when `model_dir` is run/model of an rmkit run (config.yaml beside it); else None."""
    run = Path(model_dir).resolve().parent
    path = run / "metrics.jsonl"
    if not (path.exists() and (run / "config.yaml").exists()):
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluate_files(model_dir: str | Path, paths: Sequence[str | Path], report_dir: str | Path | None = None,
                   train_data: str | Path | None = None, format: str = "auto", options: Any = None) -> dict[str, Any]:
    """Load the model once and evaluate each file (`rmkit eval`); data sets are keyed by `dataset_names`.

    Args:
        model_dir: an rmkit model directory; when it sits in a run, the run's training curves are read too.
        paths: preference files (any format `read_pairs` reads) or scalar-ratings files (detected from the first
            row, or all of them with format="ratings").
        report_dir: also write report.json, report.html and the PNG plots here.
        train_data: a preference file of training pairs: its accuracy is compared with each set's (overfitting).
        format: "auto", or a `rmkit.data.Format` applied to every file.
        options: a `rmkit.scoring.LoadOptions` (device, dtype, tokenizer, batching); None: its defaults.

    Returns:
        {"model_dir", "temperature", "datasets": {name: summary}, "training": train_val_gap or None, "flags",
        "train_data" (when given)}; "flags" are the model-level ones (from the training curves).
    """
    from rmkit.scoring import LoadOptions, Scorer

    scorer = Scorer.from_options(model_dir, options or LoadOptions(), progress=True)
    temperature = scorer.card.temperature
    report: dict[str, Any] = {"model_dir": str(model_dir), "temperature": temperature, "datasets": {}}
    train_accuracy = None
    if train_data is not None:
        pairs = read_pairs(train_data, format=format)
        chosen, rejected = scorer.score_pairs(pairs)
        train_accuracy = metrics.pairwise_accuracy(chosen, rejected)
        report["train_data"] = {"path": str(train_data), "n_pairs": len(pairs), "accuracy": train_accuracy}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for name, path in zip(dataset_names(paths), paths, strict=True):
        if format == "ratings" or (format == "auto" and is_ratings_file(path)):
            rated = read_ratings(path)
            scores = np.asarray(scorer.score([r.prompt for r in rated], [r.response for r in rated]))
            report["datasets"][name] = summarize_ratings(scores, rated)
            arrays[name] = {"scores": scores, "ratings": np.array([r.score for r in rated]),
                            "lengths": np.array([response_length(r.response) for r in rated])}
        else:
            pairs = read_pairs(path, format=format)
            chosen, rejected = scorer.score_pairs(pairs)
            report["datasets"][name] = summarize(chosen, rejected, pairs, temperature, train_accuracy)
            arrays[name] = {"chosen": np.asarray(chosen), "rejected": np.asarray(rejected),
                            "chosen_len": np.array([response_length(p.chosen) for p in pairs]),
                            "rejected_len": np.array([response_length(p.rejected) for p in pairs])}
    rows = training_log(model_dir)
    report["training"] = diagnostics.train_val_gap(rows) if rows else None
    gap = report["training"]
    flag = gap and diagnostics.training_flag(gap)
    report["flags"] = [flag.to_json()] if flag else []
    if report_dir is not None:
        write_report(report_dir, report, arrays, rows)
    return report


def compare_models(model_a: str | Path, model_b: str | Path, paths: Sequence[str | Path], n_boot: int = 2000,
                   seed: int = 0, format: str = "auto", options: Any = None) -> dict[str, Any]:
    """Accuracy of two models on the same pairs: the difference with a paired bootstrap 95% interval and McNemar.

    Returns:
        {"model_a", "model_b", "datasets": {name: {"n_pairs", "accuracy_a", "accuracy_b", "bootstrap",
        "mcnemar"}}}, bootstrap as `metrics.paired_bootstrap_accuracy_diff` (diff = a − b).
    """
    from rmkit.scoring import LoadOptions, Scorer

    scorers = [Scorer.from_options(m, options or LoadOptions(), progress=True) for m in (model_a, model_b)]
    out: dict[str, Any] = {"model_a": str(model_a), "model_b": str(model_b), "datasets": {}}
    for name, path in zip(dataset_names(paths), paths, strict=True):
        pairs = read_pairs(path, format=format)
        correct_a, correct_b = (np.subtract(*s.score_pairs(pairs)) > 0 for s in scorers)
        out["datasets"][name] = {
            "n_pairs": len(pairs), "accuracy_a": float(correct_a.mean()), "accuracy_b": float(correct_b.mean()),
            "bootstrap": metrics.paired_bootstrap_accuracy_diff(correct_a, correct_b, n_boot, seed),
            "mcnemar": metrics.mcnemar_test(correct_a, correct_b)}
    return out


def format_comparison(name: str, result: dict[str, Any]) -> str:
    """One line: both accuracies, the difference with its interval, and McNemar's p-value."""
    boot, mc = result["bootstrap"], result["mcnemar"]
    return (f"{name}: A {result['accuracy_a']:.3f} vs B {result['accuracy_b']:.3f} (n={result['n_pairs']}) | "
            f"A − B {boot['diff']:+.3f} (95% CI {boot['ci_low']:+.3f} to {boot['ci_high']:+.3f}) | "
            f"McNemar p = {mc['p_value']:.3g} ({mc['b']} vs {mc['c']} discordant, {mc['method']})")


def format_by_source(name: str, report: dict[str, Any]) -> list[str]:
    """One line per source of a pairs report: accuracy, interval and the length-only baseline beside it."""
    lines = []
    for source, r in report.get("by_source", {}).items():
        low, high = r["accuracy_ci95"]
        lines.append(f"  {name} {source}: accuracy {r['accuracy']:.3f} (95% CI {low:.3f}–{high:.3f}, n={r['n_pairs']}) | "
                     f"length-only baseline {r['length_baseline_accuracy']:.3f}")
    return lines


def pair_probabilities(model_dir: str | Path, path: str | Path) -> list[dict[str, Any]]:
    """P(chosen preferred) = σ(Δ/T) for every pair of a file (`rmkit eval --show-pairs`), with its subset and prompt:
    the sanity panel's view, one pair at a time."""
    from rmkit.data import read_pairs
    from rmkit.scoring import Scorer

    scorer = Scorer.load(model_dir)
    pairs = read_pairs(path)
    chosen, rejected = scorer.score_pairs(pairs)
    probs = metrics.bt_probability(np.asarray(chosen) - np.asarray(rejected), scorer.card.temperature)
    return [{"subset": p.subset, "prompt": p.prompt if isinstance(p.prompt, str) else json.dumps(p.prompt),
             "p_chosen": float(q)} for p, q in zip(pairs, probs, strict=True)]
