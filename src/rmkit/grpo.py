"""`rmkit grpo`: TRL's GRPOTrainer on a policy against an rmkit reward model, in-process or through `rmkit serve`.

The config tree (GrpoConfig, frozen, strict, one docstring per field), `run_grpo(cfg)` and the callback that writes
TRL's logs, including the reward function's reward/length statistics, to the run's metrics.jsonl. A run writes
`out_dir/{config.yaml, metrics.jsonl, policy/, trl/}`. Knows TRL; the reward itself comes from `rl.reward_function`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_serializer, model_validator
from transformers import TrainerCallback

from rmkit.backbones import resolve
from rmkit.config import ConfigError, LoraConfig, Strict, load_tree
from rmkit.rows import MetricsLog
from rmkit.shaping import ShapingConfig

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("reward_mean", "reward_std", "reward_min", "reward_max", "completion_length", "reward_length_spearman")
"""Reward-function statistics logged each generation batch as `rmkit/<key>` (see `rl.reward_stats`)."""


class PolicyConfig(Strict):
    path: str = "smollm2-135m"
    """The policy: a causal-LM folder, hub id or backbone alias ('smollm2-135m' from the offline package; the random
    'tiny-llama-lm' for smoke tests)."""
    finetune: Literal["full", "lora"] = "full"
    """Train every weight, or a LoRA adapter (the reference model is then the adapter switched off)."""
    lora: LoraConfig = LoraConfig()
    """LoRA settings, used when finetune is 'lora'."""


class RewardConfig(Strict):
    source: str | list[str] = "runs/default/model"
    """An rmkit model directory, a list of them (an ensemble), or the URL of a running `rmkit serve`."""
    shaping: ShapingConfig = ShapingConfig()
    """Shaping; only the fields given here apply, on top of the source's defaults (model directories: stored
    mean/std and clip ±5; a URL: the served scores as they come), e.g. {length_penalty: dapo, dapo_max_length: 128}."""
    concurrent: bool = False
    """Use the async reward function, which TRL awaits alongside other async rewards (worth it for a server)."""
    name: str = Field("rmkit", pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    """The reward function's name: TRL logs rewards/<name>/mean, rmkit logs <name>/reward_mean, ..."""
    weight: float = 1.0
    """Weight of this reward function in TRL's weighted sum (GRPOConfig.reward_weights)."""

    @field_serializer("shaping")
    def _given_fields_only(self, shaping: ShapingConfig) -> dict[str, Any]:
        return shaping.model_dump(mode="json", exclude_unset=True)  # config.yaml keeps the source's defaults open


class PromptsConfig(Strict):
    paths: list[str] = ["data/hh-rlhf-harmless/pairs.jsonl"]
    """Prompt files: rows with `prompt` (text, HH transcript or messages), `messages` or NeMo Gym
    `responses_create_params.input`; preference files work as they are. Prompts reach the policy as chat messages."""
    max_prompts: int | None = Field(None, ge=1)
    """Use only the first N prompts."""


