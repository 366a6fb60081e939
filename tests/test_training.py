"""Training loop: it learns, every weight moves, resume after SIGKILL is exact, NaN stops cleanly, DDP matches."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TRAIN_PAIRS
from rmkit.backbones import resolve
from rmkit.config import load_config
from rmkit.training import TrainingError, train


def config(pairs_file: Path, out: Path, *extra: str):
    return load_config(None, [
        f"data.paths=[{pairs_file}]", "data.val_fraction=0", "data.test_fraction=0", "data.max_length=64",
        "model.path=tiny-llama", f"train.out_dir={out}", "train.batch_size=4", "train.log_every=1",
        "train.eval_every=1000", "train.save_every=1000", "optim.warmup_ratio=0", *extra,
    ])


def weights(run: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (run / "model" / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(run / "model" / name)


def test_training_overfits_sixteen_pairs_and_moves_every_weight(pairs_file, tmp_path):
    from rmkit.build import load_for_training
    from rmkit.evaluation import evaluate
    from rmkit.scoring import Scorer

    cfg = config(pairs_file, tmp_path / "run", "train.epochs=12", "optim.lr=3e-3", "optim.schedule=constant")
    before, _, _ = load_for_training(cfg.model, 64)
    run = train(cfg)
    from rmkit.data import read_pairs

    report = evaluate(Scorer.load(run / "model"), read_pairs(pairs_file))
    assert report["accuracy"] == 1.0
    after = weights(run)
    for name, param in before.hf.named_parameters():
        assert not torch.equal(param.detach(), after[name]), f"Parameter {name} has not changed."
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (run / "config.yaml").exists() and (run / "eval.json").exists()


def test_without_validation_pairs_the_stand_in_rows_and_statistics_are_named_training(pairs_file, tmp_path):
    """data.val_fraction=0: the 'val' rows and the normalisation statistics come from training pairs; metrics.jsonl,
    rmkit.json, eval.json and `rmkit eval`'s check say so instead of passing them off as held out."""
    from rmkit.evaluation import evaluate_files
    from rmkit.model import read_card

    run = train(config(pairs_file, tmp_path / "run", "train.max_steps=2", "train.eval_every=1"))
    val_rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "val"]
    assert len(val_rows) == 2 and all(r["heldout"] is False for r in val_rows)
    assert read_card(run / "model").reward_stats_from == "training"
    assert json.loads((run / "eval.json").read_text())["validation_pairs"] == "training (data.val_fraction=0)"
    report = evaluate_files(run / "model", [pairs_file])
    assert report["training"]["val_heldout"] is False
    assert [f["kind"] for f in report["flags"]] == ["no_heldout"]
    assert "measured on training pairs (data.val_fraction=0)" in report["flags"][0]["message"]


_CHILD = textwrap.dedent("""
    import os, signal, sys
    import safetensors.torch
    from rmkit import checkpoint
    from rmkit.config import load_config
    from rmkit.training import train
    kill_at, where = int(sys.argv[1]), sys.argv[2]
    target = f".tmp-step-{kill_at}"
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    def save_file(tensors, filename, metadata=None):  # checkpoint's safetensors writer, cut in the middle
        if where != "inside_write" or target not in str(filename) or not str(filename).endswith("state.safetensors"):
            return safetensors.torch.save_file(tensors, filename, metadata)
        data = safetensors.torch.save(tensors, metadata)
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            die()  # killed inside the write: half the weights on disk, state.json never written
    replace = os.replace
    def replace_then_die(src, dst):
        replace(src, dst)
        if where == "inside_commit" and str(dst).endswith(f"step-{kill_at}"):
            die()  # the folder is renamed into place, but `latest` still names the previous checkpoint
    commit, save = checkpoint.commit_checkpoint, checkpoint.save_checkpoint
    def commit_then_die(root, step, keep=1):
        out = commit(root, step, keep)
        if where == "after_commit" and step == kill_at:
            die()
        return out
    def save_then_die(root, step, *a, **k):
        out = save(root, step, *a, **k)
        if where == "before_commit" and step == kill_at:
            die()  # the temp folder is complete, never renamed into place
        return out
    checkpoint.commit_checkpoint, checkpoint.save_checkpoint = commit_then_die, save_then_die
    checkpoint.save_file, checkpoint.os.replace = save_file, replace_then_die
    train(load_config(None, sys.argv[3:]))
""")
KILL_OVERRIDES = ["model.finetune=lora", "train.max_steps=8", "train.save_every=2", "optim.lr=1e-2", "train.num_threads=1"]


