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
from typing import Any

import torch
from torch import nn

from rmkit.backbones import resolve
from rmkit.card import CARD_FILE, ImportOptions, ModelCard, Pooling, check_supported, infer_card, is_encoder, read_card
from rmkit.heads import POOL_ATTR, attach, head_attr, load_custom_weights
from rmkit.loss import last_attended_index as last_attended_index  # re-exported: callers import it from here
from rmkit.rows import write_json

log = logging.getLogger(__name__)
__all__ = ["CARD_FILE", "ModelCard", "read_card", "is_encoder", "last_attended_index"]  # homes: rmkit.card, rmkit.loss


def bf16_supported() -> bool:
    """True on a CUDA GPU that computes in bf16 (where precision 'auto' picks bf16); CPU bf16 is slow, so never."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def mixed_precision(precision: str) -> str:
    """accelerate's mixed_precision for a config's precision: 'auto' → 'bf16' or 'no', 'fp32' → 'no', else as is."""
    if precision == "auto":
        return "bf16" if bf16_supported() else "no"
    return {"fp32": "no"}.get(precision, precision)


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


def position_ids(hf: nn.Module, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) positions counted over attended tokens only, so left and right padding agree: [[0,1,1]] → [[0,0,1]].

    RoBERTa-family embeddings (a position table with a padding_idx) number real tokens from padding_idx + 1 and pads
    padding_idx, as transformers' create_position_ids_from_input_ids does: [[0,1,1]] with padding_idx 1 → [[1,2,3]].
    """
    mask = attention_mask.long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (N, T)
    table = getattr(getattr(getattr(hf, hf.base_model_prefix, None), "embeddings", None), "position_embeddings", None)
    pad = getattr(table, "padding_idx", None)
    if pad is None:
        return positions
    return (positions + pad + 1) * mask + pad * (1 - mask)


