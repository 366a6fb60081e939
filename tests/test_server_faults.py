"""Server faults on a real uvicorn (127.0.0.1): a client that hangs up mid-request, requests whose deadline passes
while they wait in the queue, and a forward that raises (simulated out of memory). Each fault answers or drops its own
request only, frees its place in the queue, and the server keeps serving."""

from __future__ import annotations

import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from live_server import SlowEnsemble, live_server
from rmkit.contract import ErrorBody
from rmkit.ensemble import Ensemble
from rmkit.server import ServeConfig, create_app
from rmkit.shaping import ShapingConfig

RAW = ShapingConfig(normalize="none", clip=None)


class GatedEnsemble(Ensemble):
    """A real Ensemble whose forwards wait for `gate` and count the items they score."""

    def __init__(self, scorers, shaping=None):
        super().__init__(scorers, shaping)
        self.gate, self.forwarded = threading.Event(), []

    def forward(self, encoded):
        self.forwarded.append(len(encoded))
        self.gate.wait(60)
        return super().forward(encoded)


class PoisonEnsemble(Ensemble):
    """A real Ensemble whose forward raises CUDA's out-of-memory error when a batch holds a long item (> 60 tokens)."""

    def forward(self, encoded):
        if any(len(e.ids[0]) > 60 for e in encoded):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(encoded)


def app_for(scorer, ensemble_cls, **cfg):
    return create_app(lambda: ensemble_cls([scorer], RAW), ServeConfig(model_dirs=["x"], shaping=RAW, **cfg))


def body(prompt: str, response: str = "4") -> dict:
    return {"items": [{"prompt": prompt, "response": response}]}


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def count(url: str, path: str, status: int) -> int:
    metrics = httpx.get(f"{url}/metrics").text
    found = re.search(rf'^rmkit_requests_total{{path="{path}",status="{status}"}} (\d+)$', metrics, re.M)
    return int(found.group(1)) if found else 0


