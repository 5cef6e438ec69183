"""Transport's raw I/O calls, pure Python against C.

Each runs under both implementations. Beneath ``send`` the C path has its
own primitive (``pike/_c_path.py``: no exception when it would block),
and so has ``write`` (a send that keeps the GIL); ``recv`` uses the
socket's own method on both (a C ``recv`` was tried: making a bytes object
from a reusable buffer cost more than the whole of ``socket.recv``), which
the ``[c]`` rows confirm.

Single calls take about a microsecond, so the timed-per-call benchmarks
that need an untimed set-up between calls (data to read, room to write)
include the clock's own overhead, equally for both sides.
"""

import socket

import pytest

from pike.bench.micro.benchutil import drain, fill
from pike.transport import Transport

KIB = b"k" * 1024
ROUNDS = 20000


@pytest.fixture
def transport(pair):
    """A Transport on a poll poller over one end of ``pair``, and the peer."""
    import pike

    a, b = pair
    poller = pike.make_poller("poll")
    t = Transport(poller, a)
    yield t, b
    t.close()
    poller.close()


# -- send that would block (shipped in C) ---------------------------------------


def test_send_would_block(benchmark, implementation, transport):
    t, peer = transport
    fill(t.socket)
    assert benchmark(t.send, KIB) == 0
    assert t._write_armed


# -- recv ----------------------------------------------------------------------------


def _bench_recv_waiting(benchmark, recv, t, peer):
    def one_kib_waiting():  # (a set-up must return None)
        peer.send(KIB)

    result = benchmark.pedantic(
        recv,
        args=(t, 65536),
        setup=one_kib_waiting,
        rounds=ROUNDS,
        iterations=1,
        warmup_rounds=100,
    )
    assert result == KIB


def test_recv_1k_waiting(benchmark, implementation, transport):
    t, peer = transport
    assert Transport.recv.__module__ == "pike.transport"  # pure on both
    _bench_recv_waiting(benchmark, Transport.recv, t, peer)


def test_recv_nothing_waiting(benchmark, implementation, transport):
    t, peer = transport
    assert benchmark(t.recv, 65536) == b""


# -- write that the kernel takes ---------------------------------------------------


def _bench_write(benchmark, write, t, peer):
    def room_to_write():
        drain(peer)

    benchmark.pedantic(
        write,
        args=(t, KIB),
        setup=room_to_write,
        rounds=ROUNDS,
        iterations=1,
        warmup_rounds=100,
    )
    assert not t._queue and drain(peer) == 1024


def test_write_kernel_takes_it(benchmark, implementation, transport):
    t, peer = transport
    _bench_write(benchmark, Transport.write, t, peer)
