"""rmkit vs TRL's RewardTrainer: training-loop throughput (pairs/s) and held-out accuracy after the same pairs.

    python benchmarks/bench_train.py            # the measurement: 1024 pairs, max_length 256, batch 16
    python benchmarks/bench_train.py --quick    # smoke run: 32 pairs, max_length 64, batch 8

The parent runs one child process per trainer, one after the other (`--only NAME`, never concurrently), so memory
and threads never overlap; each child prints one JSON line. Both trainers get the same backbone and initial head
(same seed), the token ids of the same N training pairs (rmkit's Encoder output, handed to TRL as its documented
pre-tokenised `chosen_ids`/`rejected_ids` columns), max_length, batch, AdamW settings, schedule, warmup, dropout,
fp32 and thread count. Only the training loop is timed; both trained models are then scored by the same rmkit
Scorer on the test split of rmkit.training.load_splits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import REPO, write_result

from rmkit.config import DEFAULT_DATA, DataConfig, OptimConfig

TRAINERS = ("rmkit", "rmkit-nogroup", "trl")
FULL = {"pairs": 1024, "max_length": 256, "batch_size": 16}
QUICK = {"pairs": 32, "max_length": 64, "batch_size": 8}
ACCURACY_METHOD = (
    "Both trained models are saved as rmkit model directories (TRL's weights through rmkit.model.save_model with "
    "the rmkit.json fields of the rmkit run: same pooling, template, special tokens, max_length) and scored by "
    "rmkit.scoring.Scorer.load(dir).score_pairs on the test split of rmkit.training.load_splits; a pair counts as "
    "right when r_chosen > r_rejected (ties wrong). The reward is read where TRL's own model reads it: the "
    "classifier on the pooled CLS token for encoders, the last attended token for decoders (pad != eos)."
)


@dataclass(frozen=True)
class Settings:
    backbone: str
    pairs: int
    max_length: int
    batch_size: int
    lr: float
    seed: int
    threads: int
    trl_optim: str | None
    quick: bool

    @property
    def steps(self) -> int:
        return math.ceil(self.pairs / self.batch_size)

    @property
    def optim(self) -> OptimConfig:
        """rmkit's optimiser defaults (AdamW, cosine, 10% warmup, no weight decay, clip 1.0); both trainers use them."""
        return OptimConfig(lr=self.lr)

    @property
    def warmup_steps(self) -> int:
        return int(self.optim.warmup_ratio * self.steps)  # as rmkit.training computes it

    def argv(self) -> list[str]:
        """Flags that give a child exactly these settings."""
        out = ["--backbone", self.backbone, "--pairs", str(self.pairs), "--max-length", str(self.max_length),
               "--batch-size", str(self.batch_size), "--lr", repr(self.lr), "--seed", str(self.seed),
               "--threads", str(self.threads)]
        out += ["--trl-optim", self.trl_optim] if self.trl_optim else []
        return out + (["--quick"] if self.quick else [])


# ---------------------------------------------------------------- shared by both children (untimed) -----------


def data_config(s: Settings) -> DataConfig:
    """rmkit's default data (vendored HH-RLHF harmless + PandaLM), found from the repository root, any cwd."""
    return DataConfig(paths=[str(REPO / p) for p in DEFAULT_DATA], max_length=s.max_length)


def load_backbone(s: Settings):
    """Seed, then backbone + fresh head + tokenizer exactly as rmkit's train() loads them; returns the load seconds.

    Seeding first gives both trainers the same random head (its checksum is reported to show it).
    """
    from accelerate.utils import set_seed

    from rmkit.build import load_for_training
    from rmkit.config import ModelConfig
    from rmkit.model import head

    set_seed(s.seed)
    start = time.perf_counter()
    model, tokenizer, card = load_for_training(ModelConfig(path=s.backbone, finetune="full"), s.max_length)
    seconds = time.perf_counter() - start
    return model, tokenizer, card, seconds, float(head(model.hf).weight.detach().double().sum())


