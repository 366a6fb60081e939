"""Objectives and heads end to end on tiny models: each variant trains (loss goes down, every trainable weight
moves), saves, reloads, and scores identically through the server, `rmkit score` and the RL reward function."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmkit.build import load_for_training
from rmkit.config import load_config
from rmkit.training import train

PAIRS = [
    {"prompt": f"Question {i}: is {i} even?", "chosen": "Yes, it is." if i % 2 == 0 else "No, it is odd.",
     "rejected": "I refuse to answer." if i % 3 else "banana banana banana"}
    for i in range(16)
]
RANKED = [
    {"context": f"Name an even number near {i}.", "completions": [
        {"rank": 0, "completion": f"{2 * i} is even."}, {"rank": 1, "completion": f"{2 * i + 1} maybe."},
        {"rank": 2, "completion": "banana banana"}]}
    for i in range(8)
]
RATINGS = [
    {"prompt": f"Is {i} even?", "response": text, "helpfulness": h, "verbosity": v}
    for i in range(8)
    for text, h, v in (("Yes, it is even.", 4.0, 1.0), ("I refuse to answer.", 0.0, 1.0),
                       ("banana banana banana banana banana", 1.0, 3.0))
]
VARIANTS = {
    "bert-mlp-cls": ("tiny-bert", ["model.head=mlp"]),
    "bert-attention": ("tiny-bert", ["model.pooling=attention"]),
    "bert-sentence-pair": ("tiny-bert", ["model.template=sentence_pair"]),
    "llama-mlp-attention": ("tiny-llama", ["model.head=mlp", "model.pooling=attention", "model.head_hidden=8"]),
    "llama-hinge": ("tiny-llama", ["train.objective=hinge"]),
    "llama-lora-mlp": ("tiny-llama", ["model.finetune=lora", "model.head=mlp"]),
    "llama-plackett-luce": ("tiny-llama", ["train.objective=plackett_luce", "data.paths=[{ranked}]"]),
    "llama-regression-huber": ("tiny-llama", ["train.objective=regression", "data.paths=[]",
                                              "data.ratings_paths=[{ratings}]", "train.regression_loss=huber"]),
    "bert-pairs-and-ratings": ("tiny-bert", ["data.ratings_paths=[{ratings}]", "train.ratings_weight=0.5"]),
    "llama-multi-objective": ("tiny-llama", ["model.objectives=[helpfulness,verbosity]",
                                             "model.objective_weights=[1.0,-0.5]", "data.objective_of=[helpfulness]",
                                             "data.ratings_paths=[{ratings}]", "model.head=mlp"]),
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def pairs_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", PAIRS)


def config(pairs_file: Path, out: Path, backbone: str, *extra: str):
    files = {"ranked": write_jsonl(out.parent / "ranked.jsonl", RANKED),
             "ratings": write_jsonl(out.parent / "ratings.jsonl", RATINGS)}
    extra = tuple(e.format(**files) for e in extra)
    return load_config(None, [
        f"data.paths=[{pairs_file}]", "data.val_fraction=0", "data.test_fraction=0", "data.max_length=64",
        f"model.path={backbone}", f"train.out_dir={out}", "train.batch_size=4", "train.log_every=1",
        "train.eval_every=1000", "train.save_every=1000", "optim.warmup_ratio=0", "train.epochs=6", "optim.lr=3e-3",
        "optim.schedule=constant", *extra,
    ])


def saved_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (model_dir / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(model_dir / name)


def trained_names(before, after: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trainable parameters of the fresh model, under the names they are saved with (PEFT drops its wrappers)."""
    out = {}
    for name, param in before.hf.named_parameters():
        if not param.requires_grad:
            continue
        key = name.removeprefix("base_model.model.").replace(".modules_to_save.default", "").replace(".default", "")
        key = next((k for k in after if k.endswith(key) or k == key), key)
        out[key] = param.detach().clone()
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_head_and_objective_trains_and_moves_every_trainable_weight(variant, pairs_file, tmp_path):
    backbone, extra = VARIANTS[variant]
    cfg = config(pairs_file, tmp_path / "run", backbone, *extra)
    torch.manual_seed(cfg.train.seed)
    before, _, _ = load_for_training(cfg.model, 64)
    run = train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    first = [r["loss"] for r in rows if r["epoch"] <= 1]  # an epoch holds the same batches (pairs, lists, ratings)
    last = [r["loss"] for r in rows if r["epoch"] > cfg.train.epochs - 1]
    assert sum(last) / len(last) < sum(first) / len(first)
    after = saved_weights(run / "model")
    initial = trained_names(before, after)
    assert initial, "no trainable parameters found"
    for name, param in initial.items():
        assert name in after, f"{name} was not saved (saved: {sorted(after)[:8]} ...)"
        assert not torch.equal(param, after[name]), f"Parameter {name} has not changed."
    card = json.loads((run / "model" / "rmkit.json").read_text())
    plain = card["head"] == "linear" and card["pooling"] in ("cls", "last") and card["template"] != "sentence_pair"
    assert card["plain_transformers"] is plain
