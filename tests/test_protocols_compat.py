"""One replayed request per RL stack (docs/protocols.md §2), shaped exactly as that stack sends it, plus batch scoring of
NeMo Gym rollout rows. Expected numbers come from the library Scorer on the same text."""

from __future__ import annotations

import copy
import json
import math

import pytest
from fastapi.testclient import TestClient

from rmkit.ensemble import Ensemble, score_file
from rmkit.gym import gym_prompt, gym_response
from rmkit.server import ServeConfig, create_app
from rmkit.shaping import ShapingConfig

CHATML = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"

GYM_BODY = {  # docs/protocols.md §2, as NeMo Gym's collection loop posts it (trimmed), with task and training fields
    "responses_create_params": {
        "input": [{"role": "developer", "content": "You are a helpful assistant.", "type": "message"},
                  {"role": "user", "content": "Weather in SF?", "type": "message"}],
        "tools": [], "parallel_tool_calls": True, "tool_choice": "auto", "temperature": None, "stream": None},
    "response": {
        "id": "resp_1", "object": "response", "created_at": 1756074069.0, "model": "policy",
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think hidden"}]},
            {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "Let me check.", "annotations": [], "logprobs": []}],
             "prompt_token_ids": [1, 2], "generation_token_ids": [3], "generation_log_probs": [-0.5]},
            {"type": "function_call", "name": "get_weather", "arguments": "{\"city\":\"SF\"}", "call_id": "call_1"}],
        "usage": {"input_tokens": 60, "output_tokens": 30, "total_tokens": 90,
                  "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}},
    "expected_call": {"name": "get_weather", "arguments": {"city": "SF"}},
    "_ng_task_index": 3, "_ng_rollout_index": 1, "agent_ref": {"name": "agent"},
}


def client_for(scorer, shaping=None):
    shaping = shaping or ShapingConfig()
    return TestClient(create_app(lambda: Ensemble([scorer], shaping), ServeConfig(model_dirs=["x"], shaping=shaping)))


@pytest.fixture(scope="module")
def client(llama_scorer):
    with client_for(llama_scorer) as c:
        yield c


def clipped(x: float, bound: float = 5.0) -> float:
    return max(-bound, min(bound, x))  # default shaping: stored stats of the tiny card are 0/1, clip ±5


def test_openrlhf_get_reward_scores_the_query_text_as_sent(client, llama_scorer):
    queries = [CHATML + "4<|im_end|>", CHATML + "5, I think.<|im_end|>"]
    body = {"query": queries, "prompts": [CHATML, CHATML], "labels": ["", None]}
    out = client.post("/get_reward", json=body).json()
    expected = [clipped(r) for r in llama_scorer.score_texts(queries)]
    assert out["rewards"] == pytest.approx(expected, abs=1e-5)
    assert out["scores"] == out["rewards"]
    assert set(out["extra_logs"]) == {"raw_reward"} and len(out["extra_logs"]["raw_reward"]) == 2


def test_openrlhf_empty_shard_gets_a_200_with_three_empty_containers(client):
    response = client.post("/get_reward", json={"query": [], "prompts": [], "labels": []})
    assert response.status_code == 200
    assert response.json() == {"rewards": [], "scores": [], "extra_logs": {}}


def test_nemo_gym_verify_echoes_every_field_and_adds_the_reward(client, llama_scorer):
    body = copy.deepcopy(GYM_BODY)
    out = client.post("/verify", json=body).json()
    for key, value in body.items():
        assert out[key] == value, key
    prompt = [{"role": "system", "content": "You are a helpful assistant."},
              {"role": "user", "content": "Weather in SF?"}]
    response = 'Let me check.\n\nTool call: get_weather({"city":"SF"})'
    assert out["reward"] == pytest.approx(clipped(llama_scorer.score([prompt], [response])[0]), abs=1e-5)
    assert "reward_components" not in out  # one component: none listed


def test_nemo_gym_reward_components_sum_to_the_reward_and_repeat_at_top_level(llama_scorer):
    shaping = ShapingConfig(length_penalty="dapo", dapo_max_length=4, dapo_cache=2)
    with client_for(llama_scorer, shaping) as c:
        out = c.post("/verify", json=GYM_BODY).json()
    parts = out["reward_components"]
    assert set(parts) == {"reward_model", "length_penalty"}
    assert math.isclose(out["reward"], sum(parts.values()), rel_tol=1e-5, abs_tol=1e-6)
    assert parts["length_penalty"] == -1.0  # the response is longer than Lmax = 4 tokens
    assert all(out[k] == v for k, v in parts.items())


def test_nemo_gym_companion_endpoints(client):
    assert client.post("/seed_session", json={}).json() == {}
    assert client.get("/reverify_mode").json() == "stateless"
    empty = client.post("/aggregate_metrics", json={"verify_responses": []}).json()
    assert empty == {"group_level_metrics": [], "agent_metrics": {}, "key_metrics": {}}
    rows = [{"_ng_task_index": 0, "_ng_rollout_index": i, "reward": r} for i, r in enumerate([1.0, 0.0, 0.5])]
    out = client.post("/aggregate_metrics", json={"verify_responses": rows}).json()
    assert out["agent_metrics"]["mean/reward"] == pytest.approx(0.5)
    assert out["key_metrics"]["mean/reward"] == pytest.approx(0.5)
    assert out["group_level_metrics"][0]["max/reward"] == 1.0


def test_vllm_pooling_chat_form_gives_the_raw_logit_with_use_activation_false(client, llama_scorer):
    body = {"model": "my-rm", "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
            "task": "classify", "use_activation": False}
    out = client.post("/pooling", json=body).json()
    raw = llama_scorer.score([[{"role": "user", "content": "2+2?"}]], ["4"])[0]
    assert out["object"] == "list" and out["data"][0]["object"] == "pooling"
    assert out["data"][0]["data"] == pytest.approx([raw], abs=1e-5)
    assert out["usage"]["prompt_tokens"] > 0


