"""Every advertised training knob does what its docstring says, each in a test that fails when the knob is ignored.

The knobs are driven through `train(cfg)` and its run directory (metrics.jsonl, eval.json, model/, checkpoints/) or
through `build_optimizer`, not through the loop's internals. Where a value is only visible inside a step (the gradient
the optimiser sees), AdamW.step is wrapped to record it. Runs are 1–7 steps of a random 2-layer model: seconds each.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmkit.config import OptimConfig, load_config
from rmkit.training import build_optimizer, train


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-level comparisons between two runs need one summation order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def overrides(pairs_file: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.paths=[{pairs_file}]", "data.val_fraction=0", "data.test_fraction=0", "data.max_length=64",
            "model.path=tiny-llama", f"train.out_dir={out}", "train.batch_size=4", "train.log_every=1",
            "train.eval_every=1000", "train.save_every=1000", "optim.warmup_ratio=0", "train.length_grouping=false",
            "train.num_threads=1", *extra]


def run(pairs_file: Path, out: Path, *extra: str) -> Path:
    return train(load_config(None, overrides(pairs_file, out, *extra)))


def rows(run_dir: Path, split: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


@pytest.fixture()
def step_grads(monkeypatch) -> list[dict[int, torch.Tensor]]:
    """The gradients AdamW is about to apply, one {parameter index: gradient} per optimiser step (after clipping)."""
    seen: list[dict[int, torch.Tensor]] = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        params = [p for group in self.param_groups for p in group["params"]]
        seen.append({i: p.grad.detach().clone() for i, p in enumerate(params) if p.grad is not None})
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    return seen


def global_norm(grads: dict[int, torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])).item()


def test_gradient_accumulation_of_k_micro_batches_gives_the_gradient_of_one_batch_of_k_times_b(
        pairs_file, tmp_path, step_grads):
    """With length grouping off, step 1 of batch 8 and step 1 of 2 × batch 4 see the same 8 pairs."""
    one = run(pairs_file, tmp_path / "one", "train.batch_size=8", "train.max_steps=1", "optim.max_grad_norm=null")
    two = run(pairs_file, tmp_path / "two", "train.batch_size=4", "train.grad_accum=2", "train.max_steps=1",
              "optim.max_grad_norm=null")
    big, accumulated = step_grads
    assert big.keys() == accumulated.keys() and len(big) == 21
    for i in big:
        torch.testing.assert_close(accumulated[i], big[i], rtol=1e-4, atol=1e-6)  # float sums in another order
    assert rows(two)[0]["loss"] == pytest.approx(rows(one)[0]["loss"], rel=1e-6)
    assert rows(two)[0]["grad_norm"] == pytest.approx(rows(one)[0]["grad_norm"], rel=1e-5)
    # and it is not vacuous: one micro-batch of 4 alone has a different gradient
    run(pairs_file, tmp_path / "half", "train.batch_size=4", "train.max_steps=1", "optim.max_grad_norm=null")
    assert not torch.allclose(step_grads[2][0], big[0], rtol=1e-3)


def test_gradient_clipping_caps_the_norm_the_optimiser_sees_and_logs_the_norm_before(pairs_file, tmp_path,
                                                                                    step_grads):
    clipped = run(pairs_file, tmp_path / "clipped", "train.max_steps=2", "optim.max_grad_norm=0.01")
    free = run(pairs_file, tmp_path / "free", "train.max_steps=1", "optim.max_grad_norm=null")
    logged = [r["grad_norm"] for r in rows(clipped)]
    assert all(norm > 0.05 for norm in logged)  # far above the cap, so clipping had work to do
    assert [global_norm(g) for g in step_grads[:2]] == pytest.approx([0.01, 0.01], rel=1e-4)
    assert global_norm(step_grads[2]) == pytest.approx(rows(free)[0]["grad_norm"], rel=1e-5)  # null: no clipping
    assert rows(free)[0]["grad_norm"] == pytest.approx(logged[0], rel=1e-5)  # same first step, before clipping


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_warmup_then_schedule_gives_the_learning_rate_worked_by_hand(pairs_file, tmp_path, schedule):
    """10 steps, warmup_ratio 0.2 → 2 warmup steps. The lr logged after step s is the one step s+1 will use:
    warmup s/2 · lr; then cosine lr · ½(1 + cos(π (s−2)/8)) or linear lr · (10 − s)/8."""
    out = run(pairs_file, tmp_path / schedule, "train.max_steps=10", "optim.warmup_ratio=0.2", "optim.lr=1e-3",
              f"optim.schedule={schedule}", "train.batch_size=16")

    def expected(s: int) -> float:
        if s < 2:
            return 1e-3 * s / 2
        if schedule == "cosine":
            return 1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8))
        return 1e-3 * (10 - s) / 8

    got = {r["step"]: r["lr"] for r in rows(out)}
    for s in (1, 2, 3, 6, 9, 10):
        assert got[s] == pytest.approx(expected(s), abs=1e-12), f"lr after step {s}"
    assert got[6] == pytest.approx(5e-4 if schedule == "cosine" else 5e-4)  # half way through the decay, both


def test_head_lr_applies_to_the_score_head_only_for_full_and_lora_models():
    from rmkit.build import load_for_training

    for backbone, finetune, heads in (("tiny-llama", "full", {"hf.score.weight"}),
                                      ("tiny-bert", "full", {"hf.classifier.weight", "hf.classifier.bias"}),
                                      ("tiny-llama", "lora", {"hf.base_model.model.score.modules_to_save.default.weight"})):
        cfg = load_config(None, [f"model.path={backbone}", f"model.finetune={finetune}"])
        model, _, _ = load_for_training(cfg.model, 64)
        optimizer = build_optimizer(model, OptimConfig(lr=1e-4, head_lr=5e-2))
        lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert len(lr_of) == len(trainable)  # every trainable parameter is in exactly one group
        assert {n for n, p in trainable.items() if lr_of[id(p)] == 5e-2} == heads, (backbone, finetune)
        assert all(lr_of[id(p)] == 1e-4 for n, p in trainable.items() if n not in heads)
        default = build_optimizer(model, OptimConfig(lr=1e-4))
        assert {g["lr"] for g in default.param_groups} == {1e-4}  # head_lr unset: the head follows lr


def test_weight_decay_shrinks_matrices_and_leaves_biases_and_norms_alone():
    """Zero gradients: Adam's step is 0, so a decayed parameter becomes p · (1 − lr · wd) = p · 0.95 exactly."""
    from rmkit.build import load_for_training

    model, _, _ = load_for_training(load_config(None, ["model.path=tiny-bert"]).model, 64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    exempt = {n for n in before if n.endswith(".bias") or "LayerNorm" in n}
    assert len(exempt) > 20  # tiny BERT has biases and LayerNorms in every layer
    for name, param in model.named_parameters():
        want = before[name] if name in exempt else before[name] * 0.95
        torch.testing.assert_close(param.detach(), want, rtol=1e-6, atol=0, msg=name)


def test_center_coef_adds_its_weighted_mean_squared_reward_sum_to_the_logged_loss(pairs_file, tmp_path):
    """One step over all 16 pairs: loss(center_coef=2) − loss(0) = 2 · mean((r_c + r_r)²) at the initial weights."""
    from accelerate.utils import set_seed

    from rmkit.build import load_for_training
    from rmkit.data import read_pairs
    from rmkit.scoring import Scorer

    plain = rows(run(pairs_file, tmp_path / "plain", "train.batch_size=16", "train.max_steps=1"))[0]["loss"]
    centred = rows(run(pairs_file, tmp_path / "centred", "train.batch_size=16", "train.max_steps=1",
                       "train.center_coef=2"))[0]["loss"]
    set_seed(42)  # train()'s seed: the same initial weights
    model, tokenizer, card = load_for_training(load_config(None, ["model.path=tiny-llama"]).model, 64)
    scorer, pairs = Scorer(model, tokenizer, card), read_pairs(pairs_file)
    chosen, rejected = (torch.tensor(s, dtype=torch.float64) for s in scorer.score_pairs(pairs))
    assert centred - plain == pytest.approx(2 * ((chosen + rejected) ** 2).mean().item(), rel=1e-3)
    assert centred - plain > 1e-4  # random initial rewards are small, but their sum is not zero


def test_early_stopping_saves_the_best_validation_step_not_the_last(pairs_file, tmp_path, monkeypatch):
    """Validation accuracy, scripted, peaks at step 2 of 4; patience 2 stops after step 4 and model/ is step 2."""
    import rmkit.training as training

    scripted = iter([0.5, 0.8, 0.6, 0.7, 0.9])
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    validate = training.validate

    def scripted_validate(model, tokenizer, card, pairs):
        val = validate(model, tokenizer, card, pairs)
        snapshots[len(snapshots) + 1] = {n: p.detach().clone() for n, p in model.hf.named_parameters()}
        val.stats["accuracy"] = next(scripted)
        return val

    monkeypatch.setattr(training, "validate", scripted_validate)
    out = run(pairs_file, tmp_path / "run", "data.val_fraction=0.3", "train.max_steps=8", "train.eval_every=1",
              "train.early_stopping_patience=2", "optim.lr=1e-2", "optim.schedule=constant")
    report = json.loads((out / "eval.json").read_text())
    assert report["stopped_early"] is True and report["best_step"] == 2
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]  # stopped after two validations without a better one
    saved = load_file(out / "model" / "model.safetensors")
    for name, value in saved.items():
        assert torch.equal(value, snapshots[2][name]), f"{name} is not the step-2 weight"
    assert any(not torch.equal(saved[n], snapshots[4][n]) for n in saved)  # and step 4 was different


