"""Plain HF reward models served: a Llama SeqCls folder and a RoBERTa one, saved by transformers with no rmkit.json,
loaded as `rmkit serve DIR` loads them, score as plain transformers does and pass the server's compatibility tests
(the protocol tests of test_protocols_compat, rerun here against these folders); the client spreads requests over
replicas; ensemble members take a device each."""

from __future__ import annotations

import re

import httpx
import pytest
import torch

from live_server import live_server
from rmkit.serveconfig import load_serve_config
from rmkit.server import create_app, load_reward_path
from test_protocols_compat import (  # noqa: F401  (rerun here against plain HF folders)
    test_llamafactory_score_evaluation_returns_scores_and_400_on_empty,
    test_nemo_gym_companion_endpoints,
    test_nemo_gym_verify_echoes_every_field_and_adds_the_reward,
    test_openrlhf_empty_shard_gets_a_200_with_three_empty_containers,
    test_openrlhf_get_reward_scores_the_query_text_as_sent,
    test_sglang_classify_returns_the_raw_score_as_embedding,
    test_vllm_classify_gives_sigmoid_by_default_and_one_item_per_input,
    test_vllm_pooling_chat_form_gives_the_raw_logit_with_use_activation_false,
)


@pytest.fixture(scope="module", params=["hf_llama_dir", "hf_roberta_dir"])
def served(request):
    """(TestClient of the app `rmkit serve DIR` runs, its one Scorer) for a plain HF folder."""
    from fastapi.testclient import TestClient

    cfg = load_serve_config(str(request.getfixturevalue(request.param)), ["device=cpu"])
    ensemble = load_reward_path(cfg)
    with TestClient(create_app(lambda: ensemble, cfg)) as client:
        yield client, ensemble.scorers[0]


@pytest.fixture(scope="module")
def client(served):
    return served[0]


@pytest.fixture(scope="module")
def llama_scorer(served):  # the name the imported compatibility tests ask for: here, the served plain HF model
    return served[1]


def plain_transformers_score(model_dir, text: str, add_special_tokens: bool) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        return hf(**tok(text, add_special_tokens=add_special_tokens, return_tensors="pt")).logits[0, 0].item()


@pytest.mark.parametrize("fixture", ["hf_llama_dir", "hf_roberta_dir"])
def test_rmkit_serve_dir_answers_what_plain_transformers_scores(request, fixture):
    model_dir = request.getfixturevalue(fixture)
    cfg = load_serve_config(str(model_dir), ["device=cpu", "shaping.normalize=none", "shaping.clip=null"])
    with live_server(create_app(lambda: load_reward_path(cfg), cfg)) as server:
        body = {"items": [{"prompt": "Name a prime.", "response": "7"}]}
        answer = httpx.post(f"{server.url}/score", json=body, timeout=30).json()
        scorer = load_reward_path(cfg).scorers[0]
    text = scorer.render("Name a prime.", "7")
    expected = plain_transformers_score(model_dir, text, scorer.card.add_special_tokens)
    assert answer["raw_rewards"][0] == pytest.approx(expected, abs=1e-4)
    assert answer["rewards"][0] == pytest.approx(expected, abs=1e-4)


def test_client_spreads_requests_over_replicas(hf_roberta_dir):
    from rmkit.client import RewardClient

    cfg = load_serve_config(str(hf_roberta_dir), ["device=cpu"])
    ensemble = load_reward_path(cfg)
    with live_server(create_app(lambda: ensemble, cfg)) as a, live_server(create_app(lambda: ensemble, cfg)) as b:
        with RewardClient([a.url, b.url], batch_size=1) as rc:
            rewards = rc.score(["p"] * 4, ["one", "two", "three", "four"])
        counts = [int(re.search(r'rmkit_requests_total\{path="/score",status="200"\} (\d+)',
                                httpx.get(f"{s.url}/metrics").text).group(1)) for s in (a, b)]
        from rmkit.rl import reward_function

        through_rl = reward_function([a.url, b.url])(["p"] * 4, ["one", "two", "three", "four"])
    assert counts == [2, 2]
    expected = ensemble.rewards(["p"] * 4, ["one", "two", "three", "four"]).shaped.tolist()
    assert rewards == pytest.approx(expected, abs=1e-5)
    assert through_rl == pytest.approx(expected, abs=1e-5)


def test_rl_adapters_take_the_load_options_by_the_same_names(hf_llama_dir):
    from rmkit.rl import RewardModelEnvironment, reward_function

    fn = reward_function(str(hf_llama_dir), device="cpu", dtype="bf16", max_batch=2, batch_tokens=512)
    scorer = fn.backend().scorers[0]
    assert (scorer.model.hf.dtype, scorer.max_batch, scorer.max_tokens) == (torch.bfloat16, 2, 512)
    env = RewardModelEnvironment(str(hf_llama_dir), device="cpu", dtype="fp32", normalize="none")
    out = env.step([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]])
    hf = load_reward_path(load_serve_config(str(hf_llama_dir), ["device=cpu"])).scorers[0]
    assert out.rewards.tolist() == pytest.approx(hf.score(["Hi"], ["Hello"]), abs=1e-4)


def test_ensemble_members_take_one_device_each(hf_llama_dir, hf_roberta_dir):
    from rmkit.ensemble import RewardPath

    both = RewardPath.load([hf_llama_dir, hf_roberta_dir], device=["cpu", "cpu"])
    assert [s.device.type for s in both.scorers] == ["cpu", "cpu"]
    with pytest.raises(ValueError, match="2 devices for 1 models"):
        RewardPath.load([hf_llama_dir], device=["cpu", "cpu"])
    cfg = load_serve_config(str(hf_llama_dir), [f"model_dirs=[{hf_llama_dir},{hf_roberta_dir}]", "device=[cpu,cpu]"])
    assert cfg.device == ["cpu", "cpu"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ensemble_members_on_a_gpu_and_the_cpu_score_as_on_one_device(hf_llama_dir, hf_roberta_dir):
    from rmkit.ensemble import RewardPath

    prompts, responses = ["Name a prime."] * 2, ["7", "9"]
    split = RewardPath.load([hf_llama_dir, hf_roberta_dir], device=["cuda:0", "cpu"]).rewards(prompts, responses)
    cpu = RewardPath.load([hf_llama_dir, hf_roberta_dir], device="cpu").rewards(prompts, responses)
    assert split.members.tolist() == pytest.approx(cpu.members.tolist(), abs=1e-3)
