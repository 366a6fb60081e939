"""The reward model: backbone + score head (one output, or N named objectives), readout()/rewards() (THE readout),
and the model directory with rmkit.json. Custom heads and poolings come from rmkit.heads.

Knows transformers and peft; knows nothing of data files, optimisers or HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from rmkit import __version__
from rmkit.backbones import ENCODER_TYPES, resolve
from rmkit.config import ModelConfig
from rmkit.encoding import Template, default_template
from rmkit.heads import (
    POOL_ATTR,
    Activation,
    Head,
    attach,
    head_attr,
    load_custom_weights,
    plain_transformers_equal,
    set_backbone_dropout,
)
from rmkit.loss import last_attended_index as last_attended_index  # re-exported: callers import it from here
from rmkit.rows import write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CARD_FILE = "rmkit.json"
Pooling = Literal["last", "mean", "cls", "attention"]


class ModelCard(BaseModel):
    """rmkit.json: what scoring needs besides the HF weights."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)
    format_version: int = FORMAT_VERSION
    """Version of this file's layout."""
    rmkit_version: str = __version__
    """rmkit release that wrote the folder."""
    backbone: str
    """Backbone as the user named it (alias, hub id or path)."""
    finetune: Literal["full", "lora"]
    """'lora' folders hold a PEFT adapter plus the score head; 'full' folders a whole model."""
    pooling: Pooling
    """Where the reward is read from the last hidden states."""
    template: Template
    """'chat': the tokenizer's chat template; 'plain': rmkit's "Role: content" turns; 'sentence_pair': prompt [SEP]
    response."""
    add_special_tokens: bool
    """Whether the tokenizer adds its own special tokens ([CLS]/[SEP], BOS) around the rendered text."""
    max_length: int
    """Longest token sequence; longer texts lose tokens from the left."""
    reward_mean: float = 0.0
    """Mean reward over the validation split (chosen and rejected together)."""
    reward_std: float = 1.0
    """Unbiased std of those rewards."""
    reward_stats_from: Literal["validation", "training"] = "validation"
    """Pairs the mean and std were measured on: 'training' (up to 256 of them) when the run held out no validation
    pairs (data.val_fraction=0)."""
    temperature: float = 1.0
    """Calibration temperature T of P(A preferred) = σ((r_A − r_B) / T)."""
    head: Head = "linear"
    """'linear' (transformers' own score head) or 'mlp' (rmkit.heads.mlp_head)."""
    head_hidden: int | None = None
    """Inner width of an MLP head (None: the backbone's hidden size)."""
    head_activation: Activation = "relu"
    """Activation of an MLP head."""
    head_dropout: float = 0.1
    """Dropout of an MLP head."""
    objectives: list[str] = ["reward"]
    """Names of the outputs, in order (the HF config's id2label says the same)."""
    objective_weights: list[float] = [1.0]
    """Default weighting: reward = Σ weight_i · output_i; normalisation statistics are of this reward."""
    plain_transformers: bool = True
    """Whether AutoModelForSequenceClassification alone gives rmkit's scores (logits[:, 0] for one output; for N
    outputs, its logits are the objectives). False for MLP heads, mean/attention pooling and sentence_pair input:
    load those with rmkit (rmkit.model.load_model, Scorer.load)."""


def read_card(model_dir: str | Path) -> ModelCard:
    path = Path(model_dir) / CARD_FILE
    if not path.exists():
        raise FileNotFoundError(f"{model_dir} has no {CARD_FILE}: it is not an rmkit model directory (train one with `rmkit train`)")
    card = ModelCard.model_validate_json(path.read_text())
    if card.format_version > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {card.format_version}; this rmkit reads up to {FORMAT_VERSION}: upgrade rmkit")
    return card


