"""rmkit.json: the ModelCard (what scoring needs besides the HF weights), read_card, and infer_card, the stated rule
by which a plain Hugging Face `*ForSequenceClassification` folder or hub id without rmkit.json is read.

The reading rule (infer_card), each choice what `AutoModelForSequenceClassification` itself does where it has one:
- pooling: encoders (BERT, RoBERTa/XLM-R, DeBERTa, ...) read their own head on token 0 ('cls'); decoders (Llama, Qwen,
  Gemma, GPT-2, ...) the last token of the text ('last', found from the attention mask). Encoder-decoder models
  (T5, BART) are refused: their classification head reads the decoder, which rmkit does not drive.
- template: the tokenizer's chat template when it has one, else rmkit's plain "Role: content" turns.
- special tokens: added by the tokenizer for encoders and for plain text, not on top of a chat template (which
  writes its own BOS).
- max_length: the smaller of the tokenizer's model_max_length and the position table (less RoBERTa's pad offset).
- outputs: num_labels == 1 is the reward; with num_labels > 1 the outputs are named from config.id2label and
  `reward_label` (a name or an index) must say which one is the reward: it cannot be guessed.
What cannot be inferred is an ImportOptions field; `rmkit import` writes the result once into rmkit.json.

Also LoadOptions: how a model is loaded and batched, the same names on every path that loads one.
Knows transformers configs and tokenizers (duck-typed); knows nothing of weights, devices or data files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rmkit import __version__
from rmkit.backbones import ENCODER_TYPES
from rmkit.config import Precision
from rmkit.encoding import Template, Truncation, default_template
from rmkit.heads import Activation, Head

FORMAT_VERSION = 1
CARD_FILE = "rmkit.json"
Pooling = Literal["last", "mean", "cls", "attention"]
# Families whose position ids start after padding_idx (create_position_ids_from_input_ids in transformers).
PADDING_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                                  "data2vec-text", "longformer", "ibert", "mpnet"})


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
    """Longest token sequence."""
    truncation: Truncation = "left"
    """How a longer text is cut: 'left' drops its start; 'instruction' keeps the last user turn and cuts the middle
    of a long instruction or answer (rmkit.encoding.keep_instruction). Folders written before it existed: 'left'."""
    reward_mean: float = 0.0
    """Mean reward over the validation split (chosen and rejected together)."""
    reward_std: float = 1.0
    """Unbiased std of those rewards."""
    reward_stats_from: Literal["validation", "training"] = "validation"
    """Pairs the mean and std were measured on: 'training' (up to 256 of them) when the run held out no validation
    pairs (data.val_fraction=0)."""
    temperature: float = 1.0
    """Calibration temperature T of P(A preferred) = σ((r_A − r_B) / T)."""
    labels: list[str] = []
    """Names of a plain HF model's outputs when it has several (from config.id2label); empty for one scalar output
    and for rmkit-trained models, whose outputs are `objectives`."""
    reward_index: int = Field(0, ge=0)
    """Which output (logit column) of a plain HF model is the reward (its weighting is one-hot there)."""
    head: Head = "linear"
    """'linear' (transformers' own score head) or 'mlp' (rmkit.heads.mlp_head)."""
    head_hidden: int | None = None
    """Inner width of an MLP head (None: the backbone's hidden size)."""
    head_activation: Activation = "relu"
    """Activation of an MLP head."""
    head_dropout: float = 0.1
    """Dropout of an MLP head."""
    objectives: list[str] = ["reward"]
    """Names of a trained model's outputs, in order (the HF config's id2label says the same)."""
    objective_weights: list[float] = [1.0]
    """Default weighting: reward = Σ weight_i · output_i; normalisation statistics are of this reward."""
    plain_transformers: bool = True
    """Whether AutoModelForSequenceClassification alone gives rmkit's scores (logits[:, 0] for one output; for N
    outputs, its logits are the objectives). False for MLP heads, mean/attention pooling and sentence_pair input:
    load those with rmkit (rmkit.model.load_model, Scorer.load)."""

    @property
    def outputs(self) -> list[str]:
        """THE names of the model's outputs, one per logit column: a trained model's objectives, or a plain HF
        model's id2label labels (['reward'] for one output). Multi-objective heads and named HF outputs are one idea."""
        return self.labels if self.labels else list(self.objectives)

    @property
    def weights(self) -> list[float]:
        """THE default weighting of `outputs` into one reward: objective_weights, or one-hot at reward_index for a
        plain HF model with named outputs (its reward is one column)."""
        if self.labels:
            return [1.0 if i == self.reward_index else 0.0 for i in range(len(self.labels))]
        return list(self.objective_weights)


@dataclass(frozen=True)
class LoadOptions:
    """How a reward model is loaded and batched. The same names are options of ServeConfig, `rmkit score`,
    `rmkit eval`, reward_function and RewardModelEnvironment.

    Args:
        device: 'auto' (CUDA when present), 'cpu', 'cuda:1', ...
        dtype: see Precision ('fp32' by default: scores equal to the checkpoint's own).
        tokenizer: a separate tokenizer folder or hub id (default: the model's own).
        batch_tokens: padded tokens per forward (rows × longest row).
        max_batch: most rows per forward.
        trust_remote_code: run a hub repository's own model code (off unless asked).
    """

    device: str = "auto"
    dtype: Precision = "fp32"
    tokenizer: str | None = None
    batch_tokens: int = 8192
    max_batch: int = 128
    trust_remote_code: bool = False


class ImportOptions(BaseModel):
    """What the reading rule cannot infer for a plain HF model; 'auto'/None applies the rule (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    pooling: Literal["auto", "last", "mean", "cls"] = "auto"
    """'auto': the model's own (encoders 'cls', decoders 'last')."""
    template: Literal["auto", "chat", "plain"] = "auto"
    """'auto': 'chat' when the tokenizer has a chat template, else 'plain'."""
    max_length: int | None = Field(None, gt=0)
    """None: the tokenizer's model_max_length, bounded by the position table."""
    reward_label: str | int | None = None
    """Which output is the reward when num_labels > 1: a name from config.id2label or an index."""


def read_card(model_dir: str | Path) -> ModelCard:
    path = Path(model_dir) / CARD_FILE
    if not path.exists():
        raise FileNotFoundError(f"{model_dir} has no {CARD_FILE}: it is not an rmkit model directory (train one with "
                                "`rmkit train`, or read a plain HF model with `rmkit import`)")
    card = ModelCard.model_validate_json(path.read_text())
    if card.format_version > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {card.format_version}; this rmkit reads up to {FORMAT_VERSION}: upgrade rmkit")
    return card


def is_encoder(config: Any) -> bool:
    return config.model_type in ENCODER_TYPES


def check_supported(config: Any, source: str) -> None:
    """Refuse encoder-decoder models and models without a reward head, with the reason and what to do instead."""
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"{source} is an encoder-decoder model ({config.model_type}); rmkit reads rewards from encoders "
            "(BERT, RoBERTa, DeBERTa) and decoders (Llama, Qwen, Gemma, GPT-2) only, because an encoder-decoder "
            "classification head reads the decoder's last token. Use a decoder or encoder reward model instead."
        )
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any("SequenceClassification" in a or "Reward" in a for a in architectures):
        raise ValueError(f"{source} has no trained reward head: its architecture is {', '.join(architectures)}, not "
                         "a *ForSequenceClassification, so a score head would be made up at random and score noise. "
                         "Give a sequence-classification reward model, or train one with `rmkit train`")


