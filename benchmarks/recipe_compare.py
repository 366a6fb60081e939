"""Paired comparison of recipe-search runs on the same validation pairs: which differences are beyond noise.

    python benchmarks/recipe_compare.py BASELINE NAME [NAME ...]

Two recipes' Wilson intervals overlap for most differences that matter, because each interval carries the noise of
which pairs happened to be drawn. Scored on the *same* pairs, most of that noise is shared, so this script compares
runs pair by pair instead: every run's saved model (runs/recipe_search/NAME/model) scores the whole validation split
of each vendored source (margins cached in that run's folder as val_margins.json), and each NAME's accuracy minus
BASELINE's gets a paired bootstrap 95% interval (10,000 resamples of the pairs, seed 0), per source and for the mean
over the three sources (each source resampled on its own). An interval that excludes 0 is a difference beyond noise.
Test splits are not read. Writes results/recipe_compare.json (or results/OUT.json with --out OUT) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from common import REPO, write_json, write_result
from recipe_search import SOURCES, source_splits

RESAMPLES = 10_000


def val_margins(name: str) -> dict[str, list[float]]:
    """chosen − rejected reward of every validation pair of every vendored source, from run NAME's saved model."""
    run = REPO / "runs" / "recipe_search" / name
    cache = run / "val_margins.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from rmkit.config import load_config
    from rmkit.scoring import Scorer

    data, scorer, margins = load_config(run / "config.yaml").data, Scorer.load(run / "model"), {}
    for source in SOURCES:
        _, val, _ = source_splits(source, data)
        chosen, rejected = scorer.score_pairs(val)
        margins[source] = [float(x) for x in chosen - rejected]
    write_json(cache, margins, indent=None)
    return margins


def paired_difference(base: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws of accuracy(other) − accuracy(base) over the same pairs (correctness vectors of 0/1)."""
    idx = rng.integers(0, len(base), size=(RESAMPLES, len(base)))
    return other[idx].mean(axis=1) - base[idx].mean(axis=1)


def compare(base: dict[str, list[float]], other: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per source and for the mean over sources: both accuracies, the difference and its paired 95% interval."""
    rng, out, draws = np.random.default_rng(0), {}, []
    for source in SOURCES:
        b, o = (np.asarray(m[source]) > 0 for m in (base, other))
        if len(b) != len(o):
            raise ValueError(f"{source}: the runs scored different validation splits ({len(b)} vs {len(o)} pairs)")
        d = paired_difference(b.astype(float), o.astype(float), rng)
        draws.append(d)
        out[source] = summary(b.mean(), o.mean(), d, len(b))
    mean_b = float(np.mean([out[s]["base"] for s in SOURCES]))
    mean_o = float(np.mean([out[s]["run"] for s in SOURCES]))
    out["mean"] = summary(mean_b, mean_o, np.mean(draws, axis=0), sum(out[s]["n"] for s in SOURCES))
    return out


def summary(base_acc: float, run_acc: float, draws: np.ndarray, n: int) -> dict[str, float]:
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"n": int(n), "base": round(float(base_acc), 4), "run": round(float(run_acc), 4),
            "difference": round(float(run_acc - base_acc), 4), "ci95": [round(float(low), 4), round(float(high), 4)]}


def verdict(cell: dict[str, float]) -> str:
    """' **better**' or ' **worse**' when the interval excludes 0, else nothing."""
    low, high = cell["ci95"]
    return " **better**" if low > 0 else " **worse**" if high < 0 else ""


def table(baseline: str, rows: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Markdown: a cell is the run's accuracy vs the baseline's, the difference and its paired 95% interval."""
    out = [f"| run (vs {baseline}) | " + " | ".join(f"val {s}" for s in (*SOURCES, "mean")) + " |",
           "|" + "---|" * (2 + len(SOURCES))]
    for name, cells in rows.items():
        out.append(f"| {name} | " + " | ".join(
            f"{c['run']:.3f} vs {c['base']:.3f}: {c['difference']:+.3f} ({c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f})"
            + verdict(c) for c in (cells[s] for s in (*SOURCES, "mean"))) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("baseline")
    p.add_argument("names", nargs="+")
    p.add_argument("--out", default="recipe_compare", help="results/OUT.json (default: %(default)s)")
    args = p.parse_args(argv)
    base = val_margins(args.baseline)
    rows = {name: compare(base, val_margins(name)) for name in args.names}
    write_result(args.out, {"baseline": args.baseline, "resamples": RESAMPLES, "runs": rows})
    print("\n".join(table(args.baseline, rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
