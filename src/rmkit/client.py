"""RewardClient: calls a running rmkit server (or N replicas of one) from RL trainers, sync or async. Pooled keep-alive
connections, a timeout per request, retries with exponential backoff on connection errors and 503 (honouring
Retry-After), and many items cut into few requests, spread round-robin over the replicas (a retry goes to the next
one). Needs only httpx; knows nothing of models or shaping.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

RETRY_STATUS = frozenset({503})
RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)  # the server never saw it, or dropped it


class RewardClientError(RuntimeError):
    """The server refused a request (4xx, or 5xx after every retry); the message carries its status and detail."""

    def __init__(self, status: int | None, detail: Any):
        where = f"answered {status}" if status else "unreachable"
        super().__init__(f"reward server {where}: {detail}")
        self.status, self.detail = status, detail


def _chunks(n: int, size: int) -> list[slice]:
    """_chunks(5, 2) → [0:2, 2:4, 4:5]."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _merge_answers(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate the per-item lists of several /score answers; other fields come from the first."""
    merged = dict(answers[0])
    for key, value in merged.items():
        if isinstance(value, list):
            merged[key] = [x for a in answers for x in a[key]]
    return merged


class RewardClient:
    """Client of an rmkit reward server.

    Args:
        url: base URL, e.g. "http://127.0.0.1:8000", or a list of them: replicas serving the same model(s), each
            request (each chunk of a large call) going to the next one, as OpenRLHF spreads over its reward servers.
        token: bearer token, if the server has one.
        timeout: seconds for one attempt (connect, read, write, pool).
        retries: extra attempts after a connection error or a 503.
        backoff: first wait in seconds; doubles each retry (with ±25% jitter), capped at max_backoff.
        max_backoff: longest wait between attempts.
        batch_size: most items per request; more are split into concurrent (async) or successive (sync) requests.
        max_connections: size of the connection pool.

    Example:
        >>> with RewardClient("http://127.0.0.1:8000") as rc:  # doctest: +SKIP
        ...     rc.score(["Name a prime."], ["7"])
        [1.93]
        >>> RewardClient(["http://10.0.0.1:8000", "http://10.0.0.2:8000"])  # doctest: +SKIP
    """

    def __init__(self, url: str | Sequence[str], token: str | None = None, timeout: float = 60.0, retries: int = 5,
                 backoff: float = 0.25, max_backoff: float = 8.0, batch_size: int = 256, max_connections: int = 64):
        if batch_size < 1 or retries < 0:
            raise ValueError(f"batch_size must be ≥ 1 and retries ≥ 0 (got {batch_size}, {retries})")
        self.urls = [u.rstrip("/") for u in ([url] if isinstance(url, str) else url)]
        if not self.urls:
            raise ValueError("RewardClient needs at least one server URL")
        self.url = self.urls[0]
        self._turn, self._turn_lock = itertools.count(), threading.Lock()
        self.retries, self.backoff, self.max_backoff, self.batch_size = retries, backoff, max_backoff, batch_size
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._opts = {"headers": headers, "timeout": timeout, "limits": limits}
        self._sync: httpx.Client | None = None
        self._async: httpx.AsyncClient | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None

    # ---- plumbing ----

    def _wait(self, attempt: int, response: httpx.Response | None) -> float:
        delay = min(self.backoff * 2**attempt, self.max_backoff) * random.uniform(0.75, 1.25)
        retry_after = response.headers.get("retry-after", "") if response is not None else ""
        return max(delay, float(retry_after)) if retry_after.replace(".", "", 1).isdigit() else delay

    def _next_url(self) -> str:
        """The replica for the next attempt, round-robin (one URL: always it)."""
        with self._turn_lock:
            return self.urls[next(self._turn) % len(self.urls)]

    def _map(self, fn: Any, bodies: list[Any]) -> list[Any]:
        """fn over bodies: in turn with one server, concurrently (one thread per replica) with several."""
        if len(self.urls) == 1 or len(bodies) == 1:
            return [fn(b) for b in bodies]
        with ThreadPoolExecutor(max_workers=len(self.urls)) as pool:
            return list(pool.map(fn, bodies))

    @staticmethod
    def _result(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise RewardClientError(response.status_code, detail)
        return response.json()

    def _final(self, attempt: int, response: httpx.Response | None, error: Exception | None) -> bool:
        """Whether this attempt's response is the answer (a non-retryable status, or the last try); a connection
        error on the last try raises. False: wait self._wait(...) and try again (the next replica with several)."""
        last = attempt == self.retries
        if error is not None and last:
            raise RewardClientError(None, f"{type(error).__name__}: {error}") from error
        return response is not None and (response.status_code not in RETRY_STATUS or last)

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        if self._sync is None:
            self._sync = httpx.Client(**self._opts)
        for attempt in range(self.retries + 1):
            response, error = None, None
            try:
                response = self._sync.request(method, self._next_url() + path, json=body)
            except RETRY_ERRORS as exc:
                error = exc
            if self._final(attempt, response, error):
                return self._result(response)
            time.sleep(self._wait(attempt, response))
        raise AssertionError("unreachable")

    async def _arequest(self, method: str, path: str, body: Any = None) -> Any:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:  # a pool is bound to the loop that opened it
            self._async, self._async_loop = httpx.AsyncClient(**self._opts), loop
        for attempt in range(self.retries + 1):
            response, error = None, None
            try:
                response = await self._async.request(method, self._next_url() + path, json=body)
            except RETRY_ERRORS as exc:
                error = exc
            if self._final(attempt, response, error):
                return self._result(response)
            await asyncio.sleep(self._wait(attempt, response))
        raise AssertionError("unreachable")

    # ---- sync API ----

    def score_items(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """POST /score for any number of items ({prompt, response} or {messages}); one merged answer, in order."""
        if not items:
            return {"rewards": [], "raw_rewards": []}
        bodies = [{"items": list(items[s])} for s in _chunks(len(items), self.batch_size)]
        return _merge_answers(self._map(lambda body: self._request("POST", "/score", body), bodies))

    def score(self, prompts: Sequence[Any], responses: Sequence[Any]) -> list[float]:
        """Shaped rewards of (prompt, response) pairs; each side is text or chat messages."""
        items = [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]
        return self.score_items(items)["rewards"]

    def get_reward(self, queries: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        """Shaped rewards of already-rendered texts, through the OpenRLHF-style /get_reward."""
        bodies = [{"query": list(queries[s]), "prompts": None if prompts is None else list(prompts[s])}
                  for s in _chunks(len(queries), self.batch_size)]
        answers = self._map(lambda body: self._request("POST", "/get_reward", body), bodies)
        return [r for answer in answers for r in answer["rewards"]]

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    # ---- async API ----

    async def ascore_items(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Async score_items; the chunks are sent concurrently."""
        if not items:
            return {"rewards": [], "raw_rewards": []}
        calls = [self._arequest("POST", "/score", {"items": list(items[s])})
                 for s in _chunks(len(items), self.batch_size)]
        return _merge_answers(await asyncio.gather(*calls))

    async def ascore(self, prompts: Sequence[Any], responses: Sequence[Any]) -> list[float]:
        items = [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]
        return (await self.ascore_items(items))["rewards"]

    async def aget_reward(self, queries: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        calls = [self._arequest("POST", "/get_reward", {"query": list(queries[s]),
                                                        "prompts": None if prompts is None else list(prompts[s])})
                 for s in _chunks(len(queries), self.batch_size)]
        return [r for answer in await asyncio.gather(*calls) for r in answer["rewards"]]

    async def ahealth(self) -> dict[str, Any]:
        return await self._arequest("GET", "/health")

    # ---- lifetime ----

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None
        self.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> RewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
