"""Heads, multi-objective outputs and reward composition through every reward path: a saved model scores the same
in process, through the server (/score, /verify), `rmkit score` and the RL reward function; objective weights change
at serve time; rule terms are components that sum to the reward; plain transformers reads N named outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from rmkit.build import load_for_training
from rmkit.cli import main
from rmkit.config import ModelConfig
from rmkit.ensemble import Ensemble
from rmkit.grpo import load_grpo_config, trl_args
from rmkit.model import save_model
from rmkit.rl import reward_function
from rmkit.scoring import Scorer
from rmkit.server import ServeConfig, create_app
from rmkit.shaping import ShapingConfig

PROMPTS = ["Name a prime.", "What colour is the sky?", "Say hi."]
RESPONSES = ["7 is prime.", "I cannot help with that request, sorry.", "Hello there, how can I help you today?"]
ITEMS = {"items": [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES, strict=True)]}
HEADS = {
    "llama-mlp-attention": dict(path="tiny-llama", head="mlp", pooling="attention", head_hidden=8),
    "bert-mlp-cls": dict(path="tiny-bert", head="mlp"),
    "bert-attention-sentence-pair": dict(path="tiny-bert", pooling="attention", template="sentence_pair"),
    "llama-lora-mlp": dict(path="tiny-llama", finetune="lora", head="mlp"),
    "bert-multi-objective": dict(path="tiny-bert", objectives=["helpful", "safe"], objective_weights=[1.0, 0.5]),
    "llama-multi-objective-mlp": dict(path="tiny-llama", objectives=["helpful", "safe", "brief"], head="mlp"),
}


def build(root: Path, name: str) -> Path:
    """A saved model directory with random, visibly non-zero head, pooling and adapter weights."""
    torch.manual_seed(0)
    model, tokenizer, card = load_for_training(ModelConfig(**HEADS[name]), max_length=64)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if any(k in pname for k in ("lora_B", "score", "classifier", "rmkit_pool")):
                param.normal_(0, 0.5)
    return save_model(model, tokenizer, card, root / name)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("heads")
    return {name: build(root, name) for name in HEADS}


def served(model_dir: Path, shaping: ShapingConfig) -> TestClient:
    return TestClient(create_app(lambda: Ensemble.load([model_dir], shaping, device="cpu"),
                                 ServeConfig(model_dirs=[str(model_dir)], shaping=shaping)))


@pytest.mark.parametrize("name", list(HEADS))
def test_a_saved_model_scores_identically_in_process_served_by_rmkit_score_and_in_the_rl_function(name, dirs, tmp_path):
    model_dir = dirs[name]
    shaping = ShapingConfig(normalize="none", clip=None)
    reference = np.array(Scorer.load(model_dir, device="cpu").score(PROMPTS, RESPONSES))
    assert reference.std() > 1e-4  # the texts really score differently
    with served(model_dir, shaping) as client:
        body = {"items": [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES, strict=True)]}
        answer = client.post("/score", json=body).json()
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(PROMPTS, RESPONSES, strict=True)))
    assert main(["score", str(model_dir), str(rows), "--out", str(tmp_path / "out.jsonl"), "--set", "device=cpu",
                 "--set", "shaping.normalize=none", "--set", "shaping.clip=null"]) == 0
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    rl = reward_function(str(model_dir), device="cpu", normalize="none", clip=None)
    rl_out = rl.score(PROMPTS, RESPONSES)
    for got in (answer["rewards"], [r["reward"] for r in scored], rl(PROMPTS, RESPONSES)):
        np.testing.assert_allclose(got, reference, atol=1e-5)
    if "objectives" in HEADS[name]:
        names = HEADS[name]["objectives"]
        assert list(answer["objective_rewards"]) == names and list(scored[0]["objective_rewards"]) == names
        per = np.array([answer["objective_rewards"][n] for n in names])  # (K, N)
        weights = HEADS[name].get("objective_weights") or [1 / len(names)] * len(names)
        np.testing.assert_allclose(np.asarray(weights) @ per, reference, atol=1e-5)
        np.testing.assert_allclose([rl_out.objectives[n] for n in names], per, atol=1e-5)


def test_objective_weights_and_gates_change_at_serve_time_without_retraining(dirs):
    model_dir = dirs["bert-multi-objective"]
    base = ShapingConfig(normalize="none", clip=None)
    with served(model_dir, base) as client:
        first = client.post("/score", json=ITEMS).json()
    helpful, safe = np.array(first["objective_rewards"]["helpful"]), np.array(first["objective_rewards"]["safe"])
    only_safe = base.model_copy(update={"objective_weights": {"safe": 2.0}})
    threshold = float(np.median(helpful))
    gated = base.model_copy(update={"objective_gates": {"helpful": threshold}, "objective_gate_value": -9.0})
    for shaping, expected in ((only_safe, 2 * safe), (gated, np.where(helpful < threshold, -9.0, helpful + 0.5 * safe))):
        with served(model_dir, shaping) as client:
            out = client.post("/score", json=ITEMS).json()
        np.testing.assert_allclose(out["rewards"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="objectives are"):
        Ensemble.load([model_dir], base.model_copy(update={"objective_weights": {"honest": 1.0}}), device="cpu")


def test_rule_terms_and_a_classifier_gate_are_components_that_sum_to_the_reward(dirs):
    model_dir, safety = dirs["llama-mlp-attention"], dirs["bert-mlp-cls"]
    safety_scores = np.array(Scorer.load(safety, device="cpu").score(PROMPTS, RESPONSES))
    low, mid, _ = np.sort(safety_scores)
    threshold = float((low + mid) / 2)  # exactly one item fails the gate, far from float noise
    shaping = ShapingConfig.model_validate({
        "normalize": "none", "clip": None, "length_penalty": "linear", "length_coef": 0.01,
        "rules": [{"kind": "length", "name": "words", "threshold": 4, "coef": 0.1},
                  {"kind": "regex", "name": "has_digit", "pattern": r"\d", "match": 0.5, "miss": 0.0},
                  {"kind": "keyword", "name": "refusal", "keywords": ["I cannot"], "value": -1.0},
                  {"kind": "classifier", "name": "safety", "source": str(safety), "mode": "gate",
                   "threshold": threshold, "gate_value": -3.0}]})
    with served(model_dir, shaping) as client:
        out = client.post("/score", json=ITEMS).json()
        verify = client.post("/verify", json={"responses_create_params": {"input": PROMPTS[1]}, "response": {"output": [
            {"type": "message", "content": [{"type": "output_text", "text": RESPONSES[1]}]}]}}).json()
    parts = {k: np.array(v) for k, v in out["reward_components"].items()}
    assert list(parts) == ["reward_model", "length_penalty", "words", "has_digit", "refusal", "safety"]
    np.testing.assert_allclose(sum(parts.values()), out["rewards"], atol=1e-9)
    assert parts["refusal"].tolist() == [0.0, -1.0, 0.0] and parts["has_digit"].tolist() == [0.5, 0.0, 0.0]
    failed = safety_scores < threshold
    assert failed.sum() == 1 and np.allclose(np.array(out["rewards"])[failed], -3.0)
    assert verify["reward"] == pytest.approx(sum(verify["reward_components"].values()))
    assert verify["refusal"] == -1.0 and verify["reward"] == pytest.approx(out["rewards"][1], abs=1e-5)


def test_a_classifier_term_can_be_another_served_model(dirs):
    """source: an `rmkit serve` URL. The term scores through the server's raw rewards, equal to loading it locally."""
    from live_server import live_server
    from rmkit.composition import load_classifier
    from rmkit.rules import ClassifierTerm

    safety = dirs["bert-mlp-cls"]
    raw = ShapingConfig(normalize="none", clip=None)
    local = np.array(Scorer.load(safety, device="cpu").score(PROMPTS, RESPONSES))
    app = create_app(lambda: Ensemble.load([safety], raw, device="cpu"), ServeConfig(model_dirs=[str(safety)], shaping=raw))
    with live_server(app) as live:
        term = ClassifierTerm(name="safety", source=live.url, mode="penalty")
        np.testing.assert_allclose(load_classifier(term)(PROMPTS, RESPONSES), local, atol=1e-5)


