"""RewardClient against a live server (sync and async, chunking) and against a mock transport (retries, backoff,
Retry-After, errors)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from live_server import live_server
from rmkit.client import RewardClient, RewardClientError
from rmkit.ensemble import Ensemble
from rmkit.server import ServeConfig, create_app
from rmkit.shaping import ShapingConfig

RAW = ShapingConfig(normalize="none", clip=None)
PROMPTS = ["Name a prime.", "Name a colour.", "2+2?", "Say hi.", "Count to 3."]
RESPONSES = ["7", "Blue.", "4", "Hi!", "1 2 3"]


@pytest.fixture(scope="module")
def server(llama_scorer):
    app = create_app(lambda: Ensemble([llama_scorer], RAW),
                     ServeConfig(model_dirs=["x"], shaping=RAW, token="t0k"))
    with live_server(app) as live:
        yield live


def scripted(statuses: list[int | Exception], calls: list[httpx.Request], retry_after: str = "0"):
    """A mock transport answering with the given statuses (or raising), in order, recording each request."""
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        status = statuses[min(len(calls), len(statuses)) - 1]
        if isinstance(status, Exception):
            raise status
        if status == 200:
            n = len(json.loads(request.content)["items"])
            return httpx.Response(200, json={"rewards": [1.0] * n, "raw_rewards": [2.0] * n, "model": "m"})
        return httpx.Response(status, json={"detail": f"status {status}"}, headers={"Retry-After": retry_after})
    return httpx.MockTransport(handler)


def mocked(statuses, calls, **kwargs) -> RewardClient:
    client = RewardClient("http://rm", backoff=0.001, **kwargs)
    client._opts["transport"] = scripted(statuses, calls)
    return client


def test_sync_scores_match_the_library_and_come_back_in_order(server, llama_scorer):
    with RewardClient(server.url, token="t0k", batch_size=2) as client:
        rewards = client.score(PROMPTS, RESPONSES)
        assert client.health()["status"] == "ok"
    assert rewards == pytest.approx(llama_scorer.score(PROMPTS, RESPONSES), abs=1e-5)


def test_async_scores_and_get_reward_match_the_sync_ones(server, llama_scorer):
    texts = [llama_scorer.render(p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]

    async def main():
        async with RewardClient(server.url, token="t0k", batch_size=2) as client:
            return await client.ascore(PROMPTS, RESPONSES), await client.aget_reward(texts)

    scored, rewarded = asyncio.run(main())
    expected = llama_scorer.score(PROMPTS, RESPONSES)
    assert scored == pytest.approx(expected, abs=1e-5)
    assert rewarded == pytest.approx(expected, abs=1e-5)


def test_many_items_are_cut_into_requests_of_at_most_batch_size():
    calls = []
    with mocked([200], calls, batch_size=2) as client:
        out = client.score_items([{"prompt": "p", "response": str(i)} for i in range(5)])
    assert [len(json.loads(c.content)["items"]) for c in calls] == [2, 2, 1]
    assert out["rewards"] == [1.0] * 5 and out["raw_rewards"] == [2.0] * 5 and out["model"] == "m"


def test_503_and_connection_errors_are_retried_until_success():
    calls = []
    with mocked([503, httpx.ConnectError("refused"), 503, 200], calls, retries=5) as client:
        assert client.score(["p"], ["r"]) == [1.0]
    assert len(calls) == 4


def test_async_retries_too():
    calls = []
    client = mocked([503, httpx.ConnectError("refused"), 200], calls)

    async def main():
        try:
            return await client.ascore(["p"], ["r"])
        finally:
            await client.aclose()

    assert asyncio.run(main()) == [1.0]
    assert len(calls) == 3


def test_retry_after_sets_the_least_wait():
    client = RewardClient("http://rm", backoff=0.001)
    assert client._wait(0, httpx.Response(503, headers={"Retry-After": "2"})) == 2.0
    assert client._wait(0, None) < 0.01
    assert client._wait(20, None) <= client.max_backoff * 1.25  # capped


def test_4xx_is_not_retried_and_carries_the_server_detail():
    calls = []
    with mocked([422], calls) as client, pytest.raises(RewardClientError, match="422: status 422"):
        client.score(["p"], ["r"])
    assert len(calls) == 1


def test_giving_up_after_the_last_retry_raises():
    calls = []
    with mocked([503], calls, retries=2) as client, pytest.raises(RewardClientError, match="503"):
        client.score(["p"], ["r"])
    assert len(calls) == 3
    with RewardClient("http://127.0.0.1:9", retries=1, backoff=0.001) as client:
        with pytest.raises(RewardClientError, match="unreachable"):
            client.health()


def test_a_wrong_token_is_a_clear_401(server):
    with RewardClient(server.url, token="wrong") as client, pytest.raises(RewardClientError, match="401"):
        client.score(["p"], ["r"])