@pytest.fixture()
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """The uninterrupted 8-step LoRA run every killed-and-resumed run must reproduce bit for bit."""
    threads = torch.get_num_threads()
    tmp = tmp_path_factory.mktemp("straight")
    pairs_file = tmp / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(p) + "\n" for p in TRAIN_PAIRS))
    run = train(config(pairs_file, tmp / "run", *KILL_OVERRIDES))
    torch.set_num_threads(threads)
    return run


@pytest.mark.parametrize(("where", "resume_at"), [("after_commit", "step-4"), ("before_commit", "step-2"),
                                                  ("inside_write", "step-2"), ("inside_commit", "step-2")])
def test_run_killed_with_sigkill_resumes_to_the_same_weights(pairs_file, tmp_path, where, resume_at, straight_run,
                                                             restore_threads):
    """LoRA (its dropout draws random numbers, so the RNG state must come back too), killed at step 4 of 8: after the
    checkpoint is committed, after it is written but before the commit, inside the write of its weights file (half
    of it on disk), and inside the commit (folder renamed, `latest` not yet moved).

    One torch thread in every run (straight, killed child, resumed): bit equality is the claim, and intra-op
    parallel reductions may sum in another order from one process to the next.
    """
    out = tmp_path / "killed"
    args = config_overrides(pairs_file, out, *KILL_OVERRIDES)
    killed = subprocess.run([sys.executable, "-c", _CHILD, "4", where, *args], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "model").exists()
    assert (out / "checkpoints" / "latest").read_text() == resume_at
    if where == "inside_write":
        tmp = out / "checkpoints" / ".tmp-step-4"
        assert (tmp / "state.safetensors").exists() and not (tmp / "state.json").exists()

    resumed = train(config(pairs_file, out, *KILL_OVERRIDES))
    ref, res = weights(straight_run), weights(resumed)
    assert ref.keys() == res.keys()
    for name in ref:
        assert torch.equal(ref[name], res[name]), f"{name} differs after resume"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["split"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 8  # no duplicated or lost log lines
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["index.json", "latest", "step-8"]


def config_overrides(pairs_file: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.paths=[{pairs_file}]", "data.val_fraction=0", "data.test_fraction=0", "data.max_length=64",
            "model.path=tiny-llama", f"train.out_dir={out}", "train.batch_size=4", "train.log_every=1",
            "train.eval_every=1000", "optim.warmup_ratio=0", *extra]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(pairs_file, tmp_path):
    cfg = config(pairs_file, tmp_path / "run", "train.max_steps=6", "train.save_every=2", "optim.max_grad_norm=null",
                 "optim.lr=1e30", "optim.schedule=constant")
    with pytest.raises(TrainingError, match="training diverged"):
        train(cfg)
    assert (tmp_path / "run" / "checkpoints" / "latest").exists() or not list((tmp_path / "run").glob("model"))


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(pairs_file, tmp_path):
    single = train(config(pairs_file, tmp_path / "one", "train.batch_size=8", "train.max_steps=4", "optim.lr=1e-2"))
    script = tmp_path / "ddp.py"
    script.write_text("import sys\nfrom rmkit.config import load_config\nfrom rmkit.training import train\n"
                      "train(load_config(None, sys.argv[1:]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    overrides = config_overrides(pairs_file, tmp_path / "two", "train.batch_size=4", "train.max_steps=4",
                                 "optim.lr=1e-2", "train.save_every=1000")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
                           str(script), *overrides], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(single), weights(tmp_path / "two")
    start = load_file(Path(resolve("tiny-llama")) / "model.safetensors")
    for name in a:  # equal up to float summation order, which Adam amplifies for near-zero gradients
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3, msg=f"{name} differs between 1 and 2 processes")
    moved = max((a[n] - start[n]).abs().max().item() for n in a)
    assert moved > 100 * max((a[n] - b[n]).abs().max().item() for n in a)  # training moved far more than they differ


