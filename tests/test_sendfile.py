"""Transport.sendfile: every byte, in order with write(), on every poller x implementation.

Files of several MiB go over TCP and Unix sockets, checked by SHA-256; with
writes before and after; with an offset and a count; from a file object
with no fd (the read fallback) and from an fd os.sendfile refuses; with a
slow reader, so the water marks fire; and ended early by a reset or a
close, when the request reports the error.
"""

import hashlib
import io
import os
import socket
import struct

import pytest

from pike.testing import PeerReader, RecordingTransport, run_until, transport_and_peer

FAMILIES = {"tcp": socket.AF_INET, "unix": socket.AF_UNIX}


def _pair(poller, family):
    t, peer = transport_and_peer(poller, FAMILIES[family])
    t.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    return t, peer


def _receive_all(poller, t, peer, size):
    reader = PeerReader(peer)
    run_until(poller, lambda: reader.pump() and len(reader.data) >= size, timeout=30,
              what=f"{size} bytes at the peer")
    return bytes(reader.data)


def _digest(data):
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_file_arrives_whole_between_writes(poller, data_file, family):
    f, payload = data_file
    t, peer = _pair(poller, family)
    try:
        done = []
        t.write(b"HEAD")
        request = t.sendfile(f)
        request.add_done_callback(done.append)
        t.write(b"TAIL")
        assert t.get_write_buffer_size() >= len(payload)
        expected = b"HEAD" + payload + b"TAIL"
        got = _receive_all(poller, t, peer, len(expected))
        assert _digest(got) == _digest(expected)
        run_until(poller, lambda: done, what="the request to end")
        assert done == [request] and request.error is None
        assert request.sent == request.count == len(payload)
        assert t.get_write_buffer_size() == 0
        assert f.tell() == 0, "sendfile moved the file's position"
    finally:
        t.close()
        peer.close()


def test_offset_and_count(poller, data_file):
    f, payload = data_file
    t, peer = _pair(poller, "tcp")
    try:
        request = t.sendfile(f, offset=1000, count=500_000)
        got = _receive_all(poller, t, peer, 500_000)
        assert got == payload[1000:501_000]
        run_until(poller, lambda: request.done, what="the request to end")
        assert request.sent == 500_000
        empty = t.sendfile(f, offset=len(payload))
        assert empty.done and empty.count == 0
    finally:
        t.close()
        peer.close()


def test_a_file_shorter_than_count_ends_the_request_early(poller, data_file):
    f, payload = data_file
    t, peer = _pair(poller, "unix")
    try:
        request = t.sendfile(f, offset=len(payload) - 10, count=1000)
        t.write(b"!")
        got = _receive_all(poller, t, peer, 11)
        assert got == payload[-10:] + b"!"
        assert request.done and request.sent == 10 and request.error is None
    finally:
        t.close()
        peer.close()


def test_a_file_object_without_an_fd_is_read_and_sent(poller):
    payload = os.urandom(2 << 20)
    t, peer = _pair(poller, "tcp")
    try:
        request = t.sendfile(io.BytesIO(payload), offset=7)
        got = _receive_all(poller, t, peer, len(payload) - 7)
        assert _digest(got) == _digest(payload[7:])
        run_until(poller, lambda: request.done, what="the request to end")
    finally:
        t.close()
        peer.close()


def test_pipes_and_bad_arguments_are_refused(poller, data_file):
    f, _ = data_file
    t, peer = _pair(poller, "tcp")
    r, w = os.pipe()
    try:
        with open(r, "rb", closefd=False) as pipe:
            with pytest.raises(ValueError, match="regular file"):
                t.sendfile(pipe)
        with pytest.raises(ValueError):
            t.sendfile(f, offset=-1)
        with pytest.raises(ValueError):
            t.sendfile(f, count=-5)
        assert t.get_write_buffer_size() == 0 and not t.closed
        t.close()
        with pytest.raises(BrokenPipeError):
            t.sendfile(f)
    finally:
        os.close(r)
        os.close(w)
        t.close()
        peer.close()


def test_the_water_marks_see_the_file(poller, data_file):
    f, payload = data_file
    t, peer = transport_and_peer(poller, socket.AF_INET, RecordingTransport)
    try:
        t.set_write_buffer_limits(high=256 * 1024)
        t.sendfile(f)
        assert t.events == ["pause_writing"], t.events
        got = _receive_all(poller, t, peer, len(payload))
        assert _digest(got) == _digest(payload)
        run_until(poller, lambda: "resume_writing" in t.events, what="resume_writing")
    finally:
        t.close()
        peer.close()


def test_a_reset_ends_the_request_with_an_error(poller, data_file):
    f, _ = data_file
    t, peer = transport_and_peer(poller, socket.AF_INET, RecordingTransport)
    try:
        t.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        request = t.sendfile(f)
        run_until(poller, lambda: request.sent > 0, what="the file to start")
        peer.recv(1000)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        run_until(poller, lambda: t.closed, what="the reset to close the transport")
        assert request.done and isinstance(request.error, OSError), request
        assert request.sent < request.count
        assert t.count("close") == 1 and "error" not in t.events, t.events
    finally:
        t.close()
        peer.close()


def test_close_abandons_the_request(poller, data_file):
    f, _ = data_file
    t, peer = _pair(poller, "tcp")
    try:
        request = t.sendfile(f)
        ended = []
        request.add_done_callback(ended.append)
        t.close()
        assert ended == [request] and isinstance(request.error, BrokenPipeError)
    finally:
        peer.close()


def test_a_refused_sendfile_falls_back(poller, data_file, monkeypatch):
    import errno

    from pike import sendfile as sendfile_module

    def refuse(*args):
        raise OSError(errno.EINVAL, "not here")

    monkeypatch.setattr(sendfile_module.os, "sendfile", refuse, raising=False)
    f, payload = data_file
    t, peer = _pair(poller, "unix")
    try:
        t.sendfile(f)
        got = _receive_all(poller, t, peer, len(payload))
        assert _digest(got) == _digest(payload)
    finally:
        t.close()
        peer.close()
