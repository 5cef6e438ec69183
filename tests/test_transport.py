"""Transport behaviour that is not part of the conformance battery.

The battery (pike.testing, run by test_conformance.py) covers the event
contract; these are the transport's own API details: state after
set_socket, errors, repr, water mark validation, default callbacks.
"""

import errno
import logging
import socket

import pytest

import pike
from pike import Transport
from pike.testing import (
    PeerReader,
    RecordingTransport,
    connected_pair,
    run_until,
    socket_pair,
    tcp_listener,
    transport_and_peer,
)


@pytest.fixture
def pair(poller):
    t, peer = transport_and_peer(poller)
    yield t, peer
    t.close()
    peer.close()


# -- construction and set_socket ----------------------------------------------


def test_transport_lives_on_the_default_poller(poller):
    t = Transport()
    assert t.poller is poller is pike.get_poller()


def test_alternate_poller_is_used(poller):
    other = pike.make_poller(poller.name)
    try:
        t = Transport(alternate_poller=other)
        assert t.poller is other
        t.create_socket()
        assert t in other.channels() and t not in poller.channels()
        t.close()
    finally:
        other.close()


def test_set_socket_on_connected_socket_sets_connected(poller):
    a, b = socket_pair()
    try:
        t = Transport(sock=a)
        assert t.connected and not t.connecting and not t.accepting
        assert t.addr == a.getpeername()
        assert t.fileno() == a.fileno()
        assert a.gettimeout() == 0.0, "set_socket must make the socket non-blocking"
        assert t in poller.channels()
        t.close()
    finally:
        b.close()


def test_set_socket_on_listening_socket_sets_accepting(poller):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    t = Transport()
    t.set_socket(sock)
    assert t.accepting and not t.connected
    assert t.accept() is None
    t.close()


def test_set_socket_on_unconnected_socket(poller):
    t = Transport()
    t.set_socket(socket.socket())
    assert not t.connected and not t.accepting and not t.connecting
    t.close()


def test_set_socket_twice_raises(pair):
    t, _ = pair
    extra = socket.socket()
    try:
        with pytest.raises(RuntimeError, match="already has a socket"):
            t.set_socket(extra)
    finally:
        extra.close()


def test_set_socket_on_closed_transport_raises(poller):
    t = Transport()
    t.close()
    sock = socket.socket()
    try:
        with pytest.raises(RuntimeError, match="closed"):
            t.set_socket(sock)
    finally:
        sock.close()


def test_create_socket_bad_family_raises_and_leaves_no_socket(poller):
    t = Transport()
    with pytest.raises(OSError):
        t.create_socket(12345, socket.SOCK_STREAM)  # no such family
    assert t.socket is None and t.fileno() == -1
    t.create_socket()  # still usable
    assert t.fileno() >= 0
    t.close()


def test_create_socket_failure_rolls_back(poller):
    closed = pike.make_poller(poller.name)
    closed.close()
    t = Transport(alternate_poller=closed)
    with pytest.raises(RuntimeError, match="closed"):
        t.create_socket()
    assert t.socket is None, "a failed create_socket left a (closed) socket behind"
    assert t.fileno() == -1
    assert "fd=-1" in repr(t)


def test_create_socket_returns_the_socket(poller):
    t = Transport()
    sock = t.create_socket(socket.AF_INET, socket.SOCK_DGRAM)
    assert sock is t.socket and sock.type == socket.SOCK_DGRAM
    t.close()


# -- repr ------------------------------------------------------------------------


def test_repr_follows_the_state(poller):
    t = Transport()
    assert repr(t) == "<Transport fd=-1 idle>"
    listener = tcp_listener(poller)
    try:
        assert "listening" in repr(listener)
        assert f"fd={listener.fileno()}" in repr(listener)
        t.create_socket()
        assert "idle" in repr(t) and f"fd={t.fileno()}" in repr(t)
        t.connect(listener.address)
        assert "connecting" in repr(t) and repr(listener.address) in repr(t)
        run_until(poller, lambda: t.connected)
        assert "connected" in repr(t) and "connecting" not in repr(t)
        t.close()
        assert "closed" in repr(t)
    finally:
        listener.close()
        for accepted in listener.accepted:
            accepted.close()


def test_repr_names_the_subclass(pair):
    t, _ = pair
    assert repr(t).startswith("<RecordingTransport fd=")
    assert repr(t.addr) in repr(t)


# -- errors without a socket, after close ----------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.recv(10),
        lambda t: t.send(b"x"),
        lambda t: t.connect(("127.0.0.1", 9)),
        lambda t: t.sendto(b"x", ("127.0.0.1", 9)),
        lambda t: t.recvfrom(10),
        lambda t: t.bind(("127.0.0.1", 0)),
        lambda t: t.listen(),
        lambda t: t.accept(),
    ],
    ids=["recv", "send", "connect", "sendto", "recvfrom", "bind", "listen", "accept"],
)
def test_calls_before_create_socket_raise_clear_oserror(poller, call):
    t = RecordingTransport()
    with pytest.raises(OSError) as info:
        call(t)
    assert info.value.errno == errno.ENOTCONN
    assert "create_socket" in str(info.value)
    assert t.events == []


