"""The reward server through FastAPI's TestClient: scores match the library, shaping is applied as configured, and
every bad request gets a clear 4xx while the server keeps serving."""

from __future__ import annotations

import json
import logging
import math
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from live_server import SlowEnsemble
from rmkit.batcher import MicroBatcher
from rmkit.config import ConfigError
from rmkit.ensemble import Ensemble
from rmkit.scoring import Scorer
from rmkit.server import ServeConfig, create_app, load_serve_config
from rmkit.shaping import ShapingConfig

PAIRS = [("Name a prime.", "7"), ("Name a colour.", "Blue, mostly."), ("2+2?", "4")]
RAW = ShapingConfig(normalize="none", clip=None)


def make_client(scorers, shaping=RAW, ensemble_cls=Ensemble, **cfg):
    cfg = ServeConfig(model_dirs=["unused"], shaping=shaping, **cfg)
    return TestClient(create_app(lambda: ensemble_cls(scorers, shaping), cfg))


@pytest.fixture(scope="module")
def client(llama_scorer):
    with make_client([llama_scorer]) as c:
        yield c


def items(pairs=PAIRS):
    return [{"prompt": p, "response": r} for p, r in pairs]


def test_score_equals_the_library_score_for_prompt_response_and_messages(client, llama_scorer):
    expected = llama_scorer.score([p for p, _ in PAIRS], [r for _, r in PAIRS])
    chat = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} for p, r in PAIRS]
    for body in (items(), chat):
        out = client.post("/score", json={"items": body}).json()
        assert out["raw_rewards"] == pytest.approx(expected, abs=1e-5)
        assert out["rewards"] == pytest.approx(expected, abs=1e-5)  # normalize none, no clip
        assert out["member_rewards"] is None and out["passed"] is None


def test_batched_and_one_at_a_time_requests_get_the_same_scores(client):
    together = client.post("/score", json={"items": items()}).json()["rewards"]
    alone = [client.post("/score", json={"items": items([pair])}).json()["rewards"][0] for pair in PAIRS]
    assert alone == pytest.approx(together, abs=1e-5)


