"""Transport.sendfile under TLS: the layer reads, encrypts and sends the file,
in order with write(), over every poller x implementation.

A client with TLS sends files of several MiB to a pike TLS server, which
checks them by SHA-256: between writes (before and after the handshake),
with an offset and a count, from a file shorter than the count, from a file
object with no fd; with small water marks (pause and resume); ended early
by a reset, by close() or by a TLS failure, and followed by
close_when_done() or the peer's EOF.
"""

import io
import os
import socket
import ssl
import struct

import pytest

from tls_support import (  # noqa: F401 (certs and poller are fixtures)
    Peer, TLSListener, certs, digest, poller, run_until, tls_client,
)


class Sink(Peer):
    """A server connection that keeps what arrives (no echo), and stops
    reading once ``stall_after`` bytes came (when set)."""

    stall_after = None

    def handle_read(self):
        data = self.recv(65536)
        self.received += data
        if self.stall_after is not None and len(self.received) >= self.stall_after:
            self.pause_reading()


def _connect(poller, certs, wait_handshake=True, sndbuf=None):
    server = TLSListener(certs.server_context(), peer_class=Sink)
    client = tls_client(certs.client_context(), server.address)
    if sndbuf is not None:
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    if wait_handshake:
        run_until(poller, lambda: "handshake" in client.events, what="the handshake")
    return server, client


def _received(poller, server, size, timeout=30):
    run_until(poller, lambda: server.peers and len(server.peers[0].received) >= size,
              timeout=timeout, what=f"{size} bytes at the server")
    return bytes(server.peers[0].received)


@pytest.mark.parametrize("when", ["before_handshake", "after_handshake"])
def test_files_arrive_whole_between_writes(poller, certs, data_file, when):
    f, payload = data_file
    server, client = _connect(poller, certs, wait_handshake=when == "after_handshake")
    done = []
    client.write(b"HEAD")
    first = client.sendfile(f)
    first.add_done_callback(done.append)
    client.write(bytearray(b"MIDDLE"))
    second = client.sendfile(f, offset=100, count=200_000)
    second.add_done_callback(done.append)
    client.write(b"TAIL")
    assert client.get_write_buffer_size() >= len(payload) + 200_000
    expected = b"HEAD" + payload + b"MIDDLE" + payload[100:200_100] + b"TAIL"
    got = _received(poller, server, len(expected))
    assert digest(got) == digest(expected)
    run_until(poller, lambda: len(done) == 2, what="both requests to end")
    assert done == [first, second]
    assert first.error is None and first.sent == first.count == len(payload)
    assert second.error is None and second.sent == second.count == 200_000
    run_until(poller, lambda: client.get_write_buffer_size() == 0, what="the queue to drain")
    assert f.tell() == 0, "sendfile moved the file's position"
    assert "tls_failed" not in client.events and "close" not in client.events


def test_offset_and_count(poller, certs, data_file):
    f, payload = data_file
    server, client = _connect(poller, certs)
    request = client.sendfile(f, offset=1000, count=500_000)
    got = _received(poller, server, 500_000)
    assert got == payload[1000:501_000]
    run_until(poller, lambda: request.done, what="the request to end")
    assert request.sent == 500_000 and request.error is None
    empty = client.sendfile(f, offset=len(payload))
    assert empty.done and empty.count == 0 and empty.sent == 0


def test_a_file_shorter_than_count_ends_the_request_early(poller, certs, data_file):
    f, payload = data_file
    server, client = _connect(poller, certs)
    request = client.sendfile(f, offset=len(payload) - 10, count=1000)
    client.write(b"!")
    got = _received(poller, server, 11)
    assert got == payload[-10:] + b"!"
    run_until(poller, lambda: request.done, what="the request to end")
    assert request.sent == 10 and request.error is None
    assert client.get_write_buffer_size() == 0


def test_a_file_object_without_an_fd_is_read_and_sent(poller, certs):
    payload = os.urandom(1 << 20)
    server, client = _connect(poller, certs)
    request = client.sendfile(io.BytesIO(payload), offset=7)
    got = _received(poller, server, len(payload) - 7)
    assert digest(got) == digest(payload[7:])
    run_until(poller, lambda: request.done, what="the request to end")
    assert request.sent == len(payload) - 7 and request.error is None


