"""The one config loader (YAML + dotted key=value overrides, one error formatter) and the training config tree,
TrainConfig (`rmkit train`). The serve config (rmkit.serveconfig) and the GRPO config (rmkit.grpo) are loaded by the
same functions. Frozen, strict, one docstring per field; knows no torch, models or HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError

DEFAULT_DATA = ("data/hh-rlhf-harmless/pairs.jsonl", "data/pandalm/pairs.jsonl", "data/alpacaeval-gpt4turbo/pairs.jsonl.gz")


Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
"""Weights and activations of a scoring model (serve, score, eval, RL adapters): 'auto' is bf16 on a GPU that has it,
fp32 elsewhere; 'int8' is dynamic int8 quantisation of the backbone's Linear layers, CPU only (model.quantize_int8)."""


class ConfigError(ValueError):
    """A config file or override that does not validate; the message lists every problem with its dotted path."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class LoraConfig(Strict):
    r: int = Field(16, ge=1)
    """Rank of the LoRA update matrices."""
    alpha: float = 32.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names that get adapters, or 'all-linear' for every linear layer of the backbone."""


class ModelConfig(Strict):
    path: str = "minilm"
    """Backbone: a hub id, a local directory, or an alias of a packaged offline backbone
    ('minilm', 'smollm2-135m', and the random test models 'tiny-bert', 'tiny-llama')."""
    finetune: Literal["full", "lora"] = "full"
    """Train every weight, or a LoRA adapter plus the score head."""
    lora: LoraConfig = LoraConfig()
    """LoRA settings, used when finetune is 'lora'."""
    pooling: Literal["auto", "last", "mean", "cls", "attention"] = "auto"
    """Reward read at: 'last' attended token, 'cls', 'mean', 'attention' (learned); 'auto': cls (encoders), last."""
    head: Literal["linear", "mlp"] = "linear"
    """Score head: 'linear' (transformers' own), or 'mlp': Linear → activation → Dropout(head_dropout) → Linear."""
    head_hidden: int | None = Field(None, ge=1)
    """Inner width of the MLP head (default: the backbone's hidden size)."""
    head_activation: Literal["relu", "gelu", "tanh"] = "relu"
    """Activation inside the MLP head."""
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout inside the MLP head (and before an encoder's linear classifier)."""
    backbone_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    """Every dropout probability of the backbone config (hidden, attention); default: the backbone's own."""
    template: Literal["auto", "chat", "plain", "sentence_pair"] = "auto"
    """'chat', 'plain' (Role: text), 'sentence_pair' ([CLS] prompt [SEP] response); 'auto': chat if the tokenizer can."""
    objectives: list[str] = Field(default_factory=lambda: ["reward"], min_length=1)
    """Output names; N > 1: multi-objective (num_labels=N, id2label), trained by data.objective_of or rating keys."""
    objective_weights: list[float] | None = None
    """Default reward = Σ weight_i · score_i (saved in rmkit.json; serving may override it); default 1/N each."""
    freeze_layers: int = Field(0, ge=0)
    """Freeze the embeddings and the lowest N transformer layers (0 = freeze nothing)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""
    trust_remote_code: bool = False
    """Allow model code from the hub repository to run. Off unless you trust the repository."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load."""


class DataConfig(Strict):
    paths: list[str] = list(DEFAULT_DATA)
    """Preference files (JSONL, JSON, CSV, Parquet), datasets saved with save_to_disk, or `datasets.load_dataset`
    sources: a hub name as NAME or NAME:SPLIT (split 'train' by default) or a local folder of data files; relative
    to the working directory. The default is the vendored HH-RLHF harmless, PandaLM and AlpacaEval pairs."""
    format: Literal["auto", "pairs", "hh", "ranked", "ab", "ratings", "helpsteer3", "graded"] = "auto"
    """Row shape; 'auto' recognises each row by its keys. 'helpsteer3': HelpSteer3 preference rows as published;
    'graded': UltraFeedback-style rows (one prompt, several completions with ratings)."""
    prompt_key: str = "prompt"
    """Key of the prompt (or context) column."""
    chosen_key: str = "chosen"
    """Key of the preferred response column."""
    rejected_key: str = "rejected"
    """Key of the other response column."""
    margin_key: str = "margin"
    """Key of the optional numeric margin of a pairs row (how much better chosen is)."""
    label_prob_key: str = "judge_prob_chosen"
    """Key of a pairs row's optional soft label, P(chosen is better) in [0, 1] (AlpacaEval's judge probability); used
    by train.objective 'soft_bradley_terry', ignored by plain Bradley–Terry."""
    response_key: str = "response"
    """Ratings rows: the rated response; graded rows: each completion's response."""
    score_key: str = "score"
    """Ratings rows: the rating (HelpSteer2's 'helpfulness' when this column is absent)."""
    context_key: str = "context"
    """Ranked and HelpSteer3 rows: the prompt (text or chat messages)."""
    completions_key: str = "completions"
    """Ranked and graded rows: the list of completions."""
    rank_key: str = "rank"
    """Ranked rows: each completion's rank (lower is better; equal ranks give no pair)."""
    completion_key: str = "completion"
    """Ranked rows: each completion's text or messages."""
    response_a_key: str = "response_A"
    """A/B rows: the first response."""
    response_b_key: str = "response_B"
    """A/B rows: the second response."""
    preferred_key: str = "preferred"
    """A/B rows: 'A' or 'B'."""
    response1_key: str = "response1"
    """HelpSteer3 rows: the first response."""
    response2_key: str = "response2"
    """HelpSteer3 rows: the second response."""
    preference_key: str = "overall_preference"
    """HelpSteer3 rows: −3 (response1 much better) … 3 (response2 much better); |value| becomes the pair's margin,
    0 is a tie (no pair, counted in a warning)."""
    instruction_key: str = "instruction"
    """Graded rows: the prompt when the row has no prompt_key column (UltraFeedback's 'instruction')."""
    rating_key: str = "overall_score"
    """Graded rows: each completion's rating, higher is better (UltraFeedback: 'overall_score' or
    'fine-grained_score'); equal ratings give no pair."""
    skip_bad: bool = False
    """Skip malformed rows (and report how many) instead of stopping at the first one."""
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of prompts held out for validation (early stopping, normalisation statistics)."""
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of prompts held out for the final test; split by a hash of the prompt."""
    split_salt: str = "rmkit"
    """Salt of the prompt hash; change it for a different deterministic split."""
    balance_sources: bool = True
    """Oversample smaller training files so that every file contributes equally per epoch; keeps one data set
    (for example harmlessness) from dominating what the model learns."""
    source_weights: list[PositiveFloat] | None = None
    """With balance_sources: the relative share of each file (in `paths` order) in a training epoch, for example
    [1, 2] for twice as many pairs from the second file; a file below its share is oversampled, one above it
    subsampled (a different subsample each seed). Default: equal shares."""
    max_length: int = Field(256, ge=8)
    """Tokens per (prompt, response) after rendering; a longer text is cut as `truncation` says."""
    truncation: Literal["left", "instruction"] = "left"
    """'left': drop tokens from the start (older turns, then the instruction), keep the end of the answer.
    'instruction': keep the last user turn and cut the middle of a long instruction or answer, dropping older turns
    first. Stored in rmkit.json, so scoring cuts the same way."""
    max_train_pairs: int | None = None
    """Use only the first N training pairs (after splitting and balancing), for quick runs."""
    max_eval_pairs: int | None = Field(None, ge=1)
    """Validate and test on at most N pairs of each file's validation and test splits (a seeded sample, file order
    kept); the rest of those splits stays unused, never trained on. For large sets or slow backbones."""
    ratings_paths: list[str] = []
    """Ratings files (prompt, response, score or one column per objective), regression beside the pairs."""
    objective_of: list[str] | None = None
    """Multi-objective models: the objective each file in `paths` labels; default: the first."""


    def column_keys(self) -> dict[str, str]:
        """Every `*_key` field, as `read_pairs` takes them: {"prompt_key": "prompt", "margin_key": "margin", ...}."""
        return {name: getattr(self, name) for name in type(self).model_fields if name.endswith("_key")}


class OptimConfig(Strict):
    lr: float = Field(3e-5, gt=0.0)
    """Peak learning rate of the backbone."""
    head_lr: float | None = None
    """Learning rate of the score head; defaults to lr."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW decoupled weight decay (not applied to biases and norms)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of optimiser steps with a linear warmup from 0."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; null turns clipping off."""


class TrainingConfig(Strict):
    out_dir: str = "runs/default"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, model/, eval.json."""
    seed: int = 42
    """Seed of weights, shuffling and dropout."""
    batch_size: int = Field(16, ge=1)
    """Pairs per micro-batch (each forward sees 2x this many sequences)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimiser step."""
    epochs: float = Field(1.0, gt=0.0)
    """Passes over the training pairs (fractions allowed)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps, whatever 'epochs' says."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Mixed precision through accelerate; 'auto' is bf16 on a GPU that supports it, fp32 on CPU (CPU bf16 is slow
    without AVX-512)."""
    length_grouping: bool = True
    """Batch pairs of similar length together to cut padding (shuffled in groups, so still random)."""
    objective: Literal["bradley_terry", "soft_bradley_terry", "hinge", "plackett_luce", "regression"] = "bradley_terry"
    """'bradley_terry': -log σ(r_c − r_r); 'soft_bradley_terry': cross-entropy against each pair's soft label
    P(chosen is better) (data.label_prob_key), 1 − label_smoothing where a pair has none; 'hinge' max(0, m − Δ);
    'plackett_luce' over ranked rows; 'regression' on data.ratings_paths only (data.paths then serve validation and
    test only)."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    """ε: train towards P(chosen is better) = 1 − ε instead of 1 (soft Bradley–Terry with a constant label); with
    'soft_bradley_terry', only for pairs without their own soft label."""
    hinge_margin: float = Field(1.0, gt=0.0)
    """Hinge gap m for rows without their own margin."""
    regression_loss: Literal["mse", "huber"] = "mse"
    """Loss on ratings: mean squared error or Huber (quadratic within ±huber_delta)."""
    huber_delta: float = Field(1.0, gt=0.0)
    """Threshold of the Huber loss."""
    pairs_weight: float = Field(1.0, gt=0.0)
    """Weight of the loss on a batch of pairs or ranked lists."""
    ratings_weight: float = Field(1.0, gt=0.0)
    """Weight of the loss on a batch of ratings."""
    center_coef: float = Field(0.0, ge=0.0)
    """Weight of the reward-centering term mean((r_c + r_r)^2)."""
    length_decorrelation: float = Field(0.0, ge=0.0)
    """Weight of the length-decorrelation term (rmkit.loss.length_correlation_penalty): the squared slope of r_c − r_r
    on the standardised length gap, per batch. Discourages length as the signal: a reward model that learns "shorter
    wins" from refusal data, or "longer wins" from helpfulness data, is what RL then exploits."""
    eval_every: int = Field(50, ge=1)
    """Validate every N optimiser steps (and at the end)."""
    save_every: int = Field(50, ge=1)
    """Write a resumable checkpoint every N optimiser steps."""
    keep_checkpoints: int = Field(1, ge=1)
    """Keep the last N checkpoints (checkpoints/step-N); checkpoints/index.json lists each with its step and the
    last validation accuracy and loss before it. To go back to one, write its name into checkpoints/latest and run
    again (with train.max_steps=N to stop there); the checkpoints after it are then replaced."""
    early_stopping_patience: int | None = None
    """Stop after N validations without a better validation accuracy; the best model is the one saved."""
    log_every: int = Field(10, ge=1)
    """Write a metrics.jsonl line every N optimiser steps."""
    num_threads: int | None = None
    """torch CPU threads; default: torch's choice."""
    resume: bool = True
    """Continue from the last checkpoint in out_dir when there is one."""