def raw_post(url: str, path: str, payload: bytes, send: int | None = None) -> socket.socket:
    """A POST written by hand (all of the body, or its first `send` bytes); the open socket is returned."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    sock.sendall(head.encode() + payload[:send])
    return sock


def test_a_client_that_hangs_up_while_queued_is_dropped_alone_and_never_scored(llama_scorer):
    app = app_for(llama_scorer, GatedEnsemble, batch_size=1)
    with live_server(app) as live:
        backend, batcher = app.state.service.backend, app.state.service.batcher
        first: list[httpx.Response] = []
        runner = threading.Thread(target=lambda: first.append(httpx.post(f"{live.url}/score", json=body("A?"),
                                                                          timeout=60)))
        runner.start()
        wait_until(lambda: backend.forwarded, "the first request is in the forward")
        leaver = raw_post(live.url, "/score", httpx.Request("POST", "/", json=body("B?")).read())
        wait_until(lambda: batcher.depth == 1, "the second request is queued")
        leaver.close()
        wait_until(lambda: count(live.url, "/score", 499) == 1, "the server noticed the hang-up")
        backend.gate.set()
        runner.join(60)
        assert first[0].status_code == 200
        wait_until(lambda: batcher.depth == 0, "the abandoned request left the queue")
        later = httpx.post(f"{live.url}/score", json=body("C?"), timeout=60)
        assert later.status_code == 200
        assert later.json()["rewards"] == pytest.approx(llama_scorer.score(["C?"], ["4"]), abs=1e-5)
        assert backend.forwarded == [1, 1]  # A and C; B never reached a forward


def test_a_client_that_hangs_up_half_way_through_its_body_is_dropped_and_the_server_keeps_serving(llama_scorer):
    with live_server(app_for(llama_scorer, Ensemble)) as live:
        payload = httpx.Request("POST", "/", json=body("x" * 5000)).read()
        for _ in range(3):
            raw_post(live.url, "/score", payload, send=len(payload) // 2).close()
        wait_until(lambda: count(live.url, "/score", 499) == 3, "the server noticed the three hang-ups")
        assert httpx.post(f"{live.url}/score", json=body("2+2?"), timeout=60).status_code == 200
        assert httpx.get(f"{live.url}/health").json()["queue_depth"] == 0


def test_requests_whose_deadline_passes_while_queued_get_504_alone_and_are_never_scored(llama_scorer):
    """8 one-item requests at once, one forward of 0.3 s each, deadline 1 s: the first ones are answered, the last
    ones time out while still queued (they could not start before 1.8 s) and are skipped, not scored late."""
    app = app_for(llama_scorer, lambda s, sh: SlowEnsemble(s, sh, delay=0.3), batch_size=1, request_timeout_s=1.0)
    with live_server(app) as live:
        answers: list[httpx.Response] = []
        posts = [threading.Thread(target=lambda i=i: answers.append(
            httpx.post(f"{live.url}/score", json=body(f"Question {i}?"), timeout=60))) for i in range(8)]
        for t in posts:
            t.start()
        for t in posts:
            t.join(60)
        codes = sorted(r.status_code for r in answers)
        assert set(codes) <= {200, 504} and codes[0] == 200 and codes[-1] == 504, codes
        late = [ErrorBody.model_validate(r.json()).detail[0] for r in answers if r.status_code == 504]
        assert all(d.type == "deadline_exceeded" and "request_timeout_s=1.0" in d.msg for d in late)
        backend, batcher = app.state.service.backend, app.state.service.batcher
        wait_until(lambda: batcher.depth == 0, "the queue is empty")
        assert sum(backend.batches) < 8  # the requests that timed out in the queue were never forwarded
        assert httpx.post(f"{live.url}/score", json=body("2+2?"), timeout=60).status_code == 200


def test_a_forward_that_raises_fails_only_its_own_request_and_the_server_keeps_serving(llama_scorer):
    app = app_for(llama_scorer, PoisonEnsemble, max_wait_ms=200)
    prompts = [f"Question {i}?" for i in range(4)]
    with live_server(app) as live:
        answers: dict[str, httpx.Response] = {}

        def post(prompt: str) -> None:
            answers[prompt] = httpx.post(f"{live.url}/score", json=body(prompt), timeout=60)
        poison = " ".join(["word"] * 200)
        threads = [threading.Thread(target=post, args=(p,)) for p in [*prompts, poison]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        failed = answers.pop(poison)
        assert failed.status_code == 500
        assert ErrorBody.model_validate(failed.json()).detail[0].type == "forward_failed"
        expected = llama_scorer.score(prompts, ["4"] * 4)
        assert [answers[p].json()["rewards"][0] for p in prompts] == pytest.approx(expected, abs=1e-5)
        assert httpx.get(f"{live.url}/health").json()["queue_depth"] == 0
        assert httpx.post(f"{live.url}/score", json=body(poison), timeout=60).status_code == 500
        assert httpx.post(f"{live.url}/score", json=body("2+2?"), timeout=60).status_code == 200


class ThreadRecordingEnsemble(Ensemble):
    """A real Ensemble that records the name of the thread each request is tokenised on."""

    def __init__(self, scorers, shaping=None):
        super().__init__(scorers, shaping)
        self.threads: set[str] = set()

    def encode_pairs(self, prompts, responses):
        self.threads.add(threading.current_thread().name)
        return super().encode_pairs(prompts, responses)


def test_concurrent_requests_are_tokenised_on_the_one_encode_thread(llama_scorer):
    """The tokenizer's per-thread cache grew memory with every worker thread it ran on (the soak): all requests,
    however many arrive at once, are tokenised on the service's single encode thread."""
    app = app_for(llama_scorer, ThreadRecordingEnsemble)
    with live_server(app) as live:
        def post(i: int) -> int:
            return httpx.post(f"{live.url}/score", json=body(f"What is {i} + {i}?"), timeout=60).status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(post, range(64)))
        backend = app.state.service.backend
    assert statuses == [200] * 64
    assert len(backend.threads) == 1 and next(iter(backend.threads)).startswith("rmkit-encode")
