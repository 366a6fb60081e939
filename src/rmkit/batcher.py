"""MicroBatcher: gathers the items of concurrent requests into batches by a token budget and a short maximum wait,
runs one batch at a time in a worker thread, and answers each request with its own slice. Bounded: a request that
would overflow the queue is refused at once (QueueFull), never parked.

Knows asyncio and threads; knows nothing of models, HTTP or shaping: `run` is any function of a list of items.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The queue holds max_queue items already; the caller should retry after `retry_after` seconds."""

    def __init__(self, depth: int, retry_after: float):
        super().__init__(f"queue full ({depth} items waiting); retry in {retry_after:g} s")
        self.retry_after = retry_after


@dataclass
class _Job:
    items: Sequence[Any]
    tokens: int
    future: asyncio.Future = field(repr=False)
    queued: bool = True  # counted in the batcher's depth; False once taken into a batch or abandoned


class MicroBatcher:
    """Cross-request micro-batching in front of a blocking batch function.

    Args:
        run: items → one result per item, in order; called in a single worker thread (one batch at a time).
        max_tokens: gather requests until their items hold this many tokens...
        max_batch: ...or this many items...
        max_wait_s: ...or this long has passed since the first request of the batch arrived.
        max_queue: most items waiting; a request that would pass it raises QueueFull.
        on_batch: called with (items, seconds) after each batch (metrics).

    A request is never split: one larger than the budget runs as a batch of its own. Call `start()` inside the
    running event loop and `await stop()` to drain.
    """

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], max_tokens: int = 16384, max_batch: int = 256,
                 max_wait_s: float = 0.005, max_queue: int = 4096,
                 on_batch: Callable[[int, float], None] | None = None):
        self.run, self.max_tokens, self.max_batch = run, max_tokens, max_batch
        self.max_wait_s, self.max_queue, self.on_batch = max_wait_s, max_queue, on_batch
        self.depth = 0  # items queued, not yet running
        self.incoming = 0  # requests on their way (being tokenised): worth waiting for; the server counts them
        self._jobs: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rmkit-forward")

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="rmkit-batcher")

    async def stop(self) -> None:
        """Finish every queued request, then stop the worker."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    def put(self, items: Sequence[Any], tokens: int) -> asyncio.Future:
        """Queue one request's items (holding `tokens` tokens) now; the future resolves to their results, in order.

        Cancel the future (as asyncio.wait_for does at a deadline) and its items leave the queue depth at once; the
        batch loop skips the job if it has not run.
        """
        if self._task is None or self._closing:
            raise RuntimeError("the batcher is not running (server starting up or shutting down)")
        future = asyncio.get_running_loop().create_future()
        if not items:
            future.set_result([])
            return future
        if self.depth + len(items) > self.max_queue:
            raise QueueFull(self.depth, retry_after=1.0)
        job = _Job(items, tokens, future)
        self._jobs.append(job)
        self.depth += len(items)
        future.add_done_callback(lambda _: self._dequeue(job))  # a deadline frees the slot before the worker is back
        self._wake.set()
        return future

    async def submit(self, items: Sequence[Any], tokens: int) -> list[Any]:
        """put() and wait for the results."""
        return await self.put(items, tokens)

    def _dequeue(self, job: _Job) -> None:
        if job.queued:
            job.queued = False
            self.depth -= len(job.items)

    def _take(self, batch: list[_Job], n_items: int, n_tokens: int) -> tuple[int, int]:
        """Move queued jobs into batch while the budget allows; the first job always fits."""
        while self._jobs:
            job = self._jobs[0]
            if job.future.done():  # the caller gave up (deadline) before its turn
                self._jobs.popleft()
                self._dequeue(job)
                continue
            if batch and (n_items + len(job.items) > self.max_batch or n_tokens + job.tokens > self.max_tokens):
                break
            self._jobs.popleft()
            self._dequeue(job)
            batch.append(job)
            n_items, n_tokens = n_items + len(job.items), n_tokens + job.tokens
        return n_items, n_tokens

    async def _gather(self) -> list[_Job]:
        """Wait for a first job, then up to max_wait_s for more while the budget has room and more requests are on
        their way (`incoming`): a lone request runs at once. [] once closed and empty."""
        loop = asyncio.get_running_loop()
        batch: list[_Job] = []
        while not batch:
            while not self._jobs:
                if self._closing:
                    return []
                self._wake.clear()
                await self._wake.wait()
            n_items, n_tokens = self._take(batch, 0, 0)  # may stay empty if every queued job was abandoned
        deadline = loop.time() + self.max_wait_s
        while (not self._jobs and self.incoming > 0 and n_items < self.max_batch and n_tokens < self.max_tokens
               and not self._closing and (left := deadline - loop.time()) > 0):
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                break
            n_items, n_tokens = self._take(batch, n_items, n_tokens)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                return  # closing and drained
            items = [item for job in batch for item in job.items]
            start = loop.time()
            try:
                results = await loop.run_in_executor(self._executor, self._checked, items)
            except Exception:
                if len(batch) == 1:
                    self._fail(batch[0], items)
                    continue
                # one bad request must not fail the others it was batched with: run each on its own
                log.warning("batch of %d requests failed; retrying them one by one", len(batch))
                for job in batch:
                    try:
                        job_results = await loop.run_in_executor(self._executor, self._checked, list(job.items))
                    except Exception:
                        self._fail(job, job.items)
                        continue
                    if not job.future.done():
                        job.future.set_result(job_results)
                continue
            if self.on_batch is not None:
                self.on_batch(len(items), loop.time() - start)
            offset = 0
            for job in batch:
                if not job.future.done():
                    job.future.set_result(list(results[offset : offset + len(job.items)]))
                offset += len(job.items)

    def _checked(self, items: list[Any]) -> list[Any]:
        results = list(self.run(items))
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        return results

    @staticmethod
    def _fail(job: _Job, items: Sequence[Any]) -> None:
        log.exception("a request of %d items failed in the forward", len(items))
        if not job.future.done():
            job.future.set_exception(RuntimeError("the forward pass failed for this request"))
