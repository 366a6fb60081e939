"""rmkit.grpo: the config tree, the tiny test policy, TRL's GRPOTrainer end to end, and the RL guide's commands."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

from rmkit.backbones import resolve
from rmkit.cli import main
from rmkit.config import ConfigError
from rmkit.grpo import GrpoConfig, MetricsJsonl, format_summary, load_grpo_config, run_grpo, trl_args
from test_rl import served  # noqa: F401  (fixture: the real `rmkit serve` app on loopback)

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Name a prime.", "Say hi.", "What colour is the sky?", "Count to three."]
STAT_KEYS = [f"rmkit/{k}" for k in ("reward_mean", "reward_std", "reward_min", "reward_max", "completion_length",
                                    "reward_length_spearman")]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("grpo-prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def tiny_overrides(prompts_file, reward, out) -> list[str]:
    return [f"reward.source={reward}", f"data.paths=[{prompts_file}]", f"train.out_dir={out}", "train.max_steps=2",
            "train.batch_size=4", "train.num_generations=2", "train.max_completion_length=8"]


def test_the_shipped_configs_validate():
    for name in ("grpo-tiny.yaml", "grpo-smollm2.yaml"):
        cfg = load_grpo_config(ROOT / "configs" / name)
        assert isinstance(cfg, GrpoConfig)
    assert load_grpo_config(ROOT / "configs" / "grpo-tiny.yaml").policy.path == "tiny-llama-lm"


def test_every_config_problem_is_reported_at_once_with_its_dotted_path():
    with pytest.raises(ConfigError) as err:
        load_grpo_config(None, ["train.batchsize=4", "policy.finetune=half", "reward.shaping={clip: -1}"])
    message = str(err.value)
    assert "train.batchsize  Extra inputs are not permitted" in message
    assert "policy.finetune  Input should be 'full' or 'lora'" in message
    assert "reward.shaping" in message and "clip" in message


def test_overrides_apply_and_read_yaml_numbers():
    cfg = load_grpo_config(ROOT / "configs" / "grpo-tiny.yaml", ["train.learning_rate=5e-5",
                                                                 "reward.source=[a/model, b/model]"])
    assert cfg.train.learning_rate == 5e-5 and cfg.reward.source == ["a/model", "b/model"]


def test_trl_passthrough_may_not_repeat_our_fields_or_invent_arguments(tmp_path):
    cfg = load_grpo_config(None, ["train.trl={per_device_train_batch_size: 2}"])
    with pytest.raises(ConfigError, match="repeats per_device_train_batch_size"):
        trl_args(cfg.train, tmp_path)
    with pytest.raises(ConfigError, match="train.trl: .*no_such_argument"):
        trl_args(load_grpo_config(None, ["train.trl={no_such_argument: 1}"]).train, tmp_path)
    args = trl_args(load_grpo_config(None, ["train.trl={loss_type: grpo}"]).train, tmp_path)
    assert args.loss_type == "grpo" and args.per_device_train_batch_size == 8


def test_the_tiny_test_policy_is_a_causal_lm_beside_the_tiny_reward_backbone():
    """TRL builds the class named in config.json, so the policy folder must say LlamaForCausalLM as it is."""
    policy, backbone = (json.loads((Path(resolve(name)) / "config.json").read_text())["architectures"]
                        for name in ("tiny-llama-lm", "tiny-llama"))
    assert policy == ["LlamaForCausalLM"] and backbone == ["LlamaForSequenceClassification"]


def test_too_few_prompts_for_one_generation_batch_is_an_error(prompts_file, tmp_path):
    """4 prompts; batch 4 × grad_accum 4 = 16 completions = 8 prompts of G = 2: TRL would train 0 steps."""
    overrides = [*tiny_overrides(prompts_file, "unused/model", tmp_path / "run"), "train.grad_accum=4"]
    with pytest.raises(ValueError, match="4 prompts, but one generation batch takes 8"):
        run_grpo(load_grpo_config(ROOT / "configs" / "grpo-tiny.yaml", overrides))


def test_metrics_lines_carry_the_step_and_write_nan_as_null(tmp_path):
    from types import SimpleNamespace

    cb = MetricsJsonl(tmp_path / "metrics.jsonl")
    cb.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=3), None,
              logs={"rmkit/reward_mean": 0.5, "rmkit/reward_length_spearman": float("nan")})
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 3, "rmkit/reward_mean": 0.5, "rmkit/reward_length_spearman": None}


def test_a_tiny_grpo_run_trains_the_policy_and_logs_reward_statistics(prompts_file, llama_dir, tmp_path, capsys):
    """`rmkit grpo`: 2 steps of TRL's GRPOTrainer on the random tiny policy against the tiny reward model."""
    out = tmp_path / "run"
    assert main(["grpo", str(ROOT / "configs" / "grpo-tiny.yaml"), *tiny_overrides(prompts_file, llama_dir, out)]) == 0
    assert "\nstep 2: reward mean " in capsys.readouterr().out  # after TRL's own progress logs
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rmkit/reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert set(STAT_KEYS) <= set(r) and "loss" in r and "rewards/rmkit/mean" in r
        assert r["rmkit/reward_min"] <= r["rmkit/reward_mean"] <= r["rmkit/reward_max"]
        assert r["rmkit/reward_mean"] == pytest.approx(r["rewards/rmkit/mean"], abs=1e-5)  # our stats, TRL's mean
        assert 1 <= r["rmkit/completion_length"] <= 8
    before = load_file(Path(resolve("tiny-llama-lm")) / "model.safetensors")
    after = load_file(out / "policy" / "model.safetensors")
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert "lm_head.weight" in changed and len(changed) > len(before) // 2
    assert load_grpo_config(out / "config.yaml").reward.source == str(llama_dir)  # the run's config reloads
    assert format_summary(out).startswith("step 2: reward mean")