def test_length_decorrelation_weakens_a_pure_length_signal(tmp_path):
    """Random words whose only signal is length (the shorter side is chosen in 80% of pairs): without the
    decorrelation term the reward gaps follow the length gaps; with it, much less."""
    import random

    from rmkit.data import read_pairs
    from rmkit.scoring import Scorer

    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]
    rows = []
    for i in range(64):
        short, long = rng.randint(1, 4), rng.randint(6, 14)
        a, b = " ".join(rng.choices(words, k=short)), " ".join(rng.choices(words, k=long))
        chosen, rejected = (a, b) if rng.random() < 0.8 else (b, a)
        rows.append({"prompt": f"Item {i}", "chosen": chosen, "rejected": rejected})
    path = tmp_path / "length.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = read_pairs(path)

    def slope(run: Path) -> float:
        scorer = Scorer.load(run / "model")
        delta = torch.tensor(scorer.score([p.prompt for p in pairs], [p.chosen for p in pairs])) - torch.tensor(
            scorer.score([p.prompt for p in pairs], [p.rejected for p in pairs]))
        gap = torch.tensor([len(p.chosen.split()) - len(p.rejected.split()) for p in pairs], dtype=delta.dtype)
        return torch.corrcoef(torch.stack([delta, gap]))[0, 1].item()

    common = ["train.epochs=8", "optim.lr=3e-3", "optim.schedule=constant", "train.batch_size=16"]
    plain = slope(train(config(path, tmp_path / "plain", *common)))
    decorrelated = slope(train(config(path, tmp_path / "decor", *common, "train.length_decorrelation=10")))
    assert plain < -0.6  # without the term, the gap follows length (shorter wins)
    assert abs(decorrelated) < abs(plain) - 0.2


def test_source_weights_set_each_files_share_of_an_epoch(tmp_path):
    from rmkit.training import load_splits

    paths = []
    for name, n in (("big", 40), ("small", 10)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"{name} {i}", "chosen": "a", "rejected": "b"}) + "\n"
                                for i in range(n)))
        paths.append(str(path))

    def shares(*extra: str) -> dict[str, int]:
        cfg = load_config(None, [f"data.paths=[{paths[0]}, {paths[1]}]", "data.val_fraction=0", "data.test_fraction=0",
                                 *extra])
        train_pairs = load_splits(cfg.data, seed=0)["train"]
        return {name: sum(p.prompt.startswith(name) for p in train_pairs) for name in ("big", "small")}

    assert shares() == {"big": 40, "small": 40}  # balanced: the small file oversampled
    assert shares("data.source_weights=[1, 2]") == {"big": 20, "small": 40}  # big subsampled to half the small's share
    assert shares("data.balance_sources=false") == {"big": 40, "small": 10}
    with pytest.raises(ValueError, match="2 files"):
        shares("data.source_weights=[1]")


def test_a_full_disk_fails_with_a_clear_message_and_leaves_the_last_good_checkpoint(pairs_file, tmp_path,
                                                                                      monkeypatch):
    import errno

    from rmkit import checkpoint

    real_save = checkpoint.save_file

    def full_disk(tensors, filename, metadata=None):
        if ".tmp-step-4" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, metadata)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    out = tmp_path / "run"
    cfg = config(pairs_file, out, "train.max_steps=6", "train.save_every=2")
    with pytest.raises(checkpoint.CheckpointError) as err:
        train(cfg)
    ckpts = out / "checkpoints"
    assert str(err.value) == (f"cannot write checkpoint step-4 in {ckpts}: No space left on device [ENOSPC]. The last "
                              f"good checkpoint, {ckpts / 'step-2'}, is untouched; free disk space or make the "
                              "directory writable, then run the same command again to resume from it.")
    assert sorted(p.name for p in ckpts.iterdir()) == ["index.json", "latest", "step-2"]  # the half write is gone
    monkeypatch.setattr(checkpoint, "save_file", real_save)  # space freed: the same command resumes and finishes
    train(cfg)
    assert checkpoint.checkpoint_index(ckpts)[-1]["step"] == 6 and (out / "model").exists()


