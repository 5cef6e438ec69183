"""More than FD_SETSIZE (1024) fds on the pollers that have no such limit."""

import socket
import time

import pytest

from pike import Transport

resource = pytest.importorskip("resource")

PAIRS = 600  # 1200 fds, on top of what the process already has


class Counter(Transport):
    def __init__(self, poller, sock):
        self.received = bytearray()
        self.reads = 0
        super().__init__(poller, sock)

    def handle_read(self):
        self.reads += 1
        self.received += self.recv(65536)


@pytest.fixture
def enough_fds():
    needed = 2 * PAIRS + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        except (ValueError, OSError) as exc:
            pytest.skip(f"cannot raise RLIMIT_NOFILE: {exc}")
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(60)
def test_more_than_1024_fds(poller, enough_fds):
    if poller.name == "select":
        pytest.skip("select is limited to FD_SETSIZE (see test_poller)")
    transports = []
    raw = []
    try:
        for _ in range(PAIRS):
            a, b = socket.socketpair()
            raw.extend((a, b))
            transports.append(Counter(poller, a))
            transports.append(Counter(poller, b))
        by_fd = sorted(transports, key=lambda t: t.fileno())
        assert by_fd[-1].fileno() >= 1024 + 100
        assert len(poller) == 2 * PAIRS
        poller.poll(0)  # all registered, nothing to read
        assert all(t.reads == 0 for t in transports)

        # Data to the highest-numbered fds is dispatched to them, and only them.
        peers = {}
        for i in range(0, len(transports), 2):
            peers[transports[i]] = transports[i + 1]
            peers[transports[i + 1]] = transports[i]
        targets = by_fd[-10:]
        for n, target in enumerate(targets):
            peers[target].write(b"high %d" % n)
        end = time.monotonic() + 10
        while any(not t.received for t in targets) and time.monotonic() < end:
            poller.poll(0.5)
        for n, target in enumerate(targets):
            assert bytes(target.received) == b"high %d" % n
        assert sum(t.reads for t in transports) == len(targets)

        # Every fd at once: all dispatched, a bounded number of iterations.
        for t in transports:
            t.write(b"!")
        iterations = 0
        while iterations < 50 and any(len(t.received) < 1 for t in transports):
            poller.poll(1.0)
            iterations += 1
        assert all(len(t.received) >= 1 for t in transports)
        assert iterations <= 3
    finally:
        for t in transports:
            t.close()
        for s in raw:
            s.close()
    assert len(poller) == 0


@pytest.mark.timeout(60)
def test_high_fd_channels_come_and_go(poller, enough_fds):
    """Closing and reopening above 1024 keeps the bookkeeping exact."""
    if poller.name == "select":
        pytest.skip("select is limited to FD_SETSIZE (see test_poller)")
    filler = []
    try:
        for _ in range(PAIRS):
            filler.extend(socket.socketpair())
        for round_ in range(3):
            a, b = socket.socketpair()
            t = Counter(poller, a)
            try:
                assert t.fileno() >= 1024
                b.send(b"round %d" % round_)
                end = time.monotonic() + 10
                while not t.received and time.monotonic() < end:
                    poller.poll(0.5)
                assert bytes(t.received) == b"round %d" % round_
            finally:
                t.close()
                b.close()
            assert len(poller) == 0
    finally:
        for s in filler:
            s.close()
