"""A fresh reward model for training: the backbone with a new score head (linear or MLP, one output or N named
objectives), its pooling, dropout, frozen layers and LoRA adapter, plus the ModelCard it will be saved with.

Knows transformers and peft; knows nothing of data files, optimisers or HTTP. Reading saved models is rmkit.model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rmkit.backbones import resolve
from rmkit.card import ModelCard, is_encoder
from rmkit.config import ModelConfig
from rmkit.encoding import Template, Truncation, default_template
from rmkit.heads import POOL_ATTR, attach, head_attr, plain_transformers_equal, set_backbone_dropout
from rmkit.model import RewardModel, load_tokenizer, name_outputs


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


def _backbone(cfg: ModelConfig) -> tuple[nn.Module, Any]:
    """The HF sequence-classification model with a fresh head of len(cfg.objectives) named outputs, and its tokenizer."""
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
    return hf, tokenizer


def load_for_training(cfg: ModelConfig, max_length: int, truncation: Truncation = "left"
                      ) -> tuple[RewardModel, Any, ModelCard]:
    """Backbone + fresh score head (or LoRA adapter + head), its tokenizer, and the card it will be saved with."""
    hf, tokenizer = _backbone(cfg)
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
        add_special_tokens=template != "chat", max_length=max_length, truncation=truncation, head=cfg.head,
        head_hidden=cfg.head_hidden, head_activation=cfg.head_activation, head_dropout=cfg.head_dropout,
        objectives=list(cfg.objectives), objective_weights=weights,
        plain_transformers=plain_transformers_equal(encoder, pooling, cfg.head) and template != "sentence_pair",
    )
    return RewardModel(hf, pooling, weights), tokenizer, card