def test_stored_normalisation_clip_linear_length_penalty_and_threshold(tmp_path, llama_scorer):
    """mean 0.5, std 0.01, clip 5: a raw score far from the mean clips to ±5; the penalty 0.1·(L − 1) is added after."""
    shaping = ShapingConfig(reward_mean=0.5, reward_std=0.01, clip=5.0, length_penalty="linear", length_threshold=1,
                            length_coef=0.1, reward_threshold=0.0)
    with make_client([llama_scorer], shaping) as c:
        out = c.post("/score", json={"items": items()}).json()
    lengths = [len(llama_scorer.tokenizer(r, add_special_tokens=False)["input_ids"]) for _, r in PAIRS]
    z = np.clip((np.array(out["raw_rewards"]) - 0.5) / 0.01, -5, 5)
    expected = z - 0.1 * np.maximum(0, np.array(lengths) - 1)
    assert out["rewards"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert out["passed"] == [bool(r >= 0) for r in expected]


def test_ensemble_normalises_each_member_with_its_own_stats_then_combines(tmp_path, llama_scorer):
    """Members (stats 0/1 and 1/2); z = [r₀, (r₁ − 1)/2]; min rule; member scores and population std returned."""
    from conftest import make_model_dir

    other = Scorer.load(make_model_dir(tmp_path, "tiny-llama", seed=1, reward_mean=1.0, reward_std=2.0), device="cpu")
    shaping = ShapingConfig(clip=None, ensemble="min")
    with make_client([llama_scorer, other], shaping) as c:
        out = c.post("/score", json={"items": items()}).json()
    members = np.array(out["member_rewards"])  # (N, M)
    assert members[:, 0] == pytest.approx(llama_scorer.score([p for p, _ in PAIRS], [r for _, r in PAIRS]), abs=1e-5)
    z = np.stack([members[:, 0], (members[:, 1] - 1.0) / 2.0], axis=1)
    assert out["rewards"] == pytest.approx(z.min(axis=1).tolist(), abs=1e-6)
    assert out["raw_rewards"] == pytest.approx(members.min(axis=1).tolist(), abs=1e-6)
    assert out["reward_std"] == pytest.approx(members.std(axis=1).tolist(), abs=1e-6)
    assert len(out["member_names"]) == 2


def test_running_normalisation_merges_each_request_before_scaling(llama_scorer):
    """One item: running mean becomes r, std stays at its prior 1 → (r − r)/(1 + eps) = 0."""
    with make_client([llama_scorer], ShapingConfig(normalize="running", clip=None)) as c:
        first = c.post("/score", json={"items": items(PAIRS[:1])}).json()
    assert first["rewards"][0] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("path, body", [
    ("/score", {}),
    ("/score", {"items": []}),
    ("/score", {"items": "x"}),
    ("/score", {"items": [{"prompt": "p"}]}),
    ("/score", {"items": [{"prompt": 1, "response": "r"}]}),
    ("/score", {"items": [{"prompt": "p", "response": "r", "extra": 1}]}),
    ("/score", {"items": [{"messages": [{"role": "user", "content": "no answer"}]}]}),
    ("/score", {"items": [{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}]}),
    ("/get_reward", {"query": "not a list"}),
    ("/get_reward", {"query": ["a", "b"], "prompts": ["a"]}),
    ("/verify", {"responses_create_params": {}, "response": {"output": []}}),
    ("/verify", {"responses_create_params": {"input": 3}, "response": {"output": []}}),
    ("/verify", {"responses_create_params": {"input": "x"}}),
    ("/pooling", {"input": "x", "normalize": True}),
    ("/classify", {}),
    ("/classify", {"input": "x", "text": "y"}),
    ("/classify", {"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": True,
                   "continue_final_message": True}),
    ("/v1/score/evaluation", {"messages": []}),
    ("/v1/score/evaluation", {"messages": [1]}),
    ("/aggregate_metrics", {"verify_responses": "x"}),
])
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(client, path, body):
    response = client.post(path, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert "detail" in response.json()
    assert client.post("/score", json={"items": items(PAIRS[:1])}).status_code == 200


def test_malformed_json_gets_400(client):
    response = client.post("/score", content=b'{"items": [', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_limits_on_body_items_and_text_get_clear_4xx(llama_scorer):
    with make_client([llama_scorer], max_body_bytes=4096, max_items=2, queue_size=8, max_text_chars=50) as c:
        big = c.post("/score", content=b"x" * 5000, headers={"content-type": "application/json"})
        assert big.status_code == 413 and "max_body_bytes" in big.json()["detail"]

        def chunks():
            yield b'{"items": ['
            for _ in range(200):
                yield b'{"prompt": "p", "response": "r"},'
        streamed = c.post("/score", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        many = c.post("/score", json={"items": items()})
        assert many.status_code == 422 and "max_items=2" in many.json()["detail"]
        long = c.post("/get_reward", json={"query": ["x" * 51]})
        assert long.status_code == 422 and "max_text_chars=50" in long.json()["detail"]
        assert c.post("/score", json={"items": items(PAIRS[:2])}).status_code == 200


def test_validation_errors_and_logs_never_contain_the_request_text(client, caplog):
    secret = "SECRET-" + "z" * 2_000_000  # over the schema's hard ceiling
    with caplog.at_level(logging.DEBUG):
        response = client.post("/score", json={"items": [{"prompt": secret, "response": "r"}]})
        ok = client.post("/score", json={"items": [{"prompt": "SECRET-2", "response": "r"}]})
    assert response.status_code == 422 and "SECRET" not in response.text
    assert ok.status_code == 200
    assert "SECRET" not in caplog.text
    assert any("/score 200 items=1" in r.getMessage() for r in caplog.records)


def test_bearer_token_is_required_except_for_health(llama_scorer):
    with make_client([llama_scorer], token="s3cret") as c:
        assert c.get("/health").status_code == 200
        denied = c.post("/score", json={"items": items()})
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/score", json={"items": items()}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = c.post("/score", json={"items": items()}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_full_queue_gets_503_with_retry_after(llama_scorer):
    with make_client([llama_scorer], ensemble_cls=SlowEnsemble, queue_size=2, max_items=2, batch_size=1) as c:
        results = []

        def post():
            results.append(c.post("/score", json={"items": items(PAIRS[:2])}))
        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    codes = sorted(r.status_code for r in results)
    assert 200 in codes and 503 in codes, codes
    refused = next(r for r in results if r.status_code == 503)
    assert int(refused.headers["retry-after"]) >= 1 and "queue full" in refused.json()["detail"]


def test_request_past_its_deadline_gets_504_and_later_requests_still_work(llama_scorer):
    with make_client([llama_scorer], ensemble_cls=SlowEnsemble, request_timeout_s=0.05) as c:
        late = c.post("/score", json={"items": items()})
        assert late.status_code == 504 and "request_timeout_s" in late.json()["detail"]
        assert c.get("/health").json()["status"] == "ok"


def test_forward_runs_in_the_batcher_thread_not_the_event_loop(llama_scorer):
    with make_client([llama_scorer], ensemble_cls=SlowEnsemble) as c:
        assert c.post("/score", json={"items": items()}).status_code == 200
        backend = c.app.state.service.backend
    assert backend.threads == {"rmkit-forward_0"}


def test_metrics_report_requests_errors_latency_batches_and_queue_depth(client):
    client.post("/score", json={"items": items()})
    client.post("/score", json={"items": []})
    text = client.get("/metrics").text
    assert 'rmkit_requests_total{path="/score",status="200"}' in text
    assert 'rmkit_errors_total{path="/score"}' in text
    assert 'rmkit_request_seconds_bucket{path="/score",le="+Inf"}' in text
    assert "rmkit_batch_size_count" in text and "rmkit_queue_depth 0" in text


def test_micro_batcher_gathers_concurrent_requests_into_one_batch():
    import asyncio

    seen = []

    def run(batch):
        seen.append(len(batch))
        return [x * 2 for x in batch]

    async def main():
        batcher = MicroBatcher(run, max_tokens=1000, max_batch=100, max_wait_s=0.05)
        batcher.start()
        answers = await asyncio.gather(*(batcher.submit([i, i + 100], tokens=2) for i in range(10)))
        await batcher.stop()
        return answers

    answers = asyncio.run(main())
    assert answers == [[2 * i, 2 * (i + 100)] for i in range(10)]
    assert seen == [20]


def test_micro_batcher_respects_the_token_budget_without_splitting_a_request():
    import asyncio

    seen = []

    async def main():
        batcher = MicroBatcher(lambda b: (seen.append(len(b)), b)[1], max_tokens=10, max_batch=100, max_wait_s=0.05)
        batcher.start()
        await asyncio.gather(*(batcher.submit(["a"] * 3, tokens=6) for _ in range(3)))
        await batcher.stop()

    asyncio.run(main())
    assert seen == [3, 3, 3]  # 6 + 6 tokens > 10: one request per batch


def test_serve_config_reads_yaml_overrides_and_token_from_env(tmp_path, llama_dir, monkeypatch):
    path = tmp_path / "serve.yaml"
    path.write_text(f"model_dirs: [{llama_dir}]\nport: 9000\nshaping:\n  clip: 3\n")
    monkeypatch.setenv("RMKIT_TOKEN", "from-env")
    cfg = load_serve_config(path, ["shaping.normalize=none", "batch_size=8"])
    assert (cfg.port, cfg.max_batch, cfg.shaping.clip, cfg.shaping.normalize) == (9000, 8, 3.0, "none")
    assert cfg.host == "127.0.0.1" and cfg.token == "from-env"
    assert load_serve_config(llama_dir).model_dirs == [str(llama_dir)]


def test_serve_config_reports_every_problem_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model_dirs: []\nprot: 1\nshaping: {clip: -1}\n")
    with pytest.raises(ConfigError) as err:
        load_serve_config(path)
    message = str(err.value)
    assert "model_dirs" in message and "prot" in message and "shaping.clip" in message
    with pytest.raises(ValueError, match="queue_size"):
        ServeConfig(model_dirs=["m"], queue_size=10, max_items=100)


def test_health_and_models_name_the_served_model(client, llama_scorer):
    assert client.get("/health").json() == {"status": "ok", "model": llama_scorer.name, "queue_depth": 0}
    card = client.get("/v1/models").json()["data"][0]
    assert card["id"] == llama_scorer.name and card["max_model_len"] == llama_scorer.card.max_length


def test_nonfinite_free_answers_are_valid_json(client):
    out = client.post("/pooling", json={"input": ["a", "b"]}).json()
    assert all(math.isfinite(d["data"][0]) for d in out["data"])
    json.dumps(out, allow_nan=False)


def test_micro_batcher_waits_only_for_requests_already_on_their_way():
    import asyncio
    import time

    async def main():
        batcher = MicroBatcher(lambda b: b, max_wait_s=0.3)
        batcher.start()
        start = time.perf_counter()
        await batcher.submit(["a"], tokens=1)  # nothing else incoming: runs at once
        alone = time.perf_counter() - start
        batcher.incoming = 1  # another request is being tokenised: hold the batch open for it (up to max_wait_s)
        start = time.perf_counter()
        await batcher.submit(["b"], tokens=1)
        held = time.perf_counter() - start
        await batcher.stop()
        return alone, held

    alone, held = asyncio.run(main())
    assert alone < 0.15 and held >= 0.29
