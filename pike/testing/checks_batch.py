"""One batch of events: read and write in one event, closes and fd reuse
inside a batch, double close.
"""

from __future__ import annotations

import contextlib
import socket

from .recording import (
    RecordingTransport,
    transport_and_peer,
)
from .registry import _check
from .sockets import (
    AF_INET,
    SOCK_DGRAM,
    SOCK_STREAM,
    _listening_socket,
)
from .support import _closing
from .waiting import assert_blocks, run_until, wait_readable

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only
    from ..poller import Poller



def _batch(poller, *transports, arm_write=True):
    """Make each transport readable (and write-armed), then poll once."""
    wait_readable(*transports)
    if arm_write:
        for t in transports:
            poller.defer_write(t)
    return poller.poll(1.0)


@_check
def check_read_write_one_event(poller: Poller) -> None:
    """Readable and writable at once: both callbacks in one ``poll()``.

    They are handled independently: an exception in ``handle_read`` still
    lets the write side run while the transport is open, an exception in
    ``handle_write`` does not stop reading, and a transport closed by its
    error handler gets no write callback.
    """
    with contextlib.ExitStack() as stack:
        t, peer = _closing(stack, *transport_and_peer(poller))
        peer.sendall(b"1")
        _batch(poller, t)
        assert "read" in t.events and "write" in t.events, (
            f"one poll() with a readable and writable socket gave {t.events}"
        )

        # An exception in handle_read; the error handler keeps it open.
        t.events.clear()
        t.close_on_error = False

        def fail():
            raise ValueError("read failed")

        t.hooks["read"] = fail
        peer.sendall(b"2")
        _batch(poller, t)
        assert t.events == ["read", "error", "write"], t.events
        assert isinstance(t.errors[-1], ValueError), t.errors
        del t.hooks["read"]

        # An exception in handle_write.
        t.events.clear()
        t.hooks["write"] = fail
        peer.sendall(b"3")
        _batch(poller, t)
        assert "read" in t.events and "write" in t.events, t.events
        assert t.count("error") == 1, t.events
        del t.hooks["write"]
        assert not t.closed
        run_until(poller, lambda: t.received.endswith(b"3"), what="reading to go on")
        assert bytes(t.received) == b"123", bytes(t.received)

        # The error handler closes: no write callback afterwards.
        t.events.clear()
        t.close_on_error = True
        t.hooks["read"] = fail
        peer.sendall(b"4")
        _batch(poller, t)
        assert t.events == ["read", "error"], t.events
        assert t.closed and not t.late, t.late


@_check
def check_close_self_in_read(poller: Poller) -> None:
    """A transport closing itself in ``handle_read`` gets nothing more.

    Not the write half of the same event, nor anything later.
    """
    with contextlib.ExitStack() as stack:
        t, peer = _closing(stack, *transport_and_peer(poller))
        t.hooks["read"] = t.close
        peer.sendall(b"data")
        _batch(poller, t)
        assert t.events == ["read"], t.events
        assert t.closed and t not in poller.channels()
        assert_blocks(poller, what="after closing in handle_read")
        assert t.events == ["read"] and not t.late, (t.events, t.late)


def _first_and_second(a, b):
    if a.events and not b.events:
        return a, b
    if b.events and not a.events:
        return b, a
    raise AssertionError(
        f"exactly one of two transports should have run: {a.events} / {b.events}"
    )


@_check
def check_close_other_in_batch(poller: Poller) -> None:
    """Closing another transport whose event is in the same batch.

    Two transports are readable and writable in one ``poll()``; whichever
    runs first closes the other, which then must get no callback at all.
    """
    with contextlib.ExitStack() as stack:
        a, pa = _closing(stack, *transport_and_peer(poller))
        b, pb = _closing(stack, *transport_and_peer(poller))
        a.hooks["read"] = lambda: b.closed or b.close()
        b.hooks["read"] = lambda: a.closed or a.close()
        pa.sendall(b"a")
        pb.sendall(b"b")
        _batch(poller, a, b)
        first, second = _first_and_second(a, b)
        assert second.closed and second.events == [], second.events
        assert not first.closed
        assert not first.late and not second.late
        assert second not in poller.channels()


