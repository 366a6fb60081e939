"""Sharded scoring: `accelerate launch -m rmkit score` over 2 CPU processes writes the same rows, in the same order,
with the same rewards as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rmkit.sharding import Shard, current_shard


def test_shards_are_strided_and_cover_every_index_once():
    shards = [Shard(r, 3, None).indices(8) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert sorted(i for s in shards for i in s) == list(range(8))


def test_a_lone_process_is_its_own_shard_and_gathers_what_it_has():
    shard = current_shard()
    assert (shard.rank, shard.world, shard.is_main) == (0, 1, True)
    assert shard.gather([0, 1], ["a", "b"]) == ["a", "b"]


def test_accelerate_launch_two_cpu_processes_score_like_one(tmp_path, hf_llama_dir):
    rows = [{"prompt": f"Question {i}?", "response": "word " * (i % 7 + 1)} for i in range(11)]
    rows.append({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = [sys.executable, "-m", "rmkit", "score", str(hf_llama_dir), str(src), "--out", str(tmp_path / "one.jsonl")]
    subprocess.run(one, check=True, env=env, capture_output=True, timeout=300)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              "29537", "-m", "rmkit", "score", str(hf_llama_dir), str(src), "--out", str(tmp_path / "two.jsonl")]
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one_rows = [json.loads(x) for x in (tmp_path / "one.jsonl").read_text().splitlines()]
    two_rows = [json.loads(x) for x in (tmp_path / "two.jsonl").read_text().splitlines()]
    strip = [{k: v for k, v in r.items() if k not in ("reward", "raw_reward")} for r in two_rows]
    assert strip == rows  # every row once, in input order
    assert [r["raw_reward"] for r in two_rows] == pytest.approx([r["raw_reward"] for r in one_rows], abs=1e-5)
    assert [r["reward"] for r in two_rows] == pytest.approx([r["reward"] for r in one_rows], abs=1e-5)
