"""Batch scoring throughput: rmkit's Scorer (length-sorted, token-budget batches) vs one forward per text vs
fixed-size batches in input order; same model, same texts, same process, one run. Also the achieved FLOP/s of
rmkit's scorer as a fraction of this machine's dense fp32 matmul FLOP/s, measured in the same run.

    .venv/bin/python benchmarks/bench_scoring.py            # → benchmarks/results/bench_scoring.json
    .venv/bin/python benchmarks/bench_scoring.py --quick    # smoke run → benchmarks/results/bench_scoring_quick.json

FLOPs counted per sequence of T real tokens (padding not counted, so padding waste lowers the figure):
2·P·T for the P non-embedding weights of the layers, plus attention 4·L·T²·H (QKᵀ and AV, L layers, width H).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import REPO, write_result

from rmkit.encoding import pad_sequences


def build_model_dir(backbone: str, max_length: int, out: Path) -> Path:
    """An rmkit model directory of `backbone` with a fresh (seeded) score head: throughput does not need training."""
    from rmkit.build import load_for_training
    from rmkit.config import ModelConfig
    from rmkit.model import save_model

    torch.manual_seed(0)
    model, tokenizer, card = load_for_training(ModelConfig(path=backbone, finetune="full"), max_length=max_length)
    return save_model(model, tokenizer, card, out / f"{backbone}-rm")


def load_texts(scorer, n: int, seed: int = 0) -> list[str]:
    """n rendered (prompt, response) texts from the vendored data, both sides of each pair, in shuffled order."""
    from rmkit.config import DEFAULT_DATA
    from rmkit.data import read_pairs

    pairs = [p for path in DEFAULT_DATA for p in read_pairs(REPO / path)]
    random.Random(seed).shuffle(pairs)
    texts = [scorer.render(p.prompt, side) for p in pairs for side in (p.chosen, p.rejected)]
    return texts[:n]


def forward_ids(scorer, ids: list[list[int]]) -> None:
    """One forward over exactly these rows, in this order (padding to the longest)."""
    input_ids, mask = pad_sequences(ids, scorer.tokenizer.pad_token_id)
    with torch.inference_mode():
        scorer.model(input_ids, mask)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_flops(n: int = 2048, reps: int = 10) -> float:
    """Dense fp32 matmul FLOP/s of this machine at the current torch thread count (best of reps)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n**3 / best


def model_flops(scorer, lengths: list[int]) -> float:
    """Forward FLOPs of sequences with these real lengths (see the module docstring)."""
    hf = scorer.model.hf
    cfg = hf.config
    embedding_params = sum(p.numel() for name, p in hf.named_parameters() if "embed" in name)
    params = sum(p.numel() for p in hf.parameters()) - embedding_params
    layers, width = cfg.num_hidden_layers, cfg.hidden_size
    return float(sum(2 * params * t + 4 * layers * t * t * width for t in lengths))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", help="rmkit model directory (default: minilm with a fresh head, built in a temp dir)")
    p.add_argument("--backbone", default="minilm", help="backbone for the built model (default minilm)")
    p.add_argument("--texts", type=int, default=512, help="texts to score (default 512)")
    p.add_argument("--max-length", type=int, default=512, help="max_length of the built model (default 512)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per batch of the fixed-size baseline (default 32)")
    p.add_argument("--batch-tokens", type=int, default=8192, help="rmkit's padded-token budget per forward")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--quick", action="store_true", help="smoke run: 48 texts, max_length 128")
    args = p.parse_args(argv)
    if args.quick:
        args.texts, args.max_length = 48, 128
    torch.set_num_threads(args.threads)

    from rmkit.scoring import Scorer

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or build_model_dir(args.backbone, args.max_length, Path(tmp))
        scorer = Scorer.load(model_dir, device="cpu", max_tokens=args.batch_tokens, max_batch=256)
    texts = load_texts(scorer, args.texts)
    ids = scorer.encoder.encode(texts)
    lengths = [len(i) for i in ids]
    scorer.score_ids(ids[:8])  # warm-up: first-call allocations, kernels

    peak = matmul_flops()
    t_rmkit = timed(lambda: scorer.score_ids(ids))
    t_fixed = timed(lambda: [forward_ids(scorer, ids[s : s + args.batch_size])
                             for s in range(0, len(ids), args.batch_size)])
    t_item = timed(lambda: [forward_ids(scorer, [row]) for row in ids])
    flops = model_flops(scorer, lengths)
    n = len(ids)
    figures = {
        "model": str(args.model_dir or f"{args.backbone} (fresh head)"), "texts": n, "max_length": args.max_length,
        "mean_tokens": sum(lengths) / n, "max_tokens": max(lengths), "threads": args.threads,
        "fixed_batch_size": args.batch_size, "rmkit_batch_tokens": args.batch_tokens,
        "seq_per_s": {"rmkit": n / t_rmkit, "fixed_batches": n / t_fixed, "per_item": n / t_item},
        "seconds": {"rmkit": t_rmkit, "fixed_batches": t_fixed, "per_item": t_item},
        "speedup_vs_fixed_batches": t_fixed / t_rmkit, "speedup_vs_per_item": t_item / t_rmkit,
        "matmul_peak_flop_per_s": peak, "rmkit_flop_per_s": flops / t_rmkit,
        "fraction_of_matmul_peak": flops / t_rmkit / peak,
        "goals": {"fraction_of_matmul_peak": 0.5, "speedup_vs_fixed_batches": 1.5, "speedup_vs_per_item": 2.5},
    }
    name = "bench_scoring_quick" if args.quick else "bench_scoring"
    path = write_result(name, figures)
    print(f"{n} texts, mean {figures['mean_tokens']:.0f} tokens (max {max(lengths)}), {args.threads} threads")
    for key, value in figures["seq_per_s"].items():
        print(f"  {key:<14} {value:8.1f} seq/s")
    print(f"  rmkit / fixed-size batches: {figures['speedup_vs_fixed_batches']:.2f}x   (goal ≥ 1.5x)")
    print(f"  rmkit / per-item loop:      {figures['speedup_vs_per_item']:.2f}x   (goal ≥ 2.5x)")
    print(f"  achieved {flops / t_rmkit / 1e9:.1f} GFLOP/s of {peak / 1e9:.1f} GFLOP/s matmul peak: "
          f"{figures['fraction_of_matmul_peak']:.0%}   (goal ≥ 50%)")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
