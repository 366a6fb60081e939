"""MicroBatcher under faults, without HTTP: a request whose deadline passes while queued, and a batch function that
raises (a simulated out-of-memory). Each fault answers or drops that request alone, frees its queue slot at once,
and the batcher goes on serving the requests after it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rmkit.batcher import MicroBatcher, QueueFull


class GatedRun:
    """A batch function that doubles its items; a batch holding "block" waits until `release` is set, one holding
    "slow" takes 0.2 s, one holding "oom" raises as a CUDA out-of-memory would. Records every batch it was called with."""

    def __init__(self):
        self.release, self.started = threading.Event(), threading.Event()
        self.batches: list[list] = []

    def __call__(self, batch: list) -> list:
        self.batches.append(list(batch))
        if "block" in batch:
            self.started.set()
            assert self.release.wait(10), "test never released the blocked batch"
        if "slow" in batch:
            time.sleep(0.2)
        if "oom" in batch:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")  # what torch.OutOfMemoryError says
        return [x * 2 for x in batch]


async def wait_started(run: GatedRun) -> None:
    while not run.started.is_set():
        await asyncio.sleep(0.005)


def test_a_request_whose_deadline_passes_while_queued_is_dropped_and_frees_its_slot_at_once():
    run = GatedRun()

    async def main():
        batcher = MicroBatcher(run, max_queue=4, max_wait_s=0)
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit(["block"], tokens=1))
        await wait_started(run)  # the worker is busy: whatever comes now waits in the queue
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit(["late"] * 4, tokens=4), timeout=0.05)
        depth_after_deadline = batcher.depth
        later = batcher.put(["x", "y", "z", "w"], tokens=4)  # the queue is full only if the late request still counts
        with pytest.raises(QueueFull):
            batcher.put(["one too many"], tokens=1)
        run.release.set()
        answers = await asyncio.gather(blocker, later)
        after = await batcher.submit(["ok"], tokens=1)
        await batcher.stop()
        return depth_after_deadline, answers, after, batcher.depth

    depth_after_deadline, answers, after, depth = asyncio.run(main())
    assert depth_after_deadline == 0
    assert answers == [["blockblock"], ["xx", "yy", "zz", "ww"]] and after == ["okok"] and depth == 0
    assert not any("late" in batch for batch in run.batches)  # the abandoned request never reached the forward


def test_a_request_whose_deadline_passes_while_it_runs_leaves_the_others_of_its_batch_answered():
    run = GatedRun()

    async def main():
        batcher = MicroBatcher(run, max_wait_s=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(["block"], tokens=1))
        await wait_started(run)
        impatient = asyncio.ensure_future(asyncio.wait_for(batcher.submit(["slow"], tokens=1), timeout=0.1))
        patient = asyncio.ensure_future(batcher.submit(["b"], tokens=1))
        await asyncio.sleep(0.01)
        run.release.set()  # now "slow" and "b" run as one batch of 0.2 s, and the deadline passes inside it
        results = await asyncio.gather(first, impatient, patient, return_exceptions=True)
        after = await batcher.submit(["c"], tokens=1)
        await batcher.stop()
        return results, after, batcher.depth

    (first, impatient, patient), after, depth = asyncio.run(main())
    assert sorted(run.batches[1]) == ["b", "slow"]
    assert first == ["blockblock"] and patient == ["bb"] and after == ["cc"] and depth == 0
    assert isinstance(impatient, asyncio.TimeoutError)


@pytest.mark.parametrize("batched_with_others", [False, True])
def test_a_forward_that_raises_fails_that_request_alone_and_the_batcher_keeps_serving(batched_with_others):
    run = GatedRun()

    async def main():
        batcher = MicroBatcher(run, max_wait_s=0)
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit(["block"], tokens=1))
        await wait_started(run)
        # queued behind the blocked batch, these three are gathered into one batch when it ends
        others = ["p", "q"] if batched_with_others else []
        futures = [batcher.put([x], tokens=1) for x in ["oom", *others]]
        assert batcher.depth == 1 + len(others)
        run.release.set()
        results = await asyncio.gather(blocker, *futures, return_exceptions=True)
        depth = batcher.depth
        after = [await batcher.submit([f"after{i}"], tokens=1) for i in range(3)]
        await batcher.stop()
        return results, depth, after

    (blocker, oom, *others), depth, after = asyncio.run(main())
    assert blocker == ["blockblock"]
    assert isinstance(oom, RuntimeError) and "forward pass failed" in str(oom)
    assert others == ([["pp"], ["qq"]] if batched_with_others else [])
    assert depth == 0 and after == [["after0after0"], ["after1after1"], ["after2after2"]]
    if batched_with_others:  # the joint batch failed, then each request ran alone: only the bad one failed
        assert run.batches[1:4] == [["oom", "p", "q"], ["oom"], ["p"]] and run.batches[4] == ["q"]


def test_a_forward_that_returns_the_wrong_number_of_results_is_an_error_not_a_wrong_answer():
    async def main():
        batcher = MicroBatcher(lambda batch: batch[:-1], max_wait_s=0)
        batcher.start()
        with pytest.raises(RuntimeError, match="forward pass failed"):
            await batcher.submit(["a", "b"], tokens=2)
        await batcher.stop()
        return batcher.depth

    assert asyncio.run(main()) == 0


def test_stop_answers_every_queued_request_before_the_worker_ends():
    run = GatedRun()

    async def main():
        batcher = MicroBatcher(run, max_wait_s=0)
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit(["block"], tokens=1))
        await wait_started(run)
        queued = [batcher.put([i], tokens=1) for i in range(5)]
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="not running"):
            batcher.put(["refused"], tokens=1)
        run.release.set()
        await stopping
        return await blocker, [f.result() for f in queued]

    blocker, queued = asyncio.run(main())
    assert blocker == ["blockblock"] and queued == [[0], [2], [4], [6], [8]]