@pytest.mark.slow
def test_grpo_with_the_smollm2_policy_runs_on_cpu(prompts_file, llama_dir, tmp_path):
    """SmolLM2-135M-Instruct from the offline package, 2 steps, 16-token completions, LoRA."""
    overrides = [*tiny_overrides(prompts_file, llama_dir, tmp_path / "run"), "policy.path=smollm2-135m",
                 "policy.finetune=lora", "policy.lora.r=8", "train.max_completion_length=16", "train.beta=0.04",
                 "train.grad_accum=1", "train.logging_steps=1"]
    run = run_grpo(load_grpo_config(ROOT / "configs" / "grpo-smollm2.yaml", overrides))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rmkit/reward_mean" in r]
    assert len(steps) == 2 and all("kl" in r for r in steps)
    assert (run / "policy" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_grpo_through_a_server_awaits_the_async_reward(prompts_file, served, tmp_path):  # noqa: F811
    url, _ = served
    overrides = [*tiny_overrides(prompts_file, url, tmp_path / "run"), "reward.concurrent=true"]
    run = run_grpo(load_grpo_config(ROOT / "configs" / "grpo-tiny.yaml", overrides))
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "rmkit/reward_mean" in r] == [1, 2]


# --- the guide: every `rmkit` command of docs/rl-guide.md, run in order -------------------------------------------


def guide_commands() -> list[str]:
    """The `rmkit ...` lines of the guide's bash blocks (comments and continuation lines joined)."""
    text = (ROOT / "docs" / "rl-guide.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = " ".join(blocks).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip().startswith("rmkit ")]


def test_the_guide_lists_commands_for_every_step():
    verbs = [shlex.split(c)[1] for c in guide_commands()]
    for verb in ("train", "eval", "serve", "grpo", "collect", "rerank"):
        assert verb in verbs, f"docs/rl-guide.md has no `rmkit {verb}` command"


@pytest.mark.slow
def test_every_command_of_the_rl_guide_runs(tmp_path, monkeypatch):
    """Runs the guide in a scratch directory that links the repository's configs/ and data/."""
    for name in ("configs", "data"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    servers = []
    try:
        for command in guide_commands():
            argv = shlex.split(command.replace("8000", port))
            if argv[-1] == "&":  # a background server: start it, wait until it answers
                exe = [sys.executable, "-m", "rmkit", *argv[1:-1]]
                servers.append(subprocess.Popen(exe, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}))
                wait_healthy(f"http://127.0.0.1:{port}/health", servers[-1])
                continue
            assert main(argv[1:]) == 0, command
        assert (tmp_path / "runs" / "rollouts.jsonl").exists()
        in_process, served_run = (reward_means(tmp_path / "runs" / name) for name in ("grpo-tiny", "grpo-tiny-served"))
        assert in_process == pytest.approx(served_run, abs=1e-3)  # same seed, same shaping: the same run
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


def reward_means(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["rmkit/reward_mean"] for r in rows if "rmkit/reward_mean" in r]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")
