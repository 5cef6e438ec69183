"""The write queue: many small buffers appended, then one gather send.

Each round appends N buffers of 64 bytes to a :class:`WriteQueue` and calls
``send_to()`` once, which hands them to the kernel in a single ``sendmsg()``;
the peer drains the socket between rounds (untimed). The queue is pure
Python on both implementations, so the two rows also show the noise floor.
"""

import pytest

from pike.bench.micro.benchutil import drain
from pike.write_queue import WriteQueue

ROUNDS = {16: 2000, 256: 300}


@pytest.mark.parametrize("buffers", [16, 256])
def test_append_and_send_to(benchmark, implementation, pair, buffers):
    a, b = pair
    chunks = [bytes([i % 256]) * 64 for i in range(buffers)]
    total = 64 * buffers
    queue = WriteQueue()

    def append_and_send():
        for chunk in chunks:
            queue.append(chunk)
        return queue.send_to(a)

    def drained():  # (a set-up must return None)
        drain(b)

    sent = benchmark.pedantic(
        append_and_send,
        setup=drained,
        rounds=ROUNDS[buffers],
        iterations=1,
        warmup_rounds=10,
    )
    assert sent == total and not queue
    assert drain(b) == total