def test_connect_on_closed_transport_raises(poller):
    t = Transport()
    t.create_socket()
    t.close()
    with pytest.raises(OSError) as info:
        t.connect(("127.0.0.1", 9))
    assert info.value.errno == errno.EBADF


def test_recv_send_after_close_raise(pair):
    t, _ = pair
    t.close()
    for call in (lambda: t.recv(10), lambda: t.send(b"x")):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EBADF
    assert t.events == [], f"callbacks on a closed transport: {t.events}"


def test_connect_immediate_failure_raises_and_closes(poller, tmp_path):
    t = RecordingTransport()
    t.create_socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(FileNotFoundError):
        t.connect(str(tmp_path / "nobody-listens-here"))
    assert t.closed and not t.connecting and not t.connected
    assert isinstance(t.connect_error, FileNotFoundError)
    assert t.events == []
    assert t not in poller.channels()


def test_write_without_socket_raises_broken_pipe(poller):
    t = Transport()
    with pytest.raises(BrokenPipeError):
        t.write(b"x")
    with pytest.raises(BrokenPipeError):
        t.writelines([b"x"])


# -- buffered writes -------------------------------------------------------------


def test_set_write_buffer_limits_defaults_and_validation(pair):
    t, _ = pair
    assert t.get_write_buffer_limits() == (16384, 65536)
    t.set_write_buffer_limits(high=1000)
    assert t.get_write_buffer_limits() == (250, 1000)
    t.set_write_buffer_limits(low=100)
    assert t.get_write_buffer_limits() == (100, 400)
    t.set_write_buffer_limits(high=10, low=10)
    assert t.get_write_buffer_limits() == (10, 10)
    t.set_write_buffer_limits(high=0, low=0)
    assert t.get_write_buffer_limits() == (0, 0)
    t.set_write_buffer_limits()
    assert t.get_write_buffer_limits() == (16384, 65536)
    with pytest.raises(ValueError):
        t.set_write_buffer_limits(high=10, low=11)
    with pytest.raises(ValueError):
        t.set_write_buffer_limits(high=10, low=-1)
    with pytest.raises(ValueError):
        t.set_write_buffer_limits(high=-1)
    assert t.get_write_buffer_limits() == (16384, 65536), "a rejected call changed them"


def test_changing_water_marks_pauses_and_resumes_at_once(poller):
    client, server = connected_pair(poller)
    try:
        server.pause_reading()
        chunk = bytes(65536)
        for _ in range(2048):
            client.write(chunk)
            if client.get_write_buffer_size() > 0:
                break
        size = client.get_write_buffer_size()
        assert size > 0
        assert "pause_writing" not in client.events or size > 65536
        client.events.clear()
        client.set_write_buffer_limits(high=max(size - 1, 0), low=0)
        assert client.events == ["pause_writing"] and client.is_writing_paused()
        client.set_write_buffer_limits(high=size * 4, low=size)
        assert client.events == ["pause_writing", "resume_writing"]
        assert not client.is_writing_paused()
    finally:
        client.close()
        server.close()


def test_write_empty_is_a_noop(pair):
    t, peer = pair
    t.write(b"")
    t.write(bytearray())
    t.writelines([])
    t.writelines([b"", b""])
    assert t.get_write_buffer_size() == 0
    assert t.events == []


def test_writelines_takes_any_iterable(pair, poller):
    t, peer = pair
    t.writelines(b"%d," % i for i in range(5))
    reader = PeerReader(peer)
    run_until(poller, lambda: reader.pump() and reader.data == b"0,1,2,3,4,")


def test_close_discards_queued_data(poller):
    client, server = connected_pair(poller)
    try:
        server.pause_reading()
        for _ in range(2048):
            client.write(bytes(65536))
            if client.get_write_buffer_size():
                break
        assert client.get_write_buffer_size() > 0
        client.close()
        assert client.get_write_buffer_size() == 0
    finally:
        client.close()
        server.close()


def test_can_write_eof(pair):
    t, _ = pair
    assert t.can_write_eof()


# -- datagrams -------------------------------------------------------------------


def test_empty_datagram_via_recv_does_not_close(poller):
    class Reader(RecordingTransport):
        def handle_read(self):
            self.events.append("read")
            self.received += self.recv(100)

    r = Reader()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r.create_socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind(("127.0.0.1", 0))
        sender.sendto(b"", r.socket.getsockname())
        run_until(poller, lambda: r.events)
        assert not r.closed, "a zero-length datagram was taken for an EOF"
        sender.sendto(b"after", r.socket.getsockname())
        run_until(poller, lambda: r.received == b"after")
    finally:
        sender.close()
        r.close()


def test_empty_datagram_via_recvfrom(poller):
    r = RecordingTransport()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    try:
        r.create_socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind(("127.0.0.1", 0))
        sender.sendto(b"", r.socket.getsockname())
        run_until(poller, lambda: r.datagrams)
        assert r.datagrams == [(b"", sender.getsockname())]
        assert not r.closed
    finally:
        sender.close()
        r.close()


