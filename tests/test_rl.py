"""rmkit.rl: the TRL GRPO reward-function contract, ensembles, a server source, the NeMo RL environment, KL rewards."""

from __future__ import annotations

import asyncio
import math
import pickle
import socket
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import make_model_dir
from rmkit.rl import (
    AsyncRewardFunction,
    EnvironmentReturn,
    RewardFunction,
    RewardModelEnvironment,
    reward_function,
    reward_stats,
)
from rmkit.scoring import Scorer

PROMPTS = ["Name a prime.", "Name a prime.", "What colour is the sky?", "What colour is the sky?"]
COMPLETIONS = ["7", "Nine, I think.", "Blue.", "It is green, obviously, and always has been."]


class FakeScorer:
    """A Scorer stand-in with fixed scores and stored statistics (mean 1, std 2): enough for hand-worked shaping."""

    name = "fake"

    def __init__(self, scores: list[float], mean: float = 1.0, std: float = 2.0):
        self.scores, self.card = scores, SimpleNamespace(reward_mean=mean, reward_std=std, outputs=["reward"],
                                                         weights=[1.0])
        self.encoder = SimpleNamespace(encode=lambda texts: [[0] for _ in texts])
        self.tokenizer = lambda texts, **kw: {"input_ids": [[0] * len(t) for t in texts]}

    def render(self, prompt, response):
        return f"{prompt}|{response}"

    def score_ids(self, ids):
        assert len(ids) == len(self.scores)
        return list(self.scores)


def conversational(prompts, completions):
    return ([[{"role": "user", "content": p}] for p in prompts],
            [[{"role": "assistant", "content": c}] for c in completions])


@pytest.fixture(scope="module")
def scaled_dir(models_root):
    """A tiny Llama RM whose card says mean 0.5, std 2: shaped = clip((raw − 0.5)/2, ±5)."""
    return make_model_dir(models_root, "tiny-llama", seed=3, reward_mean=0.5, reward_std=2.0)


@pytest.fixture(scope="module")
def scaled_scorer(scaled_dir):
    return Scorer.load(scaled_dir, device="cpu")


@pytest.fixture(scope="module")
def second_scorer(models_root):
    model_dir = make_model_dir(models_root, "tiny-llama", seed=1, reward_mean=-1.0, reward_std=4.0)
    return Scorer.load(model_dir, device="cpu")


def test_rewards_are_the_scorers_scores_normalised_by_the_stored_stats_and_clipped(scaled_dir, scaled_scorer):
    raw = scaled_scorer.score(PROMPTS, COMPLETIONS)
    rewards = reward_function(scaled_dir, device="cpu")(prompts=PROMPTS, completions=COMPLETIONS)
    np.testing.assert_allclose(rewards, np.clip((np.array(raw) - 0.5) / 2.0, -5, 5), rtol=1e-6)
    assert len(rewards) == len(PROMPTS) and all(isinstance(r, float) for r in rewards)


def test_standard_and_conversational_inputs_get_the_same_rewards(llama_scorer):
    """Both render through the RM's own chat template: user prompt + assistant completion."""
    fn = reward_function(llama_scorer)
    standard = fn(prompts=PROMPTS, completions=COMPLETIONS)
    chat = fn(*conversational(PROMPTS, COMPLETIONS))
    np.testing.assert_allclose(standard, chat, rtol=1e-6)


def test_extra_keywords_are_accepted_and_batch_stats_are_logged(llama_scorer):
    fn = reward_function(llama_scorer, name="rm")
    logged, extra = {}, []
    rewards = fn(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=[[1], [1, 2, 3], [1, 2], [1] * 9],
                 trainer_state=object(), log_extra=lambda col, vals: extra.append(col), log_metric=logged.__setitem__,
                 answer=["7", "7", "blue", "blue"], environments=None)
    assert fn.__name__ == "rm"
    assert set(logged) == {f"rm/{k}" for k in ("reward_mean", "reward_std", "reward_min", "reward_max",
                                                 "completion_length", "reward_length_spearman")}
    assert logged["rm/reward_max"] == pytest.approx(max(rewards))
    assert logged["rm/completion_length"] == pytest.approx((1 + 3 + 2 + 9) / 4)


def test_reward_stats_match_hand_worked_values():
    """[1, 2, 3] vs lengths [10, 30, 20]: std √(2/3); ranks [1,2,3] vs [1,3,2] → Spearman 1/√(2·2) = 0.5."""
    stats = reward_stats([1.0, 2.0, 3.0], [10, 30, 20])
    assert stats == pytest.approx({"reward_mean": 2.0, "reward_std": math.sqrt(2 / 3), "reward_min": 1.0,
                                   "reward_max": 3.0, "completion_length": 20.0, "reward_length_spearman": 0.5})
    assert math.isnan(reward_stats([1.0, 1.0], [3, 4])["reward_length_spearman"])