def test_eval_log_and_save_cadence(pairs_file, tmp_path):
    """7 steps, eval_every 3, log_every 2, save_every 3: validation at 3, 6 and the last step; logs at 2, 4, 6, 7;
    checkpoints at 3, 6, 7 (all kept with keep_checkpoints 5)."""
    out = run(pairs_file, tmp_path / "run", "train.max_steps=7", "train.eval_every=3", "train.log_every=2",
              "train.save_every=3", "train.keep_checkpoints=5")
    assert [r["step"] for r in rows(out, "val")] == [3, 6, 7]
    assert [r["step"] for r in rows(out)] == [2, 4, 6, 7]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-3", "step-6", "step-7"]


def test_max_train_pairs_caps_the_pairs_an_epoch_sees(pairs_file, tmp_path):
    """5 of 16 pairs, batches of 2, one epoch: 3 steps (2 + 2 + 1 pairs), 5 pairs in the step windows."""
    from rmkit.training import load_splits

    out = run(pairs_file, tmp_path / "run", "data.max_train_pairs=5", "train.batch_size=2", "train.epochs=1")
    steps = rows(out)
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert len(load_splits(load_config(None, overrides(pairs_file, out, "data.max_train_pairs=5")).data, 42)["train"]) == 5


def test_max_eval_pairs_caps_each_files_validation_and_test_splits_and_leaves_training_alone(tmp_path):
    """Two files of 60 distinct prompts, splits of 0.25/0.25: capped at 3 per file, each split has 3 + 3 pairs, a
    subset of the uncapped split in its order, and the training pairs are the same list as without the cap."""
    from rmkit.training import load_splits

    files = []
    for name in ("a", "b"):
        rows = [{"prompt": f"{name} question {i}", "chosen": "yes", "rejected": "no"} for i in range(60)]
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = [f"data.paths=[{files[0]}, {files[1]}]", "data.val_fraction=0.25", "data.test_fraction=0.25"]
    full = load_splits(load_config(None, base).data, 42)
    capped = load_splits(load_config(None, [*base, "data.max_eval_pairs=3"]).data, 42)
    assert capped["train"] == full["train"]
    for name in ("val", "test"):
        assert len(full[name]) > 6 and len(capped[name]) == 6
        assert sorted(p.prompt[0] for p in capped[name]) == ["a"] * 3 + ["b"] * 3
        positions = [full[name].index(p) for p in capped[name]]
        assert positions == sorted(positions)


