"""Tests for rmkit.config: one loader and one error formatter for every config tree (train, serve, GRPO)."""

from __future__ import annotations

import pytest

from rmkit.config import (
    ConfigError,
    TrainConfig,
    dump_config,
    load_config,
    merge_mappings,
    parse_overrides,
)
from rmkit.grpo import load_grpo_config
from rmkit.serveconfig import ServeConfig, load_serve_config


def test_overrides_nest_by_dots_and_read_values_as_yaml():
    assert parse_overrides(["optim.lr=0.5", "data.paths=[a.jsonl, b.jsonl]", "train.out_dir="]) == {
        "optim": {"lr": 0.5}, "data": {"paths": ["a.jsonl", "b.jsonl"]}, "train": {"out_dir": ""}}


def test_yaml_reads_1e_5_as_a_string_and_validation_makes_it_a_float():
    assert parse_overrides(["optim.lr=1e-5"]) == {"optim": {"lr": "1e-5"}}
    assert load_config(None, ["optim.lr=1e-5"]).optim.lr == 1e-5


def test_an_override_without_equals_is_an_error_with_an_example():
    with pytest.raises(ConfigError, match="optim.lr=1e-5"):
        parse_overrides(["optim.lr"])


def test_merge_keeps_sibling_keys_of_a_nested_override():
    assert merge_mappings({"a": {"x": 1, "y": 2}, "b": 3}, {"a": {"y": 9}}) == {"a": {"x": 1, "y": 9}, "b": 3}


def test_a_dumped_train_config_loads_back_equal(tmp_path):
    cfg = load_config(None, ["optim.lr=3e-4", "train.max_steps=7"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg and cfg.optim.lr == 3e-4 and cfg.train.max_steps == 7


@pytest.mark.parametrize("load, overrides, kind", [
    (load_config, ["optim.lr=fast", "model.finetune=half"], "rmkit config"),
    (load_grpo_config, ["train.batchsize=4", "policy.finetune=half"], "rmkit GRPO config"),
])
def test_every_tree_reports_every_problem_at_once_with_dotted_paths(load, overrides, kind):
    with pytest.raises(ConfigError) as err:
        load(None, overrides)
    message = str(err.value)
    assert message.startswith(f"defaults is not a valid {kind}:")
    keys = [o.split("=")[0] for o in overrides]
    assert all(k in message for k in keys), message


def test_a_file_that_is_not_a_mapping_says_what_a_config_looks_like(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="sections model, data, optim, train"):
        load_config(path)


def test_serve_config_from_a_model_directory_takes_the_token_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RMKIT_TOKEN", "007")
    cfg = load_serve_config(tmp_path, ["port=9000"])
    assert (cfg.model_dirs, cfg.port, cfg.token) == ([str(tmp_path)], 9000, "007")  # a string, not YAML's int 7


def test_a_token_in_the_file_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RMKIT_TOKEN", "env")
    path = tmp_path / "serve.yaml"
    path.write_text("model_dirs: [m]\ntoken: file\n")
    assert load_serve_config(path).token == "file"


def test_grpo_shaping_is_a_typed_shaping_config_that_keeps_only_given_fields():
    cfg = load_grpo_config(None, ["reward.shaping={clip: 2.0}"])
    assert cfg.reward.shaping.clip == 2.0
    assert cfg.reward.shaping.model_dump(exclude_unset=True) == {"clip": 2.0}
    assert cfg.model_dump(mode="json")["reward"]["shaping"] == {"clip": 2.0}  # config.yaml leaves the rest open


def test_configs_are_frozen():
    with pytest.raises(ValueError):
        TrainConfig().optim.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="queue_size"):
        ServeConfig(model_dirs=["m"], queue_size=1, max_items=2)


def test_reading_shaping_options_for_rmkit_score_needs_no_web_framework():
    import subprocess
    import sys

    code = ("import sys, rmkit.config, rmkit.ensemble; "
            "print(sorted(m for m in ('fastapi', 'rmkit.server') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