def test_the_function_pickles_without_its_model_and_scores_the_same_after(llama_dir):
    fn = reward_function(llama_dir, device="cpu", normalize="running")
    before = fn(prompts=PROMPTS, completions=COMPLETIONS)
    blob = pickle.dumps(fn)
    assert len(blob) < 10_000  # the model is dropped, reloaded on first use
    clone = pickle.loads(blob)
    assert clone.__name__ == "rmkit" and clone._running.state_dict() == fn._running.state_dict()
    np.testing.assert_allclose(clone(prompts=PROMPTS, completions=COMPLETIONS),
                               fn(prompts=PROMPTS, completions=COMPLETIONS), rtol=1e-6)
    assert before  # running normalisation: the first batch is scaled by its own merged moments


def test_the_async_variant_is_awaited_by_trl_and_gives_the_sync_rewards(llama_scorer):
    from trl.trainer.utils import get_callable_name, is_async_callable

    sync = reward_function(llama_scorer)
    async_fn = reward_function(llama_scorer, asynchronous=True)
    assert isinstance(async_fn, AsyncRewardFunction)
    assert is_async_callable(async_fn) and not is_async_callable(sync)
    assert get_callable_name(async_fn) == get_callable_name(sync) == "rmkit"
    got = asyncio.run(async_fn(prompts=PROMPTS, completions=COMPLETIONS, trainer_state=None))
    np.testing.assert_allclose(got, sync(prompts=PROMPTS, completions=COMPLETIONS), rtol=1e-6)
    pickle.loads(pickle.dumps(async_fn))