def training_pairs(s: Settings, tokenizer: Any, card: Any):
    """The first N training pairs that survive rmkit's encoding, and the test split.

    rmkit drops pairs whose two sides are identical after truncation, so N pairs may need a longer prefix of the
    training list: `take` is that prefix length, rmkit's data.max_train_pairs for exactly N trained pairs.

    Returns:
        (N EncodedPairs: token ids as both trainers see them, take, test PreferencePairs).
    """
    from rmkit.encoding import Encoder, encode_pairs
    from rmkit.training import load_splits

    splits = load_splits(data_config(s), s.seed)
    encoded, _ = encode_pairs(splits["train"], Encoder(tokenizer, card.max_length, card.add_special_tokens),
                              card.template)
    if len(encoded) < s.pairs:
        raise SystemExit(f"--pairs {s.pairs}: the training split has only {len(encoded)} usable pairs at "
                         f"max_length {s.max_length}; ask for fewer pairs")
    chosen = encoded[: s.pairs]
    return chosen, chosen[-1].index + 1, splits["test"]


def heldout_accuracy(model_dir: Path, test: list[Any]) -> dict[str, Any]:
    """Test-split accuracy of an rmkit model directory, by the one code path both trainers share."""
    import numpy as np

    from rmkit import metrics
    from rmkit.scoring import Scorer

    chosen, rejected = (np.asarray(x) for x in Scorer.load(model_dir).score_pairs(test))  # (N,), (N,)
    correct = chosen > rejected  # ties count as wrong, as in metrics.pairwise_accuracy
    return {"accuracy": metrics.pairwise_accuracy(chosen, rejected), "n_pairs": len(test),
            "accuracy_ci95": list(metrics.wilson_interval(int(correct.sum()), len(test))),
            "correct": correct.astype(int).tolist()}


