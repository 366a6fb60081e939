"""Score heads and poolings beyond transformers' own: an MLP head (Linear → activation → Dropout → Linear) and a
learned, masked attention pooling; which head/pooling combinations a plain `AutoModelForSequenceClassification`
reproduces; backbone dropout settings; and loading the custom weights (which transformers' from_pretrained skips)
from a model directory's safetensors. Knows torch modules and HF configs; knows nothing of data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

Head = Literal["linear", "mlp"]
Activation = Literal["relu", "gelu", "tanh"]
POOL_ATTR = "rmkit_pool"  # attribute of the HF model holding an attention pooling; saved with its weights
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "hidden_dropout",
                 "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout")


def mlp_head(hidden: int, inner: int, out: int, activation: Activation = "relu", dropout: float = 0.1) -> nn.Sequential:
    """Linear(hidden → inner) → activation → Dropout → Linear(inner → out), the textbook BERT reward head."""
    return nn.Sequential(nn.Linear(hidden, inner), _ACTIVATIONS[activation](), nn.Dropout(dropout), nn.Linear(inner, out))


class AttentionPooling(nn.Module):
    """A learned weighted mean of token states: α = softmax over attended tokens of w·h_t, pooled = Σ α_t h_t.

    Padding gets weight 0 (masked before the softmax), so padding side and amount do not change the result.
    Example: scores w·h = [0, 0, 9] with mask [1, 1, 0] → α = [0.5, 0.5, 0].
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.query = nn.Linear(hidden, 1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.query(hidden.to(self.query.weight.dtype)).squeeze(-1)  # (N, T)
        logits = logits.masked_fill(attention_mask == 0, torch.finfo(logits.dtype).min)
        alpha = torch.softmax(logits, dim=-1).unsqueeze(-1)  # (N, T, 1)
        return (alpha * hidden.to(alpha.dtype)).sum(1)  # (N, H)


def plain_transformers_equal(encoder: bool, pooling: str, head: str) -> bool:
    """Whether `AutoModelForSequenceClassification` alone gives rmkit's scores: its own readout is 'cls' through the
    pooler for encoders and the last non-pad token for decoders, always with a linear head."""
    return head == "linear" and pooling == ("cls" if encoder else "last")


def head_attr(hf: nn.Module) -> str:
    for name in ("score", "classifier"):
        if isinstance(getattr(hf, name, None), nn.Module):
            return name
    raise ValueError(f"{type(hf).__name__} has neither a 'score' nor a 'classifier' head")


def hidden_size(hf: nn.Module) -> int:
    config = hf.config
    return int(getattr(config, "hidden_size", None) or config.d_model)


def attach(hf: nn.Module, pooling: str, head: Head, head_hidden: int | None, activation: Activation,
           dropout: float) -> nn.Module:
    """Give a fresh HF model the MLP head and/or attention pooling the card names (random weights); returns hf."""
    hidden = hidden_size(hf)
    if head == "mlp":
        name = head_attr(hf)
        out = getattr(hf, name).out_features
        setattr(hf, name, mlp_head(hidden, head_hidden or hidden, out, activation, dropout))
    if pooling == "attention":
        setattr(hf, POOL_ATTR, AttentionPooling(hidden))
    return hf


def set_backbone_dropout(config: Any, p: float | None) -> dict[str, float]:
    """Set every dropout probability the config has (hidden, attention, ...) to p; returns what was set."""
    if p is None:
        return {}
    changed = {key: p for key in _DROPOUT_KEYS if isinstance(getattr(config, key, None), float)}
    for key in changed:
        setattr(config, key, p)
    return changed


def load_custom_weights(hf: nn.Module, model_dir: Path, head: str, pooling: str) -> None:
    """Load an MLP head's and an attention pooling's weights from model_dir's safetensors (one file or shards)."""
    from safetensors.torch import load_file

    prefixes = tuple(f"{name}." for name in ([head_attr(hf)] if head == "mlp" else [])
                     + ([POOL_ATTR] if pooling == "attention" else []))
    if not prefixes:
        return
    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state = {k: v for f in files for k, v in load_file(model_dir / f).items() if k.startswith(prefixes)}
    wanted = {k for k in hf.state_dict() if k.startswith(prefixes)}
    if set(state) != wanted:
        raise ValueError(f"{model_dir}: rmkit.json names head={head!r}, pooling={pooling!r}, but the weights hold "
                         f"{sorted(state)} instead of {sorted(wanted)}")
    hf.load_state_dict(state, strict=False)