def bf16_supported() -> bool:
    """True on a CUDA GPU that computes in bf16 (where precision 'auto' picks bf16); CPU bf16 is slow, so never."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def mixed_precision(precision: str) -> str:
    """accelerate's mixed_precision for a config's precision: 'auto' → 'bf16' or 'no', 'fp32' → 'no', else as is."""
    if precision == "auto":
        return "bf16" if bf16_supported() else "no"
    return {"fp32": "no"}.get(precision, precision)


def is_encoder(config: Any) -> bool:
    return config.model_type in ENCODER_TYPES


def right_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's attended tokens to the front: [[0, 0, 1, 1]] → [[1, 1, 0, 0]] (ids follow the mask)."""
    order = torch.argsort(1 - attention_mask.long(), dim=1, stable=True)  # attended positions first, order kept
    return input_ids.gather(1, order), attention_mask.gather(1, order)


def _hf(model: nn.Module) -> nn.Module:
    """The transformers *ForSequenceClassification module inside PEFT or DDP wrappers."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def head(hf: nn.Module) -> nn.Module:
    return getattr(hf, head_attr(hf))


def readout(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """THE readout: (N, T) ids and mask → (N, K) outputs of the score head (K = number of objectives).

    'last' reads the last attended token found from the mask (never from pad ids: SmolLM2 pads with its EOS), so
    left and right padding agree; position ids come from the mask for the same reason. 'cls' is the HF encoder
    head as is (pooler + classifier on token 0). 'mean' averages the attended hidden states; 'attention' is the
    learned masked weighting of rmkit.heads.AttentionPooling.
    """
    hf = _hf(model)
    if pooling == "cls" and not bool(attention_mask[:, 0].all()):
        input_ids, attention_mask = right_padded(input_ids, attention_mask)  # token 0 must be the real first token
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (N, T)
    if pooling == "cls":
        return hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    backbone = getattr(hf, hf.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    if pooling == "last":
        rows = torch.arange(hidden.size(0), device=hidden.device)
        pooled = hidden[rows, last_attended_index(attention_mask)]  # (N, H)
    elif pooling == "attention":
        pooled = getattr(hf, POOL_ATTR)(hidden, attention_mask)  # (N, H)
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (N, H)
    score_head = head(hf)
    return score_head(pooled.to(next(score_head.parameters()).dtype))  # (N, K)


def rewards(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) rewards: the single output, or Σ_k weights[k] · output_k for a multi-objective head."""
    out = readout(model, input_ids, attention_mask, pooling)  # (N, K)
    if out.size(1) == 1:
        return out[:, 0]
    if weights is None:
        raise ValueError(f"a model with {out.size(1)} objectives needs objective weights to give one reward")
    return out @ weights.to(out.dtype)


class RewardModel(nn.Module):
    """nn.Module face of `rewards`, so DDP/accelerate wrap one forward that returns (N,) rewards; `objectives()`
    gives the (N, K) per-objective outputs. `weights` is the default weighting of the objectives."""

    def __init__(self, hf: nn.Module, pooling: Pooling, weights: Sequence[float] = (1.0,)):
        super().__init__()
        self.hf = hf
        self.pooling = pooling
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, per_objective: bool = False) -> torch.Tensor:
        """(N,) rewards, or with per_objective the (N, K) outputs (through forward, so DDP sees the call)."""
        if per_objective:
            return readout(self.hf, input_ids, attention_mask, self.pooling)
        return rewards(self.hf, input_ids, attention_mask, self.pooling, self.weights)


