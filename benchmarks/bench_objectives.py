"""Objectives and heads side by side on the vendored data: Bradley–Terry vs hinge (and soft labels when that
objective exists), linear vs MLP head vs attention pooling, all on MiniLM with the same small training sample, the
same splits and the same seed. Reports held-out accuracy with its 95% Wilson interval per source's test split, and
a paired McNemar test of each variant against the baseline (BT, linear, CLS) on the same test pairs.

    PYTHONPATH=src python benchmarks/bench_objectives.py --pairs-per-source 100 --max-length 64 --max-test 150

Writes benchmarks/results/bench_objectives.json. One run at a time (the machine is small and shared).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import write_result

from rmkit import metrics
from rmkit.config import build_config
from rmkit.data import read_pairs
from rmkit.scoring import Scorer
from rmkit.splits import split_by_prompt
from rmkit.training import train

SOURCES = {"hh-harmless": "/work/shared/data/hh-rlhf-harmless/pairs.jsonl",
           "pandalm": "/work/shared/data/pandalm/pairs.jsonl",
           "alpacaeval": "/work/shared/data/alpacaeval-gpt4turbo/pairs.jsonl"}
VARIANTS = {  # name → (model overrides, train overrides); the first is the baseline
    "bt-linear-cls": ({"pooling": "cls"}, {}),
    "hinge-linear-cls": ({"pooling": "cls"}, {"objective": "hinge"}),
    "bt-mlp-cls": ({"pooling": "cls", "head": "mlp"}, {}),
    "bt-linear-attention": ({"pooling": "attention"}, {}),
}


def prepare(work: Path, args: argparse.Namespace) -> tuple[list[str], dict[str, list]]:
    """Per source: its prompt-hash test split (at most max_test pairs, kept here and scored by this script) and a
    training file of the first pairs_per_source other pairs (what train() reads; it holds out 10% for validation)."""
    paths, tests = [], {}
    for name, path in SOURCES.items():
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        train_part, _, test = split_by_prompt(read_pairs(path), 0.0, args.test_fraction, "rmkit")
        tests[name] = test[: args.max_test]
        keep = {p.origin for p in train_part[: args.pairs_per_source]}
        out = work / f"{name}.jsonl"
        out.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows, 1) if f"{path}:{i}" in keep))
        paths.append(str(out))
    return paths, tests


def run_variant(name: str, args: argparse.Namespace, work: Path, paths: list[str], tests: dict[str, list]) -> dict:
    model_over, train_over = VARIANTS[name]
    raw = {"model": {"path": "minilm", **model_over},
           "data": {"paths": paths, "max_length": args.max_length, "val_fraction": 0.1, "test_fraction": 0.0},
           "optim": {"lr": args.lr, "head_lr": 10 * args.lr, "weight_decay": 0.01},
           "train": {"out_dir": str(work / name), "batch_size": 16, "epochs": args.epochs, "eval_every": 1000,
                     "save_every": 1000, "log_every": 5, "seed": args.seed, "num_threads": args.threads, **train_over}}
    started = time.perf_counter()
    run = train(build_config(raw))
    seconds = time.perf_counter() - started
    scorer = Scorer.load(run / "model", device="cpu")
    per_source, correct = {}, {}
    for source, pairs in tests.items():
        chosen, rejected = scorer.score_pairs(pairs)
        hits = (np.asarray(chosen) - np.asarray(rejected)) > 0
        low, high = metrics.wilson_interval(int(hits.sum()), len(hits))
        per_source[source] = {"n": len(hits), "accuracy": float(hits.mean()), "ci95": [low, high]}
        correct[source] = hits
    return {"variant": name, "train_seconds": seconds, "per_source": per_source, "correct": correct}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs-per-source", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-test", type=int, default=200)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-objectives-"))
    rows: list[dict] = []
    try:
        paths, tests = prepare(work, args)
        for name in args.variants:  # results are written after every variant: a long run can be stopped
            row = run_variant(name, args, work, paths, tests)
            base = rows[0] if rows else row
            row["vs_baseline"] = {s: metrics.mcnemar_test(row["correct"][s], base["correct"][s]) for s in tests}
            rows.append(row)
            print(name, {s: round(r["accuracy"], 3) for s, r in row["per_source"].items()}, flush=True)  # noqa: T201
            public = [{**r, "correct": {s: v.astype(int).tolist() for s, v in r["correct"].items()}} for r in rows]
            write_result("bench_objectives", {"settings": vars(args), "baseline": rows[0]["variant"], "rows": public})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