def readout(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """THE readout: (N, T) ids and mask → (N, K) outputs of the score head (K = card.outputs: a trained model's
    objectives or a plain HF model's named labels). `rewards` weighs these into one reward.

    'last' reads the last attended token found from the mask (never from pad ids: SmolLM2 pads with its EOS), so
    left and right padding agree; position ids come from the mask for the same reason. 'cls' is the HF encoder
    head as is (pooler + classifier on token 0). 'mean' averages the attended hidden states; 'attention' is the
    learned masked weighting of rmkit.heads.AttentionPooling.
    """
    hf = _hf(model)
    if pooling == "cls" and not bool(attention_mask[:, 0].all()):
        input_ids, attention_mask = right_padded(input_ids, attention_mask)  # token 0 must be the real first token
    positions = position_ids(hf, attention_mask)
    if pooling == "cls":
        return hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    backbone = getattr(hf, hf.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
    if pooling == "last":
        rows = torch.arange(hidden.size(0), device=hidden.device)
        pooled = hidden[rows, last_attended_index(attention_mask)]  # (N, H)
    elif pooling == "attention":
        pooled = getattr(hf, POOL_ATTR)(hidden, attention_mask)  # (N, H)
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (N, H)
    score_head = head(hf)
    weight = next(score_head.parameters(), None)
    return score_head(pooled.to(weight.dtype if isinstance(weight, torch.Tensor) else torch.float32))  # (N, K)


def rewards(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """THE reward readout: (N,) rewards, the single output, or Σ_k weights[k] · output_k for N outputs (a
    multi-objective head, or a plain HF model's named outputs with one-hot weights at its reward_index).

    Every path that reads a reward calls this.
    """
    out = readout(model, input_ids, attention_mask, pooling)  # (N, K)
    if out.size(1) == 1:
        return out[:, 0]
    if weights is None:
        raise ValueError(f"a model with {out.size(1)} outputs needs output weights to give one reward")
    return out @ weights.to(out.device, out.dtype)


class RewardModel(nn.Module):
    """nn.Module face of `rewards`, so DDP/accelerate wrap one forward that returns (N,) rewards; with
    per_objective=True it gives the (N, K) outputs. `weights` is the default weighting of the outputs (card.weights)."""

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


def name_outputs(config: Any, objectives: Sequence[str]) -> None:
    """num_labels = N and id2label/label2id naming the objectives, so plain transformers sees them too."""
    config.num_labels = len(objectives)
    config.id2label = dict(enumerate(objectives))
    config.label2id = {name: i for i, name in enumerate(objectives)}


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


def _plain_card(source: str, tokenizer: Any, trust_remote_code: bool, options: ImportOptions | None) -> ModelCard:
    """The card of a folder or hub id without rmkit.json, by rmkit.card's reading rule (refusals before any weights)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    check_supported(config, source)
    return infer_card(config, tokenizer, source, options)


def _load_plain(source: str, dtype: torch.dtype, trust_remote_code: bool) -> nn.Module:
    """A *ForSequenceClassification whose head comes from the checkpoint; a freshly made (random) head is refused."""
    from transformers import AutoModelForSequenceClassification

    hf, info = AutoModelForSequenceClassification.from_pretrained(
        source, dtype=dtype, trust_remote_code=trust_remote_code, output_loading_info=True
    )
    head_names = {n for n, _ in hf.named_parameters() if n.split(".")[0] in ("score", "classifier")}
    fresh = sorted(set(info.get("missing_keys", [])) & head_names)
    if fresh:
        raise ValueError(f"{source} has no trained reward head ({', '.join(fresh)} missing from its weights; its "
                         f"architecture is {', '.join(hf.config.architectures or ['unknown'])}): a random head would "
                         "score noise. Give a *ForSequenceClassification reward model, or train one with `rmkit train`")
    return hf


def load_model(model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               tokenizer: str | None = None, trust_remote_code: bool = False, options: ImportOptions | None = None):
    """(RewardModel in eval mode, tokenizer, card) from an rmkit model directory (full or LoRA), or from a plain HF
    sequence-classification folder or hub id without rmkit.json, read by rmkit.card's rule (`options` fill what the
    rule cannot infer). `tokenizer` is a separate tokenizer folder or hub id (default: the model's own)."""
    source = str(model_dir)
    model_dir = Path(model_dir)
    if not model_dir.exists() and (model_dir.is_absolute() or source.startswith(".") or source.count("/") > 1):
        raise FileNotFoundError(f"{source}: no such model directory (nor a hub id such as org/name)")
    tok = load_tokenizer(tokenizer or source, trust_remote_code)
    if not (model_dir / CARD_FILE).exists():
        card = _plain_card(source, tok, trust_remote_code, options)
        hf = _load_plain(source, dtype, trust_remote_code)
        return RewardModel(hf, card.pooling, card.weights).to(device).eval(), tok, card
    card = read_card(model_dir)
    adapter = model_dir / "adapter_config.json"
    custom = card.head != "linear" or card.pooling == "attention"
    if adapter.exists():
        from peft import PeftModel
        from transformers import AutoConfig, AutoModelForSequenceClassification

        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        if not Path(base).exists():
            base = resolve(card.backbone)  # the folder moved to another machine: rebuild the alias there
        config = AutoConfig.from_pretrained(base)
        name_outputs(config, card.objectives)
        hf = AutoModelForSequenceClassification.from_pretrained(base, config=config, dtype=dtype,
                                                                ignore_mismatched_sizes=True)
        hf.config.pad_token_id = tok.pad_token_id
        hf = PeftModel.from_pretrained(_attach_saved(hf, card).to(dtype), model_dir)
    elif custom:
        hf = _load_custom(model_dir, card, dtype)
    else:
        hf = _load_plain(source, dtype, trust_remote_code)
    return RewardModel(hf, card.pooling, card.weights).to(device).eval(), tok, card


def _load_custom(model_dir: Path, card: ModelCard, dtype: torch.dtype) -> nn.Module:
    """A full fine-tune with an MLP head or attention pooling: transformers' model, then rmkit's head weights."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers would warn that the custom weights are unused, its head random
    try:
        hf = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
    hf = _attach_saved(hf, card).to(dtype)
    load_custom_weights(hf, model_dir, card.head, card.pooling)
    return hf


def quantize_int8(model: RewardModel) -> RewardModel:
    """Dynamic int8 quantisation (CPU) of the backbone's Linear layers, in place; the reward head stays fp32.

    Weights are stored as int8 and activations quantised per batch on the fly (torch.ao's quantize_dynamic): no
    calibration data, about 4× smaller Linear weights. Measured speed and accuracy: benchmarks/bench_int8.py.
    """
    import warnings

    from torch.ao.quantization import quantize_dynamic

    hf = _hf(model.hf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices: the API still works in the pinned torch
        quantize_dynamic(getattr(hf, hf.base_model_prefix), {nn.Linear}, dtype=torch.qint8, inplace=True)
    return model


def import_model(source: str, out_dir: str | Path, options: ImportOptions | None = None, tokenizer: str | None = None,
                 trust_remote_code: bool = False) -> Path:
    """`rmkit import`: copy a plain HF reward model (folder or hub id) into an rmkit model directory with the
    rmkit.json its reading rule gives (plus `options`), written once so every later step reads the same card."""
    if (Path(source) / CARD_FILE).exists():
        raise ValueError(f"{source} already has {CARD_FILE}: it is an rmkit model directory; use it as it is")
    model, tok, card = load_model(source, "cpu", torch.float32, tokenizer, trust_remote_code, options)
    return save_model(model, tok, card, out_dir)

def merge_lora(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold a LoRA adapter (and its head) into the backbone: a plain HF folder that scores the same."""
    model, tokenizer, card = load_model(model_dir)
    if card.finetune != "lora":
        raise ValueError(f"{model_dir} is a full fine-tune (finetune='full' in {CARD_FILE}); there is no adapter to merge")
    merged = model.hf.merge_and_unload()
    full = card.model_copy(update={"finetune": "full"})
    return save_model(RewardModel(merged, card.pooling, card.weights), tokenizer, full, out_dir)