def _pooling(config: Any, source: str) -> Pooling:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if is_encoder(config):
        return "cls"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "last"
    raise ValueError(f"{source}: cannot tell whether model type {config.model_type!r} reads its reward at token 0 "
                     "(an encoder) or at the last token (a decoder); pass pooling='cls' or 'last' to `rmkit import`")


def _max_length(config: Any, tokenizer: Any) -> int:
    """min(tokenizer.model_max_length, position table); RoBERTa's table holds pad_token_id + 1 unusable rows."""
    bounds = [n for n in (getattr(tokenizer, "model_max_length", None),) if isinstance(n, int) and n < 1_000_000]
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        offset = (config.pad_token_id or 0) + 1 if config.model_type in PADDING_OFFSET_TYPES else 0
        bounds.append(positions - offset)
    return min(bounds) if bounds else 2048


def _outputs(config: Any, reward_label: str | int | None, source: str) -> tuple[list[str], int]:
    """(output names, reward index): ([], 0) for one output; named outputs need reward_label to pick the reward."""
    n = config.num_labels
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    names = [id2label.get(i, f"LABEL_{i}") for i in range(n)]
    if n == 1:
        if reward_label not in (None, 0, names[0]):
            raise ValueError(f"{source} has one output ({names[0]}); reward_label={reward_label!r} names none of it")
        return [], 0
    if reward_label is None:
        raise ValueError(f"{source} has {n} outputs ({', '.join(names)}) and nothing says which is the reward; "
                         "pass reward_label=NAME or INDEX (`rmkit import SRC OUT --reward-label NAME`)")
    if isinstance(reward_label, int) or str(reward_label).isdigit():
        index = int(reward_label)
        if not 0 <= index < n:
            raise ValueError(f"{source}: reward_label={reward_label} is outside its {n} outputs (0..{n - 1})")
        return names, index
    if reward_label not in names:
        raise ValueError(f"{source}: reward_label={reward_label!r} is not one of its outputs ({', '.join(names)})")
    return names, names.index(reward_label)


def infer_card(config: Any, tokenizer: Any, source: str, options: ImportOptions | None = None) -> ModelCard:
    """The ModelCard of a plain HF sequence-classification model, by the rule in the module docstring."""
    options = options or ImportOptions()
    check_supported(config, source)
    pooling = _pooling(config, source) if options.pooling == "auto" else options.pooling
    if pooling == "cls" and not is_encoder(config):
        raise ValueError(f"{source}: pooling='cls' reads token 0, which a decoder ({config.model_type}) has not "
                         "attended yet; use 'last'")
    template = default_template(tokenizer) if options.template == "auto" else options.template
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{source}: template='chat' but its tokenizer has no chat template; use 'plain'")
    labels, reward_index = _outputs(config, options.reward_label, source)
    return ModelCard(
        backbone=source, finetune="full", pooling=pooling, template=template,
        add_special_tokens=is_encoder(config) or template == "plain",
        max_length=options.max_length or _max_length(config, tokenizer), labels=labels, reward_index=reward_index,
    )
