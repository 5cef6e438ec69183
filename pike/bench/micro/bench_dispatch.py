"""Dispatch cost per event: one ``poll()`` that delivers N read events.

N socketpairs sit on the poller, and one byte waits on each. The handlers
do not read it, so every ``poll()`` (level-triggered) reports all N again:
the time is the kernel wait plus pike's dispatch of N events, and nothing
else. Divide the median by N for the cost per event.
"""

import socket

import pytest

from pike.transport import Transport


class Counting(Transport):
    """Counts read events and leaves the data where it is."""

    events = 0

    def handle_read(self):
        self.events += 1


@pytest.mark.parametrize("count", [1, 64])
def test_dispatch(benchmark, implementation, poller, count):
    peers = []
    transports = []
    try:
        for _ in range(count):
            a, b = socket.socketpair()
            peers.append(b)
            transports.append(Counting(poller, a))
            b.send(b"x")
        poller.poll(0)  # registers the fds with the kernel

        dispatched = benchmark(poller.poll, 0)

        assert dispatched == count
        assert all(t.events > 0 for t in transports)
    finally:
        for t in transports:
            t.close()
        for b in peers:
            b.close()
