"""Shared fixtures: tiny random reward models (hidden 32, 2 layers) with the real packaged tokenizers.

`tiny-llama` uses SmolLM2's tokenizer, whose pad token is its EOS, on purpose; `tiny-bert` uses MiniLM's.
Both are built once per machine into the rmkit cache (seconds), then saved as rmkit model directories here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rmkit.build import load_for_training
from rmkit.config import ModelConfig
from rmkit.model import save_model

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


QWEN_TEMPLATE = (  # Qwen2-style ChatML with a default system turn
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)
GEMMA_TEMPLATE = (  # Gemma-style turns: the template writes BOS; 'assistant' is 'model'
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
)
HF_FAMILIES = ("llama", "qwen2", "gemma", "gpt2", "bert", "roberta", "xlm-roberta", "deberta-v2")


def _hf_config(family: str, vocab: int, pad: int, num_labels: int):
    import transformers as T

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "num_labels": num_labels, "pad_token_id": pad, "vocab_size": vocab}
    encoder = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 514}
    configs = {
        "llama": lambda: T.LlamaConfig(**small, num_key_value_heads=2, tie_word_embeddings=False),
        "qwen2": lambda: T.Qwen2Config(**small, num_key_value_heads=1),
        "gemma": lambda: T.GemmaConfig(**small, num_key_value_heads=1, head_dim=16),
        "gpt2": lambda: T.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, num_labels=num_labels,
                                     pad_token_id=pad, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
        "bert": lambda: T.BertConfig(**small, **encoder),
        "roberta": lambda: T.RobertaConfig(**small, **encoder),
        "xlm-roberta": lambda: T.XLMRobertaConfig(**small, **encoder),
        "deberta-v2": lambda: T.DebertaV2Config(**small, **encoder, relative_attention=True, position_buckets=16,
                                                pos_att_type=["p2c", "c2p"]),
        "t5": lambda: T.T5Config(vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                                 num_labels=num_labels, pad_token_id=pad, decoder_start_token_id=pad),
    }
    return configs[family]()


def save_hf_model(root: Path, family: str, chat_template: str | None = None, seed: int = 0, num_labels: int = 1,
                  id2label: dict[int, str] | None = None) -> Path:
    """A plain transformers *ForSequenceClassification folder as hub reward models ship: tokenizer with a pad token
    distinct from EOS (pad_token_id in the config), an optional chat template, and no rmkit metadata at all.

    Decoders use SmolLM2's tokenizer; encoders MiniLM's WordPiece one ([CLS] ... [SEP], pad 0).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rmkit.backbones import resolve

    torch.manual_seed(seed)
    encoder = family in ("bert", "roberta", "xlm-roberta", "deberta-v2")
    tokenizer = AutoTokenizer.from_pretrained(resolve("tiny-bert" if encoder else "tiny-llama"))
    if not encoder:
        tokenizer.pad_token = "<|endoftext|>"  # as Skywork-style RMs do: a pad that is not the EOS
    tokenizer.chat_template = chat_template
    config = _hf_config(family, len(tokenizer), tokenizer.pad_token_id, num_labels)
    if id2label:
        config.id2label, config.label2id = id2label, {v: k for k, v in id2label.items()}
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in ("score", "classifier", "pooler")):
                param.normal_(0, 0.5)  # a head that visibly separates texts
    out = root / f"hf-{family}-{seed}{'-chat' if chat_template else ''}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def hf_llama_dir(models_root) -> Path:
    """Plain transformers Llama SeqCls folder (pad_token_id set, SmolLM2's chat template), no rmkit.json."""
    from transformers import AutoTokenizer

    from rmkit.backbones import resolve

    template = AutoTokenizer.from_pretrained(resolve("tiny-llama")).chat_template
    return save_hf_model(models_root, "llama", chat_template=template)


@pytest.fixture(scope="session")
def hf_roberta_dir(models_root) -> Path:
    """Plain transformers RoBERTa SeqCls folder (classifier head on <s>, positions after padding_idx), no rmkit.json."""
    return save_hf_model(models_root, "roberta")


TRAIN_PAIRS = [
    {"prompt": f"Question {i}: is {i} even?", "chosen": "Yes, it is." if i % 2 == 0 else "No, it is odd.",
     "rejected": "I refuse to answer." if i % 3 else "banana banana banana"}
    for i in range(16)
]


@pytest.fixture()
def pairs_file(tmp_path) -> Path:
    """16 tiny training pairs as JSONL (the training tests' data)."""
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in TRAIN_PAIRS))
    return path
