"""Configs of the systems people move from, mapped onto rmkit's: NeMo Gym's reward-model resources-server YAML onto a
`rmkit serve` config mapping (`gym_to_serve`), and NeMo RL's reward-model environment config onto the settings that
`rl.RewardModelEnvironment.from_nemo_rl_config` loads (`nemo_rl_reward_model`). Every key is mapped or refused with
the reason; ignored ones draw a warning. Dicts in, a dict or a dataclass out: knows nothing of HTTP, models, torch
(the caller says whether CUDA is there) or rmkit's own config classes (rmkit.config turns DialectError into its
ConfigError).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class DialectError(ValueError):
    """A foreign config rmkit cannot take as it is; the message names the key and the reason."""

log = logging.getLogger(__name__)

GYM_BLOCKS = ("resources_servers", "responses_api_agents", "responses_api_models")
"""The server kinds of a NeMo Gym config: `<instance>: {<kind>: {<type>: {entrypoint: ..., ...}}}`."""
GYM_SERVER_TYPE = "reward_model"
GYM_CLIP = 5.0
"""NeMo Gym's reward-model server clips normalised rewards to ±5."""


class GymRewardModel(BaseModel):
    """The options of NeMo Gym's reward-model resources server, with its defaults (raw rewards unless asked)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    model_path: str
    """The reward model: here an rmkit model directory (or what `rmkit serve` loads)."""
    device: str = "cuda"
    """Where the model runs; 'cuda' falls back to the CPU with a warning when there is no GPU."""
    batch_size: int = Field(8, ge=1)
    """Most rows in one forward."""
    max_length: int = Field(2048, gt=0)
    """Tokens per scored text; longer texts lose tokens from the left."""
    normalize_rewards: bool = False
    """Normalise with running statistics (then clip to ±5); off: the raw reward-model score."""
    reward_mean: float = 0.0
    """Starting point of the running mean (normalize_rewards only)."""
    reward_std: float = Field(1.0, gt=0)
    """Starting point of the running std (normalize_rewards only)."""
    entrypoint: str = "app.py"
    """NeMo Gym's server script; accepted, rmkit serves itself."""
    domain: str | None = None
    """NeMo Gym metadata; accepted, unused."""
    verified: bool | None = None
    """NeMo Gym metadata; accepted, unused."""
    description: str | None = None
    """NeMo Gym metadata; accepted, unused."""
    host: str | None = None
    """Interface to bind (rmkit's default 127.0.0.1 when unset)."""
    port: int | None = None
    """TCP port (rmkit's default 8000 when unset)."""


def _is_gym_block(value: Any) -> bool:
    return isinstance(value, dict) and any(kind in value for kind in GYM_BLOCKS)


def is_gym_config(raw: dict[str, Any]) -> bool:
    """True when any top-level entry is a NeMo Gym server instance (a mapping with resources_servers, ...)."""
    return any(_is_gym_block(v) for v in raw.values())


def _gym_server(raw: dict[str, Any], source: str, rmkit_keys: Collection[str]) -> tuple[str, dict[str, Any]]:
    """The one reward_model resources-server block: (its dotted path, its options)."""
    mixed = sorted(k for k in raw if k in rmkit_keys and not _is_gym_block(raw[k]))
    if mixed:
        raise DialectError(f"{source} mixes two dialects: rmkit serve keys ({', '.join(mixed)}) beside NeMo Gym server "
                          "blocks. Use one: rmkit's (model_dirs, shaping, ...) or NeMo Gym's "
                          f"(<name>: {{resources_servers: {{{GYM_SERVER_TYPE}: {{model_path: ...}}}}}}).")
    found = [(f"{name}.resources_servers.{kind}", opts) for name, block in raw.items() if _is_gym_block(block)
             for kind, opts in (block.get("resources_servers") or {}).items()]
    ours = [(path, opts) for path, opts in found if path.endswith(f".{GYM_SERVER_TYPE}")]
    if len(ours) != 1:
        seen = ", ".join(path for path, _ in found) or "none"
        raise DialectError(f"{source}: a NeMo Gym config for `rmkit serve` needs exactly one resources server of type "
                          f"{GYM_SERVER_TYPE!r}, found {len(ours)} (resources servers: {seen}).")
    path, opts = ours[0]
    if not isinstance(opts, dict):
        raise DialectError(f"{source}: {path} is {type(opts).__name__}, not a mapping of options")
    others = [n for n, block in raw.items() if _is_gym_block(block) and not path.startswith(f"{n}.")]
    if others:
        log.info("%s: serving %s; the other NeMo Gym servers (%s) are not rmkit's to run", source, path,
                 ", ".join(others))
    return path, opts