def test_the_water_marks_pause_and_resume(poller, certs, data_file):
    f, payload = data_file
    server, client = _connect(poller, certs)
    client.set_write_buffer_limits(high=256 * 1024)
    client.sendfile(f)
    assert client.events.count("pause") == 1, client.events
    assert client.is_writing_paused()
    got = _received(poller, server, len(payload))
    assert digest(got) == digest(payload)
    run_until(poller, lambda: "resume" in client.events, what="resume_writing")
    assert client.events.count("resume") == 1 and not client.is_writing_paused()


def test_a_reset_ends_the_request_with_an_error(poller, certs, tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(8 << 20))
    server, client = _connect(poller, certs, sndbuf=65536)
    run_until(poller, lambda: server.peers and "handshake" in server.peers[0].events,
              what="the server's handshake")
    peer = server.peers[0]
    peer.stall_after = 256 * 1024
    peer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    with open(path, "rb") as f:
        request = client.sendfile(f)
        run_until(poller, lambda: not peer.is_reading(), what="the server to stall")
        # Mid-transfer: the peer resets (SO_LINGER 0, then close).
        peer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.abort()
        run_until(poller, lambda: client.closed, what="the reset to close the client")
        assert request.done and isinstance(request.error, OSError), request
        assert 0 < request.sent < request.count
        assert client.events.count("close") == 1, client.events
        assert "tls_failed" not in client.events, client.events


def test_close_abandons_the_request(poller, certs, data_file):
    f, _ = data_file
    server, client = _connect(poller, certs)
    request = client.sendfile(f)
    ended = []
    request.add_done_callback(lambda r: ended.append((r, client.closed)))
    client.close()
    assert ended == [(request, True)], "the request ends once the transport is closed"
    assert isinstance(request.error, BrokenPipeError)
    assert request.sent < request.count


def test_close_when_done_waits_for_the_file(poller, certs, data_file):
    f, payload = data_file
    server, client = _connect(poller, certs)
    request = client.sendfile(f)
    client.close_when_done()
    with pytest.raises(RuntimeError):
        client.write(b"too late")
    with pytest.raises((RuntimeError, BrokenPipeError)):
        client.sendfile(f)
    got = _received(poller, server, len(payload))
    assert digest(got) == digest(payload)
    run_until(poller, lambda: "read_eof" in server.peers[0].events,
              what="close_notify at the server")
    assert not server.peers[0].tls.ragged_eof
    assert request.done and request.error is None and client.closed


def test_the_peers_eof_does_not_cut_the_file_short(poller, certs, data_file):
    """The server ends its side (close_notify) while the file streams: the
    client gets its EOF, still sends the whole file, then closes."""
    f, payload = data_file
    server, client = _connect(poller, certs)
    run_until(poller, lambda: server.peers and "handshake" in server.peers[0].events,
              what="the server's handshake")
    peer = server.peers[0]
    peer.half_close = True  # keep reading after the client's close_notify
    request = client.sendfile(f)
    peer.write_eof()
    run_until(poller, lambda: "read_eof" in client.events, what="the EOF at the client")
    got = _received(poller, server, len(payload))
    assert digest(got) == digest(payload)
    run_until(poller, lambda: client.closed, what="the client to close after the file")
    assert request.done and request.error is None and request.sent == len(payload)
    assert client.events.count("close") == 1, client.events


def test_discard_write_buffer_ends_a_waiting_file(poller, certs, data_file):
    f, _ = data_file
    server, client = _connect(poller, certs, wait_handshake=False)
    request = client.sendfile(f)  # before the handshake: nothing encrypted yet
    client.discard_write_buffer()
    assert request.done and isinstance(request.error, BrokenPipeError)
    assert client.get_write_buffer_size() == 0
    client.write(b"after")
    got = _received(poller, server, 5)
    assert got == b"after"


def test_a_tls_failure_mid_file_ends_the_request_with_it(poller, certs, data_file):
    """Garbage where a record should be: the client's session fails, the
    transport aborts, and the request ends with the TLS error."""
    f, _ = data_file
    server, client = _connect(poller, certs, sndbuf=65536)
    run_until(poller, lambda: server.peers and "handshake" in server.peers[0].events,
              what="the server's handshake")
    peer = server.peers[0]
    peer.stall_after = 128 * 1024
    request = client.sendfile(f)
    run_until(poller, lambda: not peer.is_reading(), what="the server to stall")
    peer.socket.send(b"\x17\x03\x03\x00\x20" + b"not a record" * 3)  # beside the TLS layer
    run_until(poller, lambda: client.closed, what="the failure to close the client")
    assert "tls_failed" in client.events
    assert request.done and request.error is client.tls.error
    assert isinstance(request.error, ssl.SSLError)
    assert request.sent < request.count
