"""The opt-in ``handle_data`` delivery, over every poller x implementation.

A Transport class that overrides ``handle_data`` (and not ``handle_read``)
has its data received for it: by the poller inline on the pure path, by
one C call per iteration on the C accelerator's epoll poller. Every test
here holds both to the same outcome: every byte, in order, each call
non-empty and at most ``read_size``; EOF, half-close and reset as with
``recv()``; nothing delivered while paused, even when the pause comes
from another transport's callback in the same batch; nothing misdelivered
when a transport is closed, and its fd number reused, mid-batch.
"""

import hashlib
import os
import random
import socket

import pytest

from pike import Transport
from pike.testing import run_until, socket_pair
from pike.testing.sockets import PeerReader, _reset


class DataSink(Transport):
    """Records every handle_* call; keeps the data it is given."""

    def __init__(self, *args, **kwargs):
        self.chunks = []
        self.events = []
        super().__init__(*args, **kwargs)

    def handle_data(self, data):
        assert type(data) is bytes and data, data
        assert len(data) <= self.read_size
        assert self.is_reading(), "handle_data while paused"
        self.chunks.append(data)

    def handle_read_eof(self):
        self.events.append("read_eof")

    def handle_eof(self):
        self.events.append("eof")
        super().handle_eof()

    def handle_close(self):
        self.events.append("close")
        self.close()

    def handle_error(self):
        self.events.append("error")
        super().handle_error()

    @property
    def received(self):
        return b"".join(self.chunks)


def sink_and_peer(poller, cls=DataSink):
    a, b = socket_pair()
    return cls(alternate_poller=poller, sock=a), b


def test_a_class_that_overrides_handle_data_delivers_through_it(poller):
    sink, peer = sink_and_peer(poller)
    try:
        assert type(sink)._delivers_data
        assert sink._receive_size == sink.read_size
        peer.sendall(b"hello")
        run_until(poller, lambda: sink.received == b"hello")
    finally:
        sink.close()
        peer.close()


def test_a_class_that_overrides_handle_read_keeps_it(poller):
    class ReadsItself(DataSink):
        def handle_read(self):
            self.chunks.append(b"<" + self.recv(100) + b">")

    sink, peer = sink_and_peer(poller, ReadsItself)
    try:
        assert not ReadsItself._delivers_data and sink._receive_size == 0
        peer.sendall(b"abc")
        run_until(poller, lambda: sink.chunks)
        assert sink.chunks == [b"<abc>"]
    finally:
        sink.close()
        peer.close()


def test_every_byte_arrives_in_order(poller):
    rng = random.Random(7)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    sink, peer = sink_and_peer(poller)
    try:
        peer.setblocking(False)
        sent = 0
        def feed():
            nonlocal sent
            while sent < len(payload):
                size = rng.choice((1, 100, 1500, 65536, 300000))
                try:
                    sent += peer.send(payload[sent:sent + size])
                except BlockingIOError:
                    break
            return len(sink.received) == len(payload)
        run_until(poller, feed, timeout=30)
        assert hashlib.sha256(sink.received).digest() == hashlib.sha256(payload).digest()
        assert sink.events == []
    finally:
        sink.close()
        peer.close()


def test_read_size_bounds_each_call(poller):
    class Small(DataSink):
        read_size = 100

    sink, peer = sink_and_peer(poller, Small)
    try:
        peer.sendall(b"x" * 1000)
        run_until(poller, lambda: len(sink.received) == 1000)
        assert len(sink.chunks) >= 10 and all(len(c) <= 100 for c in sink.chunks)
    finally:
        sink.close()
        peer.close()


def test_eof_after_data_reads_everything_then_closes(poller):
    sink, peer = sink_and_peer(poller)
    try:
        peer.sendall(b"last words")
        peer.shutdown(socket.SHUT_WR)
        run_until(poller, lambda: sink.closed)
        assert sink.received == b"last words"
        assert sink.events == ["read_eof", "close"]
    finally:
        sink.close()
        peer.close()


def test_half_close_keeps_writing_after_the_peers_eof(poller):
    class HalfClosing(DataSink):
        half_close = True

        def handle_eof(self):
            self.events.append("eof")
            self.write(b"reply:" + self.received)
            self.write_eof()

    sink, peer = sink_and_peer(poller, HalfClosing)
    reader = PeerReader(peer)
    try:
        peer.sendall(b"question")
        peer.shutdown(socket.SHUT_WR)
        run_until(poller, lambda: reader.pump() and reader.eof)
        assert bytes(reader.data) == b"reply:question"
        run_until(poller, lambda: sink.closed)
        assert sink.events == ["read_eof", "eof", "close"]
    finally:
        sink.close()
        peer.close()


def test_reset_closes_without_an_error(poller):
    sink, peer = sink_and_peer(poller)
    try:
        peer.sendall(b"before")
        run_until(poller, lambda: sink.received == b"before")
        _reset(peer)
        run_until(poller, lambda: sink.closed)
        assert sink.events == ["close"]
    finally:
        sink.close()
        peer.close()


def test_nothing_arrives_while_paused_and_all_of_it_after(poller):
    sink, peer = sink_and_peer(poller)
    try:
        sink.pause_reading()
        peer.sendall(b"waiting")
        for _ in range(5):
            poller.poll(0.02)
        assert sink.chunks == []
        sink.resume_reading()
        run_until(poller, lambda: sink.received == b"waiting")
    finally:
        sink.close()
        peer.close()


