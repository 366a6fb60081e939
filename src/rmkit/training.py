"""train(cfg) -> Path: the Bradley–Terry training recipe, top to bottom, writing the run directory.

seed → model → data → plan → optimiser → resume → loop (train_step, validate, save_checkpoint) → save → report.
Run state lives in small dataclasses (TrainState, Validation, Trainer; StepPlan and Window in rmkit.steps). Scales
to several processes or GPUs through `accelerate launch`; knows nothing of HTTP or the CLI.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from rmkit import checkpoint, metrics, objectives
from rmkit.build import load_for_training
from rmkit.calibration import calibrate
from rmkit.config import DataConfig, OptimConfig, TrainConfig, TrainingConfig, dump_config
from rmkit.data import PreferencePair
from rmkit.encoding import EncodedPair, Encoder, encode_pairs
from rmkit.evaluation import evaluate, format_summary, summarize
from rmkit.loss import bradley_terry_loss
from rmkit.model import ModelCard, RewardModel, mixed_precision, save_model
from rmkit.modelcard import run_summary, write_model_card
from rmkit.rows import MetricsLog, write_json
from rmkit.scoring import Scorer
from rmkit.splits import load_splits as load_splits  # re-exported: callers import it from here
from rmkit.steps import StepPlan, Window
from rmkit.targets import load_rated_splits, objective_index, rated_pairs

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (for example a NaN loss); the last good checkpoint is kept."""


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norms; the score head may get its own learning rate."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            is_head = any(part in name for part in (".score.", ".classifier."))
            groups.setdefault((is_head, param.ndim < 2), []).append(param)
    return torch.optim.AdamW(
        [{"params": params, "lr": (cfg.head_lr or cfg.lr) if is_head else cfg.lr,
          "weight_decay": 0.0 if no_decay else cfg.weight_decay}
         for (is_head, no_decay), params in sorted(groups.items())],
        betas=cfg.betas,
        fused=True,  # one kernel for all parameters: ~20x faster steps than the default on CPU (torch >= 2.8)
    )


@dataclass
class Validation:
    """One validation: the logged statistics and the pairs' rewards (the final report reuses them when this step's
    model is the one saved, instead of scoring the validation split a second time)."""

    stats: dict[str, float]
    chosen: np.ndarray
    rejected: np.ndarray
    step: int = 0


def validate(model: RewardModel, tokenizer: Any, card: ModelCard, pairs: list[EncodedPair]) -> Validation:
    """Loss, accuracy and margin on encoded pairs, plus the reward mean/std stored for normalisation."""
    scorer = Scorer(model, tokenizer, card)
    scores = np.asarray(scorer.score_ids([p.chosen for p in pairs] + [p.rejected for p in pairs]))
    chosen, rejected = scores[: len(pairs)], scores[len(pairs):]
    margin = torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float64)
    loss = bradley_terry_loss(torch.from_numpy(chosen), torch.from_numpy(rejected), margin)
    model.train()
    return Validation({"loss": loss.item(), "accuracy": metrics.pairwise_accuracy(chosen, rejected),
                       "margin": float((chosen - rejected).mean()), "reward_mean": float(scores.mean()),
                       "reward_std": float(max(scores.std(ddof=1), 1e-8)) if len(scores) > 1 else 1.0},
                      chosen, rejected)


@dataclass
class TrainState:
    """What a checkpoint carries besides the weights: the step and the early-stopping record."""

    step: int = 0
    best_accuracy: float = -1.0
    bad_evals: int = 0
    best_step: int | None = None
    last_val: dict[str, float] | None = None
    elapsed_s: float = 0.0  # wall time of the run's earlier sessions, up to the checkpoint this session resumed from

    def saved(self, session_s: float = 0.0) -> dict[str, Any]:
        """The checkpoint's `train` entry (on disk): every set field but the step; elapsed_s gains `session_s`."""
        out = {k: v for k, v in asdict(self).items() if k != "step" and v is not None}
        return {**out, "elapsed_s": self.elapsed_s + session_s}


@dataclass
class TrainData:
    """Encoded training items (pairs, lists, ratings) and validation pairs, the raw splits (for the report; rated
    validation and test pairs included), how many were dropped, and training pairs to validate on without a
    validation split."""

    train: list[objectives.Item]
    val: list[EncodedPair]
    splits: dict[str, list[PreferencePair]]
    dropped: dict[str, int]
    fallback: list[EncodedPair] = field(default_factory=list)

    @property
    def stats_set(self) -> list[EncodedPair]:
        return self.val or self.fallback  # OpenRLHF also falls back to training data for the statistics

    @property
    def heldout(self) -> bool:
        """False when stats_set is training pairs (data.val_fraction=0): the 'val' rows and statistics say so."""
        return bool(self.val)


