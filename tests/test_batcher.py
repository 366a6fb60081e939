"""Tests for rmkit.batcher: requests gathered into batches by budget, answered with their own slices, bounded queue."""

from __future__ import annotations

import asyncio

import pytest

from rmkit.batcher import MicroBatcher, QueueFull


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_results_in_order():
    batches = []

    def double(items):
        batches.append(list(items))
        return [2 * x for x in items]

    async def main():
        b = MicroBatcher(double, max_tokens=100, max_batch=10, max_wait_s=0.05)
        b.start()
        b.incoming = 1  # one more request is on its way: the first waits for it
        first = b.put([1, 2], tokens=2)
        b.incoming = 0
        second = b.put([3], tokens=1)
        out = await asyncio.gather(first, second)
        await b.stop()
        return out

    assert run(main()) == [[2, 4], [6]]
    assert batches == [[1, 2, 3]]


def test_a_batch_never_passes_the_item_budget():
    sizes = []

    async def main():
        b = MicroBatcher(lambda items: sizes.append(len(items)) or list(items), max_batch=2, max_wait_s=0.01)
        b.start()
        futures = [b.put([i], tokens=1) for i in range(5)]
        results = await asyncio.gather(*futures)
        await b.stop()
        return results

    assert run(main()) == [[0], [1], [2], [3], [4]]
    assert max(sizes) <= 2 and sum(sizes) == 5


def test_a_full_queue_refuses_at_once_with_a_retry_hint():
    async def main():
        b = MicroBatcher(lambda items: list(items), max_queue=3)
        b.start()
        b.put([1, 2], tokens=2)
        with pytest.raises(QueueFull) as err:
            b.put([3, 4], tokens=2)
        await b.stop()
        return err.value

    assert run(main()).retry_after == 1.0


def test_one_failing_request_does_not_fail_the_request_it_was_batched_with():
    def refuse_negative(items):
        if any(x < 0 for x in items):
            raise ValueError("negative")
        return list(items)

    async def main():
        b = MicroBatcher(refuse_negative, max_wait_s=0.05)
        b.start()
        b.incoming = 1
        good = b.put([1], tokens=1)
        b.incoming = 0
        bad = b.put([-1], tokens=1)
        results = await asyncio.gather(good, bad, return_exceptions=True)
        await b.stop()
        return results

    good, bad = run(main())
    assert good == [1] and isinstance(bad, RuntimeError)


def test_a_batch_function_returning_the_wrong_count_fails_the_request():
    async def main():
        b = MicroBatcher(lambda items: [0])
        b.start()
        result = await asyncio.gather(b.put([1, 2], tokens=2), return_exceptions=True)
        await b.stop()
        return result[0]

    assert isinstance(run(main()), RuntimeError)