def test_a_pause_from_another_transport_in_the_same_batch(poller):
    # Both transports are readable before the poll, so both are in one
    # batch: whichever runs first pauses the other. The C epoll poller has
    # then already received for the second one, and must hold it.
    class Pauser(DataSink):
        other = None

        def handle_data(self, data):
            super().handle_data(data)
            if self.other is not None and self.other.is_reading():
                self.other.pause_reading()
                self.other = None

    first, first_peer = sink_and_peer(poller, Pauser)
    second, second_peer = sink_and_peer(poller, Pauser)
    try:
        first.other, second.other = second, first
        first_peer.sendall(b"one")
        second_peer.sendall(b"two")
        second_peer.shutdown(socket.SHUT_WR)
        first_peer.shutdown(socket.SHUT_WR)
        run_until(poller, lambda: first.chunks or second.chunks)
        for _ in range(5):
            poller.poll(0.02)
        runner, paused = (first, second) if first.chunks else (second, first)
        assert not paused.chunks and not paused.is_reading()
        assert "close" not in paused.events
        # Resumed and paused again before the loop runs: still nothing.
        paused.resume_reading()
        paused.pause_reading()
        for _ in range(5):
            poller.poll(0.02)
        assert not paused.chunks and "close" not in paused.events
        paused.resume_reading()
        run_until(poller, lambda: paused.closed and runner.closed)
        assert first.received == b"one" and second.received == b"two"
        assert paused.events == ["read_eof", "close"]
    finally:
        for item in (first, second, first_peer, second_peer):
            item.close()


def test_a_transport_closed_mid_batch_gets_nothing_and_its_number_is_not_confused(poller):
    # The first transport to run closes the other and opens a new one,
    # which takes the freed fd number: the closed one's data, received in
    # the same batch, must reach neither.
    made = []

    class Closer(DataSink):
        other = None

        def handle_data(self, data):
            super().handle_data(data)
            other, self.other = self.other, None
            if other is not None and not other.closed:
                number = other.fileno()
                other.close()
                newcomer, newcomer_peer = sink_and_peer(poller)
                made.append((number, newcomer, newcomer_peer))

    first, first_peer = sink_and_peer(poller, Closer)
    second, second_peer = sink_and_peer(poller, Closer)
    try:
        first.other, second.other = second, first
        first_peer.sendall(b"one")
        second_peer.sendall(b"two")
        run_until(poller, lambda: made)
        for _ in range(5):
            poller.poll(0.02)
        number, newcomer, newcomer_peer = made[0]
        closed = first if first.closed else second
        assert not closed.chunks
        assert newcomer.chunks == []  # the closed one's bytes went nowhere
        newcomer_peer.sendall(b"mine")
        run_until(poller, lambda: newcomer.received == b"mine")
    finally:
        for item in (first, second, first_peer, second_peer):
            item.close()
        for _, newcomer, newcomer_peer in made:
            newcomer.close()
            newcomer_peer.close()


def test_a_flood_on_many_connections_overflows_no_buffer(poller):
    # More than one iteration's receive budget (the C path's RECEIVE_BUDGET)
    # is ready at once: the channels that do not fit read for themselves,
    # and nothing is lost.
    count = 8
    payload = os.urandom(400 * 1024)
    pairs = [sink_and_peer(poller) for _ in range(count)]
    try:
        for _, peer in pairs:
            peer.setblocking(False)
        offsets = [0] * count

        def feed():
            for index, (_, peer) in enumerate(pairs):
                while offsets[index] < len(payload):
                    try:
                        offsets[index] += peer.send(payload[offsets[index]:])
                    except BlockingIOError:
                        break
            return all(len(sink.received) == len(payload) for sink, _ in pairs)

        run_until(poller, feed, timeout=30)
        for sink, _ in pairs:
            assert sink.received == payload
    finally:
        for sink, peer in pairs:
            sink.close()
            peer.close()


def test_an_exception_in_handle_data_goes_to_handle_error(poller):
    class Failing(DataSink):
        def handle_data(self, data):
            raise ValueError("bad frame")

    sink, peer = sink_and_peer(poller, Failing)
    try:
        peer.sendall(b"x")
        run_until(poller, lambda: sink.closed)
        assert sink.events == ["error"]
    finally:
        sink.close()
        peer.close()


def test_a_datagram_transport_reads_through_handle_read(poller):
    class Datagrams(DataSink):
        pass

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        sink = Datagrams(alternate_poller=poller, sock=receiver)
        assert sink._receive_size == 0  # only streams are received for
        sender.sendto(b"dgram", receiver.getsockname())
        run_until(poller, lambda: sink.chunks)
        assert sink.chunks == [b"dgram"]
        sink.close()
    finally:
        receiver.close()
        sender.close()


def test_a_connecting_client_delivers_once_connected(poller):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = DataSink(alternate_poller=poller)
    try:
        client.create_socket()
        client.connect(listener.getsockname())
        assert client._receive_size == 0  # not while connecting
        peer, _ = listener.accept()
        peer.sendall(b"welcome")
        run_until(poller, lambda: client.received == b"welcome")
        assert client._receive_size == client.read_size
        peer.close()
    finally:
        client.close()
        listener.close()
