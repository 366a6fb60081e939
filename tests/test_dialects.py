"""Drop-in configs: NeMo Gym's reward-model resources-server YAML served by `rmkit serve` as it is, and NeMo RL's
`env.reward_model` config building a RewardModelEnvironment. The YAML below is written from the public shapes:
NeMo Gym's `<instance>: {resources_servers: {<type>: {entrypoint: app.py, ...}}}` server configs (with the agent
block that points at the server, as NeMo Gym's resources_servers/*/configs/*.yaml carry it), and NeMo RL's
examples/configs/grpo_rm_1B.yaml `env.reward_model` section."""

from __future__ import annotations

import logging
import textwrap

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from rmkit import serveconfig, server
from rmkit.config import ConfigError
from rmkit.dialects import DialectError, NemoRlRewardModel, nemo_rl_reward_model
from rmkit.ensemble import RewardPath
from rmkit.server import create_app, load_serve_config

GYM_YAML = """\
reward_model_server:
  resources_servers:
    reward_model:
      entrypoint: app.py
      domain: rlhf
      verified: false
      description: Scores responses with a Bradley-Terry reward model
      model_path: {model_path}
      device: cuda
reward_model_simple_agent:
  responses_api_agents:
    simple_agent:
      entrypoint: app.py
      resources_server:
        type: resources_servers
        name: reward_model_server
      model_server:
        type: responses_api_models
        name: policy_model
      datasets:
      - name: example
        type: example
        jsonl_fpath: resources_servers/reward_model/data/example.jsonl
"""


def gym_file(tmp_path, model_path="/models/rm", extra=""):
    text = GYM_YAML.format(model_path=model_path)
    if extra:
        text = text.replace("      device: cuda\n", "      device: cuda\n" + textwrap.indent(extra, " " * 6))
    path = tmp_path / "reward_model.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(serveconfig, "_cuda_available", lambda: False)


def test_nemo_gym_yaml_gets_exactly_nemo_gyms_defaults_and_raw_rewards(tmp_path, no_cuda, caplog):
    with caplog.at_level(logging.WARNING, logger="rmkit.dialects"):
        cfg = load_serve_config(gym_file(tmp_path))
    assert cfg.model_dirs == ["/models/rm"]
    assert (cfg.device, cfg.batch_size, cfg.max_length) == ("cpu", 8, 2048)
    assert (cfg.shaping.normalize, cfg.shaping.clip) == ("none", None)
    assert "no CUDA device is visible; serving on the CPU" in caplog.text


def test_cuda_is_kept_when_there_is_one(tmp_path, monkeypatch):
    monkeypatch.setattr(serveconfig, "_cuda_available", lambda: True)
    assert load_serve_config(gym_file(tmp_path)).device == "cuda"


def test_normalize_rewards_starts_running_statistics_at_the_given_mean_and_std_and_clips_at_five(tmp_path, no_cuda):
    extra = "normalize_rewards: true\nreward_mean: 1.5\nreward_std: 0.5\nbatch_size: 4\nmax_length: 512\n"
    cfg = load_serve_config(gym_file(tmp_path, extra=extra))
    s = cfg.shaping
    assert (s.normalize, s.reward_mean, s.reward_std, s.clip) == ("running", 1.5, 0.5, 5.0)
    assert (cfg.batch_size, cfg.max_length) == (4, 512)


def test_rmkit_overrides_still_apply_to_a_nemo_gym_file(tmp_path, no_cuda):
    cfg = load_serve_config(gym_file(tmp_path, extra="port: 8123\n"), ["host=0.0.0.0", "shaping.reward_threshold=0.5"])
    assert (cfg.host, cfg.port, cfg.shaping.reward_threshold) == ("0.0.0.0", 8123, 0.5)


@pytest.mark.parametrize("text, message", [
    (GYM_YAML + "model_dirs: [/models/rm]\n", "mixes two dialects: rmkit serve keys (model_dirs) beside NeMo Gym"),
    (GYM_YAML.replace("      device: cuda\n", "      device: cuda\n      shaping: {clip: 3}\n"),
     "mixes two dialects: reward_model_server.resources_servers.reward_model holds rmkit serve keys (shaping)"),
    (GYM_YAML.replace("      device: cuda\n", "      device: cuda\n      batchsize: 4\n"),
     "reward_model_server.resources_servers.reward_model.batchsize  Extra inputs are not permitted"),
    (GYM_YAML.replace("      model_path: {model_path}\n", ""),
     "reward_model_server.resources_servers.reward_model.model_path  Field required"),
    (GYM_YAML.replace("reward_model:\n      entrypoint", "math_with_judge:\n      entrypoint"),
     "found 0 (resources servers: reward_model_server.resources_servers.math_with_judge)"),
])
def test_mixed_or_wrong_nemo_gym_files_are_refused_saying_why(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text.replace("{model_path}", "/models/rm"))
    with pytest.raises(ConfigError) as info:
        load_serve_config(tmp_path / "bad.yaml")
    assert message in str(info.value)