class GrpoTrainConfig(Strict):
    out_dir: str = "runs/grpo"
    """Run directory: config.yaml, metrics.jsonl, policy/ (the trained policy) and trl/ (TRL's checkpoints)."""
    seed: int = 42
    """Seed of sampling, shuffling and any fresh weights."""
    max_steps: int = Field(100, ge=1)
    """Optimiser steps."""
    learning_rate: float = Field(1e-6, gt=0)
    """Peak AdamW learning rate (TRL's GRPO default)."""
    batch_size: int = Field(8, ge=1)
    """Completions per device per micro-step; batch_size × grad_accum × devices must be a multiple of
    num_generations (whole prompt groups)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-steps per optimiser step (one generation batch covers them all)."""
    num_generations: int = Field(4, ge=2)
    """G, completions sampled per prompt; advantages are normalised within each group."""
    max_completion_length: int = Field(128, ge=1)
    """Most tokens generated per completion."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature."""
    beta: float = Field(0.0, ge=0)
    """KL coefficient against the reference policy (k3 in the loss); 0 loads no reference model."""
    logging_steps: int = Field(1, ge=1)
    """Write a metrics.jsonl row every N steps (TRL averages its per-batch values over the window)."""
    save_steps: int | None = Field(None, ge=1)
    """Save a TRL checkpoint under trl/ every N steps; None saves only the final policy."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """'auto': bf16 on a GPU that supports it, fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, more compute."""
    trl: dict[str, Any] = {}
    """Other TRL GRPOConfig arguments, passed as they are (e.g. use_vllm, vllm_mode, loss_type, scale_rewards)."""


class GrpoConfig(Strict):
    policy: PolicyConfig = PolicyConfig()
    """The model being trained."""
    reward: RewardConfig = RewardConfig()
    """Where rewards come from and how they are shaped."""
    rewards: list[RewardConfig] = []
    """Further reward functions (each its own source, shaping, name and weight); TRL sums all of them with their
    weights (reward_funcs + reward_weights), and logs each one."""

    @model_validator(mode="after")
    def _distinct_reward_names(self) -> GrpoConfig:
        names = [r.name for r in [self.reward, *self.rewards]]
        if len(set(names)) != len(names):
            raise ValueError(f"reward function names must differ (TRL logs each by name), got {names}")
        return self
    data: PromptsConfig = PromptsConfig()
    """The prompts."""
    train: GrpoTrainConfig = GrpoTrainConfig()
    """GRPO loop, batch shape, logging."""


def load_grpo_config(path: str | Path | None, overrides: list[str] | None = None) -> GrpoConfig:
    """Read a YAML GRPO config (or the defaults) and apply key=value overrides; every problem is reported at once."""
    return load_tree(GrpoConfig, path, overrides or [], "rmkit GRPO config",
                     "a GRPO config is a YAML mapping with sections policy, reward, data, train")


class MetricsJsonl(TrainerCallback):
    """Appends every TRL log (loss, kl, reward, rmkit/reward_*, completions/*) as one JSON line with its step."""

    def __init__(self, path: Path):
        self.log = MetricsLog(path)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            self.log.write(**{"step": state.global_step, **logs})


def trl_args(tc: GrpoTrainConfig, out: Path, reward_weights: list[float] | None = None) -> Any:
    """TRL GRPOConfig from our train section; train.trl adds anything else and may not repeat our fields."""
    import torch
    from trl import GRPOConfig

    from rmkit.model import bf16_supported

    cuda = torch.cuda.is_available()
    bf16 = tc.precision == "bf16" or (tc.precision == "auto" and bf16_supported())
    ours = dict(
        output_dir=str(out / "trl"), seed=tc.seed, max_steps=tc.max_steps, learning_rate=tc.learning_rate,
        per_device_train_batch_size=tc.batch_size, gradient_accumulation_steps=tc.grad_accum,
        num_generations=tc.num_generations, max_completion_length=tc.max_completion_length,
        temperature=tc.temperature, beta=tc.beta, logging_steps=tc.logging_steps, bf16=bf16, fp16=False,
        use_cpu=not cuda, gradient_checkpointing=tc.gradient_checkpointing, report_to="none",
        save_strategy="steps" if tc.save_steps else "no", save_steps=tc.save_steps or 500,
    )
    if reward_weights is not None:
        ours["reward_weights"] = reward_weights
    clash = sorted(set(ours) & set(tc.trl))
    if clash:
        raise ConfigError(f"train.trl repeats {', '.join(clash)}, which rmkit sets itself; use the train.* fields "
                          "(batch_size, grad_accum, precision, save_steps, ...) instead.")
    try:
        return GRPOConfig(**ours, **tc.trl)
    except TypeError as exc:
        raise ConfigError(f"train.trl: {exc}; see TRL's GRPOConfig for the accepted arguments") from None


def run_grpo(cfg: GrpoConfig) -> Path:
    """Train the policy with GRPO against the reward model; returns the run directory (policy/ holds the result)."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import GRPOTrainer

    from rmkit.rl import reward_function
    from rmkit.rollouts import read_prompts

    tc = cfg.train
    out = Path(tc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    set_seed(tc.seed)

    prompts = read_prompts(cfg.data.paths, cfg.data.max_prompts)
    dataset = Dataset.from_list([{"prompt": messages} for messages, _ in prompts])
    specs = [cfg.reward, *cfg.rewards]
    rewards = [reward_function(r.source, name=r.name, asynchronous=r.concurrent,
                               **r.shaping.model_dump(exclude_unset=True)) for r in specs]
    peft_config = None
    if cfg.policy.finetune == "lora":
        from peft import LoraConfig as PeftLoraConfig

        lora = cfg.policy.lora
        peft_config = PeftLoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha,
                                     lora_dropout=lora.dropout, target_modules=lora.target_modules)
    args = trl_args(tc, out, [r.weight for r in specs] if cfg.rewards else None)
    per_step = args.generation_batch_size // tc.num_generations
    if len(dataset) < per_step:  # TRL would silently train 0 steps
        raise ValueError(f"{len(dataset)} prompts, but one generation batch takes {per_step} "
                         f"({args.generation_batch_size} completions / num_generations={tc.num_generations}); "
                         "add prompts (data.paths, data.max_prompts) or lower train.batch_size / train.grad_accum")
    log.info("GRPO: %d prompts, G=%d, %d completions per step, %d steps, reward from %s", len(dataset),
             tc.num_generations, args.generation_batch_size, tc.max_steps, cfg.reward.source)
    trainer = GRPOTrainer(model=resolve(cfg.policy.path), reward_funcs=rewards if cfg.rewards else rewards[0], args=args,
                          train_dataset=dataset, callbacks=[MetricsJsonl(out / "metrics.jsonl")],
                          peft_config=peft_config)
    trainer.train()
    trainer.save_model(str(out / "policy"))
    return out


def format_summary(run: str | Path) -> str:
    """The last logged reward statistics of a run, one line: what to read first after a GRPO run."""
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    config = Path(run) / "config.yaml"
    name = ((yaml.safe_load(config.read_text()) or {}).get("reward") or {}).get("name", "rmkit") \
        if config.exists() else "rmkit"
    last = next((r for r in reversed(rows) if f"{name}/reward_mean" in r), None)
    if last is None:
        return "no reward statistics were logged"
    parts = [f"{key.removeprefix('reward_')} {last[f'{name}/{key}']:.4g}" if last.get(f"{name}/{key}") is not None
             else f"{key.removeprefix('reward_')} n/a" for key in SUMMARY_KEYS]
    return f"step {last['step']}: reward " + ", ".join(parts)