def distinct_pad(tokenizer: Any) -> None:
    """Give the tokenizer a pad token that is not its EOS when the vocabulary has one.

    rmkit reads rewards from the mask, but HF's *ForSequenceClassification (and TRL) read the last token that is not
    pad_token_id; with pad == eos that lands one token early on text ending in EOS. A distinct pad makes a saved
    folder score the same under plain transformers.
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return
    for candidate in (tokenizer.unk_token, "<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>", tokenizer.bos_token):
        if candidate and candidate != eos and candidate in tokenizer.get_vocab():
            tokenizer.pad_token = candidate
            return
    if tokenizer.pad_token is None:
        tokenizer.pad_token = eos
    log.warning("tokenizer has no pad token distinct from EOS; rmkit scores are right, plain HF pooling may not be")


def load_tokenizer(path: str, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    distinct_pad(tokenizer)
    return tokenizer


def _layers(hf: nn.Module) -> nn.ModuleList:
    n = hf.config.num_hidden_layers
    for module in getattr(hf, hf.base_model_prefix).modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} transformer layers of {type(hf).__name__} to freeze")


def freeze_lower_layers(hf: nn.Module, n: int) -> None:
    """Freeze the input embeddings and the lowest n layers."""
    if n <= 0:
        return
    layers = _layers(hf)
    if n > len(layers):
        raise ValueError(f"model.freeze_layers={n}, but the backbone has only {len(layers)} layers")
    for module in (hf.get_input_embeddings(), *layers[:n]):
        module.requires_grad_(False)


def name_outputs(config: Any, objectives: Sequence[str]) -> None:
    """num_labels = N and id2label/label2id naming the objectives, so plain transformers sees them too."""
    config.num_labels = len(objectives)
    config.id2label = dict(enumerate(objectives))
    config.label2id = {name: i for i, name in enumerate(objectives)}


def _check_choices(cfg: ModelConfig, encoder: bool, pooling: str) -> tuple[list[float], Template | None]:
    """The default objective weights and the template the config asks for, or a clear error."""
    if pooling == "cls" and not encoder:
        raise ValueError("model.pooling='cls' reads token 0, which a decoder has not attended yet; use 'last'")
    if cfg.template == "sentence_pair" and not encoder:
        raise ValueError("model.template='sentence_pair' is for encoders ([CLS] prompt [SEP] response); use 'chat'")
    n = len(cfg.objectives)
    if len(set(cfg.objectives)) != n:
        raise ValueError(f"model.objectives has repeated names: {cfg.objectives}")
    weights = cfg.objective_weights or [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"model.objective_weights has {len(weights)} weights for {n} objectives {cfg.objectives}")
    return weights, None if cfg.template == "auto" else cfg.template


def load_for_training(cfg: ModelConfig, max_length: int) -> tuple[RewardModel, Any, ModelCard]:
    """Backbone + fresh score head (or LoRA adapter + head), its tokenizer, and the card it will be saved with."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve(cfg.path)
    tokenizer = load_tokenizer(path, cfg.trust_remote_code, cfg.revision)
    hf_config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    name_outputs(hf_config, cfg.objectives)
    set_backbone_dropout(hf_config, cfg.backbone_dropout)
    if hasattr(hf_config, "classifier_dropout"):
        hf_config.classifier_dropout = cfg.head_dropout
    hf = AutoModelForSequenceClassification.from_pretrained(
        path, config=hf_config, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
        ignore_mismatched_sizes=True,  # a backbone saved with another number of outputs gets a fresh head
    )
    hf.config.pad_token_id = tokenizer.pad_token_id
    encoder = is_encoder(hf.config)
    pooling = cfg.pooling if cfg.pooling != "auto" else ("cls" if encoder else "last")
    weights, template = _check_choices(cfg, encoder, pooling)
    template = template or default_template(tokenizer)
    attach(hf, pooling, cfg.head, cfg.head_hidden, cfg.head_activation, cfg.head_dropout)
    pooler = getattr(getattr(hf, hf.base_model_prefix), "pooler", None)
    if pooling != "cls" and isinstance(pooler, nn.Module):
        pooler.requires_grad_(False)  # an encoder's pooler reads token 0 only for 'cls'; elsewhere it gets no gradient
    freeze_lower_layers(hf, cfg.freeze_layers)
    if cfg.gradient_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        saved = [head_attr(hf)] + ([POOL_ATTR] if pooling == "attention" else [])
        lora = LoraConfig(
            task_type="SEQ_CLS", r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, modules_to_save=saved,
        )
        hf = get_peft_model(hf, lora)
    card = ModelCard(
        backbone=cfg.path, finetune=cfg.finetune, pooling=pooling, template=template,
        add_special_tokens=template != "chat", max_length=max_length, head=cfg.head, head_hidden=cfg.head_hidden,
        head_activation=cfg.head_activation, head_dropout=cfg.head_dropout, objectives=list(cfg.objectives),
        objective_weights=weights,
        plain_transformers=plain_transformers_equal(encoder, pooling, cfg.head) and template != "sentence_pair",
    )
    return RewardModel(hf, pooling, weights), tokenizer, card