@dataclass
class Trainer:
    """The prepared pieces one step needs."""

    accelerator: Accelerator
    model: torch.nn.Module  # as prepared by accelerate (DDP-wrapped on several processes)
    raw_model: RewardModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    tokenizer: Any
    card: ModelCard
    out: Path
    started: float  # perf_counter when this session of the run began
    saved_val: Validation | None = None  # the validation of the model in model/, when this session ran it

    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"


def train(cfg: TrainConfig, sources: Sequence[Any] | None = None) -> Path:
    """Train a reward model as `cfg` says; returns the run directory (model/ inside is the trained model).

    `sources`: preference data read instead of cfg.data.paths, e.g. a `datasets.Dataset` already in memory (each
    source is split by prompt hash like a file)."""
    tc, out, run_started = cfg.train, Path(cfg.train.out_dir), time.perf_counter()
    accelerator = make_accelerator(tc)
    set_seed(tc.seed)
    if accelerator.is_main_process:
        write_config(cfg, out)
    model, tokenizer, card = load_for_training(cfg.model, cfg.data.max_length, cfg.data.truncation)
    data = load_data(cfg.data, tc, tokenizer, card, sources)
    plan = StepPlan(data.train, tc.batch_size * accelerator.num_processes,
                    accelerator.num_processes, tc.seed, tc.length_grouping, tc.grad_accum)
    total_steps = tc.max_steps or math.ceil(tc.epochs * plan.steps_per_epoch)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = get_scheduler(cfg.optim.schedule, optimizer, num_warmup_steps=int(cfg.optim.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    prepared, optimizer = accelerator.prepare(model, optimizer)  # the scheduler stays ours: one step per optimiser step
    t = Trainer(accelerator, prepared, accelerator.unwrap_model(prepared), optimizer, scheduler, tokenizer, card, out,
                run_started)
    state = resume(t, tc.resume)
    metrics_log = MetricsLog(out / "metrics.jsonl", state.step if state.step else None, accelerator.is_main_process)
    if accelerator.is_main_process:
        log.info("%d training pairs (%d per epoch step plan), %d validation, %d test; %d steps of %d pairs",
                 len(data.train), len(plan.epoch(0)), len(data.val), len(data.splits["test"]), total_steps,
                 plan.global_batch * tc.grad_accum)

    t.model.train()
    bar = tqdm(total=total_steps, initial=state.step, desc="training", unit="step",
               disable=not accelerator.is_main_process)
    window, stopped_early = Window(), False
    while state.step < total_steps and not stopped_early:
        started = time.perf_counter()
        grad_norm = train_step(t, data.train, plan.micro_batches(state.step), tc, cfg.optim, window, state.step)
        state.step += 1
        window.seconds += time.perf_counter() - started  # training time only: validation and saving excluded
        bar.update(1)
        last = state.step == total_steps
        if state.step % tc.log_every == 0 or last:
            log_window(metrics_log, bar, window, state.step, plan.steps_per_epoch, grad_norm, t)
            window = Window()
        if state.step % tc.eval_every == 0 or last:
            stopped_early = run_validation(t, data, state, metrics_log, tc.early_stopping_patience)
        if state.step % tc.save_every == 0 or last or stopped_early:
            save_checkpoint(t, state, tc.keep_checkpoints)
    bar.close()

    if not tc.early_stopping_patience:
        save_best(t, state.last_val or validate(t.raw_model, tokenizer, card, data.stats_set).stats, data.heldout)
    final_report(t, data, state, stopped_early, cfg)
    return out


def write_config(cfg: TrainConfig, out: Path) -> None:
    """out/config.yaml; an output directory that cannot be written stops the run here, before any training."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg))
    except OSError as exc:
        raise TrainingError(f"cannot write to train.out_dir {out}: {exc.strerror or exc}; choose a writable "
                            "directory with free space") from exc


def make_accelerator(tc: TrainingConfig) -> Accelerator:
    """The Accelerator for tc.precision; also sets torch's thread count when asked. fp16 on a CPU is refused:
    accelerate applies no fp16 autocast there and would run fp32, silently."""
    # cpu=True lets a plain `torchrun` on a CPU machine form a gloo process group (accelerate needs the hint)
    on_cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    if tc.precision == "fp16" and on_cpu:
        raise TrainingError("train.precision=fp16 needs a GPU (on a CPU accelerate applies no fp16 autocast); "
                            "use bf16 or fp32")
    AcceleratorState._reset_state()  # a second train() in one process may use another precision; keeps the process group
    accelerator = Accelerator(mixed_precision=mixed_precision(tc.precision), cpu=on_cpu)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    return accelerator


def load_data(cfg: DataConfig, tc: TrainingConfig, tokenizer: Any, card: ModelCard,
              sources: Sequence[Any] | None = None) -> TrainData:
    """Read and split the pairs (`sources` instead of cfg.paths when given) and ratings, encode the training items
    of the objective and the validation pairs, and refuse what cannot be trained."""
    splits = load_splits(cfg, tc.seed, sources)
    ratings, rated_val, rated_test = load_rated_splits(cfg.ratings_paths, card.objectives, card.objective_weights,
                                                       cfg.val_fraction, cfg.test_fraction, cfg.split_salt)
    splits["val"], splits["test"] = splits["val"] + rated_val, splits["test"] + rated_test
    encoder = Encoder(tokenizer, card.max_length, card.add_special_tokens, card.truncation)
    pair_objectives = [objective_index(p, cfg.paths, cfg.objective_of, card.objectives) for p in splits["train"]]
    train_set, dropped = objectives.encode_training(splits["train"], pair_objectives, ratings, encoder, card.template,
                                                    tc, len(card.objectives))
    val_set, val_dropped = encode_pairs(splits["val"], encoder, card.template)
    if dropped or val_dropped:
        log.warning("dropped %d training and %d validation pairs whose two sides have the same token ids at max_length "
                    "%d (cut to the same text, or differing only where the tokenizer does not look, e.g. letter case "
                    "for an uncased one)", dropped, val_dropped, card.max_length)
    if not train_set:
        raise TrainingError("no training pairs left after splitting and truncation" + (
            "; train.objective='regression' trains on data.ratings_paths" if tc.objective == "regression" else ""))
    if not val_set and tc.early_stopping_patience:
        raise TrainingError("train.early_stopping_patience needs validation pairs: set data.val_fraction > 0")
    if not val_set:
        log.warning("no validation pairs (data.val_fraction=0): the 'val' rows of metrics.jsonl and the normalisation "
                    "statistics come from %d training pairs, and are marked so (heldout: false, "
                    "reward_stats_from: training)", min(len(train_set), 256))
    fallback = [] if val_set else encode_pairs((splits["train"] or rated_pairs(ratings, card.objective_weights))[:256],
                                               encoder, card.template)[0]
    return TrainData(train_set, val_set, splits, {"train": dropped, "val": val_dropped}, fallback)


def resume(t: Trainer, enabled: bool) -> TrainState:
    """The state of the latest checkpoint (weights, optimiser, scheduler and RNG restored), or a fresh one."""
    resume_from = checkpoint.latest_checkpoint(t.ckpt_root) if enabled else None
    if resume_from is None:
        return TrainState()
    saved = checkpoint.load_checkpoint(resume_from, t.raw_model, t.optimizer, t.scheduler, t.accelerator.process_index)
    log.info("resumed from %s (step %d)", resume_from, saved["step"])
    return TrainState(**saved)


def train_step(t: Trainer, items: list[objectives.Item], micro: list[list[int]], tc: TrainingConfig, optim: OptimConfig,
               window: Window, step: int) -> float:
    """One optimiser step over `micro` (grad_accum global batches, each split across ranks, each one item kind with
    its loss from objectives.batch_loss); returns the grad norm."""
    acc, world, rank = t.accelerator, t.accelerator.num_processes, t.accelerator.process_index
    step_pairs = sum(len(b) for b in micro)
    for i, batch_idx in enumerate(micro):
        local = np.array_split(np.array(batch_idx), world)[rank]
        with nullcontext() if i == len(micro) - 1 else acc.no_sync(t.model):
            loss, stats = objectives.batch_loss(t.model, [items[j] for j in local], t.tokenizer.pad_token_id,
                                                acc.device, tc)
            seen = acc.gather(loss.detach().reshape(1))
            if not torch.isfinite(seen).all():
                last = checkpoint.latest_checkpoint(t.ckpt_root)
                raise TrainingError(f"loss is {seen.tolist()} at step {step}: training diverged. The last good "
                                    f"checkpoint is {last or 'none yet'}; lower optim.lr or set optim.max_grad_norm")
            # each rank's mean, weighted so the DDP average equals the mean over all pairs of the step
            acc.backward(loss * len(local) * world / step_pairs)
        window.add(loss.item(), len(local), stats.delta)
    params = [p for p in t.model.parameters() if p.requires_grad]
    max_norm = optim.max_grad_norm if optim.max_grad_norm is not None else float("inf")
    grad_norm = float(acc.clip_grad_norm_(params, max_norm))
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def log_window(metrics_log: MetricsLog, bar: Any, w: Window, step: int, steps_per_epoch: int, grad_norm: float,
               t: Trainer) -> None:
    """One training line of metrics.jsonl: the window's mean loss, accuracy and margin, lr, grad norm, pairs/s."""
    row = {"step": step, "split": "train", "epoch": round(step / steps_per_epoch, 4), "loss": w.loss / w.pairs,
           "accuracy": w.correct / max(w.compared, 1), "margin": w.margin / max(w.compared, 1), "lr": t.scheduler.get_last_lr()[0],
           "grad_norm": grad_norm, "pairs_per_s": w.pairs * t.accelerator.num_processes / w.seconds}
    metrics_log.write(**row)
    bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.2f}")


def run_validation(t: Trainer, data: TrainData, state: TrainState, metrics_log: MetricsLog,
                   patience: int) -> bool:
    """Validate, log, keep the best model; True when early stopping says stop."""
    val = validate(t.raw_model, t.tokenizer, t.card, data.stats_set)
    stats, val.step = val.stats, state.step
    metrics_log.write(step=state.step, split="val", heldout=data.heldout, **stats)
    if stats["accuracy"] > state.best_accuracy:
        state.best_accuracy, state.bad_evals, state.best_step = stats["accuracy"], 0, state.step
        if patience:
            save_best(t, stats, data.heldout)
    else:
        state.bad_evals += 1
    if not patience or state.best_step == state.step:  # model/ will hold this step's weights
        t.saved_val = val
    state.last_val = {**stats, "step": state.step}  # with its step: checkpoints/index.json lists it
    return bool(patience and state.bad_evals >= patience)


def save_best(t: Trainer, stats: dict[str, float], heldout: bool) -> None:
    """Save model/ with the validation reward mean/std as its normalisation statistics (main process only)."""
    if t.accelerator.is_main_process:
        stored = {"reward_mean": stats["reward_mean"], "reward_std": stats["reward_std"],
                  "reward_stats_from": "validation" if heldout else "training"}
        save_model(t.raw_model, t.tokenizer, t.card.model_copy(update=stored), t.out / "model")


def save_checkpoint(t: Trainer, state: TrainState, keep: int) -> None:
    """checkpoints/step-N on every rank, committed atomically by the main rank between barriers; the last `keep`
    are kept."""
    acc = t.accelerator
    checkpoint.save_checkpoint(t.ckpt_root, state.step, t.raw_model, t.optimizer, t.scheduler,
                               state.saved(time.perf_counter() - t.started), acc.process_index, acc.is_main_process)
    acc.wait_for_everyone()
    if acc.is_main_process:
        checkpoint.commit_checkpoint(t.ckpt_root, state.step, keep)
    acc.wait_for_everyone()


def final_report(t: Trainer, data: TrainData, state: TrainState, stopped_early: bool, cfg: TrainConfig) -> None:
    """eval.json: early stopping, dropped pairs, calibration (T into rmkit.json), val/test reports and the run's
    facts (wall time: earlier sessions + this one, evaluation included); then the model card from the same dict."""
    t.accelerator.wait_for_everyone()
    if t.accelerator.is_main_process:
        report: dict[str, Any] = {"stopped_early": stopped_early, "best_step": state.best_step,
                                  "validation_pairs": "held out" if data.heldout else "training (data.val_fraction=0)",
                                  "dropped_identical_after_truncation": data.dropped}
        scorer = Scorer.load(t.out / "model", device=str(t.accelerator.device))
        if val := data.splits["val"]:  # its rewards fit T, then are reported: scored once, or reused from the loop
            reused = reusable_val(t.saved_val, data, state.best_step if cfg.train.early_stopping_patience else state.step)
            chosen, rejected = (reused.chosen, reused.rejected) if reused else scorer.score_pairs(val)
            report["calibration"] = calibrate(t.out / "model", val, scorer, scores=(chosen, rejected))
            report["val"] = summarize(chosen, rejected, val, scorer.card.temperature)
        if data.splits["test"]:
            report["test"] = evaluate(scorer, data.splits["test"])
        for name in ("val", "test"):
            if name in report:
                log.info(format_summary(name, report[name]))
        seconds = state.elapsed_s + time.perf_counter() - t.started  # earlier sessions of a resumed run included
        report["run"] = run_summary(cfg, data.splits, seconds, state.step, t.accelerator.num_processes)
        write_json(report, t.out / "eval.json")
        write_model_card(t.out / "model", cfg, report)
    t.accelerator.wait_for_everyone()


def reusable_val(val: Validation | None, data: TrainData, saved_step: int | None) -> Validation | None:
    """The loop's validation of the saved model when it scored exactly the validation split, pair for pair (no pair
    dropped in encoding, no training-pair fallback); else None and the report scores the split itself."""
    aligned = data.heldout and [p.index for p in data.val] == list(range(len(data.splits["val"])))
    return val if val is not None and val.step == saved_step and aligned else None