def test_rmkit_serve_answers_verify_with_the_raw_score_under_nemo_gym_defaults(tmp_path, llama_dir, llama_scorer, no_cuda):
    """NeMo Gym's default (normalize_rewards false) is the raw reward-model score: not normalised, not clipped."""
    cfg = load_serve_config(gym_file(tmp_path, model_path=str(llama_dir)))
    load = lambda: RewardPath.load(cfg.model_dirs, cfg.shaping, device=cfg.device, max_length=cfg.max_length,  # noqa: E731
                                 max_batch=cfg.batch_size)
    body = {"responses_create_params": {"input": [{"role": "user", "content": "Name a prime."}]},
            "response": {"output": [{"type": "message", "role": "assistant",
                                     "content": [{"type": "output_text", "text": "7"}]}]}}
    with TestClient(create_app(load, cfg)) as client:
        out = client.post("/verify", json=body).json()
    [expected] = llama_scorer.score([[{"role": "user", "content": "Name a prime."}]],
                                    [[{"role": "assistant", "content": "7"}]])
    assert out["reward"] == pytest.approx(expected, abs=1e-5) and out["raw_reward"] == out["reward"]


def test_the_cli_serves_a_nemo_gym_file_unchanged(tmp_path, monkeypatch, no_cuda):
    from rmkit import cli

    seen = {}
    monkeypatch.setattr(server, "serve", lambda cfg: seen.setdefault("cfg", cfg))
    assert cli.main(["serve", str(gym_file(tmp_path)), "--port", "9001"]) == 0
    assert (seen["cfg"].model_dirs, seen["cfg"].port, seen["cfg"].batch_size) == (["/models/rm"], 9001, 8)


# ---------------------------------------------------------------- NeMo RL env.reward_model

NEMO_RL_YAML = """\
env:
  reward_model:
    enabled: true
    model_name: "{model}"
    tokenizer:
      name: ${{env.reward_model.model_name}}
    precision: "bfloat16"
    batch_size: ${{policy.train_micro_batch_size}}
    checkpoint_path: null
    max_model_len: 2048
    logprob_batch_size: ${{policy.logprob_batch_size}}
    resources:
      gpus_per_node: 1
      num_nodes: 1
    reward_model_cfg:
      enabled: true  # loads model as a Reward Model (do not change)
      reward_model_type: "bradley_terry"
    dtensor_cfg:
      _v2: true
      enabled: true
      cpu_offload: False
      sequence_parallel: false
      activation_checkpointing: false
      tensor_parallel_size: 1
      context_parallel_size: 1
      custom_parallel_plan: null
    dynamic_batching:
      enabled: False
    sequence_packing:
      enabled: False
    max_grad_norm: null # Won't use this, but need to set it to null to avoid error
"""


def nemo_rl_env(model="/models/rm", resolve=True):
    """The env.reward_model dict NeMo RL hands the environment: its YAML with ${policy.*} resolved (micro batch 4)."""
    text = NEMO_RL_YAML.format(model=model)
    if resolve:
        text = text.replace("${policy.train_micro_batch_size}", "4").replace("${policy.logprob_batch_size}", "4")
    return yaml.safe_load(text)["env"]["reward_model"]


def test_nemo_rl_reward_model_config_maps_every_key():
    assert nemo_rl_reward_model(nemo_rl_env()) == NemoRlRewardModel("/models/rm", "bfloat16", "auto", 4, 2048)