def _atomic_dir(target: Path):
    """A temp folder beside target; `commit(tmp)` swaps it in so readers never see a half-written folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))

    def commit() -> None:
        old = target.with_name(f".{target.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)

    return tmp, commit


def write_card(model_dir: str | Path, fields: dict[str, Any]) -> Path:
    """THE writer of rmkit.json (atomic; every key as given, unknown ones included). Returns its path."""
    return write_json(fields, Path(model_dir) / CARD_FILE)


def save_model(model: nn.Module, tokenizer: Any, card: ModelCard, out_dir: str | Path) -> Path:
    """Write an rmkit model directory atomically: HF weights (or adapter + head), tokenizer, rmkit.json.

    The config also carries OpenRLHF's `mean`/`std` keys, so its reward server can normalise with them.
    """
    out = Path(out_dir)
    tmp, commit = _atomic_dir(out)
    try:
        inner = model.hf if isinstance(model, RewardModel) else model
        inner = getattr(inner, "module", inner)
        hf = _hf(inner)
        hf.config.pad_token_id = tokenizer.pad_token_id
        hf.config.mean, hf.config.std = card.reward_mean, card.reward_std
        inner.save_pretrained(tmp)  # LoRA: adapter + head only; transformers finds the base through adapter_config
        tokenizer.save_pretrained(tmp)
        write_card(tmp, card.model_dump(mode="json"))
        commit()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _attach_saved(hf: nn.Module, card: ModelCard) -> nn.Module:
    """Rebuild an MLP head / attention pooling from the card (random), for the saved weights to be loaded into."""
    return attach(hf, card.pooling, card.head, card.head_hidden, card.head_activation, card.head_dropout)


def load_model(model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(RewardModel in eval mode, tokenizer, card) from an rmkit model directory, full or LoRA, any head."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    model_dir = Path(model_dir)
    card = read_card(model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    adapter = model_dir / "adapter_config.json"
    custom = card.head != "linear" or card.pooling == "attention"
    if adapter.exists():
        from peft import PeftModel

        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        if not Path(base).exists():
            base = resolve(card.backbone)  # the folder moved to another machine: rebuild the alias there
        config = AutoConfig.from_pretrained(base)
        name_outputs(config, card.objectives)
        hf = AutoModelForSequenceClassification.from_pretrained(base, config=config, dtype=dtype,
                                                                ignore_mismatched_sizes=True)
        hf.config.pad_token_id = tokenizer.pad_token_id
        hf = PeftModel.from_pretrained(_attach_saved(hf, card).to(dtype), model_dir)
    else:
        verbosity = hf_logging.get_verbosity()
        if custom:  # transformers would warn that the custom weights are unused and its own head is random
            hf_logging.set_verbosity_error()
        try:
            hf = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype)
        finally:
            hf_logging.set_verbosity(verbosity)
        if custom:
            load_custom_weights(_attach_saved(hf, card).to(dtype), model_dir, card.head, card.pooling)
    model = RewardModel(hf, card.pooling, card.objective_weights).to(device).eval()
    return model, tokenizer, card


def merge_lora(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold a LoRA adapter (and its head) into the backbone: a plain HF folder that scores the same."""
    model, tokenizer, card = load_model(model_dir)
    if card.finetune != "lora":
        raise ValueError(f"{model_dir} is a full fine-tune (finetune='full' in {CARD_FILE}); there is no adapter to merge")
    merged = model.hf.merge_and_unload()
    merged_model = RewardModel(merged, card.pooling, card.objective_weights)
    return save_model(merged_model, tokenizer, card.model_copy(update={"finetune": "full"}), out_dir)