def time_optimizer_steps() -> dict[str, float]:
    """Add up the wall time of every optimizer.step() in this process through torch's global step hooks, which
    time both trainers the same way without touching either; the dict fills in as training runs."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    total = {"seconds": 0.0, "steps": 0, "start": 0.0}

    def now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def pre(optimizer, args, kwargs) -> None:
        total["start"] = now()

    def post(optimizer, args, kwargs) -> None:
        total["seconds"] += now() - total["start"]
        total["steps"] += 1

    register_optimizer_step_pre_hook(pre)
    register_optimizer_step_post_hook(post)
    return total


# ---------------------------------------------------------------- children --------------------------------------


def run_rmkit(s: Settings, work: Path, length_grouping: bool) -> dict[str, Any]:
    """rmkit.training.train on the N pairs; the loop time is its own metrics.jsonl pairs_per_s over one window."""
    from rmkit.config import build_config
    from rmkit.training import train

    model, tokenizer, card, load_s, head_sum = load_backbone(s)
    pairs, take, test = training_pairs(s, tokenizer, card)
    del model  # train() loads its own (seeded identically); this load only measured load_s and the head
    out = work / ("rmkit" if length_grouping else "rmkit-nogroup")
    cfg = build_config({
        "model": {"path": s.backbone, "finetune": "full"},
        "data": {**data_config(s).model_dump(), "max_train_pairs": take},
        "optim": s.optim.model_dump(),
        "train": {"out_dir": str(out), "seed": s.seed, "batch_size": s.batch_size, "epochs": 1, "precision": "fp32",
                  "num_threads": s.threads, "length_grouping": length_grouping, "resume": False,
                  # one log row over the whole loop; validation and the checkpoint only after the last step
                  "log_every": s.steps, "eval_every": s.steps, "save_every": s.steps},
    })
    optimizer = time_optimizer_steps()
    start = time.perf_counter()
    run = train(cfg)
    train_call_s = time.perf_counter() - start
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (row,) = [r for r in rows if r["split"] == "train"]
    report = json.loads((run / "eval.json").read_text())
    trained = take - report["dropped_identical_after_truncation"]["train"]
    if trained != len(pairs) or row["step"] != s.steps:
        raise RuntimeError(f"rmkit trained {trained} pairs in {row['step']} steps; expected {len(pairs)} in {s.steps}")
    return {"pairs_trained": trained, "steps": row["step"], "loop_s": trained / row["pairs_per_s"],
            "pairs_per_s": row["pairs_per_s"], "load_s": load_s, "train_call_s": train_call_s,
            "optimizer_s": optimizer["seconds"], "optimizer_steps": optimizer["steps"],
            "initial_head_sum": head_sum, "final_train_loss": row["loss"], "optimizer": "torch.optim.AdamW (rmkit)",
            "length_grouping": length_grouping, "eval_json_test_accuracy": report["test"]["accuracy"],
            "test": heldout_accuracy(run / "model", test)}


def run_trl(s: Settings, work: Path) -> dict[str, Any]:
    """TRL's RewardTrainer on the same token ids; a callback times on_train_begin → on_step_end of the last step."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from rmkit.model import save_model

    class LoopTimer(TrainerCallback):
        def _now(self) -> float:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = self._now()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == state.max_steps:
                self.end = self._now()

    model, tokenizer, card, load_s, head_sum = load_backbone(s)
    pairs, _, test = training_pairs(s, tokenizer, card)
    columns: dict[str, list] = {"chosen_ids": [p.chosen for p in pairs], "rejected_ids": [p.rejected for p in pairs]}
    if any(p.margin is not None for p in pairs):
        columns["margin"] = [p.margin or 0.0 for p in pairs]  # rmkit's collate also reads a missing margin as 0
    o = s.optim
    args = RewardConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=s.batch_size, gradient_accumulation_steps=1,
        num_train_epochs=1, learning_rate=o.lr, lr_scheduler_type=o.schedule, warmup_steps=s.warmup_steps,
        weight_decay=o.weight_decay, adam_beta1=o.betas[0], adam_beta2=o.betas[1], max_grad_norm=o.max_grad_norm,
        seed=s.seed, max_length=s.max_length, logging_steps=s.steps, save_strategy="no", eval_strategy="no",
        report_to="none", dataloader_num_workers=0,
        bf16=False, fp16=False,  # TRL defaults to bf16; both train in fp32
        gradient_checkpointing=False,  # TRL defaults to on (~20% slower); rmkit's default is off
        disable_dropout=False,  # TRL defaults to off; rmkit trains with the backbone's dropout
        **({"optim": s.trl_optim} if s.trl_optim else {}),
    )
    timer = LoopTimer()
    start = time.perf_counter()
    trainer = RewardTrainer(model=model.hf, args=args, train_dataset=Dataset.from_dict(columns),
                            processing_class=tokenizer, callbacks=[timer])
    setup_s = time.perf_counter() - start
    optimizer = time_optimizer_steps()
    start = time.perf_counter()
    output = trainer.train()
    train_call_s = time.perf_counter() - start
    trained = len(trainer.train_dataset)  # after TRL's max_length filter, which must have dropped nothing
    if trained != len(pairs) or trainer.state.global_step != s.steps:
        raise RuntimeError(f"TRL trained {trained} pairs in {trainer.state.global_step} steps; "
                           f"expected {len(pairs)} in {s.steps}")
    save_model(trainer.model, tokenizer, card, work / "trl" / "model")
    loop_s = timer.end - timer.start
    return {"pairs_trained": trained, "steps": trainer.state.global_step, "loop_s": loop_s,
            "pairs_per_s": trained / loop_s, "load_s": load_s, "setup_s": setup_s, "train_call_s": train_call_s,
            "trl_reported_samples_per_s": output.metrics.get("train_samples_per_second"),
            "optimizer_s": optimizer["seconds"], "optimizer_steps": optimizer["steps"],
            "initial_head_sum": head_sum, "final_train_loss": output.metrics.get("train_loss"),
            "optimizer": f"{getattr(trainer.args.optim, 'value', trainer.args.optim)} (TRL)", "length_grouping": False,
            "test": heldout_accuracy(work / "trl" / "model", test)}


