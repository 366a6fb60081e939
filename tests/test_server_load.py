"""A real uvicorn on 127.0.0.1: thousands of 1-item requests at concurrency 64 with zero errors and library-equal
scores, graceful shutdown that drains in-flight requests, and an event loop that stays free during a forward."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import pytest

from live_server import SlowEnsemble, live_server
from rmkit.ensemble import Ensemble
from rmkit.server import ServeConfig, create_app
from rmkit.shaping import ShapingConfig

RAW = ShapingConfig(normalize="none", clip=None)
PROMPTS = [f"Question {i}: name a number bigger than {i}." for i in range(16)]


def app_for(scorer, ensemble_cls=Ensemble, **cfg):
    return create_app(lambda: ensemble_cls([scorer], RAW), ServeConfig(model_dirs=["x"], shaping=RAW, **cfg))


async def hammer(url: str, n: int, concurrency: int) -> list[tuple[int, int, float | None]]:
    """n one-item /score requests from `concurrency` workers: (index, status, reward) each."""
    out, next_index = [], iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker():
            for i in next_index:
                body = {"items": [{"prompt": PROMPTS[i % len(PROMPTS)], "response": str(i % 7)}]}
                try:
                    r = await client.post("/score", json=body)
                    out.append((i, r.status_code, r.json()["rewards"][0] if r.status_code == 200 else None))
                except httpx.HTTPError:
                    out.append((i, -1, None))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def check_load(scorer, n: int, concurrency: int = 64) -> None:
    with live_server(app_for(scorer)) as live:
        start = time.perf_counter()
        results = asyncio.run(hammer(live.url, n, concurrency))
        seconds = time.perf_counter() - start
        metrics = httpx.get(f"{live.url}/metrics").text
    assert len(results) == n
    errors = [(i, s) for i, s, _ in results if s != 200]
    assert not errors, errors[:5]
    keys = sorted({(PROMPTS[i % len(PROMPTS)], str(i % 7)) for i, _, _ in results})
    expected = dict(zip(keys, scorer.score([k[0] for k in keys], [k[1] for k in keys]), strict=True))
    for i, _, reward in results:
        assert reward == pytest.approx(expected[(PROMPTS[i % len(PROMPTS)], str(i % 7))], abs=1e-4)
    batches = int(re.search(r"^rmkit_batch_size_count (\d+)$", metrics, re.M).group(1))
    assert batches < n  # requests were gathered into shared forwards
    print(f"{n} requests at concurrency {concurrency}: {n / seconds:.0f} req/s, {n / batches:.1f} items/batch")


def test_load_of_256_requests_at_concurrency_64_has_zero_errors(llama_scorer):
    check_load(llama_scorer, 256)


@pytest.mark.slow
def test_load_of_3000_requests_at_concurrency_64_has_zero_errors(llama_scorer):
    check_load(llama_scorer, 3000)


def test_shutdown_drains_in_flight_requests(llama_scorer):
    app = app_for(llama_scorer, SlowEnsemble, batch_size=2)
    results = []
    with live_server(app) as live:
        def post(i):
            body = {"items": [{"prompt": PROMPTS[i], "response": "1"}]}
            try:
                results.append(httpx.post(f"{live.url}/score", json=body, timeout=30).status_code)
            except httpx.HTTPError as exc:
                results.append(repr(exc))
        threads = [threading.Thread(target=post, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while app.state.service.batcher.depth + sum(app.state.service.backend.batches) < 6 and time.monotonic() < deadline:
            time.sleep(0.005)  # until all six are in: one batch running, the rest queued
        assert len(app.state.service.backend.batches) < 3, "the requests finished before shutdown could start"
        live.server.should_exit = True
        for t in threads:
            t.join(30)
    assert results == [200] * 6
    assert sum(app.state.service.backend.batches) == 6


def test_health_answers_while_a_forward_runs(llama_scorer):
    app = app_for(llama_scorer, lambda s, sh: SlowEnsemble(s, sh, delay=1.5))
    with live_server(app) as live:
        slow = threading.Thread(target=httpx.post, args=(f"{live.url}/score",),
                                kwargs={"json": {"items": [{"prompt": "p", "response": "r"}]}, "timeout": 30})
        slow.start()
        while not app.state.service.backend.batches:
            time.sleep(0.01)
        start = time.perf_counter()
        assert httpx.get(f"{live.url}/health").status_code == 200
        assert time.perf_counter() - start < 0.75  # the 1.5 s forward does not hold the event loop
        slow.join()