def test_an_unwritable_output_directory_fails_before_training_with_a_clear_message(pairs_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(TrainingError, match=rf"^cannot write to train.out_dir {blocker}/run: .*writable directory"):
        train(config(pairs_file, blocker / "run", "train.max_steps=1"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; the ENOSPC test covers it")
def test_a_read_only_checkpoint_directory_fails_with_a_clear_message(pairs_file, tmp_path):
    from rmkit.checkpoint import CheckpointError

    out = tmp_path / "run"
    train(config(pairs_file, out, "train.max_steps=2", "train.save_every=2"))
    (out / "checkpoints").chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match=r"Permission denied \[EACCES\].*step-2, is untouched"):
            train(config(pairs_file, out, "train.max_steps=4", "train.save_every=2"))
    finally:
        (out / "checkpoints").chmod(0o700)


def test_keep_checkpoints_keeps_the_last_n_with_step_and_validation_and_a_user_can_go_back(pairs_file, tmp_path):
    from rmkit.checkpoint import checkpoint_index

    out = tmp_path / "run"
    overrides = ["data.val_fraction=0.25", "train.max_steps=6", "train.save_every=2", "train.eval_every=2",
                 "train.keep_checkpoints=2", "optim.lr=1e-2", "optim.schedule=constant"]
    train(config(pairs_file, out, *overrides))
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-4", "step-6"]
    val_rows = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                if r["split"] == "val"}
    index = checkpoint_index(ckpts)
    assert [e["checkpoint"] for e in index] == ["step-4", "step-6"] and [e["step"] for e in index] == [4, 6]
    assert all(r["heldout"] is True for r in val_rows.values())  # data.val_fraction > 0: truly held out
    for entry in index:
        row = val_rows[entry["step"]]
        assert entry["val"] == {"step": entry["step"], "accuracy": row["accuracy"], "loss": row["loss"]}

    # go back to step 4 as README says: point `latest` at it and stop there
    at_four = load_file(ckpts / "step-4" / "state.safetensors")
    (ckpts / "latest").write_text("step-4")
    train(config(pairs_file, out, *overrides[:1], *overrides[2:], "train.max_steps=4"))
    model = weights(out)
    for name, value in at_four.items():
        if name.startswith("model."):
            saved = model[name.removeprefix("model.hf.")]
            assert torch.equal(saved, value), f"{name} is not the step-4 weight"
    assert max(r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())) == 4


def test_pair_loss_uses_soft_labels_label_smoothing_or_plain_bt_as_configured():
    """Δ = ln 3 for both pairs (σ = ¾). Plain BT: ln(4/3) ≈ 0.2877. Soft, labels [0.75, none] with ε = 0.1:
    pair 1 p = 0.75 → 0.5623; pair 2 p = 0.9 → 0.9·ln(4/3) + 0.1·ln 4 = 0.3976; mean ≈ 0.4800. Smoothing alone
    under plain BT ignores the labels: p = 0.9 for both → 0.3976."""
    from rmkit.config import TrainingConfig
    from rmkit.objectives import pair_loss

    chosen, rejected = torch.tensor([math.log(3)] * 2), torch.zeros(2)
    probs = torch.tensor([0.75, math.nan])
    assert pair_loss(TrainingConfig(), chosen, rejected, None, probs).item() == pytest.approx(math.log(4 / 3), abs=1e-4)
    soft = TrainingConfig(objective="soft_bradley_terry", label_smoothing=0.1)
    assert pair_loss(soft, chosen, rejected, None, probs).item() == pytest.approx(0.4800, abs=1e-4)
    smoothed = TrainingConfig(label_smoothing=0.1)
    assert pair_loss(smoothed, chosen, rejected, None, probs).item() == pytest.approx(0.3976, abs=1e-4)


def test_soft_labels_keep_the_reward_gap_near_the_label_logit(tmp_path):
    """Sixteen separable pairs, each labelled P = 0.75: hard BT drives the gaps up without bound, soft BT towards
    logit(0.75) = ln 3 ≈ 1.1, so after the same training its mean gap is much smaller and still positive."""
    path = tmp_path / "soft.jsonl"
    path.write_text("".join(json.dumps({**p, "judge_prob_chosen": 0.75}) + "\n" for p in TRAIN_PAIRS))
    common = ["train.epochs=12", "optim.lr=3e-3", "optim.schedule=constant"]
    hard = json.loads((train(config(path, tmp_path / "hard", *common)) / "metrics.jsonl").read_text().splitlines()[-1])
    soft_run = train(config(path, tmp_path / "soft", *common, "train.objective=soft_bradley_terry"))
    soft = json.loads((soft_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert hard["margin"] > 3.0
    assert 0.3 < soft["margin"] < 2.5
