"""The reward model: backbone + scalar head, rewards() (THE readout), and the model directory with rmkit.json.

Knows transformers and peft; knows nothing of data files, optimisers or HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmkit.backbones import resolve
from rmkit.card import CARD_FILE, ImportOptions, ModelCard, Pooling, check_supported, infer_card, is_encoder, read_card
from rmkit.config import ModelConfig
from rmkit.encoding import Truncation, default_template
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
    for name in ("score", "classifier"):
        if isinstance(getattr(hf, name, None), nn.Module):
            return getattr(hf, name)
    raise ValueError(f"{type(hf).__name__} has neither a 'score' nor a 'classifier' head")


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


def logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """All outputs of the head: (N, T) ids and mask → (N, num_labels). `rewards` reads one column of this.

    'last' reads the last attended token found from the mask (never from pad ids: SmolLM2 pads with its EOS), so
    left and right padding agree; position ids come from the mask for the same reason. 'cls' is the HF encoder
    head as is (pooler + classifier on token 0). 'mean' averages the attended hidden states.
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
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (N, H)
    weight = head(hf).weight
    return head(hf)(pooled.to(weight.dtype if isinstance(weight, torch.Tensor) else torch.float32))


def rewards(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling,
            output: int = 0) -> torch.Tensor:
    """THE reward readout: (N, T) ids and mask → (N,) rewards, column `output` of the head (see `logits`).

    Every path that reads a reward calls this.
    """
    return logits(model, input_ids, attention_mask, pooling)[:, output]


class RewardModel(nn.Module):
    """nn.Module face of `rewards`, so DDP/accelerate wrap one forward that returns (N,) rewards."""

    def __init__(self, hf: nn.Module, pooling: Pooling, output: int = 0):
        super().__init__()
        self.hf = hf
        self.pooling = pooling
        self.output = output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return rewards(self.hf, input_ids, attention_mask, self.pooling, self.output)


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


def load_for_training(cfg: ModelConfig, max_length: int, truncation: Truncation = "left"
                      ) -> tuple[RewardModel, Any, ModelCard]:
    """Backbone + fresh scalar head (or LoRA adapter + head), its tokenizer, and the card it will be saved with."""
    from transformers import AutoModelForSequenceClassification

    path = resolve(cfg.path)
    tokenizer = load_tokenizer(path, cfg.trust_remote_code, cfg.revision)
    hf = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
    )
    hf.config.pad_token_id = tokenizer.pad_token_id
    encoder = is_encoder(hf.config)
    pooling = cfg.pooling if cfg.pooling != "auto" else ("cls" if encoder else "last")
    if pooling == "cls" and not encoder:
        raise ValueError(f"model.pooling='cls' reads token 0, which a decoder ({hf.config.model_type}) has not attended yet; use 'last'")
    freeze_lower_layers(hf, cfg.freeze_layers)
    if cfg.gradient_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        head_name = "score" if hasattr(hf, "score") else "classifier"
        lora = LoraConfig(
            task_type="SEQ_CLS", r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, modules_to_save=[head_name],
        )
        hf = get_peft_model(hf, lora)
    template = default_template(tokenizer)
    card = ModelCard(
        backbone=cfg.path, finetune=cfg.finetune, pooling=pooling, template=template,
        add_special_tokens=template == "plain", max_length=max_length, truncation=truncation,
    )
    return RewardModel(hf, pooling), tokenizer, card


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
        return RewardModel(hf, card.pooling, card.reward_index).to(device).eval(), tok, card
    card = read_card(model_dir)
    adapter = model_dir / "adapter_config.json"
    if adapter.exists():
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification

        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        if not Path(base).exists():
            base = resolve(card.backbone)  # the folder moved to another machine: rebuild the alias there
        hf = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=dtype)
        hf.config.pad_token_id = tok.pad_token_id
        hf = PeftModel.from_pretrained(hf, model_dir)
    else:
        hf = _load_plain(source, dtype, trust_remote_code)
    model = RewardModel(hf, card.pooling, card.reward_index).to(device).eval()
    return model, tok, card


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
    return save_model(RewardModel(merged, card.pooling, card.reward_index), tokenizer, full, out_dir)
