"""RewardService: what every reward route does, once: check the request against the server's limits, encode off the
event loop, score through the MicroBatcher within the deadline, shape. RewardBackend is the shape of what it scores
with (an ensemble.RewardPath, or a test fake). Routes receive the service through the FastAPI dependency
`get_service`.

Knows FastAPI's HTTPException and the batcher; knows nothing of wire formats (rmkit.protocols) or model internals.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from rmkit.batcher import MicroBatcher
from rmkit.ensemble import Encoded
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

    def shape(self, raw: np.ndarray, encoded: Sequence[Encoded]) -> ShapedRewards: ...


@dataclass(frozen=True)
class Limits:
    """The server's per-request limits (ServeConfig's max_items, max_text_chars, request_timeout_s)."""

    max_items: int
    max_text_chars: int
    request_timeout_s: float


class RewardService:
    """The encode → batch → shape path of every reward route, with the server's limits."""

    def __init__(self, backend: RewardBackend, batcher: MicroBatcher, limits: Limits, stats_path: str | None = None):
        self.backend, self.batcher, self.limits = backend, batcher, limits
        self.stats_path = stats_path  # running statistics saved here after every request (ServeConfig.stats_path)

    def check_limits(self, sizes: Sequence[int]) -> None:
        """422 when a request has more items than max_items, or an item more characters than max_text_chars."""
        lim = self.limits
        if len(sizes) > lim.max_items:
            raise HTTPException(422, f"too many items: {len(sizes)} > max_items={lim.max_items}; split the request")
        for i, n in enumerate(sizes):
            if n > lim.max_text_chars:
                raise HTTPException(422, f"item {i} has {n} characters > max_text_chars={lim.max_text_chars}")

    async def run(self, request: Request, encode: Callable[[], list[Encoded]]) -> tuple[list[Encoded], ShapedRewards]:
        """Encode off the loop, score through the batcher within the deadline, shape; (encoded, ShapedRewards)."""
        started = time.perf_counter()
        self.batcher.incoming += 1  # the batcher may hold a batch open for this request while it is tokenised
        try:
            encoded = await run_in_threadpool(_encode, encode)
        finally:
            self.batcher.incoming -= 1
        request.state.items = len(encoded)
        if not encoded:
            return encoded, self.backend.shape(np.zeros((0, len(self.backend.member_names))), encoded)
        future = self.batcher.put(encoded, sum(e.tokens for e in encoded))  # no await since `incoming -= 1`
        left = self.limits.request_timeout_s - (time.perf_counter() - started)
        try:
            rows = await asyncio.wait_for(future, max(left, 0.001))
        except asyncio.TimeoutError:
            raise HTTPException(504, f"not scored within request_timeout_s={self.limits.request_timeout_s}") from None
        out = self.backend.shape(np.asarray(rows, dtype=np.float64), encoded)  # rows: (N, M)
        if self.stats_path is not None:  # after every update, so a crash loses at most the requests in flight
            await run_in_threadpool(save_moments, self.backend.running, self.stats_path)
        return encoded, out


def _encode(fn: Callable[[], list[Encoded]]) -> list[Encoded]:
    try:
        return fn()
    except Exception as exc:  # a chat template or tokenizer refusing this input is the input's fault
        raise HTTPException(422, f"cannot render or tokenise the input: {type(exc).__name__}: {exc}") from None


def get_service(request: Request) -> RewardService:
    """FastAPI dependency: the service the app's lifespan built."""
    return request.app.state.service


def truncated(fn: Callable[[], list[Encoded]], keep: int | None, side: str = "left") -> Callable[[], list[Encoded]]:
    """Keep the last (side 'left') or first ('right') `keep` tokens of every member's ids; None or 0: as is."""
    if not keep:
        return fn
    return lambda: [Encoded(tuple(i[-keep:] if side == "left" else i[:keep] for i in e.ids), e.response_tokens)
                    for e in fn()]