@pytest.mark.parametrize("change, message", [
    ({"tokenizer": {"name": "other/tokenizer"}}, "tokenizer.name='other/tokenizer' cannot be honoured"),
    ({"checkpoint_path": "/ckpt/step_100"}, "checkpoint_path='/ckpt/step_100' cannot be honoured: rmkit cannot read"),
    ({"precision": "fp8"}, "precision='fp8' cannot be honoured: use bfloat16, float16 or float32"),
    ({"resources": {"gpus_per_node": 8, "num_nodes": 1}}, "resources.gpus_per_node=8 cannot be honoured"),
    ({"resources": {"gpus_per_node": 1, "num_nodes": 2}}, "resources.num_nodes=2 cannot be honoured"),
    ({"reward_model_cfg": {"enabled": True, "reward_model_type": "regression"}},
     "reward_model_cfg.reward_model_type='regression' cannot be honoured: rmkit models are Bradley–Terry"),
    ({"dtensor_cfg": {"enabled": True, "tensor_parallel_size": 2}}, "dtensor_cfg.tensor_parallel_size=2 cannot"),
    ({"enabled": False}, "enabled=False cannot be honoured: the environment is disabled"),
    ({"max_model_len": None}, "max_model_len=None cannot be honoured"),
    ({"vllm_cfg": {}}, "unknown keys vllm_cfg; known: enabled, model_name"),
])
def test_nemo_rl_keys_rmkit_cannot_honour_are_refused_with_the_reason(change, message):
    with pytest.raises(DialectError, match=message.replace("(", r"\(").replace(")", r"\)")):
        nemo_rl_reward_model({**nemo_rl_env(), **change})


def test_an_unresolved_nemo_rl_interpolation_asks_to_resolve_the_config():
    with pytest.raises(DialectError, match=r"env.reward_model.batch_size is an unresolved interpolation .*resolve=True"):
        nemo_rl_reward_model(nemo_rl_env(resolve=False))


def test_no_gpus_means_cpu_and_dynamic_batching_is_ignored_with_a_warning(caplog):
    env = {**nemo_rl_env(), "resources": {"gpus_per_node": 0, "num_nodes": 1}, "dynamic_batching": {"enabled": True}}
    with caplog.at_level(logging.WARNING, logger="rmkit.dialects"):
        assert nemo_rl_reward_model(env).device == "cpu"
    assert "dynamic_batching.enabled ignored" in caplog.text


def test_environment_built_from_nemo_rl_config_returns_the_raw_scores(llama_dir, llama_scorer):
    from rmkit.rl import RewardModelEnvironment

    env_cfg = {**nemo_rl_env(model=str(llama_dir)), "precision": "float32", "max_model_len": 64, "batch_size": 2}
    env = RewardModelEnvironment.from_nemo_rl_config(env_cfg)
    logs = [[{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": r}] for r in "7 9 11".split()]
    out = env.step(logs, [{}] * 3)
    expected = llama_scorer.score([log[:1] for log in logs], [log[1:] for log in logs])
    assert out.rewards.tolist() == pytest.approx(expected, abs=1e-5)
    [scorer] = env.reward.backend().scorers
    assert (scorer.encoder.max_length, scorer.max_batch, next(scorer.model.parameters()).dtype.is_floating_point) == (
        64, 2, True)


def test_nemo_rl_precision_reaches_the_loaded_weights(llama_dir):
    import torch

    from rmkit.rl import RewardModelEnvironment

    env = RewardModelEnvironment.from_nemo_rl_config(nemo_rl_env(model=str(llama_dir)))  # bfloat16, as the example
    [scorer] = env.reward.backend().scorers
    assert next(scorer.model.parameters()).dtype == torch.bfloat16
    assert len(env.step([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]]).rewards) == 1


def test_the_readme_nemo_gym_example_is_served_as_it_is_written(tmp_path, no_cuda):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("**NeMo Gym.**"):]
    block = section[section.index("```yaml\n") + len("```yaml\n"):section.index("```\n", section.index("```yaml"))]
    (tmp_path / "reward_model.yaml").write_text(block)
    cfg = load_serve_config(tmp_path / "reward_model.yaml")
    assert (cfg.model_dirs, cfg.batch_size, cfg.shaping.normalize) == (["runs/default/model"], 8, "none")


def test_nemo_gyms_default_max_length_is_capped_at_what_a_bert_can_take(bert_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="rmkit.ensemble"):
        path = RewardPath.load([bert_dir], device="cpu", max_length=2048)
    assert path.scorers[0].encoder.max_length == 512 and "exceeds its 512 positions" in caplog.text
    out = path.rewards(["Name a prime."], ["7 " * 600])  # 1200+ tokens, cut from the left to 512
    assert np.isfinite(out.raw).all()
