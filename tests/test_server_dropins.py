"""Server drop-ins: a per-row reward_threshold in NeMo Gym /verify bodies, the pass rate and reward mean/std from
/aggregate_metrics, running statistics that survive a restart (stats_path), and the plain {"prompt", "response"} body
on POST /score that most FastAPI tutorials write, beside the batch form and in the OpenAPI document."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from rmkit.ensemble import RewardPath
from rmkit.server import ServeConfig, create_app
from rmkit.shaping import ShapingConfig

RAW = ShapingConfig(normalize="none", clip=None)
VERIFY = {  # a NeMo Gym /verify body (BaseVerifyRequest) with a task's own pass mark
    "responses_create_params": {"input": [{"role": "user", "content": "Name a prime.", "type": "message"}]},
    "response": {"id": "resp_1", "output": [{"type": "message", "role": "assistant", "id": "msg_1",
                                             "content": [{"type": "output_text", "text": "7", "annotations": []}]}]},
    "_ng_task_index": 0,
}


def client_for(scorer, shaping=RAW, **cfg):
    cfg = ServeConfig(model_dirs=["x"], shaping=shaping, **cfg)
    return TestClient(create_app(lambda: RewardPath([scorer], shaping), cfg))


@pytest.fixture(scope="module")
def client(llama_scorer):
    with client_for(llama_scorer) as c:
        yield c


def test_a_per_row_reward_threshold_gives_passed_per_row_and_is_echoed(client):
    reward = client.post("/verify", json=VERIFY).json()["reward"]
    below, above = ({**copy.deepcopy(VERIFY), "reward_threshold": reward + d} for d in (-0.5, 0.5))
    out_below, out_above = client.post("/verify", json=below).json(), client.post("/verify", json=above).json()
    assert (out_below["passed"], out_above["passed"]) == (True, False)
    assert out_above["reward_threshold"] == reward + 0.5
    assert "passed" not in client.post("/verify", json=VERIFY).json()  # no threshold anywhere: no pass flag


def test_the_row_threshold_wins_over_the_servers(llama_scorer):
    with client_for(llama_scorer, ShapingConfig(normalize="none", clip=None, reward_threshold=1e9)) as c:
        assert c.post("/verify", json=VERIFY).json()["passed"] is False
        assert c.post("/verify", json={**VERIFY, "reward_threshold": -1e9}).json()["passed"] is True


@pytest.mark.parametrize("bad", ["high", float("inf"), [1]])
def test_a_threshold_that_is_not_a_finite_number_is_a_422(client, bad):
    body = json.dumps({**VERIFY, "reward_threshold": bad}, allow_nan=True)
    response = client.post("/verify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "reward_threshold"


def test_aggregate_metrics_report_the_pass_rate_and_reward_mean_and_std(client):
    """Rewards 1, 0, 0.5 (passed, failed, passed) → mean/passed 2/3, mean/reward 0.5, std/reward √(1/6) ≈ 0.4082."""
    rows = [{"_ng_task_index": 0, "reward": r, "passed": p} for r, p in ((1.0, True), (0.0, False), (0.5, True))]
    out = client.post("/aggregate_metrics", json={"verify_responses": rows}).json()
    assert out["agent_metrics"]["mean/passed"] == pytest.approx(2 / 3)
    assert out["key_metrics"]["mean/passed"] == pytest.approx(2 / 3)
    assert out["agent_metrics"]["mean/reward"] == pytest.approx(0.5)
    assert out["agent_metrics"]["std/reward"] == pytest.approx(np.sqrt(1 / 6))


def test_verify_then_aggregate_over_a_session(client):
    answers = [client.post("/verify", json={**VERIFY, "_ng_rollout_index": i, "reward_threshold": t}).json()
               for i, t in enumerate((-1e9, 1e9, -1e9, -1e9))]
    out = client.post("/aggregate_metrics", json={"verify_responses": answers}).json()
    assert out["agent_metrics"]["mean/passed"] == 0.75
    assert out["agent_metrics"]["mean/reward"] == pytest.approx(answers[0]["reward"])


def test_running_statistics_are_restored_after_a_restart(tmp_path, llama_scorer):
    """Two servers one after the other on one stats file end with the moments of one server that saw everything."""
    shaping = ShapingConfig(normalize="running", clip=None)
    items = [{"prompt": "Name a prime.", "response": r} for r in ("7", "9", "11", "13")]
    path = tmp_path / "stats.json"
    for half in (items[:2], items[2:]):
        with client_for(llama_scorer, shaping, stats_path=str(path)) as c:
            c.post("/score", json={"items": half})
    with client_for(llama_scorer, shaping) as c:  # no file: one uninterrupted session
        c.post("/score", json={"items": items[:2]})
        c.post("/score", json={"items": items[2:]})
        expected = c.app.state.service.backend.running.state_dict()
    assert json.loads(path.read_text()) == pytest.approx(expected)


def test_the_stats_file_is_written_at_most_once_per_interval_and_at_shutdown(tmp_path, llama_scorer):
    """Interval 60 s: the first request writes the file, the second (within the interval) does not; shutdown writes
    the moments of both."""
    shaping = ShapingConfig(normalize="running", clip=None)
    path = tmp_path / "stats.json"
    with client_for(llama_scorer, shaping, stats_path=str(path), stats_save_interval_s=60) as c:
        c.post("/score", json={"items": [{"prompt": "Name a prime.", "response": "7"}]})
        after_first = json.loads(path.read_text())
        c.post("/score", json={"items": [{"prompt": "Name a prime.", "response": "9"}]})
        assert json.loads(path.read_text()) == after_first
        final = c.app.state.service.backend.running.state_dict()
    assert after_first["count"] < final["count"]
    assert json.loads(path.read_text()) == pytest.approx(final)


def test_a_seeded_server_starts_from_the_saved_file_not_the_seed(tmp_path, llama_scorer):
    (tmp_path / "stats.json").write_text('{"mean": 3.0, "var": 4.0, "std": 2.0, "count": 10.0}\n')
    shaping = ShapingConfig(normalize="running", reward_mean=-1.0, reward_std=5.0, clip=None)
    with client_for(llama_scorer, shaping, stats_path=str(tmp_path / "stats.json")) as c:
        running = c.app.state.service.backend.running
        assert (running.mean, running.std, running.count) == (3.0, 2.0, 10.0)


def test_stats_path_needs_running_normalisation():
    with pytest.raises(ValidationError, match="stats_path='s.json' keeps running statistics"):
        ServeConfig(model_dirs=["x"], stats_path="s.json")


def test_the_plain_score_body_gets_a_plain_score(client, llama_scorer):
    out = client.post("/score", json={"prompt": "Name a prime.", "response": "7"}).json()
    [expected] = llama_scorer.score(["Name a prime."], ["7"])
    assert set(out) == {"score", "raw_score"}
    assert out["score"] == pytest.approx(expected, abs=1e-5) and out["raw_score"] == out["score"]  # raw shaping
    batch = client.post("/score", json={"items": [{"prompt": "Name a prime.", "response": "7"}]}).json()
    assert batch["rewards"] == pytest.approx([out["score"]], abs=1e-6)


def test_a_plain_body_with_chat_messages_and_bad_plain_bodies(client):
    chat = {"prompt": [{"role": "user", "content": "Name a prime."}], "response": [{"role": "assistant", "content": "7"}]}
    assert "score" in client.post("/score", json=chat).json()
    for bad in ({"prompt": "p"}, {"prompt": "p", "response": "r", "extra": 1}, {"prompt": 3, "response": "r"}):
        assert client.post("/score", json=bad).status_code == 422


def test_both_score_forms_are_in_the_openapi_document(client):
    doc = client.get("/openapi.json").json()
    post = doc["paths"]["/score"]["post"]
    refs = json.dumps(post["requestBody"]) + json.dumps(post["responses"]["200"])
    for name in ("ScoreRequest", "PlainScoreRequest", "ScoreResponse", "PlainScoreResponse"):
        assert f"#/components/schemas/{name}" in refs
    assert set(doc["components"]["schemas"]["PlainScoreRequest"]["required"]) == {"prompt", "response"}


def test_nemo_gyms_length_example_on_verify_takes_characters_over_500_off_the_raw_score(llama_scorer):
    """600 characters: 100 over 500 at 0.001 each → −0.1; raw scores, so reward = raw − 0.1 and the model part is raw."""
    shaping = ShapingConfig(normalize="none", clip=None, length_penalty="linear", length_unit="chars",
                            length_threshold=500, length_coef=0.001, length_on="raw")
    body = copy.deepcopy(VERIFY)
    body["response"]["output"][0]["content"][0]["text"] = "7 " * 300
    with client_for(llama_scorer, shaping) as c:
        out = c.post("/verify", json=body).json()
    assert out["reward_components"]["length_penalty"] == pytest.approx(-0.1)
    assert out["reward"] == pytest.approx(out["raw_reward"] - 0.1)
    assert out["reward_components"]["reward_model"] == pytest.approx(out["raw_reward"])