# -- reading control and half close -------------------------------------------


def test_resume_reading_after_eof_stays_paused(pair, poller):
    t, peer = pair
    t.half_close = True
    peer.shutdown(socket.SHUT_WR)
    run_until(poller, lambda: t.eof_received)
    assert not t.is_reading()
    t.resume_reading()
    assert not t.is_reading(), "resume_reading() after EOF would spin on the EOF"


def test_is_reading_false_after_close(pair):
    t, _ = pair
    assert t.is_reading()
    t.close()
    assert not t.is_reading()


# -- the base class's default callbacks -----------------------------------------


def test_default_handle_read_discards_and_closes_on_eof(poller):
    a, b = socket_pair()
    t = Transport(sock=a)
    try:
        b.sendall(b"ignored")
        b.close()
        run_until(poller, lambda: t.closed)
        assert t not in poller.channels()
    finally:
        t.close()
        b.close()


def test_default_handle_eof_shuts_down_after_queued_data(poller):
    a, b = socket_pair()
    t = Transport(sock=a)
    t.half_close = True
    try:
        t.write(b"reply")
        b.shutdown(socket.SHUT_WR)
        reader = PeerReader(b)
        run_until(poller, reader.pump_until_eof)
        assert reader.data == b"reply"
        run_until(poller, lambda: t.closed)
    finally:
        t.close()
        b.close()


def test_default_handle_error_logs_and_closes(poller, caplog):
    class Broken(Transport):
        def handle_read(self):
            raise ValueError("broken protocol")

    a, b = socket_pair()
    t = Broken(sock=a)
    try:
        b.sendall(b"x")
        with caplog.at_level(logging.ERROR, logger="pike"):
            run_until(poller, lambda: t.closed)
        assert any(
            r.exc_info and isinstance(r.exc_info[1], ValueError) for r in caplog.records
        ), caplog.records
    finally:
        t.close()
        b.close()


def test_default_handle_accepted_closes_with_a_warning(poller, caplog):
    listener = Transport()
    listener.create_socket()
    listener.set_reuse_addr()
    assert listener.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    assert listener.accepting
    client = socket.create_connection(listener.socket.getsockname(), timeout=5)
    try:
        reader = PeerReader(client)
        with caplog.at_level(logging.WARNING, logger="pike"):
            run_until(poller, reader.pump_until_eof)
        assert any("dropped a connection" in r.getMessage() for r in caplog.records)
    finally:
        client.close()
        listener.close()


def test_default_handle_connect_failed_goes_to_handle_error(poller, caplog):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    t = Transport()
    t.create_socket()
    with caplog.at_level(logging.ERROR, logger="pike"):
        try:
            t.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            pass
        else:
            run_until(poller, lambda: t.closed)
    assert isinstance(t.connect_error, ConnectionRefusedError)
    assert t.closed


def test_context_manager_closes(poller):
    with Transport() as t:
        t.create_socket()
        assert t in poller.channels()
    assert t.closed and t not in poller.channels()


@pytest.mark.parametrize("then", ["write_eof", "close_when_done", "close", "detach", "queue"])
def test_write_after_a_fast_write_still_checks(pair, poller, then):
    """After a write that went straight out, write() skips its checks (its
    gate is open); every change that would fail one of them must shut it."""
    t, peer = pair
    t.write(b"first")
    assert t._write_direct  # the gate the fast path reads
    reader = PeerReader(peer)
    if then == "write_eof":
        t.write_eof()
        with pytest.raises(RuntimeError):
            t.write(b"late")
    elif then == "close_when_done":
        t.close_when_done()
        with pytest.raises((RuntimeError, BrokenPipeError)):
            t.write(b"late")
    elif then == "close":
        t.close()
        with pytest.raises(BrokenPipeError):
            t.write(b"late")
    elif then == "detach":
        sock, _ = t.detach_socket()
        try:
            with pytest.raises(BrokenPipeError):
                t.write(b"late")
        finally:
            t.close()
            sock.close()
        return
    else:
        # A queue: what follows must go behind it, in order.
        block = b"q" * 65536
        sent = b"first"
        for _ in range(2048):  # bounded: a few MiB fill any socket buffer
            t.write(block)
            sent += block
            if t.get_write_buffer_size():
                break
        t.write(b"last")
        sent += b"last"
        run_until(poller, lambda: reader.pump() and len(reader.data) >= len(sent))
        assert bytes(reader.data) == sent
        return
    run_until(poller, lambda: reader.pump() and len(reader.data) >= 5)
    assert bytes(reader.data) == b"first"


def test_write_counts_bytes_of_multibyte_buffers(pair, poller):
    """An array of ints has len() in items: write() must count bytes."""
    import array

    t, peer = pair
    numbers = array.array("i", range(5000))
    t.write(numbers)
    t.writelines([memoryview(numbers)[10:20], b"end"])
    expected = numbers.tobytes() + numbers[10:20].tobytes() + b"end"
    reader = PeerReader(peer)
    run_until(poller, lambda: reader.pump() and len(reader.data) >= len(expected))
    assert bytes(reader.data) == expected
    assert t.get_write_buffer_size() == 0