def gym_to_serve(raw: dict[str, Any], source: str, rmkit_keys: Collection[str],
                 cuda_available: Callable[[], bool]) -> dict[str, Any]:
    """Map a NeMo Gym reward-model server config onto a `rmkit serve` config mapping (ServeConfig fields).

    normalize_rewards false (the default) serves raw scores (shaping normalize 'none', no clip); true serves
    (r − μ)/σ with running statistics started at reward_mean/reward_std, clipped to ±5.

    Raises:
        DialectError: a mixed file, no or several reward_model servers, or an option NeMo Gym does not have.
    """
    path, opts = _gym_server(raw, source, rmkit_keys)
    stray = sorted(k for k in opts if k in rmkit_keys and k not in GymRewardModel.model_fields)
    if stray:
        raise DialectError(f"{source} mixes two dialects: {path} holds rmkit serve keys ({', '.join(stray)}). Give NeMo "
                          f"Gym's options only ({', '.join(GymRewardModel.model_fields)}), or write an rmkit config.")
    try:
        gym = GymRewardModel.model_validate(opts)
    except ValidationError as exc:
        lines = [f"  {path}.{'.'.join(str(p) for p in e['loc'])}  {e['msg']}" for e in exc.errors()]
        raise DialectError(f"{source} is not a valid NeMo Gym reward-model server config:\n" + "\n".join(lines)
                          ) from None
    if not gym.normalize_rewards and {"reward_mean", "reward_std"} & opts.keys():
        log.warning("%s: reward_mean/reward_std start the running statistics of normalize_rewards: true; they are "
                    "ignored while it is false (raw rewards are served)", source)
    device = gym.device
    if device.startswith("cuda") and not cuda_available():
        log.warning("%s: device %r asked for, but no CUDA device is visible; serving on the CPU", source, device)
        device = "cpu"
    shaping = ({"normalize": "running", "reward_mean": gym.reward_mean, "reward_std": gym.reward_std,
                "clip": GYM_CLIP} if gym.normalize_rewards else {"normalize": "none", "clip": None})
    out = {"model_dirs": [gym.model_path], "device": device, "batch_size": gym.batch_size,
           "max_length": gym.max_length, "shaping": shaping}
    return out | {k: getattr(gym, k) for k in ("host", "port") if getattr(gym, k) is not None}


# ---- NeMo RL env.reward_model -------------------------------------------------------------------------------------

Precision = Literal["bfloat16", "float16", "float32"]
NEMO_RL_TOKENIZER_SELF = "${env.reward_model.model_name}"
"""NeMo RL's example config names the tokenizer by this interpolation: the model's own."""


@dataclass(frozen=True)
class NemoRlRewardModel:
    """What rmkit loads for a NeMo RL `env.reward_model` config."""

    model_dir: str  # model_name: an rmkit model directory
    precision: Precision  # torch dtype name
    device: str  # "auto" (a GPU when there is one) for gpus_per_node 1, "cpu" for 0
    batch_size: int  # rows per forward
    max_length: int  # max_model_len


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise DialectError(f"env.reward_model.{key}={value!r} cannot be honoured: {why}")


def _sub(cfg: dict[str, Any], key: str) -> dict[str, Any]:
    value = cfg.get(key) or {}
    _check(isinstance(value, dict), key, value, "expected a mapping")
    return value


