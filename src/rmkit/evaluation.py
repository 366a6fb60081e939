"""evaluate(scorer, pairs) -> a JSON-ready report: accuracy with its 95% interval, margins, score statistics,
per-subset accuracy and the length-only baseline. Knows scores and metrics; knows nothing of training."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmkit import metrics


def response_length(text: Any) -> int:
    """Characters of a response (text, or the contents of its messages): tokenizer-independent, for bias checks."""
    return len(text) if isinstance(text, str) else sum(len(str(m.get("content", ""))) for m in text)


def summarize(chosen: np.ndarray, rejected: np.ndarray, pairs: Sequence[Any]) -> dict[str, Any]:
    """The report of one data set from its pairs' rewards (a pure function of arrays and pair metadata)."""
    n = len(chosen)
    delta = chosen - rejected
    correct = int((delta > 0).sum())
    low, high = metrics.wilson_interval(correct, n)
    chosen_len = np.array([response_length(p.chosen) for p in pairs])
    rejected_len = np.array([response_length(p.rejected) for p in pairs])
    return {
        "n_pairs": n,
        "accuracy": correct / n,
        "accuracy_ci95": [low, high],
        "margin": metrics.margin_stats(chosen, rejected),
        "chosen_scores": metrics.score_stats(chosen),
        "rejected_scores": metrics.score_stats(rejected),
        "length_baseline_accuracy": metrics.length_baseline_accuracy(chosen_len, rejected_len, "longer"),
        "by_length": metrics.accuracy_by_length_preference(delta, chosen_len, rejected_len),
        "subsets": metrics.accuracy_by_bucket(delta, [p.subset or "all" for p in pairs]),
    }


def evaluate(scorer: Any, pairs: Sequence[Any]) -> dict[str, Any]:
    """Score every pair with `scorer` (a Scorer) and summarise.

    The length-only baseline always picks the longer response: a model that cannot beat it has learned nothing
    a character count does not already know.
    """
    if not pairs:
        raise ValueError("no pairs to evaluate")
    chosen, rejected = scorer.score_pairs(pairs)
    return summarize(np.asarray(chosen), np.asarray(rejected), pairs)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically (temp file + rename): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def format_summary(name: str, report: dict[str, Any]) -> str:
    """One line a person reads: accuracy, its interval, and the length-only baseline next to it."""
    low, high = report["accuracy_ci95"]
    return (f"{name}: accuracy {report['accuracy']:.3f} (95% CI {low:.3f}–{high:.3f}, n={report['n_pairs']}) | "
            f"length-only baseline {report['length_baseline_accuracy']:.3f} | "
            f"mean margin {report['margin']['mean']:.3f}")


def evaluate_files(model_dir: str | Path, paths: Sequence[str | Path]) -> dict[str, Any]:
    """Load the model once and evaluate each preference file; the report keys data sets by file name."""
    from rmkit.data import read_pairs
    from rmkit.scoring import Scorer

    scorer = Scorer.load(model_dir, progress=True)
    datasets = {}
    for path in paths:
        name = Path(path).parent.name if Path(path).stem == "pairs" else Path(path).stem
        datasets[name] = evaluate(scorer, read_pairs(path))
    return {"model_dir": str(model_dir), "datasets": datasets}