def test_an_ensemble_standardises_each_member_by_its_own_stats_then_combines(scaled_scorer, second_scorer):
    a = np.array(scaled_scorer.score(PROMPTS, COMPLETIONS))
    b = np.array(second_scorer.score(PROMPTS, COMPLETIONS))
    out = reward_function([scaled_scorer, second_scorer], ensemble="min").score(PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(out.shaped, np.clip(np.minimum((a - 0.5) / 2, (b + 1) / 4), -5, 5), rtol=1e-6)
    np.testing.assert_allclose(out.raw, np.minimum(a, b), rtol=1e-6)  # raw stays in raw units
    np.testing.assert_allclose(out.members, np.stack([a, b]), rtol=1e-6)


def test_a_dapo_length_penalty_uses_the_policy_token_counts():
    """Lmax 10, Lc 4 at lengths [6, 8, 12] → [0, −0.5, −1], added after normalise/clip: (13−1)/2 → 5."""
    fn = reward_function([FakeScorer([13.0, 3.0, 1.0])], length_penalty="dapo", dapo_max_length=10, dapo_cache=4)
    rewards = fn(prompts=["p"] * 3, completions=["a", "b", "c"], completion_ids=[[0] * 6, [0] * 8, [0] * 12])
    assert rewards == pytest.approx([5.0, 1.0 - 0.5, 0.0 - 1.0])


def test_kl_shaped_token_rewards_match_hand_worked_numbers():
    """Scores [13, 3], stats (1, 2), clip 5 → [5, 1]. log π − log π_ref = ln 2 on every token, β = 0.1.

    k1 = ln 2 ≈ 0.6931 → −0.06931 per response token; k3 = 1/2 − 1 + ln 2 ≈ 0.1931 → −0.01931.
    Row 0 (mask [0, 1, 1]): [0, −0.0693, 5 − 0.0693 = 4.9307]; row 1 (mask [1, 1, 0]): [−0.0693, 0.9307, 0].
    """
    fn = reward_function([FakeScorer([13.0, 3.0])])
    logp = torch.full((2, 3), math.log(0.5))
    ref_logp = torch.full((2, 3), math.log(0.25))
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    k1 = fn.token_rewards(["p", "q"], ["a", "b"], logp, ref_logp, mask, beta=0.1)
    torch.testing.assert_close(k1, torch.tensor([[0.0, -0.06931, 4.93069], [-0.06931, 0.93069, 0.0]]), atol=1e-4,
                               rtol=0)
    k3 = fn.token_rewards(["p", "q"], ["a", "b"], logp, ref_logp, mask, beta=0.1, estimator="k3")
    torch.testing.assert_close(k3, torch.tensor([[0.0, -0.01931, 4.98069], [-0.01931, 0.98069, 0.0]]), atol=1e-4,
                               rtol=0)


def test_bad_sources_are_refused_with_a_fix():
    with pytest.raises(ValueError, match="models and servers cannot be mixed"):
        reward_function(["runs/a/model", "http://127.0.0.1:1"])
    with pytest.raises(ValueError, match="non-empty list"):
        RewardFunction([], reward_function([FakeScorer([0.0])]).shaping)


# --- a server source: a stand-in `rmkit serve` on loopback answering POST /score {"items": [...]} -----------------


@pytest.fixture(scope="module")
def served(llama_scorer):
    """(url, scorer): the real `rmkit serve` app on loopback, in a thread, serving the tiny Llama RM unshaped."""
    import uvicorn

    from rmkit.ensemble import Ensemble
    from rmkit.server import ServeConfig, create_app
    from rmkit.shaping import ShapingConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeConfig(model_dirs=["unused"], port=port, shaping=ShapingConfig(normalize="none", clip=None))
    app = create_app(lambda: Ensemble([llama_scorer], cfg.shaping), cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", llama_scorer
    server.should_exit = True
    thread.join(timeout=10)


def test_a_server_source_gives_the_served_scores_sync_and_async(served):
    url, scorer = served
    raw = scorer.score(PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(reward_function(url)(prompts=PROMPTS, completions=COMPLETIONS), raw, rtol=1e-6)
    chat = conversational(PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(asyncio.run(reward_function(url, asynchronous=True)(*chat)), raw, rtol=1e-6)
    fn = reward_function(url)
    out = fn.score(PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(out.raw, raw, rtol=1e-6)  # the server's raw_rewards
    np.testing.assert_allclose(pickle.loads(pickle.dumps(fn))(PROMPTS, COMPLETIONS), out.shaped, rtol=1e-6)


def test_shaping_given_for_a_server_source_applies_on_top_of_the_served_scores(served):
    url, scorer = served
    raw = np.array(scorer.score(PROMPTS, COMPLETIONS))
    got = reward_function(url, clip=0.01)(prompts=PROMPTS, completions=COMPLETIONS)
    np.testing.assert_allclose(got, np.clip(raw, -0.01, 0.01), rtol=1e-6)
    with pytest.raises(ValueError, match="pass reward_mean and reward_std"):
        reward_function(url, normalize="stored")(prompts=PROMPTS, completions=COMPLETIONS)
    with pytest.raises(ValueError, match="needs the policy's completion_ids"):
        reward_function(url, length_penalty="linear", length_coef=0.1)(prompts=PROMPTS, completions=COMPLETIONS)


# --- NeMo RL environment ----------------------------------------------------------------------------------------


def test_environment_step_returns_the_six_nemo_rl_fields(llama_scorer):
    env = RewardModelEnvironment(llama_scorer)
    logs = [[{"role": "user", "content": p}, {"role": "assistant", "content": c, "token_ids": [1, 2]}]
            for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    out = env.step(logs, [{}] * len(logs))
    assert isinstance(out, EnvironmentReturn)
    assert EnvironmentReturn._fields == ("observations", "metadata", "next_stop_strings", "rewards", "terminateds",
                                         "answers")
    assert out.rewards.dtype == torch.float32 and out.rewards.device.type == "cpu" and out.rewards.shape == (4,)
    assert out.terminateds.dtype == torch.bool and out.terminateds.all()
    assert out.metadata == [None] * 4 and out.next_stop_strings == [None] * 4 and out.answers == COMPLETIONS
    for obs, r in zip(out.observations, out.rewards.tolist(), strict=True):
        assert obs["role"] == "environment" and obs["content"].startswith("Environment: ")
        assert float(obs["content"].removeprefix("Environment: ")) == pytest.approx(r)
    expected = reward_function(llama_scorer)(*conversational(PROMPTS, COMPLETIONS))
    np.testing.assert_allclose(out.rewards.numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="must end with the assistant turn"):
        env.step([[{"role": "user", "content": "hi"}]], [{}])
    env.shutdown()  # drops the loaded model; the next step reloads it
    assert env.reward._backend is None


def test_environment_metrics_have_the_upstream_keys_and_hand_worked_values():
    """Rewards [1, 2, 3]: mean 2, unbiased std 1, min 1, max 3; one sample reports std 0.0, not NaN."""
    env = RewardModelEnvironment(reward_function([FakeScorer([0.0])]))
    batch = {"message_log": [[], [], []], "rewards": torch.tensor([1.0, 2.0, 3.0])}
    same, metrics = env.global_post_process_and_metrics(batch)
    assert same is batch
    assert metrics == pytest.approx({"reward_model_env/num_samples": 3, "reward_model_env/mean_reward": 2.0,
                                     "reward_model_env/std_reward": 1.0, "reward_model_env/min_reward": 1.0,
                                     "reward_model_env/max_reward": 3.0})
    _, one = env.global_post_process_and_metrics({"message_log": [[]], "rewards": torch.tensor([0.5])})
    assert one["reward_model_env/std_reward"] == 0.0
    _, none = env.global_post_process_and_metrics({"message_log": [[]]})
    assert none == {"reward_model_env/num_samples": 1}


def test_a_length_penalty_in_words_is_counted_on_the_completion_text_and_taken_off_the_raw_score(llama_scorer):
    """1 word free, 0.5 per word over: "seven is prime" (3 words) loses 1.0, "7" (1 word) nothing; raw_reward unchanged."""
    f = reward_function([llama_scorer], normalize="none", clip=None, length_penalty="linear", length_unit="words",
                        length_threshold=1, length_coef=0.5, length_on="raw")
    out = f.score(["Name a prime.", "Name a prime."], ["seven is prime", "7"], completion_ids=[[1] * 9, [1] * 9])
    assert out.shaped.tolist() == pytest.approx([out.raw[0] - 1.0, out.raw[1]], abs=1e-9)
    assert out.raw.tolist() == pytest.approx(llama_scorer.score(["Name a prime."] * 2, ["seven is prime", "7"]), abs=1e-5)
