"""ServeConfig (`rmkit serve`, `rmkit score`) and load_serve_config: rmkit's serve YAML, NeMo Gym's reward-model server
YAML (told apart by their keys, see rmkit.dialects), a bare model directory or a hub id, read through rmkit.config's
one loader. Knows no models or HTTP; imports torch only to ask whether a NeMo Gym file's `device: cuda` exists.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import AliasChoices, Field, model_validator

from rmkit.config import ConfigError, Precision, Strict, merge_mappings, parse_overrides, read_yaml_mapping, validate_config
from rmkit.contract import MAX_CHARS, MAX_ITEMS
from rmkit.dialects import DialectError, gym_to_serve, is_gym_config
from rmkit.shaping import ShapingConfig


class ServeConfig(Strict):
    """`rmkit serve` settings; YAML mirrors the fields, `shaping:` is a ShapingConfig section."""

    model_dirs: list[str] = Field(min_length=1)
    """rmkit model directories, or plain HF reward model folders / hub ids (read by rmkit.card's rule); several
    form an ensemble (combined by shaping.ensemble)."""
    host: str = "127.0.0.1"
    """Interface to bind; 127.0.0.1 keeps the server local. Use 0.0.0.0 only with a token or a trusted network."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port (0 picks a free one)."""
    token: str | None = Field(None, min_length=1)
    """Bearer token every request but GET /health must send; unset: $RMKIT_TOKEN, else no auth."""
    device: str | list[str] = "auto"
    """'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...; or a list, one device per model of model_dirs."""
    dtype: Precision = "fp32"
    """Weights and activations: fp32, bf16, fp16, auto (bf16 on a GPU that has it, else fp32), int8 (CPU only)."""
    tokenizer: str | None = None
    """A separate tokenizer folder or hub id for every model (default: each model's own)."""
    trust_remote_code: bool = False
    """Run a hub repository's own model code; off unless asked."""
    threads: int | None = Field(None, ge=1)
    """torch intra-op threads for the forward (None: torch's default, one per core). On a small CPU, fewer threads
    than cores leaves one for the event loop that parses and tokenises the next requests."""
    max_length: int | None = Field(None, gt=0)
    """Override every model's max_length (tokens; longer texts lose tokens from the left)."""
    batch_tokens: int = Field(16384, gt=0)
    """Token budget of one batch: requests are gathered up to it, and each forward's padded size stays within it."""
    max_batch: int = Field(64, ge=1, validation_alias=AliasChoices("max_batch", "batch_size"))
    """Most rows in one forward (and in one gathered batch); `batch_size` is read as the same setting."""

    @property
    def batch_size(self) -> int:
        """max_batch under its former name (NeMo Gym's and older rmkit configs call it batch_size)."""
        return self.max_batch
    max_wait_ms: float = Field(5.0, ge=0)
    """How long the first request of a batch waits for others to join it."""
    queue_size: int = Field(4096, ge=1)
    """Most items waiting for a forward; beyond it requests get 503 with Retry-After."""
    request_timeout_s: float = Field(60.0, gt=0)
    """Deadline of one request from arrival to answer; past it, 504 (OpenRLHF's client gives up at 180 s)."""
    max_body_bytes: int = Field(16 * 2**20, ge=1024)
    """Largest request body in bytes; larger bodies get 413."""
    max_items: int = Field(1024, ge=1, le=MAX_ITEMS)
    """Most items in one list of a request (texts, pairs, messages of a conversation); more get 422."""
    max_text_chars: int = Field(100_000, ge=1, le=MAX_CHARS)
    """Most characters in one text field (a prompt, a response, a message's content, a query), or token ids in one
    row; longer get 422. The OpenAPI document states both limits."""
    shutdown_timeout_s: float = Field(30.0, ge=0)
    """On SIGTERM/SIGINT, how long in-flight requests may take to finish before the process exits."""
    shaping: ShapingConfig = ShapingConfig()
    """How raw scores become rewards: normalisation, clipping, length penalty, threshold, ensemble rule."""
    stats_path: str | None = None
    """With shaping.normalize='running': a JSON file holding the running statistics, restored at start-up when it
    exists (it wins over shaping.reward_mean/reward_std), rewritten atomically after a scored request at most every
    stats_save_interval_s and at shutdown, so a restarted server keeps its normalisation."""
    stats_save_interval_s: float = Field(1.0, ge=0)
    """Least seconds between two writes of stats_path (0: after every request); a crash loses at most the updates of
    that interval, a clean shutdown none."""
    playground: bool = True
    """Serve the browser playground at GET / and /playground (the page loads without the token; it asks for it)."""
    playground_examples: list[str] | None = None
    """Pair files for the playground's "Load an example"; unset: the model's run's held-out test split, else data/."""

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> ServeConfig:
        if self.queue_size < self.max_items:
            raise ValueError(f"queue_size={self.queue_size} < max_items={self.max_items}: a full-size request could "
                             "never be queued; raise queue_size or lower max_items")
        if self.stats_path is not None and self.shaping.normalize != "running":
            raise ValueError(f"stats_path={self.stats_path!r} keeps running statistics, but shaping.normalize="
                             f"{self.shaping.normalize!r}; set shaping.normalize=running or drop stats_path")
        return self


def _cuda_available() -> bool:
    """Whether torch sees a GPU; torch is imported only here, for a NeMo Gym file's `device: cuda`."""
    import torch

    return torch.cuda.is_available()


def load_serve_config(source: str | Path, overrides: Sequence[str] = ()) -> ServeConfig:
    """A ServeConfig from a YAML file (rmkit's, or NeMo Gym's reward-model server config: the dialect is told by its
    keys, see rmkit.dialects), a bare model directory or a hub id (org/name), plus dotted key=value overrides
    (rmkit's names).

    Example: load_serve_config("runs/x/model", ["port=9000", "shaping.clip=null"]). The token falls back to
    $RMKIT_TOKEN when neither the file nor an override sets it.
    """
    shape = "neither a model directory nor a serve YAML mapping (model_dirs, host, port, shaping, ...)"
    path = Path(source)
    hub_id = not path.exists() and path.suffix not in (".yaml", ".yml") and str(source).count("/") == 1
    raw = {"model_dirs": [str(source)]} if path.is_dir() or hub_id else read_yaml_mapping(source, shape)
    if is_gym_config(raw):
        try:
            raw = gym_to_serve(raw, str(source), ServeConfig.model_fields, _cuda_available)
        except DialectError as exc:
            raise ConfigError(str(exc)) from None
    raw = merge_mappings(raw, parse_overrides(list(overrides)))
    if raw.get("token") is None and os.environ.get("RMKIT_TOKEN"):
        raw["token"] = os.environ["RMKIT_TOKEN"]
    return validate_config(ServeConfig, raw, str(source), "serve config")
