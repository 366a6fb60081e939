"""The real packaged backbones (opt in: pytest -m slow). MiniLM (encoder, cls) and SmolLM2-135M (decoder, last token,
pad == eos upstream; LoRA): a model directory built from each loads in plain transformers and gives rmkit's rewards,
and a few training steps on the vendored data run end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import make_model_dir, plain_transformers_rewards
from rmkit.config import load_config
from rmkit.model import merge_lora
from rmkit.scoring import Scorer
from rmkit.training import train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TEXTS = [("How do I boil an egg?", "Boil it for 9 minutes, then cool it in cold water."),
         ("\n\nHuman: Tell me a joke.\n\nAssistant:", "Why did the chicken cross the road? To get to the other side.")]


@pytest.mark.parametrize("backbone, finetune", [("minilm", "full"), ("smollm2-135m", "lora")])
def test_a_real_backbone_model_dir_loads_in_transformers_with_equal_rewards(backbone, finetune, tmp_path):
    model_dir = make_model_dir(tmp_path, backbone, finetune=finetune)
    if finetune == "lora":
        model_dir = merge_lora(model_dir, tmp_path / "merged")  # plain transformers reads the merged folder
    scorer = Scorer.load(model_dir, device="cpu")
    texts = [scorer.render(p, r) for p, r in TEXTS]
    theirs = plain_transformers_rewards(model_dir, texts, scorer.card.add_special_tokens)
    ours = torch.tensor(scorer.score_texts(texts), dtype=theirs.dtype)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    assert ours[0] != ours[1]


@pytest.mark.parametrize("config, overrides", [
    ("default.yaml", []),
    ("example-lora.yaml", ["data.max_length=96"]),
])
def test_a_shipped_config_trains_a_few_steps_on_the_vendored_data(config, overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs name the vendored data relative to the repository
    cfg = load_config(ROOT / "configs" / config, [*overrides, f"train.out_dir={tmp_path / 'run'}", "train.max_steps=3",
                                                  "train.batch_size=4", "data.val_fraction=0.02",
                                                  "data.test_fraction=0.02"])
    run = train(cfg)
    scores = Scorer.load(run / "model", device="cpu").score(*zip(*TEXTS, strict=True))
    assert all(map(torch.isfinite, torch.tensor(scores)))
    assert (run / "eval.json").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 2