@_check
def check_fd_reuse_in_batch(poller: Poller) -> None:
    """An fd closed and reused within one batch gets no stale event.

    Two transports are ready in one ``poll()``; whichever runs first closes
    the other and opens a new socket that gets the very same fd number,
    wrapped in a new transport: the rest of the batch must not reach it.
    """
    with contextlib.ExitStack() as stack:
        a, pa = _closing(stack, *transport_and_peer(poller))
        b, pb = _closing(stack, *transport_and_peer(poller))
        reused: list = []
        reused_fds = []  # a closed transport's fileno() is -1: keep the number

        def close_and_reuse(other):
            if other.closed or reused:
                return
            fd = other.fileno()
            other.close()
            spares = []
            try:
                for _ in range(1024):
                    sock = socket.socket(AF_INET, SOCK_DGRAM)
                    if sock.fileno() == fd:
                        break
                    spares.append(sock)
                else:
                    raise AssertionError(f"could not reopen fd {fd}")
            finally:
                for spare in spares:
                    spare.close()
            try:
                new = RecordingTransport(alternate_poller=poller, sock=sock)
            except BaseException:
                sock.close()
                raise
            stack.callback(new.close)
            reused.append(new)
            reused_fds.append(fd)

        a.hooks["read"] = lambda: close_and_reuse(b)
        b.hooks["read"] = lambda: close_and_reuse(a)
        pa.sendall(b"a")
        pb.sendall(b"b")
        _batch(poller, a, b)
        first, second = _first_and_second(a, b)
        assert reused, "no fd was reused"
        new = reused[0]
        assert new.fileno() == reused_fds[0] and second.fileno() == -1
        assert new.events == [], (
            f"a new transport on reused fd {new.fileno()} got the stale events "
            f"of the closed one: {new.events}"
        )
        assert second.events == [], second.events
        assert_blocks(poller, what="after fd reuse")
        assert new.events == [], new.events
        assert not new.late and not first.late and not second.late


@_check
def check_double_close(poller: Poller) -> None:
    """``close()`` is idempotent, fires no callback, and unregisters first.

    The transport leaves ``poller.channels()`` while its socket is still
    open (so the poller never touches a closed fd). A transport without a
    socket and one that is still connecting close cleanly too.
    """
    with contextlib.ExitStack() as stack:
        t, peer = _closing(stack, *transport_and_peer(poller))
        fds_at_unregister = []
        original = poller.del_channel

        def spy(channel):
            if channel is t:
                fds_at_unregister.append(t.socket.fileno())
            return original(channel)

        try:
            poller.del_channel = spy  # type: ignore[method-assign]
            spied = True
        except (AttributeError, TypeError):
            spied = False  # a poller type without an instance dict
        try:
            t.close()
            t.close()
        finally:
            if spied:
                del poller.del_channel
        if spied:
            assert fds_at_unregister, "close() did not unregister from the poller"
            assert fds_at_unregister[0] >= 0, "the socket was closed before unregistering"
        assert t.closed and t not in poller.channels()
        assert t.socket.fileno() == -1, "close() left the socket open"
        assert t.events == [], f"close() fired callbacks: {t.events}"
        assert peer.recv(10) == b"", "the peer did not see the close"

        bare = RecordingTransport(alternate_poller=poller)
        bare.close()
        bare.close()
        assert bare.closed

        lsock, address, cleanup = _listening_socket(AF_INET)
        stack.callback(cleanup)
        _closing(stack, lsock)
        c = _closing(stack, RecordingTransport(alternate_poller=poller))
        c.create_socket(AF_INET, SOCK_STREAM)
        c.connect(address)
        c.close()
        c.close()
        assert not c.connecting and not c.connected
        assert c not in poller.channels()
        assert_blocks(poller, duration=0.2, what="after closing a connecting transport")
        assert c.events == [] and not c.late, c.events
