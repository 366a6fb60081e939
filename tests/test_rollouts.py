"""rmkit.rollouts: prompt rows in every shape, seeded sampling, NeMo Gym rollout rows with rewards, best-of-N."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_model_dir
from rmkit.data import DataError
from rmkit.rl import reward_function
from rmkit.rollouts import best_of_n, collect, prompt_messages, read_prompts, rerank, response_text

PROMPT_ROWS = [
    {"prompt": "Name a prime.", "id": "p0", "answer": "7"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky colour?"},
                  {"role": "assistant", "content": "Blue."}]},
    {"responses_create_params": {"input": [{"role": "user", "type": "message",
                                            "content": [{"type": "input_text", "text": "Say hi."}]}]}},
]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PROMPT_ROWS))
    return path


@pytest.fixture(scope="module")
def rollouts(prompts_file, llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rollouts") / "rollouts.jsonl"
    n = collect(prompts_file, "tiny-llama-lm", llama_dir, out, n=3, max_new_tokens=6, seed=7, device="cpu")
    return out, n


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prompts_are_read_from_text_hh_chat_and_nemo_gym_rows():
    assert prompt_messages({"prompt": "Hi"}, "f:1") == [{"role": "user", "content": "Hi"}]
    hh = {"prompt": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Why?\n\nAssistant:"}
    assert [m["role"] for m in prompt_messages(hh, "f:1")] == ["user", "assistant", "user"]
    assert prompt_messages(PROMPT_ROWS[1], "f:2") == PROMPT_ROWS[1]["messages"][:2]  # the answer is dropped
    gym = {"responses_create_params": {"input": [{"type": "reasoning", "summary": []},
                                                 {"role": "user", "content": "Hi", "type": "message"}]}}
    assert prompt_messages(gym, "f:3") == [{"role": "user", "content": "Hi"}]
    with pytest.raises(DataError, match="f:4: no prompt found"):
        prompt_messages({"question": "Hi"}, "f:4")


def test_read_prompts_keeps_task_fields_and_honours_the_limit(prompts_file):
    tasks = read_prompts(prompts_file)
    assert len(tasks) == 3 and tasks[0][1] == {"id": "p0", "answer": "7"} and tasks[1][1] == {}
    assert tasks[2][0] == [{"role": "user", "content": "Say hi."}]
    assert len(read_prompts(prompts_file, limit=2)) == 2


def test_collect_writes_nemo_gym_rows_with_the_reward_fields(rollouts, llama_dir):
    path, n = rollouts
    rows = read_jsonl(path)
    assert n == len(rows) == 9
    assert [(r["_ng_task_index"], r["_ng_rollout_index"]) for r in rows] == [(t, k) for t in range(3) for k in range(3)]
    first = rows[0]
    assert first["id"] == "p0" and first["answer"] == "7"  # task fields are echoed
    prompt = [{"role": "user", "content": "Name a prime.", "type": "message"}]
    assert first["responses_create_params"]["input"] == prompt
    output = first["response"]["output"]
    assert output[0]["type"] == "message" and output[0]["role"] == "assistant"
    assert output[0]["content"][0]["type"] == "output_text"
    usage = first["response"]["usage"]
    assert 1 <= usage["output_tokens"] <= 6 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert first["response"]["status"] in ("completed", "incomplete")
    assert first["agent_ref"] == {"name": "rmkit_collect"}
    # the rewards are the reward function's, on the prompt messages and the completion text
    scored = reward_function(llama_dir, device="cpu").score(
        [prompt_messages(r, "") for r in rows], [response_text(r) for r in rows])
    np.testing.assert_allclose([r["reward"] for r in rows], scored.shaped, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r["raw_reward"] for r in rows], scored.raw, rtol=1e-5, atol=1e-6)


def test_the_same_seed_samples_the_same_completions(rollouts, prompts_file, llama_dir, tmp_path):
    path, _ = rollouts
    again = tmp_path / "again.jsonl"
    collect(prompts_file, "tiny-llama-lm", llama_dir, again, n=3, max_new_tokens=6, seed=7, limit=1, device="cpu")
    assert [response_text(r) for r in read_jsonl(again)] == [response_text(r) for r in read_jsonl(path)[:3]]
    assert len({response_text(r) for r in read_jsonl(path)[:3]}) > 1  # sampled, not greedy


def test_best_of_n_gain_matches_hand_worked_numbers():
    """Picks [1, 2]; gain (3−2 + 2−1)/2 = 1; held-out (0−1 + 1−1)/2 = −0.5; oracle 0.5; agreement 1/2."""
    report, picks = best_of_n([0, 0, 1, 1], [1.0, 3.0, 2.0, 0.0], [2.0, 0.0, 1.0, 1.0])
    assert picks == [1, 2]
    assert report == pytest.approx({"tasks": 2, "rollouts": 4, "best_reward": 2.5, "random_reward": 1.5, "gain": 1.0,
                                    "best_heldout_reward": 0.5, "random_heldout_reward": 1.0, "heldout_gain": -0.5,
                                    "heldout_oracle_gain": 0.5, "agreement": 0.5})


def test_rerank_picks_the_best_rollout_per_task_and_scores_it_with_the_heldout_model(rollouts, llama_dir,
                                                                                      models_root, tmp_path):
    path, _ = rollouts
    heldout = make_model_dir(models_root, "tiny-llama", seed=5)
    best = tmp_path / "best.jsonl"
    report = rerank(path, llama_dir, heldout, out=best, device="cpu")
    assert report["tasks"] == 3 and report["rollouts"] == 9 and report["gain"] >= 0
    assert report["heldout_oracle_gain"] >= report["heldout_gain"]
    picked = read_jsonl(best)
    assert [r["_ng_task_index"] for r in picked] == [0, 1, 2]
    by_task = {}
    for r in read_jsonl(path):
        by_task.setdefault(r["_ng_task_index"], []).append(r["raw_reward"])
    for r in picked:  # stored normalisation is monotone, so the pick has the highest raw reward of its task
        assert r["raw_reward"] == pytest.approx(max(by_task[r["_ng_task_index"]]))
    same = rerank(path, llama_dir, llama_dir, device="cpu")
    assert same["heldout_gain"] == pytest.approx(same["gain"]) and same["agreement"] == 1.0


def test_rerank_refuses_rows_that_are_not_rollouts(prompts_file, llama_dir):
    with pytest.raises(DataError, match="not a rollout row"):
        rerank(prompts_file, llama_dir, llama_dir, device="cpu")