def test_weighted_ensembles_use_member_weights(dirs):
    a, b = dirs["llama-mlp-attention"], dirs["bert-mlp-cls"]
    ra, rb = (np.array(Scorer.load(d, device="cpu").score(PROMPTS, RESPONSES)) for d in (a, b))
    shaping = ShapingConfig(normalize="none", clip=None, ensemble="weighted", member_weights=[3.0, 1.0])
    out = Ensemble.load([a, b], shaping, device="cpu").rewards(PROMPTS, RESPONSES)
    np.testing.assert_allclose(out.shaped, (3 * ra + rb) / 4, atol=1e-5)


@pytest.mark.parametrize("name", ["bert-multi-objective"])
def test_plain_transformers_loads_a_multi_objective_model_with_named_outputs(name, dirs):
    from transformers import AutoModelForSequenceClassification

    model_dir = dirs[name]
    hf = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert hf.config.num_labels == 2 and hf.config.id2label == {0: "helpful", 1: "safe"}
    scorer = Scorer.load(model_dir, device="cpu")
    ids = scorer.encoder.encode([scorer.render(p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)])
    ours = scorer.score_objectives_ids(ids)
    for row, expected in zip(ids, ours, strict=True):
        with torch.inference_mode():
            logits = hf(input_ids=torch.tensor([row])).logits[0]
        np.testing.assert_allclose(logits.numpy(), expected, atol=1e-5)
    assert json.loads((model_dir / "rmkit.json").read_text())["plain_transformers"] is True
    assert json.loads((dirs["bert-mlp-cls"] / "rmkit.json").read_text())["plain_transformers"] is False


def test_grpo_takes_several_weighted_reward_functions(tmp_path):
    cfg = load_grpo_config(None, ["reward.source=a", "reward.weight=1.0",
                                  "rewards=[{source: b, name: safety, weight: 0.5, shaping: {clip: 2.0}}]",
                                  f"train.out_dir={tmp_path}"])
    assert [r.name for r in [cfg.reward, *cfg.rewards]] == ["rmkit", "safety"]
    assert trl_args(cfg.train, tmp_path, [1.0, 0.5]).reward_weights == [1.0, 0.5]
    from rmkit.config import ConfigError

    with pytest.raises(ConfigError, match="names must differ"):
        load_grpo_config(None, ["rewards=[{source: b}]"])