def test_vllm_classify_gives_sigmoid_by_default_and_one_item_per_input(client, llama_scorer):
    texts = [CHATML + "4<|im_end|>", CHATML + "5<|im_end|>"]
    raw = llama_scorer.score_texts(texts)
    out = client.post("/classify", json={"model": "my-rm", "input": texts}).json()
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert [d["probs"][0] for d in out["data"]] == pytest.approx([1 / (1 + math.exp(-r)) for r in raw], abs=1e-5)
    assert out["data"][0]["num_classes"] == 1
    plain = client.post("/classify", json={"input": texts, "use_activation": False}).json()
    assert [d["probs"][0] for d in plain["data"]] == pytest.approx(raw, abs=1e-5)
    assert client.post("/classify", json={"input": texts, "normalize": True}).status_code == 422
    assert client.get("/v1/models").json()["data"][0]["id"] == llama_scorer.name


def test_sglang_classify_returns_the_raw_score_as_embedding(client, llama_scorer):
    texts = [CHATML + "4<|im_end|>", CHATML + "5<|im_end|>"]
    raw = llama_scorer.score_texts(texts)
    out = client.post("/classify", json={"model": "my-rm", "text": texts}).json()
    assert [o["embedding"][0] for o in out] == pytest.approx(raw, abs=1e-5)
    single = client.post("/classify", json={"model": "my-rm", "text": texts[0]}).json()
    assert single["embedding"][0] == pytest.approx(raw[0], abs=1e-5) and single["meta_info"]["prompt_tokens"] > 0


def test_llamafactory_score_evaluation_returns_scores_and_400_on_empty(client, llama_scorer):
    texts = [CHATML + "4<|im_end|>", CHATML + "5<|im_end|>"]
    out = client.post("/v1/score/evaluation", json={"model": "model", "messages": texts, "max_length": None}).json()
    assert out["object"] == "score.evaluation" and out["id"].startswith("scoreval-")
    assert out["scores"] == pytest.approx([clipped(r) for r in llama_scorer.score_texts(texts)], abs=1e-5)
    assert client.post("/v1/score/evaluation", json={"model": "model", "messages": []}).status_code == 400


def test_gym_rendering_rule_keeps_messages_and_tool_calls_and_drops_reasoning():
    prompt = gym_prompt([{"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
                         {"type": "function_call", "name": "f", "arguments": "{}"},
                         {"type": "function_call_output", "call_id": "c", "output": "42"},
                         {"type": "reasoning", "summary": []}])
    assert prompt == [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Tool call: f({})"},
                      {"role": "tool", "content": "42"}]
    assert gym_prompt("Hi") == "Hi"
    assert gym_response(GYM_BODY["response"]["output"]) == 'Let me check.\n\nTool call: get_weather({"city":"SF"})'


def test_score_file_reads_gym_rollouts_and_plain_rows_and_writes_shaped_and_raw(tmp_path, llama_dir, llama_scorer):
    rows = [GYM_BODY, {"prompt": "Name a prime.", "response": "7"},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    src, out = tmp_path / "rollouts.jsonl", tmp_path / "scored.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shaping = ShapingConfig(reward_mean=0.0, reward_std=0.001, reward_threshold=0.0)
    assert score_file(llama_dir, src, out, shaping=shaping, device="cpu") == 3
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    raw = llama_scorer.score(["Name a prime."], ["7"])[0]
    assert scored[1]["raw_reward"] == pytest.approx(raw, abs=1e-5)
    assert scored[1]["reward"] == pytest.approx(clipped(raw / 0.001), abs=1e-5)
    assert scored[1]["passed"] == (scored[1]["reward"] >= 0)
    assert scored[0]["expected_call"] == GYM_BODY["expected_call"]  # rows are copied, rewards added


def test_rmkit_score_cli_takes_serve_config_overrides_for_shaping(tmp_path, llama_dir, llama_scorer):
    from rmkit.cli import main

    src, out = tmp_path / "rows.jsonl", tmp_path / "scored.jsonl"
    src.write_text(json.dumps({"prompt": "Name a prime.", "response": "7"}) + "\n")
    assert main(["score", str(llama_dir), str(src), "--out", str(out), "--set", "shaping.normalize=none",
                 "--set", "shaping.clip=null", "--set", "device=cpu"]) == 0
    row = json.loads(out.read_text())
    expected = llama_scorer.score(["Name a prime."], ["7"])[0]
    assert row["reward"] == row["raw_reward"] == pytest.approx(expected, abs=1e-5)
    assert main(["score", str(llama_dir), str(src), "--out", str(out), "--set", "shaping.nromalize=none"]) == 2


def test_vllm_input_on_an_encoder_gets_its_special_tokens_like_the_library(bert_dir):
    from rmkit.scoring import Scorer

    bert = Scorer.load(bert_dir, device="cpu")
    texts = ["User: Name a prime.\n\nAssistant: 7", "User: Hi\n\nAssistant: Hello"]
    with client_for(bert) as c:
        out = c.post("/classify", json={"input": texts, "use_activation": False}).json()
    assert [d["probs"][0] for d in out["data"]] == pytest.approx(bert.score_texts(texts), abs=1e-5)


def test_a_doubled_leading_bos_is_dropped():
    from rmkit.ensemble import _drop_double_bos

    assert _drop_double_bos([1, 1, 5], bos=1) == [1, 5]
    assert _drop_double_bos([1, 5], bos=1) == [1, 5]
    assert _drop_double_bos([1, 1, 5], bos=None) == [1, 1, 5]
