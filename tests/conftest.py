"""Shared fixtures: tiny random reward models (hidden 32, 2 layers) with the real packaged tokenizers.

`tiny-llama` uses SmolLM2's tokenizer, whose pad token is its EOS, on purpose; `tiny-bert` uses MiniLM's.
Both are built once per machine into the rmkit cache (seconds), then saved as rmkit model directories here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rmkit.config import ModelConfig
from rmkit.model import load_for_training, save_model

torch.set_num_threads(2)


def make_model_dir(root: Path, backbone: str, finetune: str = "full", seed: int = 0, **card_updates) -> Path:
    """A saved rmkit model directory of a random tiny model; LoRA adapters get random (non-zero) B matrices."""
    torch.manual_seed(seed)
    model, tokenizer, card = load_for_training(ModelConfig(path=backbone, finetune=finetune), max_length=128)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in ("lora_B", "score", "classifier", "pooler")):
                param.normal_(0, 0.5)  # a head and adapter that visibly change scores
    return save_model(model, tokenizer, card.model_copy(update=card_updates), root / f"{backbone}-{finetune}-{seed}")


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def llama_dir(models_root) -> Path:
    """rmkit model directory: random tiny Llama, full fine-tune, pooling 'last', chat template."""
    return make_model_dir(models_root, "tiny-llama")


@pytest.fixture(scope="session")
def bert_dir(models_root) -> Path:
    """rmkit model directory: random tiny BERT, full fine-tune, pooling 'cls', plain template."""
    return make_model_dir(models_root, "tiny-bert")


@pytest.fixture(scope="session")
def llama_lora_dir(models_root) -> Path:
    """rmkit model directory: tiny Llama with a LoRA adapter and score head (random, non-zero)."""
    return make_model_dir(models_root, "tiny-llama", finetune="lora")


@pytest.fixture(scope="session")
def llama_scorer(llama_dir):
    from rmkit.scoring import Scorer

    return Scorer.load(llama_dir, device="cpu")


def plain_transformers_rewards(model_dir: Path, texts: list[str], add_special_tokens: bool) -> torch.Tensor:
    """TRL-style scoring with nothing of rmkit: AutoModel + AutoTokenizer, right padding, logits[:, 0]."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    batch = tok(texts, padding=True, padding_side="right", add_special_tokens=add_special_tokens, return_tensors="pt")
    with torch.inference_mode():
        return hf(**batch).logits[:, 0]