def run_child(name: str, s: Settings, work: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(s.threads)
    result = run_trl(s, work) if name == "trl" else run_rmkit(s, work, length_grouping=name == "rmkit")
    result = {"trainer": name, "threads": torch.get_num_threads(), **result}
    (work / f"{name}.json").write_text(json.dumps(result))
    return result


# ---------------------------------------------------------------- parent ----------------------------------------


def spawn(name: str, s: Settings, work: Path) -> dict[str, Any]:
    """Run one trainer in a fresh Python process and read back its result."""
    env = {**os.environ, "OMP_NUM_THREADS": str(s.threads), "MKL_NUM_THREADS": str(s.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--work-dir", str(work), *s.argv()]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, stdout=sys.stderr)  # the child's chatter goes to stderr; the table to stdout
    if proc.returncode:
        raise SystemExit(f"the {name} child failed (exit {proc.returncode}); its output is above")
    return json.loads((work / f"{name}.json").read_text())


def compare(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Throughput ratio and paired accuracy difference of each rmkit variant against TRL, on the same test pairs."""
    from rmkit.metrics import mcnemar_test, paired_bootstrap_accuracy_diff

    trl = results.get("trl")
    if trl is None:
        return {}
    out = {}
    for name, r in results.items():
        if name != "trl":
            out[f"{name}/trl"] = {
                "pairs_per_s_ratio": r["pairs_per_s"] / trl["pairs_per_s"],
                "accuracy_diff": paired_bootstrap_accuracy_diff(r["test"]["correct"], trl["test"]["correct"]),
                "mcnemar": mcnemar_test(r["test"]["correct"], trl["test"]["correct"]),
            }
    return out


def differences(s: Settings, results: dict[str, dict[str, Any]]) -> list[str]:
    """What is not equal between the trainers, in words, for the printout and the JSON."""
    trl_optim = results["trl"]["optimizer"] if "trl" in results else "TRL's default"
    return [
        "Batch order: rmkit groups pairs of similar length into batches (its default: less padding); TRL samples "
        "uniformly at random. 'rmkit-nogroup' (train.length_grouping=false) isolates the loop from that. Each run is "
        "one epoch over the same N pairs, each in its own seeded order.",
        f"Optimiser code: rmkit uses torch.optim.AdamW(fused=True), TRL {trl_optim}; same AdamW maths, lr {s.lr}, "
        f"betas {s.optim.betas}, weight decay {s.optim.weight_decay}, "
        f"clip {s.optim.max_grad_norm}, {s.optim.schedule} schedule with {s.warmup_steps} warmup steps of {s.steps}. "
        "'optim s' is the time inside optimizer.step() (torch's global step hooks), part of 'loop s'; "
        "--trl-optim adamw_torch_fused gives TRL rmkit's implementation.",
        "Input: TRL gets rmkit's token ids (its pre-tokenised chosen_ids/rejected_ids columns), so it appends no EOS "
        "and filters nothing; from text it would append its EOS (BERT tokenizers have none) and drop pairs over "
        "max_length where rmkit cuts the prompt from the left.",
        "Per-step bookkeeping is each trainer's own: TRL gathers rewards and logs min/mean/max/accuracy/margin each "
        "step (it is part of its loop); rmkit accumulates loss/accuracy/margin.",
        "TRL defaults changed to match rmkit: bf16 → fp32, gradient checkpointing → off, disable_dropout → False.",
        "Timed span: rmkit from loop start to its last step's log row (metrics.jsonl pairs_per_s, one window); TRL "
        "from on_train_begin to on_step_end of the last step. Not timed: imports, model load (load_s), tokenising, "
        "trainer set-up, validation, checkpoints, saving, scoring.",
    ]


def print_table(s: Settings, results: dict[str, dict[str, Any]], ratios: dict[str, dict[str, Any]]) -> None:
    print(f"\nbench_train{' --quick' if s.quick else ''}: {s.backbone}, {s.pairs} pairs, max_length {s.max_length}, "
          f"batch {s.batch_size}, {s.threads} threads, fp32, lr {s.lr} {s.optim.schedule}, "
          f"warmup {s.warmup_steps}/{s.steps} steps, seed {s.seed}")
    print(f"{'trainer':<14} {'pairs':>6} {'steps':>5} {'loop s':>8} {'pairs/s':>8} {'x TRL':>6} {'optim s':>7} "
          f"{'load s':>6} {'test acc':>8} {'95% CI':>13} {'n':>4}")
    for name, r in results.items():
        ratio = ratios.get(f"{name}/trl", {}).get("pairs_per_s_ratio", 1.0 if name == "trl" else float("nan"))
        t = r["test"]
        print(f"{name:<14} {r['pairs_trained']:>6} {r['steps']:>5} {r['loop_s']:>8.2f} {r['pairs_per_s']:>8.2f} "
              f"{ratio:>6.2f} {r['optimizer_s']:>7.2f} {r['load_s']:>6.2f} {t['accuracy']:>8.3f} "
              f"{t['accuracy_ci95'][0]:>6.3f}-{t['accuracy_ci95'][1]:<6.3f} {t['n_pairs']:>4}")
    for key, c in ratios.items():
        d, m = c["accuracy_diff"], c["mcnemar"]
        print(f"{key}: throughput x{c['pairs_per_s_ratio']:.2f}; accuracy difference {d['diff']:+.3f} "
              f"(paired bootstrap 95% CI {d['ci_low']:+.3f} to {d['ci_high']:+.3f}; McNemar p = {m['p_value']:.3f})")
    sums = {name: r["initial_head_sum"] for name, r in results.items()}
    print(f"initial head weight sums (same seed, same init): {sums}")
    print(f"accuracy: {ACCURACY_METHOD}")
    print("not equal between the trainers:")
    for line in differences(s, results):
        print(f"  - {line}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="minilm", help="rmkit backbone alias or path: minilm (default), smollm2-135m")
    for flag, key, what in (("--pairs", "pairs", "training pairs each trainer sees"),
                            ("--max-length", "max_length", "tokens per sequence"),
                            ("--batch-size", "batch_size", "pairs per optimiser step")):
        p.add_argument(flag, type=int, help=f"{what} (default {FULL[key]}; with --quick {QUICK[key]})")
    p.add_argument("--lr", type=float, default=OptimConfig().lr,
                   help="peak learning rate (default: rmkit's, %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="seed of the head, data order and dropout (default 42)")
    p.add_argument("--threads", type=int, help="torch CPU threads for both (default: torch's default here)")
    p.add_argument("--trainers", default=",".join(TRAINERS),
                   help=f"comma-separated subset of {', '.join(TRAINERS)} (default: all)")
    p.add_argument("--trl-optim", help="TRL's `optim` (default: TRL's own, adamw_torch_fused on torch>=2.8; "
                                       "adamw_torch_fused is rmkit's implementation)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run; writes results/bench_train_quick.json")
    p.add_argument("--keep", action="store_true", help="keep the run directories (printed) instead of deleting them")
    p.add_argument("--only", choices=TRAINERS, help=argparse.SUPPRESS)  # a child: run one trainer, print JSON
    p.add_argument("--work-dir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()
    s = Settings(args.backbone, args.pairs or sizes["pairs"], args.max_length or sizes["max_length"],
                 args.batch_size or sizes["batch_size"], args.lr, args.seed, args.threads, args.trl_optim, args.quick)
    if args.only:
        print(json.dumps(run_child(args.only, s, Path(args.work_dir))))
        return 0
    trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    unknown = sorted(set(trainers) - set(TRAINERS))
    if unknown:
        raise SystemExit(f"--trainers: unknown {', '.join(unknown)}; choose from {', '.join(TRAINERS)}")

    work = Path(tempfile.mkdtemp(prefix="bench_train-"))
    try:
        results = {name: spawn(name, s, work) for name in trainers}
    finally:
        if args.keep:
            print(f"run directories kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    ratios = compare(results)
    print_table(s, results, ratios)
    for r in results.values():
        r["test"].pop("correct")  # per-pair flags fed the paired comparison; the JSON keeps the summary
    command = "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_result("bench_train_quick" if s.quick else "bench_train", {
        "command": command.strip(), "settings": asdict(s) | {"steps": s.steps, "warmup_steps": s.warmup_steps,
                                                             "schedule": s.optim.schedule, "precision": "fp32"},
        "results": results, "comparisons": ratios, "accuracy_method": ACCURACY_METHOD,
        "differences": differences(s, results),
    })
    print(f"\nwrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
