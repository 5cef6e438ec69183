"""An idle loop blocks in the kernel: it neither spins nor polls in short slices.

The CPU bound is generous (5% of one core) and the iteration count is the
sharper check: an idle second is one wait, or a handful at most.
"""

import socket
import time

import pytest

from pike import Transport

resource = pytest.importorskip("resource")

IDLE = 1.0


def _cpu_seconds():
    """CPU time of this thread where the platform says, else of the process."""
    who = getattr(resource, "RUSAGE_THREAD", None)
    if who is not None:
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime
    return time.process_time()


class Connected(Transport):
    def handle_read(self):
        self.recv(65536)


@pytest.mark.timeout(30)
def test_idle_loop_uses_almost_no_cpu(poller, monkeypatch):
    pairs = [socket.socketpair() for _ in range(2)]
    transports = []
    try:
        for a, b in pairs:
            transports.append(Connected(poller, a))
            transports.append(Connected(poller, b))
        far = poller.call_later(3600, lambda: None)
        poller.poll(0)  # registrations done before measuring

        waits = []
        real_wait = poller._wait

        def counting_wait(timeout):
            waits.append(timeout)
            return real_wait(timeout)

        monkeypatch.setattr(poller, "_wait", counting_wait)
        cpu_before = _cpu_seconds()
        wall_before = time.monotonic()
        iterations = poller.loop(timeout=IDLE)
        wall = time.monotonic() - wall_before
        cpu = _cpu_seconds() - cpu_before
        far.cancel()

        assert wall >= IDLE - 0.01
        assert 1 <= iterations <= 3, f"{iterations} iterations for an idle second"
        assert len(waits) == iterations
        # It waited for (nearly) all the time that was left, not in slices.
        assert waits[0] >= IDLE - 0.1
        assert cpu < 0.05 * wall, f"idle loop used {cpu:.3f} s CPU in {wall:.3f} s"
    finally:
        for t in transports:
            t.close()
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.timeout(30)
def test_idle_loop_with_a_paused_reader_on_a_dead_peer_stays_idle(poller):
    """The worst idle case: a hung-up socket whose reader is paused."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    t = Connected(poller, a)
    keep = Connected(poller, c)  # an idle, healthy connection
    try:
        poller.poll(0)
        t.pause_reading()
        b.close()
        cpu_before = _cpu_seconds()
        wall_before = time.monotonic()
        iterations = poller.loop(timeout=0.5)
        wall = time.monotonic() - wall_before
        cpu = _cpu_seconds() - cpu_before
        assert 1 <= iterations <= 3, f"{iterations} iterations: it spun"
        assert cpu < 0.05 * wall + 0.01
    finally:
        t.close()
        keep.close()
        b.close()
        d.close()
