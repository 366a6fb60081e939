"""int8 CPU scoring vs fp32: dynamic int8 quantisation of the backbone's Linear layers (`dtype: int8`, the head stays
fp32) against the same model in fp32, side by side in one process: scoring speed on the held-out test split's texts
and the pairwise accuracy on that split (the run's own test split, rebuilt from its config and seed).

    .venv/bin/python benchmarks/bench_int8.py --run runs/default     # → benchmarks/results/bench_int8.json
    .venv/bin/python benchmarks/bench_int8.py --quick                  # smoke: tiny random model, 64 texts

Timing: each precision scores every text (both sides of each test pair) `--repeats` times, alternating fp32 and int8
so that machine noise hits both alike; the best time of each is reported (least disturbed by other load).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, write_result


def test_pairs(run: Path) -> list:
    """The held-out test split of a run, rebuilt exactly as training cut it (same data, fractions, salt, seed)."""
    from rmkit.config import load_config
    from rmkit.training import load_splits

    cfg = load_config(run / "config.yaml")
    return load_splits(cfg.data, cfg.train.seed)["test"]


def accuracy(scorer, pairs) -> tuple[float, np.ndarray]:
    chosen, rejected = scorer.score_pairs(pairs)
    return float(np.mean(chosen > rejected)), np.concatenate([chosen, rejected])


def gap(rewards: np.ndarray) -> np.ndarray:
    """Chosen − rejected reward per pair, from accuracy()'s [chosen..., rejected...] layout."""
    half = len(rewards) // 2
    return rewards[:half] - rewards[half:]


def best_times(scorers: dict, ids: dict, repeats: int) -> dict[str, float]:
    times = {k: float("inf") for k in scorers}
    for _ in range(repeats):
        for name, scorer in scorers.items():
            start = time.perf_counter()
            scorer.score_ids(ids[name])
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a training run directory (model/, config.yaml); its test split is used")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2: this CI-class box)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per precision (best is reported)")
    p.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per forward")
    p.add_argument("--quick", action="store_true", help="smoke run on a tiny random model (no accuracy claim)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from rmkit.scoring import Scorer

    if args.quick:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import make_model_dir
        from rmkit.config import DEFAULT_DATA
        from rmkit.data import read_pairs

        model_dir = make_model_dir(Path(tempfile.mkdtemp()), "tiny-bert")
        pairs = read_pairs(REPO / DEFAULT_DATA[0])[:32]
    else:
        model_dir, pairs = args.run / "model", test_pairs(args.run)
    scorers = {d: Scorer.load(model_dir, device="cpu", dtype=d, max_tokens=args.batch_tokens, max_batch=256)
               for d in ("fp32", "int8")}
    acc, rewards = {}, {}
    for name, scorer in scorers.items():
        acc[name], rewards[name] = accuracy(scorer, pairs)
    texts = [scorers["fp32"].render(q.prompt, side) for q in pairs for side in (q.chosen, q.rejected)]
    ids = {k: s.encoder.encode(texts) for k, s in scorers.items()}
    for name, scorer in scorers.items():
        scorer.score_ids(ids[name][:16])  # warm-up
    times = best_times(scorers, ids, args.repeats)
    n = len(texts)
    delta = rewards["int8"] - rewards["fp32"]
    figures = {
        "model": str(model_dir), "pairs": len(pairs), "texts": n, "threads": args.threads, "repeats": args.repeats,
        "mean_tokens": float(np.mean([len(i) for i in ids["fp32"]])),
        "seconds": times, "seq_per_s": {k: n / t for k, t in times.items()},
        "speedup_int8_vs_fp32": times["fp32"] / times["int8"],
        "accuracy": acc, "accuracy_change_points": 100 * (acc["int8"] - acc["fp32"]),
        "reward_abs_diff": {"mean": float(np.mean(np.abs(delta))), "max": float(np.max(np.abs(delta)))},
        "reward_std_fp32": float(np.std(rewards["fp32"])),
        "reward_pearson": float(np.corrcoef(rewards["fp32"], rewards["int8"])[0, 1]),
        "same_preference": float(np.mean(np.sign(gap(rewards["fp32"])) == np.sign(gap(rewards["int8"])))),
        "goals": {"speedup_int8_vs_fp32": 1.8, "max_accuracy_change_points": 1.0},
    }
    path = write_result("bench_int8_quick" if args.quick else "bench_int8", figures)
    print(f"{len(pairs)} held-out pairs, {n} texts, mean {figures['mean_tokens']:.0f} tokens, {args.threads} threads")
    for k in ("fp32", "int8"):
        print(f"  {k}: {n / times[k]:7.1f} seq/s   accuracy {acc[k]:.4f}")
    print(f"  int8 / fp32 speed: {figures['speedup_int8_vs_fp32']:.2f}x (goal ≥ 1.8x); accuracy change "
          f"{figures['accuracy_change_points']:+.2f} points (goal ≤ 1); mean |Δreward| "
          f"{figures['reward_abs_diff']['mean']:.4f} (reward std {figures['reward_std_fp32']:.3f}); same preference "
          f"on {figures['same_preference']:.1%} of pairs; Pearson r {figures['reward_pearson']:.4f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