def test_a_resumed_runs_wall_time_includes_the_sessions_before_its_checkpoint(pairs_file, tmp_path):
    """Checkpoints carry the run's wall time so far; a resumed run reports that plus its own session. The step-2
    checkpoint's time is set to 1,000 s, so the resumed run's eval.json must say at least that."""
    out = run(pairs_file, tmp_path / "run", "train.max_steps=2", "train.save_every=1")
    state = out / "checkpoints" / "step-2" / "state.json"
    meta = json.loads(state.read_text())
    first = json.loads((out / "eval.json").read_text())["run"]["wall_time_s"]
    assert 0 < meta["train"]["elapsed_s"] <= first
    meta["train"]["elapsed_s"] = 1000.0
    state.write_text(json.dumps(meta))
    run(pairs_file, out, "train.max_steps=3", "train.save_every=1")
    assert 1000.0 < json.loads((out / "eval.json").read_text())["run"]["wall_time_s"] < 1000.0 + 600


def test_gradient_checkpointing_recomputes_the_layers_and_gives_the_same_loss_and_gradients(
        pairs_file, tmp_path, step_grads, monkeypatch):
    import rmkit.training as training

    forwards: list[int] = []
    load = training.load_for_training

    def counting_load(*args, **kwargs):
        model, tokenizer, card = load(*args, **kwargs)
        forwards.append(0)
        mlp = model.hf.model.layers[0].mlp
        forward = mlp.forward

        def counted(*a, **k):  # not a forward hook: checkpoint's recomputation does not run those
            forwards[-1] += 1
            return forward(*a, **k)

        mlp.forward = counted
        return model, tokenizer, card

    monkeypatch.setattr(training, "load_for_training", counting_load)
    plain = run(pairs_file, tmp_path / "plain", "train.max_steps=1", "optim.max_grad_norm=null")
    ckpt = run(pairs_file, tmp_path / "ckpt", "train.max_steps=1", "optim.max_grad_norm=null",
               "model.gradient_checkpointing=true")
    assert rows(ckpt)[0]["loss"] == pytest.approx(rows(plain)[0]["loss"], rel=1e-6)
    for i in step_grads[0]:
        torch.testing.assert_close(step_grads[1][i], step_grads[0][i], rtol=1e-5, atol=1e-7)
    # training step: one forward without, forward + recompute with; the rest (validation, test) are alike
    assert forwards[1] - forwards[0] == 1


