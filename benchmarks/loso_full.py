"""Leave-one-source-out on the whole held-out source: score the saved model of recipe-search runs
(runs/recipe_search/NAME/model) on every pair of their held-out source except its test split, instead of the seeded
600-pair sample `recipe_search.py` scores. Same model, same pairs drawn from, a tighter interval.

    python benchmarks/loso_full.py minilm-left-loso-hh minilm-left-loso-pandalm minilm-left-loso-alpacaeval

Appends one JSON row per run to benchmarks/results/loso_full.jsonl (accuracy, 95% interval, length-only baseline,
ρ(reward, length), n) and prints it. The held-out source is split by prompt hash with the run's own config, as
training split it, so its test pairs stay untouched.
"""

from __future__ import annotations

import argparse
import json
import time

from common import REPO, RESULTS, machine_info
from recipe_search import heldout_pool, measure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", help="recipe-search runs (their rows in results/recipe_search.jsonl)")
    args = p.parse_args(argv)

    from rmkit.config import load_config
    from rmkit.evaluation import summarize
    from rmkit.scoring import Scorer

    searched = {r["name"]: r for r in map(json.loads, (RESULTS / "recipe_search.jsonl").read_text().splitlines())}
    for name in args.names:
        run, heldout = REPO / "runs" / "recipe_search" / name, searched[name]["heldout"]
        held = heldout_pool(heldout, load_config(run / "config.yaml").data)
        started = time.perf_counter()
        row = {"name": name, "heldout": heldout, "sample_loso": searched[name]["loso"],
               "loso_full": measure(summarize(*Scorer.load(run / "model").score_pairs(held), held)),
               "score_s": round(time.perf_counter() - started, 1),
               "machine": {k: v for k, v in machine_info().items() if k in ("date", "git_commit", "cpu_model")}}
        with (RESULTS / "loso_full.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