class TrainConfig(Strict):
    model: ModelConfig = ModelConfig()
    """The backbone and how it is trained."""
    data: DataConfig = DataConfig()
    """Where the preference pairs come from and how they are split and cut."""
    optim: OptimConfig = OptimConfig()
    """Optimiser and schedule."""
    train: TrainingConfig = TrainingConfig()
    """Loop, precision, checkpoints and logging."""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {key!r} is not a section")
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["optim.lr=1e-5", "data.paths=[a.jsonl]"]` → nested dict; values are read as YAML (1e-5 → float)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (for example optim.lr=1e-5)")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw else "")
    return tree


def merge_mappings(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_mappings(merged[key], value)
        else:
            merged[key] = value
    return merged


Tree = TypeVar("Tree", bound=BaseModel)


def validate_config(schema: type[Tree], raw: dict[str, Any], source: str, kind: str) -> Tree:
    """THE config error formatter: validate a nested dict, reporting every problem at once with its dotted path.

    Example: "bad.yaml is not a valid serve config:\n  shaping.clip  Input should be greater than 0".
    """
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}  {err['msg']}" for err in exc.errors()]
        raise ConfigError(f"{source} is not a valid {kind}:\n" + "\n".join(lines)) from None


def load_tree(schema: type[Tree], path: str | Path | None, overrides: Sequence[str], kind: str, shape: str) -> Tree:
    """THE config loader: a YAML mapping (the defaults when path is None), key=value overrides, then validate_config.
    `kind` names the config in errors; `shape` says what a valid file looks like."""
    raw = merge_mappings(read_yaml_mapping(path, shape), parse_overrides(list(overrides)))
    return validate_config(schema, raw, str(path or "defaults"), kind)


def build_config(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate a nested dict as a TrainConfig; every problem is reported at once, with dotted paths."""
    return validate_config(TrainConfig, raw, source, "rmkit config")


def read_yaml_mapping(path: str | Path | None, shape: str) -> dict[str, Any]:
    """A YAML file's top-level mapping ({} for None or an empty file); `shape` says what was expected, for the error."""
    if path is None:
        return {}
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {shape}")
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from the defaults when path is None) and apply key=value overrides."""
    return load_tree(TrainConfig, path, overrides or [], "rmkit config",
                     "a config is a YAML mapping with sections model, data, optim, train")


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML, loadable again by load_config."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