def test_bf16_autocast_runs_the_forward_in_bfloat16_on_cpu_and_keeps_fp32_weights(pairs_file, tmp_path, monkeypatch):
    """CPU bf16 autocast is in every torch this project supports (emulated, slower, without AVX-512 BF16)."""
    import rmkit.training as training

    dtypes: list[torch.dtype] = []
    load = training.load_for_training

    def watching_load(*args, **kwargs):
        model, tokenizer, card = load(*args, **kwargs)
        model.hf.model.layers[0].mlp.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype) if m.training else None)
        return model, tokenizer, card

    monkeypatch.setattr(training, "load_for_training", watching_load)
    out = run(pairs_file, tmp_path / "bf16", "train.max_steps=2", "train.precision=bf16")
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(math.isfinite(r["loss"]) for r in rows(out))
    assert {v.dtype for v in load_file(out / "model" / "model.safetensors").values()} == {torch.float32}
    fp32 = run(pairs_file, tmp_path / "fp32", "train.max_steps=1", "train.precision=fp32")  # and back, same process
    assert dtypes[-1] == torch.float32 and rows(fp32)


def test_fp16_on_cpu_is_refused_with_a_clear_message_instead_of_running_silently_in_fp32(pairs_file, tmp_path):
    """accelerate applies fp16 autocast only on accelerators: on a CPU the run would silently be fp32."""
    from rmkit.training import TrainingError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 autocast is available")
    with pytest.raises(TrainingError, match="train.precision=fp16 needs a GPU.*bf16"):
        run(pairs_file, tmp_path / "fp16", "train.max_steps=1", "train.precision=fp16")


def test_accelerate_launch_of_the_cli_trains_on_two_processes_like_one(pairs_file, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m rmkit train` on CPU (gloo): batch 4 per process ≡ batch 8
    in one. Despite its name, --multi_gpu picks accelerate's torchrun launcher, which is what forms the 2-process group
    on a CPU; `--cpu` would pick its single-process launcher and run one process."""
    single = run(pairs_file, tmp_path / "one", "train.batch_size=8", "train.max_steps=3", "optim.lr=1e-2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml")}
    args = overrides(pairs_file, tmp_path / "two", "train.batch_size=4", "train.max_steps=3", "optim.lr=1e-2")
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
                           "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", "--main_process_port=29537",
                           "-m", "rmkit", "train", *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(single / "model" / "model.safetensors"), load_file(tmp_path / "two" / "model" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3, msg=f"{name} differs between 1 and 2 processes")
    assert "3 steps of 8 pairs" in proc.stderr  # two processes of 4 pairs each
    assert len(rows(tmp_path / "two")) == 3  # one log line per step: only the main process writes
    assert proc.stdout.count("model: ") == 1  # and only the main process prints the result


def test_the_report_reuses_the_saved_models_validation_and_equals_a_fresh_scoring(pairs_file, tmp_path, monkeypatch):
    """The final report takes the validation rewards of the loop's last validation (the saved model's) instead of
    scoring the split again: only the test split is scored, and the numbers equal a fresh scoring of model/."""
    from rmkit.evaluation import summarize
    from rmkit.scoring import Scorer
    from rmkit.splits import load_splits

    calls: list[int] = []
    score_pairs = Scorer.score_pairs
    monkeypatch.setattr(Scorer, "score_pairs", lambda self, pairs: calls.append(len(pairs)) or score_pairs(self, pairs))
    out = run(pairs_file, tmp_path / "run", "data.val_fraction=0.5", "data.test_fraction=0.2", "train.max_steps=4",
              "train.eval_every=2", "optim.lr=1e-2")
    report = json.loads((out / "eval.json").read_text())
    assert calls == [report["test"]["n_pairs"]]  # validation was not scored a second time
    monkeypatch.undo()
    cfg = load_config(out / "config.yaml")
    val = load_splits(cfg.data, cfg.train.seed)["val"]
    scorer = Scorer.load(out / "model")
    fresh = summarize(*scorer.score_pairs(val), val, scorer.card.temperature)
    assert report["val"]["n_pairs"] == len(val) > 0
    assert report["val"]["accuracy"] == fresh["accuracy"]
    assert report["val"]["margin"]["mean"] == pytest.approx(fresh["margin"]["mean"], abs=1e-5)
    assert report["calibration"]["n_pairs"] == len(val)
