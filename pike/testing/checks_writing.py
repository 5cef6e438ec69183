"""Writing: sends that would block, large transfers, flow control, write_eof,
close_when_done, writes after close.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import select
import socket

from .recording import (
    RecordingTransport,
    connected_pair,
    transport_and_peer,
)
from .registry import _check
from .sockets import (
    PeerReader,
)
from .support import _closing, _pattern, _stalled_pair
from .waiting import _fd, assert_blocks, run_until

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only
    from ..poller import Poller



def _writable(obj, timeout):
    return bool(select.select([], [_fd(obj)], [], timeout)[1])


@_check
def check_send_would_block(poller: Poller) -> None:
    """A send that would block arms exactly one write notification.

    The peer never reads: raw ``send()`` eventually returns 0. While the
    peer stalls, the loop blocks (no spin, no callback); once the peer
    drains, ``handle_write`` runs exactly once.
    """
    with contextlib.ExitStack() as stack:
        t, peer = _closing(stack, *transport_and_peer(poller))
        t.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        chunk = bytes(65536)
        total = 0
        # Fill the connection until it is really stalled: the socket stays
        # unwritable even after in-flight data was acknowledged.
        for _ in range(4096):
            sent = t.send(chunk)
            total += sent
            if sent == 0 and not _writable(t, 0.2):
                break
        else:
            raise AssertionError("send() never returned 0 to a peer that never reads")
        # (No second send here: the receiver's buffer autotuning may still
        # open a little room, and that is not what is being tested.)
        assert t.events == [], t.events
        assert_blocks(poller, what="a transport waiting for a stalled peer")
        assert "write" not in t.events, t.events

        remaining = total
        while remaining:
            remaining -= len(peer.recv(min(remaining, 1 << 20)))
        run_until(poller, lambda: "write" in t.events, what="handle_write after drain")
        assert_blocks(poller, duration=0.2, step=0.05, what="after the write notification")
        assert t.count("write") == 1, t.events
        assert not t.errors and not t.late


class _SlowReader(RecordingTransport):
    """Reads 16 KiB at a time and pauses for a moment after every MiB."""

    read_size = 16384
    _since_pause = 0

    def handle_read(self):
        before = len(self.received)
        super().handle_read()
        self._since_pause += len(self.received) - before
        if self._since_pause >= 1 << 20 and not self.closed:
            self._since_pause = 0
            self.pause_reading()
            self.poller.call_later(0.002, self._resume)

    def _resume(self):
        if not self.closed:
            self.resume_reading()


def _mixed_pieces(data, rng):
    """Split ``data`` into pieces of mixed buffer types, with their kinds."""
    pieces = []
    pos = 0
    kinds = ("bytes", "bytearray", "memoryview", "memoryview-of-bytearray")
    while pos < len(data):
        size = min(rng.randint(1, 256 * 1024), len(data) - pos)
        chunk = data[pos : pos + size]
        kind = kinds[len(pieces) % len(kinds)]
        if kind == "bytes":
            piece = chunk
        elif kind == "bytearray":
            piece = bytearray(chunk)
        elif kind == "memoryview":
            piece = memoryview(chunk)
        else:
            piece = memoryview(bytearray(chunk))
        pieces.append(piece)
        pos += size
    return pieces


def _scribble(piece):
    """Overwrite a mutable piece in place (to prove the writer copied it)."""
    if isinstance(piece, bytearray):
        piece[:] = b"\xee" * len(piece)
    elif isinstance(piece, memoryview) and not piece.readonly:
        piece[:] = b"\xee" * len(piece)


@_check
def check_large_transfer(poller: Poller) -> None:
    """8 MiB through a slow reader arrives intact and in order.

    The writer uses ``write()`` and ``writelines()`` with a mix of bytes,
    bytearray and memoryview (scribbling over the mutable ones right after
    handing them over), produces only while not paused by flow control,
    and ends with ``close_when_done()``. The reader receives in 16 KiB
    pieces and pauses reading now and then.
    """
    size = 8 << 20
    data = _pattern(size, 3)
    rng = random.Random(4)
    pieces = _mixed_pieces(data, rng)
    with contextlib.ExitStack() as stack:
        client, server = _closing(
            stack, *connected_pair(poller, server_factory=_SlowReader)
        )
        high = client.get_write_buffer_limits()[1]
        state = {"next": 0, "max_buffer": 0, "done": False}

        def produce():
            while state["next"] < len(pieces) and not client.is_writing_paused():
                i = state["next"]
                if i % 3 == 2:
                    group = pieces[i : i + 3]
                    client.writelines(group)
                    state["next"] = i + len(group)
                else:
                    group = [pieces[i]]
                    client.write(group[0])
                    state["next"] = i + 1
                for piece in group:
                    _scribble(piece)
                state["max_buffer"] = max(
                    state["max_buffer"], client.get_write_buffer_size()
                )
            if state["next"] == len(pieces) and not state["done"]:
                state["done"] = True
                client.close_when_done()

        client.hooks["resume_writing"] = produce
        produce()
        run_until(
            poller,
            lambda: server.closed,
            timeout=30.0,
            what="the transfer to finish and the writer to close",
        )
        got = bytes(server.received)
        assert len(got) == size, f"received {len(got)} of {size} bytes"
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), (
            "the data arrived corrupted or out of order"
        )
        assert client.closed, "close_when_done() did not close after the drain"
        assert state["max_buffer"] <= high + 3 * 256 * 1024, state["max_buffer"]
        assert server.count("close") == 1
        assert not client.errors and not server.errors
        assert not client.late and not server.late


@_check
def check_flow_control(poller: Poller) -> None:
    """Water marks: pause above high, resume at low, buffer size tracked."""
    with contextlib.ExitStack() as stack:
        client, server = _closing(stack, *connected_pair(poller))
        high, low = 65536, 16384
        client.set_write_buffer_limits(high=high, low=low)
        assert client.get_write_buffer_limits() == (low, high)
        sizes: dict = {}
        client.hooks["pause_writing"] = lambda: sizes.setdefault(
            "pause", client.get_write_buffer_size()
        )
        client.hooks["resume_writing"] = lambda: sizes.setdefault(
            "resume", client.get_write_buffer_size()
        )
        server.pause_reading()
        chunk = _pattern(16384, 5)
        written = 0
        for _ in range(8192):
            client.write(chunk)
            written += len(chunk)
            size = client.get_write_buffer_size()
            if size > high:
                break
            assert "pause_writing" not in client.events, (size, client.events)
        else:
            raise AssertionError("the write buffer never passed the high water mark")
        assert client.count("pause_writing") == 1, client.events
        assert sizes["pause"] > high and client.is_writing_paused()
        client.write(chunk)
        written += len(chunk)
        assert client.get_write_buffer_size() == size + len(chunk)
        assert client.count("pause_writing") == 1, client.events

        server.resume_reading()
        run_until(poller, lambda: "resume_writing" in client.events, what="resume")
        assert sizes["resume"] <= low, sizes
        assert not client.is_writing_paused()
        run_until(
            poller, lambda: len(server.received) == written, what="the data to drain"
        )
        assert client.get_write_buffer_size() == 0
        assert client.count("pause_writing") == 1 and client.count("resume_writing") == 1
        assert bytes(server.received) == chunk * (written // len(chunk))
        assert not client.errors and not client.late


@_check
def check_write_eof_after_queued(poller: Poller) -> None:
    """``write_eof()`` with data queued: the peer gets all of it, then EOF."""
    with contextlib.ExitStack() as stack:
        t, peer = _stalled_pair(poller, stack)
        payload = _pattern(2 << 20, 6)
        t.write(payload)
        assert t.get_write_buffer_size() > 0, "expected data to be queued"
        t.write_eof()
        for call in (lambda: t.write(b"x"), lambda: t.writelines([b"x"])):
            try:
                call()
            except RuntimeError:
                pass
            else:
                raise AssertionError("writing after write_eof() did not raise")
        assert not t.closed
        reader = PeerReader(peer)
        run_until(poller, reader.pump_until_eof, what="the peer to see EOF")
        assert bytes(reader.data) == payload, "data queued before write_eof was lost"
        assert t.get_write_buffer_size() == 0
        assert not t.closed and "close" not in t.events, t.events
        peer.close()
        run_until(poller, lambda: t.closed, what="the transport to see the peer close")
        assert t.count("close") == 1 and not t.errors and not t.late, t.events


@_check
def check_close_when_done(poller: Poller) -> None:
    """``close_when_done()`` sends everything queued, then closes.

    With nothing queued it closes at once.
    """
    with contextlib.ExitStack() as stack:
        t, peer = _stalled_pair(poller, stack)
        payload = _pattern(2 << 20, 7)
        t.write(payload)
        assert t.get_write_buffer_size() > 0, "expected data to be queued"
        t.close_when_done()
        assert not t.closed
        try:
            t.write(b"x")
        except RuntimeError:
            pass
        else:
            raise AssertionError("write after close_when_done() did not raise")
        reader = PeerReader(peer)
        run_until(poller, reader.pump_until_eof, what="the peer to see EOF")
        assert bytes(reader.data) == payload, "data queued before close was lost"
        run_until(poller, lambda: t.closed, what="close_when_done to close")
        assert t not in poller.channels()
        assert not t.errors and not t.late, (t.errors, t.late)

        t2, peer2 = _closing(stack, *transport_and_peer(poller))
        t2.close_when_done()
        assert t2.closed, "close_when_done() with nothing queued did not close at once"
        assert peer2.recv(10) == b""


@_check
def check_write_after_close(poller: Poller) -> None:
    """``write`` after ``close()``: BrokenPipeError; after ``write_eof()``: RuntimeError."""
    with contextlib.ExitStack() as stack:
        t, peer = _closing(stack, *transport_and_peer(poller))
        t.close()
        for call in (lambda: t.write(b"x"), lambda: t.writelines([b"x"])):
            try:
                call()
            except BrokenPipeError:
                pass
            else:
                raise AssertionError("writing to a closed transport did not raise")
        t.write_eof()  # harmless on a closed transport
        assert t.events == [], t.events

        t2, peer2 = _closing(stack, *transport_and_peer(poller))
        t2.write(b"last words")
        t2.write_eof()
        t2.write_eof()
        for call in (lambda: t2.write(b"x"), lambda: t2.writelines([b"x"])):
            try:
                call()
            except RuntimeError:
                pass
            else:
                raise AssertionError("writing after write_eof() did not raise")
        reader = PeerReader(peer2)
        run_until(poller, reader.pump_until_eof, what="EOF after write_eof")
        assert bytes(reader.data) == b"last words"

        fresh = _closing(stack, RecordingTransport(alternate_poller=poller))
        try:
            fresh.write(b"x")
        except BrokenPipeError:
            pass
        else:
            raise AssertionError("writing without a socket did not raise")
