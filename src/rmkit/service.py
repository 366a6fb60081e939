"""RewardService: what every reward route does, once: encode off the event loop, score through the MicroBatcher
within the deadline, shape. RewardBackend is the shape of what it scores with (an ensemble.RewardPath, or a test
fake). Routes receive the service through the FastAPI dependency `get_service`. (Request limits are checked earlier,
when the body is validated: rmkit.contract.)

Each request fails alone: a tokenizer refusing it is a 422, a full queue a 503, a forward that raised on it a 500, a
passed deadline a 504 (rmkit.contract.ApiError); a client that hangs up (ClientGone) gets nothing. On a deadline or a
hang-up the queued work is cancelled, so it never reaches a forward.

Knows FastAPI's Request and the batcher; knows nothing of wire formats (rmkit.protocols) or model internals.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from rmkit.batcher import MicroBatcher, QueueFull
from rmkit.contract import ApiError
from rmkit.ensemble import Encoded, Member
from rmkit.moments import save_moments
from rmkit.shaping import RunningMoments, ShapedRewards, ShapingConfig


class RewardBackend(Protocol):
    """What the server scores with: ensemble.RewardPath has this shape; tests may pass a fake."""

    name: str
    member_names: list[str]
    max_length: int
    shaping: ShapingConfig
    running: RunningMoments  # normalize='running' statistics; saved after each request when stats_path is set

    def encode_pairs(self, prompts: Sequence[Any], responses: Sequence[Any]) -> list[Encoded]: ...

    def encode_texts(self, texts: Sequence[str], prompts: Sequence[str | None] | None = None,
                     add_special_tokens: bool | None = None) -> list[Encoded]: ...

    def encode_ids(self, ids: Sequence[Sequence[int]]) -> list[Encoded]: ...

    def forward(self, encoded: Sequence[Encoded]) -> np.ndarray: ...

    def members(self) -> list[Member]: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def shape(self, raw: np.ndarray, encoded: Sequence[Encoded]) -> ShapedRewards: ...


class ClientGone(Exception):
    """The client hung up before its answer was ready: nothing is sent; metrics count it as 499."""


class RewardService:
    """The encode → batch → shape path of every reward route, within request_timeout_s.

    Requests are tokenised on one thread of the service's own, not on the event loop's pool of worker threads: the
    Rust tokenizer keeps a cache per thread (and glibc an arena), so tokenising on whichever of up to 40 pool threads
    is free made memory grow with every new thread (the soak in benchmarks/RESULTS.md). One thread keeps one bounded
    cache; tokenising a request takes well under a millisecond next to its forward.
    """

    def __init__(self, backend: RewardBackend, batcher: MicroBatcher, request_timeout_s: float,
                 stats_path: str | None = None, stats_save_interval_s: float = 0.0):
        self.backend, self.batcher, self.request_timeout_s = backend, batcher, request_timeout_s
        self.stats_path = stats_path  # running statistics saved here (ServeConfig.stats_path) ...
        self.stats_save_interval_s = stats_save_interval_s  # ... at most this often; the server saves at shutdown
        self._stats_saved_at = -math.inf
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rmkit-encode")

    def close(self) -> None:
        """Stop the tokenising thread (after the batcher has drained: no request is left to encode)."""
        self._encoder.shutdown(wait=True)

    async def run(self, request: Request, encode: Callable[[], list[Encoded]]) -> tuple[list[Encoded], ShapedRewards]:
        """Encode off the loop, score through the batcher within the deadline, shape; (encoded, ShapedRewards)."""
        started = time.perf_counter()
        self.batcher.incoming += 1  # the batcher may hold a batch open for this request while it is tokenised
        try:
            encoded = await asyncio.get_running_loop().run_in_executor(self._encoder, _encode, encode)
        finally:
            self.batcher.incoming -= 1
        request.state.items = len(encoded)
        if not encoded:
            return encoded, self.backend.shape(np.zeros((0, len(self.backend.member_names))), encoded)
        future = self._put(encoded)  # no await since `incoming -= 1`
        rows = await self._scored(request, future, self.request_timeout_s - (time.perf_counter() - started))
        out = self.backend.shape(np.asarray(rows, dtype=np.float64), encoded)  # rows: (N, M)
        await self._save_stats()
        return encoded, out

    async def _save_stats(self) -> None:
        """Write the running statistics when stats_path is set and the last write is stats_save_interval_s old; the
        clock is set before the write, so concurrent requests do not write the same file at once."""
        now = time.monotonic()
        if self.stats_path is None or now - self._stats_saved_at < self.stats_save_interval_s:
            return
        self._stats_saved_at = now
        await run_in_threadpool(save_moments, self.backend.running, self.stats_path)

    def _put(self, encoded: list[Encoded]) -> asyncio.Future:
        try:
            return self.batcher.put(encoded, sum(e.tokens for e in encoded))
        except QueueFull:
            raise
        except RuntimeError:  # the batcher is not running: starting up or draining for shutdown
            raise ApiError(503, "the server is starting up or shutting down; retry", "unavailable",
                           {"Retry-After": "1"}) from None

    async def _scored(self, request: Request, future: asyncio.Future, left: float) -> list[Any]:
        """The future's result, unless the deadline passes (504) or the client hangs up first (ClientGone); either
        way the future is cancelled, so a request still queued never reaches a forward."""
        gone = asyncio.ensure_future(_until_disconnected(request.receive))
        try:
            done, _ = await asyncio.wait({future, gone}, timeout=max(left, 0.001), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if future in done:
            try:
                return future.result()
            except RuntimeError as exc:  # the batcher's answer for a forward that raised on this request alone
                raise ApiError(500, str(exc), "forward_failed") from None
        future.cancel()
        if gone in done:
            raise ClientGone()
        raise ApiError(504, f"not scored within request_timeout_s={self.request_timeout_s}", "deadline_exceeded")


async def _until_disconnected(receive: Callable) -> None:
    """Return when the client hangs up (the body is already read, so the next message is the disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _encode(fn: Callable[[], list[Encoded]]) -> list[Encoded]:
    try:
        return fn()
    except Exception as exc:  # a chat template or tokenizer refusing this input is the input's fault
        raise ApiError(422, f"cannot render or tokenise the input: {type(exc).__name__}: {exc}",
                       "unprocessable_input") from None


def get_service(request: Request) -> RewardService:
    """FastAPI dependency: the service the app's lifespan built."""
    return request.app.state.service


def truncated(fn: Callable[[], list[Encoded]], keep: int | None, side: str = "left") -> Callable[[], list[Encoded]]:
    """Keep the last (side 'left') or first ('right') `keep` tokens of every member's ids; None or 0: as is."""
    if not keep:
        return fn
    return lambda: [Encoded(tuple(i[-keep:] if side == "left" else i[:keep] for i in e.ids), e.response_tokens)
                    for e in fn()]
