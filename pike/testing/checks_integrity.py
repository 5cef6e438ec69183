"""Integrity: what a fault campaign broke (fd reuse, EOF with data queued,
EMFILE on accept), each check failing on the code before its fix.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import shutil
import socket
import tempfile

from .recording import (
    RecordingTransport,
    tcp_listener,
    transport_and_peer,
)
from .registry import CheckSkipped, _check
from .sockets import (
    AF_INET,
    AF_UNIX,
    PeerReader,
    _family_name,
    _reset,
)
from .support import _closing, _pattern, _stalled_pair, _stream_families
from .waiting import assert_blocks, count_polls, run_until, wait_readable

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only
    from ..poller import Poller


# -- integrity: what a fault campaign broke (fd reuse, EOF with data queued) ----


def _reuse_number(stack, number, open_one):
    """Call ``open_one()`` until what it opens got fd ``number``; return that.

    ``open_one()`` returns ``(fd, obj)`` and registers the closing of
    ``obj`` on ``stack`` itself. The kernel hands out the lowest free
    number, so this normally takes one or two tries.

    :raises CheckSkipped: when the number was not reused (another thread
        took it, say).
    """
    for _ in range(16):
        fd, obj = open_one()
        if fd == number:
            return obj
    raise CheckSkipped(f"the kernel did not give fd {number} out again")


def _open_socketpair(stack):
    pair = _closing(stack, *socket.socketpair())
    return pair[0].fileno(), pair


@_check
def check_fd_closed_behind(poller: Poller) -> None:
    """The socket closed behind the transport: no byte goes to the fd's next owner.

    The application closes ``transport.socket`` itself, and a new socket
    takes the same fd number. ``write()`` and ``send()`` must fail as on a
    closed socket (``handle_close``, once, no ``handle_error``) and send
    nothing to the new socket; a new transport can then watch the reused
    number on the same poller, and the old one is closed.
    """
    for call in ("write", "send"):
        with contextlib.ExitStack() as stack:
            t, peer = _closing(stack, *transport_and_peer(poller, AF_UNIX or AF_INET))
            number = t.fileno()
            t.socket.close()  # behind the transport's back
            stranger, stranger_peer = _reuse_number(
                stack, number, lambda: _open_socketpair(stack)
            )
            result = getattr(t, call)(b"for the old peer only" * 10)
            assert result in (None, 0), f"{call}() returned {result!r}"
            assert t.closed, f"{call}() on a socket closed behind left it open"
            assert t.count("close") == 1 and not t.errors, (t.events, t.errors)
            stranger_peer.setblocking(False)
            try:
                leaked = stranger_peer.recv(4096)
            except BlockingIOError:
                leaked = b""
            assert leaked == b"", f"{call}() sent {leaked!r} to the fd's new owner"
            assert not t.late, t.late

    with contextlib.ExitStack() as stack:
        old, old_peer = _closing(stack, *transport_and_peer(poller, AF_UNIX or AF_INET))
        number = old.fileno()
        old.socket.close()
        sock, sock_peer = _reuse_number(stack, number, lambda: _open_socketpair(stack))
        new = _closing(stack, RecordingTransport(alternate_poller=poller, sock=sock))
        assert old.closed and old.count("close") == 1, old.events
        assert new.fileno() == number and new in poller.channels()
        sock_peer.sendall(b"hello, new owner")
        run_until(poller, lambda: new.received == b"hello, new owner", what="the new owner's data")
        assert old.received == b"" and not old.late, (old.received, old.late)


@_check
def check_fd_reused_by_file(poller: Poller) -> None:
    """A write after the socket was closed behind the transport never lands in
    a file that reused the fd number."""
    with contextlib.ExitStack() as stack:
        t, peer = _closing(stack, *transport_and_peer(poller))
        number = t.fileno()
        directory = tempfile.mkdtemp(prefix="pike-fd-")
        stack.callback(shutil.rmtree, directory, True)
        t.socket.close()

        def open_file():
            fd = os.open(os.path.join(directory, f"file{fd_count()}"), os.O_RDWR | os.O_CREAT, 0o600)
            stack.callback(os.close, fd)
            return fd, fd

        fd_count = itertools.count().__next__
        fd = _reuse_number(stack, number, open_file)
        t.write(b"not for the file")
        assert t.closed and t.count("close") == 1, t.events
        assert os.fstat(fd).st_size == 0, "the transport wrote into a file"


def _eof_then_reply(poller, family, size, seed):
    """The peer sends a request and shuts down its side; the transport
    answers ``size`` bytes from ``handle_read_eof``, more than the kernel
    takes at once. Returns ``(transport, reader, answer)`` after the peer
    saw EOF."""
    t, peer = transport_and_peer(poller, family)
    t.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
    answer = _pattern(size, seed)
    t.handle_read_eof = lambda: t.write(answer)
    peer.sendall(b"request")
    peer.shutdown(socket.SHUT_WR)
    reader = PeerReader(peer)
    try:
        run_until(poller, reader.pump_until_eof, timeout=20, what="the peer to see EOF")
    finally:
        peer.close()
    return t, reader, answer


@_check
def check_eof_sends_queued_data(poller: Poller) -> None:
    """A connection that ends by the peer's EOF sends everything queued first.

    The peer half-closes (``shutdown(SHUT_WR)``, the ``nc -N`` pattern);
    the transport answers with megabytes: the peer receives every byte, in
    order, then EOF, and ``handle_close`` runs once, after the data left.
    """
    for family in _stream_families():
        for size, seed in ((3 << 20, 11), (100_000, 12)):
            t, reader, answer = _eof_then_reply(poller, family, size, seed)
            try:
                assert t.eof_received
                got = bytes(reader.data)
                assert len(got) == len(answer), (
                    f"{_family_name(family)}: {len(answer) - len(got)} of "
                    f"{len(answer)} bytes were lost at EOF"
                )
                assert hashlib.sha256(got).digest() == hashlib.sha256(answer).digest()
                assert t.closed and t.count("close") == 1, t.events
                assert "read" in t.events and t.events[-1] == "close", t.events
                assert not t.errors and not t.late, (t.errors, t.late)
            finally:
                t.close()


class _LingeringClose(RecordingTransport):
    """``handle_close`` queues a big answer and calls ``close_when_done()``."""

    answer = b""

    def handle_close(self):
        self._note("close")
        if self.closed:
            return
        self.write(self.answer)
        self.close_when_done()


@_check
def check_deferred_close_no_spin(poller: Poller) -> None:
    """A ``handle_close`` that does not close at once runs once, and no read
    event comes after EOF while the queue drains (it used to spin)."""
    for family in _stream_families():
        with contextlib.ExitStack() as stack:
            t, peer = _closing(stack, *transport_and_peer(poller, family, _LingeringClose))
            t.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
            t.answer = _pattern(4 << 20, 13)
            peer.sendall(b"bye")
            peer.shutdown(socket.SHUT_WR)
            run_until(poller, lambda: "close" in t.events, what="handle_close after EOF")
            reads = t.count("read")
            reader = PeerReader(peer)
            polls = run_until(poller, reader.pump_until_eof, timeout=20, what="the drain")
            assert bytes(reader.data) == t.answer, "the answer was cut short"
            assert t.closed and t.count("close") == 1, t.events
            assert t.count("read") == reads, "read events after EOF: the loop spun"
            # The drain takes a few polls per socket buffer, not one per
            # spin of a readable EOF.
            assert polls < 2000, f"{polls} polls to drain {len(t.answer)} bytes"
            assert not t.errors and not t.late, (t.errors, t.late)


@_check
def check_reset_mid_write(poller: Poller) -> None:
    """A reset while megabytes are queued: ``handle_close`` once, the queue
    dropped, no ``handle_error``, no spin."""
    with contextlib.ExitStack() as stack:
        t, peer = _stalled_pair(poller, stack)
        t.write(_pattern(4 << 20, 14))
        assert t.get_write_buffer_size() > 0, "expected data to be queued"
        peer.recv(1000)  # some of it arrived
        _reset(peer)
        run_until(poller, lambda: t.closed, what="the reset to close the transport")
        assert t.count("close") == 1 and "error" not in t.events, (t.events, t.errors)
        assert t.get_write_buffer_size() == 0
        assert not t.late, t.late
        assert_blocks(poller, what="after a reset mid-write")


@_check
def check_accept_out_of_fds(poller: Poller) -> None:
    """accept() failing with EMFILE: the listener pauses and retries, and
    neither closes nor spins; the connection is accepted once fds are back."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        raise CheckSkipped("no resource module") from None
    with contextlib.ExitStack() as stack:
        listener = _closing(stack, tcp_listener(poller))
        listener.accept_retry_delay = 0.2
        client = _closing(stack, socket.create_connection(listener.address, timeout=5))
        wait_readable(listener)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        highest = max(os.listdir("/proc/self/fd"), key=int) if os.path.isdir("/proc/self/fd") else None
        if highest is None:
            raise CheckSkipped("cannot list this process's fds")
        # No fd number left: lower the limit to the highest open one and
        # fill the holes below it, so accept() gets EMFILE.
        fillers: list = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(highest) + 1, hard))
        try:
            while len(fillers) < 4096:
                try:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
                except OSError as exc:
                    if exc.errno != errno.EMFILE:
                        raise
                    break
            polls, _ = count_polls(poller, duration=0.1, step=0.05)
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert not listener.closed, "EMFILE closed the listener"
        assert listener.accepted == [], "accepted without an fd?"
        assert polls <= 4, f"{polls} polls in 0.1s while out of fds: a spin"
        run_until(poller, lambda: listener.accepted, what="the retry to accept")
        client.sendall(b"late but whole")
        server = listener.accepted[0]
        stack.callback(server.close)
        run_until(poller, lambda: server.received == b"late but whole", what="data")
