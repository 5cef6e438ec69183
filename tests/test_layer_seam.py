"""Transport's seam for layers: install_layer and the "for layers" methods,
used by a small layer of the test's own, over every poller x implementation;
and pike.tls kept to that seam.
"""

import ast
import errno
import os
import socket

import pytest

import pike
from pike.testing import PeerReader, RecordingTransport, run_until, transport_and_peer
from pike.transport import WRITE_EOF_AFTER_DRAIN, WRITE_OPEN, Transport

_KEY = 0x5A


def _xor(data):
    return bytes(b ^ _KEY for b in data)


class XorLayer:
    """A toy layer: every byte is XORed on its way out and in. It holds what
    is written while ``held`` is set, as a layer with a buffer of its own
    (TLS before its handshake) does."""

    def __init__(self, transport):
        self.transport = transport
        self.held = []
        self.holding = False
        self.read_events = 0
        transport.install_layer({
            "recv": self.recv,
            "write": self.write,
            "get_write_buffer_size": self.get_write_buffer_size,
            "handle_read_event": self.read_event,
        })

    def read_event(self):
        self.read_events += 1
        type(self.transport).handle_read_event(self.transport)

    def recv(self, bufsize):
        t = self.transport
        if t.socket is None or t.closed:
            raise t.not_open_error()
        try:
            data = t.socket.recv(bufsize)
        except BlockingIOError:
            return b""
        if not data:
            t.peer_eof()
        return _xor(data)

    def write(self, data):
        t = self.transport
        if t.write_state or t.closed or t.socket is None:
            t.check_writable()
        if self.holding:
            self.held.append(bytes(data))
            t.check_water_marks()
            return
        Transport.write(t, _xor(data))

    def release(self):
        self.holding = False
        held, self.held = self.held, []
        t = self.transport
        for data in held:
            Transport.write(t, _xor(data))
        # One write notification, so that what waited for everything to be
        # sent (the close after the peer's EOF) runs even if the kernel took
        # it all at once.
        t.poller.defer_write(t)
        t.check_water_marks()

    def get_write_buffer_size(self):
        return Transport.get_write_buffer_size(self.transport) + sum(map(len, self.held))


def test_install_layer_refuses_unknown_names_and_a_second_layer(poller):
    t, peer = transport_and_peer(poller)
    try:
        with pytest.raises(ValueError, match="fileno"):
            t.install_layer({"fileno": lambda: 3})
        XorLayer(t)
        with pytest.raises(RuntimeError, match="already has a layer"):
            t.install_layer({"write": lambda data: None})
        assert "send" in Transport.LAYER_METHODS
    finally:
        t.close()
        peer.close()


@pytest.fixture
def layered(poller):
    """A RecordingTransport with an XorLayer, and its plain peer socket."""
    t, peer = transport_and_peer(poller, socket.AF_INET, RecordingTransport)
    try:
        yield t, XorLayer(t), peer
    finally:
        t.close()
        peer.close()


def _peer_gets(poller, peer, size):
    reader = PeerReader(peer)
    run_until(poller, lambda: reader.pump() and len(reader.data) >= size, what="the bytes")
    return bytes(reader.data)


def test_a_layer_changes_the_bytes_both_ways(poller, layered):
    t, layer, peer = layered
    t.write(b"hello, layer")
    assert _peer_gets(poller, peer, 12) == _xor(b"hello, layer")
    peer.sendall(_xor(b"and back"))
    run_until(poller, lambda: t.received == b"and back", what="the reply")
    # The poller called the layer's read event, not handle_read directly.
    assert layer.read_events >= 1


def test_bytes_a_layer_holds_count_in_the_water_marks_and_at_eof(poller, layered):
    t, layer, peer = layered
    t.set_write_buffer_limits(high=1000)
    layer.holding = True
    t.write(b"x" * 2000)
    assert t.get_write_buffer_size() == 2000 and t.events == ["pause_writing"]
    # The peer's EOF while the layer holds bytes: they still go out before
    # handle_close.
    peer.shutdown(socket.SHUT_WR)
    run_until(poller, lambda: t.eof_received and "write" in t.events,
              what="the EOF, and the write event that follows it")
    assert not t.closed, "closed with bytes still held by the layer"
    assert t.write_state == WRITE_OPEN
    layer.release()
    assert _peer_gets(poller, peer, 2000) == _xor(b"x" * 2000)
    run_until(poller, lambda: t.closed, what="handle_close after the drain")
    assert t.events.count("resume_writing") == 1


def test_write_state_and_the_errors_for_layers(poller):
    t, peer = transport_and_peer(poller)
    try:
        assert t.write_state == WRITE_OPEN
        t.check_writable()  # open: nothing raised
        t.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        t.write(b"y" * 1_000_000)  # more than the kernel takes at once
        t.write_eof()
        assert t.write_state == WRITE_EOF_AFTER_DRAIN
        with pytest.raises(RuntimeError):
            t.check_writable()
        assert t.write_queue.size == t.get_write_buffer_size() > 0
    finally:
        t.close()
        peer.close()
    assert t.not_open_error().errno == errno.EBADF
    idle = Transport(alternate_poller=poller)  # no socket yet
    assert idle.not_open_error().errno == errno.ENOTCONN
    with pytest.raises(BrokenPipeError):
        idle.check_writable()


def test_detach_socket_hands_over_socket_and_queue(poller):
    t, peer = transport_and_peer(poller)
    sock = None
    try:
        t.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        t.write(b"z" * 1_000_000)
        sock, queue = t.detach_socket()
        assert t.socket is None and queue.size > 0
        t.close()  # unregisters; the socket is ours now and stays open
        assert sock.fileno() >= 0
        queue.clear()
    finally:
        if sock is not None:
            sock.close()
        peer.close()


def _private_reads_of_the_transport(tree):
    """``t._x``, ``transport._x`` and ``self.transport._x`` in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__"):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("t", "transport"):
            found.append((node.lineno, node.attr))
        elif isinstance(owner, ast.Attribute) and owner.attr == "transport":
            found.append((node.lineno, node.attr))
    return found


def test_the_tls_layer_uses_only_the_seam():
    path = os.path.join(os.path.dirname(pike.__file__), "tls.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    assert _private_reads_of_the_transport(tree) == []
