"""The public channel contract: Channel, and add_reader / add_writer.

On every poller x implementation: a reader fires on each readable event and
stops when removed; a writer fires each iteration while writable (level
triggered) and stops when removed; removing what was never added is False;
an fd a Transport watches is refused; a watched fd closed behind the poller
is dropped without a spin; a raising callback is logged and does not stop
the loop; and a Channel subclass gets its events and closes cleanly.
"""

import logging
import os
import socket

import pytest

from pike.poller import Channel
from pike.testing import assert_blocks, run_until, transport_and_peer


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_reader_fires_until_removed(poller, pair):
    a, b = pair
    got = []
    poller.add_reader(a, lambda tag: got.append((tag, a.recv(100))), "r")
    b.send(b"one")
    run_until(poller, lambda: got, what="the reader")
    assert got == [("r", b"one")]
    assert poller.remove_reader(a.fileno()) is True
    assert poller.remove_reader(a) is False
    b.send(b"two")
    assert_blocks(poller, what="a removed reader")
    assert got == [("r", b"one")]
    assert len(poller) == 0


def test_writer_is_level_triggered_until_removed(poller, pair):
    a, _ = pair
    calls = []

    def writable():
        calls.append(1)
        if len(calls) == 3:
            poller.remove_writer(a)

    poller.add_writer(a.fileno(), writable)
    run_until(poller, lambda: len(calls) >= 3, what="three writer calls")
    assert_blocks(poller, what="a removed writer")
    assert len(calls) == 3
    assert poller.remove_writer(a) is False


def test_reader_and_writer_share_one_fd(poller, pair):
    a, b = pair
    seen = []
    poller.add_reader(a, lambda: seen.append(("read", a.recv(10))))
    poller.add_writer(a, lambda: (seen.append(("write",)), poller.remove_writer(a)))
    b.send(b"x")
    run_until(poller, lambda: ("read", b"x") in seen and ("write",) in seen, what="both")
    poller.remove_reader(a)
    assert len(poller) == 0


def test_an_fd_a_transport_watches_is_refused(poller):
    t, peer = transport_and_peer(poller)
    try:
        with pytest.raises(ValueError):
            poller.add_reader(t.fileno(), lambda: None)
        assert not t.closed
    finally:
        t.close()
        peer.close()


def test_not_an_fd_is_refused(poller):
    with pytest.raises(ValueError):
        poller.add_reader("seven", lambda: None)


def test_a_raising_reader_is_logged_and_kept(poller, pair, caplog):
    a, b = pair
    calls = []

    def broken():
        calls.append(a.recv(10))
        raise RuntimeError("boom")

    poller.add_reader(a, broken)
    with caplog.at_level(logging.ERROR, logger="pike"):
        b.send(b"1")
        run_until(poller, lambda: len(calls) == 1, what="the first call")
        b.send(b"2")
        run_until(poller, lambda: len(calls) == 2, what="the second call")
    assert "boom" in caplog.text
    poller.remove_reader(a)


def test_an_fd_closed_while_watched_is_dropped_without_a_spin(poller, caplog):
    r, w = os.pipe()
    os.close(w)
    try:
        poller.add_reader(r, lambda: os.read(r, 10))
    finally:
        os.close(r)  # closed behind the poller's back
    with caplog.at_level(logging.WARNING, logger="pike"):
        for _ in range(3):
            poller.poll(0.05)
    assert_blocks(poller, what="after the closed fd was dropped")
    assert len(poller) == 0


class Flag(Channel):
    def __init__(self, poller, fd):
        super().__init__(poller, fd)
        self.reads = 0
        self.writes = 0

    def handle_read_event(self):
        self.reads += 1
        self.set_reading(False)

    def handle_write_event(self):
        self.writes += 1


def test_a_channel_subclass_gets_its_events(poller, pair):
    a, b = pair
    channel = Flag(poller, a.fileno())
    poller.add_channel(channel)
    b.send(b"x")
    poller.defer_write(channel)
    run_until(poller, lambda: channel.reads and channel.writes, what="both events")
    assert_blocks(poller, what="a channel that stopped reading")
    assert (channel.reads, channel.writes) == (1, 1)
    channel.close()
    channel.close()
    assert channel.closed and channel.fileno() == -1 and len(poller) == 0
    assert a.fileno() >= 0, "Channel.close closed an fd it does not own"
