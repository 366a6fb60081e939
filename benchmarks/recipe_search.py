"""Recipe search on validation data, with leave-one-source-out: train a config on some sources, then measure
accuracy on each training source's validation split (in-distribution) and on a held-out source (LOSO).

    python benchmarks/recipe_search.py NAME --heldout pandalm [--heldout-pairs 600] [key=value overrides ...]

The held-out source is read in full except its test split (hash split as training does), so its test pairs stay
untouched until the final run; training sources are the other vendored files. Test splits are never reported here
(`rmkit train` still scores its own test split into the run's eval.json; this script does not read it). Appends one
JSON row per run to benchmarks/results/recipe_search.jsonl: config, pairs, wall time (the machine may be shared:
`load_before` is the 1-minute load average at the start), per-source accuracy with 95% intervals, length-only
baseline and Spearman ρ(reward, length).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

from common import REPO, RESULTS, machine_info

SOURCES = {"hh": "data/hh-rlhf-harmless/pairs.jsonl", "pandalm": "data/pandalm/pairs.jsonl",
           "alpacaeval": "data/alpacaeval-gpt4turbo/pairs.jsonl.gz"}


def measure(summary: dict) -> dict:
    """The few numbers a recipe row keeps from an evaluation summary."""
    return {"n": summary["n_pairs"], "accuracy": round(summary["accuracy"], 4),
            "ci95": [round(x, 4) for x in summary["accuracy_ci95"]],
            "length_baseline": round(summary["length_baseline_accuracy"], 4),
            "rho_reward_length": round(summary["length_score_spearman"], 3)}


def source_splits(source: str, data_cfg) -> tuple[list, list, list]:
    """Train, validation and test pairs of a vendored source, split by prompt hash as training splits it."""
    from rmkit.data import read_pairs
    from rmkit.splits import split_by_prompt

    return split_by_prompt(read_pairs(REPO / SOURCES[source]), data_cfg.val_fraction, data_cfg.test_fraction,
                           data_cfg.split_salt)


def heldout_pool(source: str, data_cfg) -> list:
    """Every pair of a vendored source except its test split."""
    train_part, val_part, _ = source_splits(source, data_cfg)
    return train_part + val_part


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--heldout", choices=[*SOURCES, "none"], required=True)
    p.add_argument("--train-sources", default=None, help="comma-separated (default: all but the held-out one)")
    p.add_argument("--heldout-pairs", type=int, default=600, help="sample this many held-out pairs (seed 0)")
    p.add_argument("--val-pairs", type=int, default=300, help="at most this many validation pairs per source")
    p.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args(argv)

    from rmkit.config import load_config
    from rmkit.evaluation import summarize
    from rmkit.scoring import Scorer
    from rmkit.training import train

    names = args.train_sources.split(",") if args.train_sources else [s for s in SOURCES if s != args.heldout]
    out = REPO / "runs" / "recipe_search" / args.name
    overrides = [f"data.paths=[{', '.join(str(REPO / SOURCES[n]) for n in names)}]", f"train.out_dir={out}",
                 "train.resume=false", *args.overrides]
    cfg = load_config(args.config, overrides)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    run = train(cfg)
    train_s = time.perf_counter() - started
    scorer = Scorer.load(run / "model")
    rng = random.Random(0)
    row = {"name": args.name, "overrides": args.overrides, "train_sources": names, "heldout": args.heldout,
           "train_s": round(train_s, 1), "load_before": round(load_before, 1), "val": {}}
    for name in names:
        _, val, _ = source_splits(name, cfg.data)
        val = rng.sample(val, min(len(val), args.val_pairs))
        row["val"][name] = measure(summarize(*scorer.score_pairs(val), val))
    if args.heldout != "none":
        pool = heldout_pool(args.heldout, cfg.data)
        held = rng.sample(pool, min(len(pool), args.heldout_pairs))
        row["loso"] = measure(summarize(*scorer.score_pairs(held), held))
    row["total_s"] = round(time.perf_counter() - started, 1)
    row["machine"] = {k: v for k, v in machine_info().items() if k in ("date", "git_commit", "cpu_model", "usable_cores")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "recipe_search.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