def _unresolved(cfg: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        if isinstance(v, dict):
            out += _unresolved(v, f"{prefix}{k}.")
        elif isinstance(v, str) and "${" in v and f"{prefix}{k}" != "tokenizer.name":
            out.append(f"{prefix}{k}")
    return out


NEMO_RL_KEYS = ("enabled", "model_name", "tokenizer", "precision", "batch_size", "checkpoint_path", "max_model_len",
                "logprob_batch_size", "resources", "reward_model_cfg", "dtensor_cfg", "megatron_cfg",
                "dynamic_batching", "sequence_packing", "max_grad_norm", "generation")


def _parallelism(cfg: dict[str, Any]) -> str:
    """Check resources, dtensor_cfg and megatron_cfg (one process, one device); the device to use."""
    resources = _sub(cfg, "resources")
    gpus, nodes = resources.get("gpus_per_node", 1), resources.get("num_nodes", 1)
    _check(nodes in (None, 1), "resources.num_nodes", nodes, "rmkit's environment runs in one process on one node")
    _check(gpus in (None, 0, 1), "resources.gpus_per_node", gpus, "rmkit scores on one device; use 1 (or 0: CPU)")
    dtensor = _sub(cfg, "dtensor_cfg")
    for key in ("tensor_parallel_size", "context_parallel_size"):
        _check(dtensor.get(key) in (None, 1), f"dtensor_cfg.{key}", dtensor.get(key), "rmkit does not shard a model")
    _check(not dtensor.get("sequence_parallel"), "dtensor_cfg.sequence_parallel", True, "rmkit does not shard")
    megatron = _sub(cfg, "megatron_cfg")
    _check(not megatron.get("enabled"), "megatron_cfg.enabled", True, "rmkit loads Hugging Face weights, not Megatron")
    return "cpu" if gpus == 0 else "auto"


def nemo_rl_reward_model(cfg: dict[str, Any]) -> NemoRlRewardModel:
    """Map NeMo RL's `env.reward_model` config (examples/configs/grpo_rm_1B.yaml, resolved) onto rmkit settings.

    model_name → the model directory; tokenizer.name must be the model itself (rmkit scores with the tokenizer and
    chat template saved beside it); precision → dtype; batch_size → rows per forward; max_model_len → max_length;
    resources → CPU or one device; reward_model_cfg must be a Bradley–Terry model. NeMo RL forces
    dynamic_batching, sequence_packing and max_grad_norm off itself, so they are accepted and unused, as are
    logprob_batch_size and dtensor_cfg's single-device settings.

    Raises:
        DialectError: naming the key that cannot be honoured, and why.
    """
    unknown = sorted(set(cfg) - set(NEMO_RL_KEYS))
    if unknown:
        raise DialectError(f"env.reward_model has unknown keys {', '.join(unknown)}; known: {', '.join(NEMO_RL_KEYS)}")
    unresolved = _unresolved(cfg)
    if unresolved:
        raise DialectError(f"env.reward_model.{unresolved[0]} is an unresolved interpolation ({_get_dotted(cfg, unresolved[0])!r});"
                          " resolve the config first, as NeMo RL does (OmegaConf.to_container(cfg, resolve=True)).")
    _check(cfg.get("enabled", True) is True, "enabled", cfg.get("enabled"), "the environment is disabled")
    model = cfg.get("model_name")
    _check(isinstance(model, str) and bool(model), "model_name", model, "give the rmkit model directory")
    tokenizer = _sub(cfg, "tokenizer")
    name = tokenizer.get("name", model)
    _check(name in (model, NEMO_RL_TOKENIZER_SELF), "tokenizer.name", name,
           f"rmkit scores with the tokenizer and chat template saved in {model}; drop tokenizer.name or set it there")
    extra = sorted(set(tokenizer) - {"name"})
    _check(not extra, f"tokenizer.{extra[0] if extra else ''}", tokenizer.get(extra[0]) if extra else None,
           "rmkit uses the tokenizer settings saved with the model")
    precision = cfg.get("precision", "bfloat16")
    _check(precision in ("bfloat16", "float16", "float32"), "precision", precision, "use bfloat16, float16 or float32")
    _check(cfg.get("checkpoint_path") is None, "checkpoint_path", cfg.get("checkpoint_path"),
           "rmkit cannot read NeMo RL checkpoints; point model_name at an rmkit model directory")
    rm = _sub(cfg, "reward_model_cfg")
    _check(rm.get("enabled", True) is True, "reward_model_cfg.enabled", rm.get("enabled"), "it must load a reward model")
    kind = rm.get("reward_model_type", "bradley_terry")
    _check(kind == "bradley_terry", "reward_model_cfg.reward_model_type", kind, "rmkit models are Bradley–Terry")
    _check(cfg.get("generation") is None, "generation", cfg.get("generation"), "a reward environment does not generate")
    batch, length = cfg.get("batch_size", 1), cfg.get("max_model_len")
    _check(isinstance(batch, int) and batch >= 1, "batch_size", batch, "give a positive integer")
    _check(isinstance(length, int) and length >= 1, "max_model_len", length, "give a positive integer")
    device = _parallelism(cfg)
    ignored = [f"{k}.enabled" for k in ("dynamic_batching", "sequence_packing") if _sub(cfg, k).get("enabled")]
    if ignored:
        log.warning("env.reward_model: %s ignored (NeMo RL turns them off in this environment too)", ", ".join(ignored))
    return NemoRlRewardModel(model, precision, device, batch, length)


def _get_dotted(cfg: dict[str, Any], dotted: str) -> Any:
    """cfg["a"]["b"] for "a.b"."""
    for key in dotted.split("."):
        cfg = cfg[key]
    return cfg
