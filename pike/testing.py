"""A conformance battery for pollers and transports.

Every poller (epoll, kqueue, poll, select) on every implementation (pure
Python and the C accelerator) must behave the same way as seen from a
:class:`~pike.transport.Transport`. This module states that behaviour as
executable checks, in the spirit of a stream conformance battery: each check
is a plain function taking a poller, raising :class:`AssertionError` when the
poller (or the transport on top of it) misbehaves, and closing every socket
it opened, whether it passes or not.

``CHECKS`` maps a short name (``"graceful_eof"``, ``"fd_reuse_in_batch"``,
...) to each check function, in a sensible order. :func:`check_all` runs them
all, each on a fresh poller::

    import pike
    from pike.testing import check_all

    check_all(lambda: pike.make_poller("poll"))

The helpers the checks are built from are public too, for tests of protocol
layers: :func:`run_until` drives a poller until a condition holds (every wait
in this module is bounded), :func:`connected_pair` and
:func:`transport_and_peer` make real connections over ``127.0.0.1``, ``::1``
or a Unix socket in a private temporary directory, and
:class:`RecordingTransport` logs its callbacks in order.

Network traffic never leaves the machine: only loopback addresses and Unix
sockets are used.
"""

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import random
import select
import shutil
import socket
import struct
import sys
import tempfile
import time

from .poller import set_poller
from .transport import Transport

__all__ = [
    "CHECKS",
    "CheckSkipped",
    "EchoTransport",
    "PeerReader",
    "RecordingListener",
    "RecordingTransport",
    "assert_blocks",
    "check_all",
    "connected_pair",
    "count_polls",
    "has_family",
    "run_until",
    "socket_pair",
    "tcp_listener",
    "transport_and_peer",
    "wait_readable",
]

AF_INET = socket.AF_INET
AF_INET6 = getattr(socket, "AF_INET6", None)
AF_UNIX = getattr(socket, "AF_UNIX", None)
SOCK_STREAM = socket.SOCK_STREAM
SOCK_DGRAM = socket.SOCK_DGRAM

_LOOPBACK = {AF_INET: "127.0.0.1"}
if AF_INET6 is not None:
    _LOOPBACK[AF_INET6] = "::1"

#: Seconds any single wait of a check may last before it fails.
DEFAULT_TIMEOUT = 5.0


class CheckSkipped(Exception):
    """A check (or helper) cannot run on this machine, e.g. no IPv6.

    :func:`check_all` reports such checks as skipped; a pytest wrapper
    should turn this into ``pytest.skip``.
    """


# -- waiting ------------------------------------------------------------------


def _describe(predicate, what):
    if what:
        return what
    name = getattr(predicate, "__qualname__", None) or repr(predicate)
    return f"predicate {name}"


def run_until(poller, predicate, timeout=DEFAULT_TIMEOUT, step=0.05, what=None):
    """Drive ``poller`` until ``predicate()`` is true.

    The poller is polled in slices of at most ``step`` seconds; the
    predicate is evaluated before each slice (so it may have side effects,
    such as reading a peer socket).

    :param poller: the :class:`~pike.poller.Poller` to drive.
    :param predicate: a callable returning a true value when done.
    :param timeout: seconds to wait at most.
    :param step: the longest single ``poll()`` call.
    :param what: words for the failure message (what was awaited).
    :returns: the number of ``poll()`` calls made.
    :raises AssertionError: when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    iterations = 0
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"timed out after {timeout:g}s ({iterations} polls of {poller!r}) "
                f"waiting for {_describe(predicate, what)}"
            )
        poller.poll(min(step, remaining))
        iterations += 1
    return iterations


def count_polls(poller, duration=0.3, step=0.1):
    """Poll ``poller`` for ``duration`` seconds in slices of ``step``.

    :returns: ``(iterations, dispatched)``: how many ``poll()`` calls were
        made and the sum of what they returned (callbacks run). A poller
        with nothing to do blocks for each slice, so ``iterations`` stays
        near ``duration / step``; a spinning one makes many more.
    """
    deadline = time.monotonic() + duration
    iterations = dispatched = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return iterations, dispatched
        dispatched += poller.poll(min(step, remaining))
        iterations += 1


def assert_blocks(poller, duration=0.3, step=0.1, max_iterations=10, what="idle"):
    """Assert that ``poller`` has nothing to dispatch and does not spin.

    Polls for ``duration`` seconds (see :func:`count_polls`) and fails
    unless no callback ran and at most ``max_iterations`` ``poll()`` calls
    were made (blocking ones make about ``duration / step``).

    :raises AssertionError: on a dispatched callback or a spin.
    """
    iterations, dispatched = count_polls(poller, duration, step)
    assert dispatched == 0, (
        f"{what}: {dispatched} callbacks dispatched in {duration:g}s where none "
        f"were expected"
    )
    assert iterations <= max_iterations, (
        f"{what}: poll({step:g}) returned {iterations} times in {duration:g}s: "
        f"the poller spins instead of blocking"
    )


def _fd(obj):
    return obj if isinstance(obj, int) else obj.fileno()


def wait_readable(*objs, timeout=DEFAULT_TIMEOUT):
    """Block (outside any poller) until every fd or socket in ``objs`` is readable.

    Used to make sure that several events are ready before a single
    ``poll()`` call, so that they are dispatched in one batch.

    :raises AssertionError: when ``timeout`` seconds pass first.
    """
    fds = {_fd(obj) for obj in objs}
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"fds {sorted(fds)} did not all become readable")
        if hasattr(select, "poll"):
            p = select.poll()
            for fd in fds:
                p.register(fd, select.POLLIN)
            ready = {fd for fd, _ in p.poll(max(1, int(remaining * 1000)))}
        else:
            ready = set(select.select(list(fds), [], [], remaining)[0])
        if fds <= ready:
            return


# -- families, addresses and raw sockets -------------------------------------


def has_family(family):
    """True when stream sockets of ``family`` work on the loopback here.

    ``AF_INET6`` needs ``::1`` to be bindable; ``AF_UNIX`` needs the
    platform to have Unix sockets.
    """
    if family is None:
        return False
    if family == AF_UNIX:
        return True
    host = _LOOPBACK.get(family)
    if host is None:
        return False
    try:
        with socket.socket(family, SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


def _require_family(family):
    if not has_family(family):
        raise CheckSkipped(f"address family {family!r} is not available here")


def _family_name(family):
    try:
        return socket.AddressFamily(family).name
    except ValueError:
        return str(family)


def _unix_path():
    """A fresh path for a Unix socket, and the private directory it lives in."""
    base = None
    for candidate in (tempfile.gettempdir(), "/tmp"):
        if len(candidate) < 60 and os.path.isdir(candidate):
            base = candidate
            break
    directory = tempfile.mkdtemp(prefix="pike-", dir=base)
    return os.path.join(directory, "s"), directory


def _listening_socket(family, backlog=16):
    """A plain listening socket on the loopback: ``(sock, address, cleanup)``."""
    _require_family(family)
    if family == AF_UNIX:
        path, directory = _unix_path()
        sock = socket.socket(AF_UNIX, SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return sock, path, lambda: shutil.rmtree(directory, ignore_errors=True)
    sock = socket.socket(family, SOCK_STREAM)
    try:
        sock.bind((_LOOPBACK[family], 0))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock, sock.getsockname(), lambda: None


def socket_pair(family=AF_INET, timeout=DEFAULT_TIMEOUT):
    """Two connected plain stream sockets of ``family`` (blocking, with a timeout).

    TCP pairs go over the loopback address; ``AF_UNIX`` uses
    :func:`socket.socketpair`.

    :raises CheckSkipped: when ``family`` is not available.
    """
    if family == AF_UNIX:
        a, b = socket.socketpair(AF_UNIX, SOCK_STREAM)
    else:
        lsock, address, cleanup = _listening_socket(family, 1)
        try:
            a = socket.socket(family, SOCK_STREAM)
            try:
                a.settimeout(timeout)
                a.connect(address)
                lsock.settimeout(timeout)
                b, _ = lsock.accept()
            except BaseException:
                a.close()
                raise
        finally:
            lsock.close()
            cleanup()
    a.settimeout(timeout)
    b.settimeout(timeout)
    return a, b


def _closed_port():
    """A loopback TCP port that nothing listens on (it was just freed)."""
    with socket.socket(AF_INET, SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reset(sock):
    """Close ``sock`` so that the peer gets a TCP reset (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class PeerReader:
    """Reads a plain peer socket without blocking, from inside a wait.

    Meant as a :func:`run_until` predicate::

        reader = PeerReader(peer)
        run_until(poller, lambda: reader.pump() and len(reader.data) == n)

    ``data`` holds all bytes read so far and ``eof`` turns true once the
    other side shut down its sending direction.
    """

    def __init__(self, sock, bufsize=262144):
        self.sock = sock
        self.bufsize = bufsize
        self.data = bytearray()
        self.eof = False

    def pump(self):
        """Read everything available now; always return True.

        The constant result lets it lead an ``and`` chain in a predicate;
        :meth:`pump_until_eof` is the predicate for "until EOF".
        """
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            while not self.eof:
                try:
                    chunk = self.sock.recv(self.bufsize)
                except (BlockingIOError, InterruptedError):
                    break
                if not chunk:
                    self.eof = True
                    break
                self.data += chunk
        finally:
            self.sock.settimeout(timeout)
        return True

    def pump_until_eof(self):
        """Read everything available now; return True once EOF was seen."""
        self.pump()
        return self.eof


# -- recording transports -----------------------------------------------------


class RecordingTransport(Transport):
    """A :class:`~pike.transport.Transport` that records its callbacks.

    ``events`` lists callback names in the order they ran: ``"connect"``,
    ``"connect_failed"``, ``"read"``, ``"write"``, ``"eof"``, ``"close"``,
    ``"error"``, ``"pause_writing"`` and ``"resume_writing"``. Bytes
    received on a stream socket accumulate in ``received``; datagrams go to
    ``datagrams`` as ``(data, address)``. ``errors`` holds the exception of
    each :meth:`handle_error` call (or the ``exc`` of
    :meth:`handle_connect_failed`), and ``late`` every callback that ran
    after the transport was closed (which must never happen).

    ``hooks`` maps an event name to a callable run right after the event is
    recorded (for ``"read"``: before receiving), so a check can close, write
    or raise from inside a callback.

    Behaviour differences from the plain Transport, to keep records simple:
    :meth:`handle_read` receives at most ``read_size`` bytes; with
    ``half_close`` :meth:`handle_eof` only records (the writing side stays
    open until the test calls ``write_eof()``); :meth:`handle_error`
    records and closes unless ``close_on_error`` is false;
    :meth:`handle_connect_failed` records and then does what the base class
    does (hand the error to :meth:`handle_error`).
    """

    read_size = 65536
    close_on_error = True

    def __init__(self, alternate_poller=None, sock=None):
        self.events = []
        self.late = []
        self.errors = []
        self.received = bytearray()
        self.datagrams = []
        self.hooks = {}
        super().__init__(alternate_poller=alternate_poller, sock=sock)

    def _note(self, name):
        if self.closed:
            self.late.append(name)
        self.events.append(name)
        hook = self.hooks.get(name)
        if hook is not None:
            hook()

    def count(self, name):
        """How many times the callback ``name`` ran."""
        return self.events.count(name)

    def handle_connect(self):
        """Record ``"connect"``."""
        self._note("connect")

    def handle_connect_failed(self, exc):
        """Record ``"connect_failed"`` and ``exc``, then call the base class."""
        self.errors.append(exc)
        self._note("connect_failed")
        super().handle_connect_failed(exc)

    def handle_read(self):
        """Record ``"read"`` and receive once (``recvfrom`` for datagrams)."""
        self._note("read")
        if self.closed:
            return
        if self.socket.type == SOCK_DGRAM:
            data, address = self.recvfrom(self.read_size)
            if address is not None:
                self.datagrams.append((data, address))
            return
        data = self.recv(self.read_size)
        if data:
            self.received += data

    def handle_write(self):
        """Record ``"write"``."""
        self._note("write")

    def handle_eof(self):
        """Record ``"eof"`` (with ``half_close``); the writing side stays open."""
        self._note("eof")

    def handle_close(self):
        """Record ``"close"`` and close."""
        self._note("close")
        self.close()

    def handle_error(self):
        """Record ``"error"`` and the exception; close if ``close_on_error``."""
        self.errors.append(sys.exc_info()[1])
        self._note("error")
        if self.close_on_error:
            self.close()

    def handle_pause_writing(self):
        """Record ``"pause_writing"``."""
        self._note("pause_writing")

    def handle_resume_writing(self):
        """Record ``"resume_writing"``."""
        self._note("resume_writing")


class EchoTransport(RecordingTransport):
    """A :class:`RecordingTransport` that writes back whatever it receives."""

    def handle_read(self):
        """Receive as the base class does, then :meth:`write` the new bytes back."""
        before = len(self.received)
        super().handle_read()
        if len(self.received) > before and not self.closed:
            self.write(bytes(self.received[before:]))


class RecordingListener(Transport):
    """A listening transport that wraps each accepted socket in ``factory``.

    ``address`` is what clients connect to (a path for ``AF_UNIX``: the
    socket file and its private directory are removed by :meth:`close`).
    ``accepted`` lists the transports made, ``peer_addresses`` the addresses
    :meth:`handle_accepted` was given, and ``events`` records ``"accept"``
    per readiness event and ``"accepted"`` per connection.
    """

    def __init__(self, poller, family=AF_INET, factory=RecordingTransport, backlog=16):
        self.events = []
        self.accepted = []
        self.peer_addresses = []
        self.factory = factory
        self._cleanup = None
        super().__init__(alternate_poller=poller)
        sock, address, cleanup = _listening_socket(family, backlog)
        self._cleanup = cleanup
        self.address = address
        try:
            self.set_socket(sock)
        except BaseException:
            sock.close()
            cleanup()
            raise

    def handle_accept(self):
        """Record ``"accept"`` and accept what is pending (base class)."""
        self.events.append("accept")
        super().handle_accept()

    def handle_accepted(self, sock, addr):
        """Record ``"accepted"`` and wrap ``sock`` in a new ``factory`` transport."""
        self.events.append("accepted")
        self.peer_addresses.append(addr)
        try:
            transport = self.factory(alternate_poller=self.poller, sock=sock)
        except BaseException:
            sock.close()
            raise
        self.accepted.append(transport)

    def close(self):
        """Close the listening socket and remove a Unix socket's directory."""
        super().close()
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup()


def tcp_listener(poller, family=AF_INET, factory=RecordingTransport):
    """A :class:`RecordingListener` on the loopback address of ``family``.

    Despite the name it makes a Unix stream listener for ``AF_UNIX`` (in a
    private temporary directory, removed on close).

    :raises CheckSkipped: when ``family`` is not available.
    """
    return RecordingListener(poller, family, factory)


def connected_pair(
    poller,
    family=AF_INET,
    client_factory=RecordingTransport,
    server_factory=RecordingTransport,
    timeout=DEFAULT_TIMEOUT,
):
    """Two connected pike transports on ``poller``: ``(client, server)``.

    The client is made with ``client_factory(alternate_poller=poller)`` and
    connects through :meth:`~pike.transport.Transport.connect`; the server
    is accepted by a temporary :func:`tcp_listener` (closed again before
    returning) with ``server_factory(alternate_poller=poller, sock=sock)``.
    Both are connected when this returns; the client's ``events`` already
    hold ``"connect"``. The caller closes both.

    :raises CheckSkipped: when ``family`` is not available.
    :raises AssertionError: when the connection is not made in time.
    """
    listener = tcp_listener(poller, family, server_factory)
    client = None
    try:
        client = client_factory(alternate_poller=poller)
        client.create_socket(family, SOCK_STREAM)
        client.connect(listener.address)
        run_until(
            poller,
            lambda: client.closed or (client.connected and listener.accepted),
            timeout,
            what=f"a {_family_name(family)} connection",
        )
        assert not client.closed, f"the client connect failed: {client.connect_error!r}"
        return client, listener.accepted[0]
    except BaseException:
        if client is not None:
            client.close()
        for transport in listener.accepted:
            transport.close()
        raise
    finally:
        listener.close()


def transport_and_peer(poller, family=AF_INET, factory=RecordingTransport):
    """A pike transport connected to a plain socket: ``(transport, peer)``.

    The transport is ``factory(alternate_poller=poller, sock=sock)`` over one
    end of :func:`socket_pair`; ``peer`` is the other end, blocking with a
    timeout, for the test to drive by hand (stall, reset, shut down...).
    The caller closes both.
    """
    a, b = socket_pair(family)
    try:
        transport = factory(alternate_poller=poller, sock=a)
    except BaseException:
        a.close()
        b.close()
        raise
    return transport, b


# -- the checks ------------------------------------------------------------------

#: Check name -> check function, in the order :func:`check_all` runs them.
#: A name is the function's name without ``check_``.
#:
#: :meta hide-value:
CHECKS = {}


def _check(fn):
    name = fn.__name__
    assert name.startswith("check_")
    CHECKS[name[len("check_"):]] = fn
    return fn


def _stream_families():
    families = [AF_INET]
    if AF_UNIX is not None:
        families.append(AF_UNIX)
    return families


def _closing(stack, *objs):
    for obj in objs:
        stack.callback(obj.close)
    return objs[0] if len(objs) == 1 else objs


def _pattern(size, seed=0):
    return random.Random(seed).randbytes(size)


@_check
def check_graceful_eof(poller):
    """The peer sends data and closes: all data, then one ``handle_close``.

    Runs over TCP and (where available) Unix sockets, reading in small
    pieces so the data spans many read events before the EOF.
    """
    for family in _stream_families():
        with contextlib.ExitStack() as stack:
            t, peer = _closing(stack, *transport_and_peer(poller, family))
            t.read_size = 997
            payload = _pattern(50_000, 1)
            peer.sendall(payload)
            peer.close()
            run_until(poller, lambda: t.closed, what="the transport to see EOF")
            assert bytes(t.received) == payload, "data before EOF was lost"
            assert t.count("close") == 1, t.events
            assert t.events[-1] == "close", t.events
            assert set(t.events[:-1]) <= {"read"}, t.events
            assert not t.errors and not t.late, (t.errors, t.late)
            assert t not in poller.channels()
            assert_blocks(poller, what="after EOF")
            assert t.count("close") == 1


@_check
def check_half_close(poller):
    """``half_close = True``: EOF calls ``handle_eof``; we may still write.

    After the peer shuts down its side: ``handle_eof`` once, no
    ``handle_close``, no spin on the readable EOF; writes still reach the
    peer; ``write_eof()`` then ends our side and, both directions being
    done, ``handle_close`` runs once.
    """
    for family in _stream_families():
        with contextlib.ExitStack() as stack:
            t, peer = _closing(stack, *transport_and_peer(poller, family))
            t.half_close = True
            peer.sendall(b"question")
            peer.shutdown(socket.SHUT_WR)
            run_until(poller, lambda: "eof" in t.events, what="handle_eof")
            assert bytes(t.received) == b"question"
            assert t.eof_received
            assert not t.closed, "half_close transport closed on EOF"
            assert "close" not in t.events, t.events
            assert_blocks(poller, what="half-closed transport after EOF")
            assert t.count("eof") == 1, t.events

            answer = _pattern(6000, 2)
            t.write(answer)
            reader = PeerReader(peer)
            run_until(
                poller,
                lambda: reader.pump() and len(reader.data) >= len(answer),
                what="the peer to receive the answer after EOF",
            )
            t.write_eof()
            run_until(poller, reader.pump_until_eof, what="the peer to see our EOF")
            assert bytes(reader.data) == answer
            run_until(poller, lambda: t.closed, what="close after both sides ended")
            assert t.count("close") == 1, t.events
            assert t.events.index("eof") < t.events.index("close"), t.events
            assert not t.errors and not t.late, (t.errors, t.late)


@_check
def check_reset(poller):
    """A reset by the peer means ``handle_close``, never ``handle_error`` or a spin.

    Once while reading, and once on a transport that is not reading (the
    reset must not wake the loop) and finds out by writing.
    """
    with contextlib.ExitStack() as stack:
        t, peer = _closing(stack, *transport_and_peer(poller))
        _reset(peer)
        run_until(poller, lambda: t.closed, what="the reset to close the transport")
        assert t.count("close") == 1, t.events
        assert "error" not in t.events, (t.events, t.errors)
        assert not t.late, t.late
        assert_blocks(poller, what="after a reset")

    with contextlib.ExitStack() as stack:
        t, peer = _closing(stack, *transport_and_peer(poller))
        t.pause_reading()
        _reset(peer)
        wait_readable(t)  # the reset has arrived
        assert_blocks(poller, what="a reset transport that is not reading")
        assert t.events == [], t.events
        t.write(b"into the void" * 100)
        if not t.closed:  # the kernel may accept one send before it reports
            t.write(b"again" * 100)
        run_until(poller, lambda: t.closed, what="a write to reset peer to close")
        assert t.count("close") == 1, t.events
        assert "error" not in t.events, (t.events, t.errors)
        assert not t.late, t.late


@_check
def check_connect_refused(poller):
    """A refused connect: reported once, transport closed, no ``handle_connect``.

    ``connect_error`` is a :class:`ConnectionRefusedError`, and the
    default ``handle_connect_failed`` hands it to ``handle_error``. (A
    kernel that refuses at once makes ``connect()`` raise it instead.)
    """
    with contextlib.ExitStack() as stack:
        t = _closing(stack, RecordingTransport(alternate_poller=poller))
        t.create_socket(AF_INET, SOCK_STREAM)
        try:
            t.connect(("127.0.0.1", _closed_port()))
        except ConnectionRefusedError:
            assert t.closed, "connect() raised but left the transport open"
            assert t.events == [], t.events
        else:
            assert t.events == [], f"callbacks ran inside connect(): {t.events}"
            run_until(poller, lambda: t.closed, what="the refused connect to close")
            assert t.events == ["connect_failed", "error"], t.events
            assert isinstance(t.errors[0], ConnectionRefusedError), t.errors
        assert isinstance(t.connect_error, ConnectionRefusedError), t.connect_error
        assert not t.connected and not t.connecting
        assert t not in poller.channels()
        assert_blocks(poller, what="after a refused connect")
        assert "connect" not in t.events and not t.late, (t.events, t.late)


@_check
def check_connect_then_data(poller):
    """The server writes at once on accept: ``connect`` once, before ``read``.

    The connect completes and data arrives before the client's first poll,
    so both show up in one event. Data the client wrote while connecting is
    sent after the connect. Completion is never reported from inside
    ``connect()`` (not even for Unix sockets, which connect at once).
    """
    for family in _stream_families():
        with contextlib.ExitStack() as stack:
            lsock, address, cleanup = _listening_socket(family)
            stack.callback(cleanup)
            _closing(stack, lsock)
            lsock.settimeout(DEFAULT_TIMEOUT)
            client = _closing(stack, RecordingTransport(alternate_poller=poller))
            client.create_socket(family, SOCK_STREAM)
            client.connect(address)
            assert client.events == [], f"callbacks inside connect(): {client.events}"
            client.write(b"hello from the client")
            conn, _ = lsock.accept()
            _closing(stack, conn)
            conn.sendall(b"greeting")
            wait_readable(client)
            run_until(poller, lambda: client.received == b"greeting", what="greeting")
            assert client.connected
            assert client.count("connect") == 1, client.events
            assert client.events[0] == "connect", client.events
            assert client.events.index("connect") < client.events.index("read")
            reader = PeerReader(conn)
            run_until(
                poller,
                lambda: reader.pump() and reader.data == b"hello from the client",
                what="data written while connecting",
            )
            assert client.count("connect") == 1, client.events
            assert not client.errors and not client.late


def _batch(poller, *transports, arm_write=True):
    """Make each transport readable (and write-armed), then poll once."""
    wait_readable(*transports)
    if arm_write:
        for t in transports:
            poller.defer_write(t)
    return poller.poll(1.0)


@_check
def check_read_write_one_event(poller):
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
def check_close_self_in_read(poller):
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
def check_close_other_in_batch(poller):
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
def check_fd_reuse_in_batch(poller):
    """An fd closed and reused within one batch gets no stale event.

    Two transports are ready in one ``poll()``; whichever runs first closes
    the other and opens a new socket that gets the very same fd number,
    wrapped in a new transport: the rest of the batch must not reach it.
    """
    with contextlib.ExitStack() as stack:
        a, pa = _closing(stack, *transport_and_peer(poller))
        b, pb = _closing(stack, *transport_and_peer(poller))
        reused = []
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
def check_double_close(poller):
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
            poller.del_channel = spy
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


def _writable(obj, timeout):
    return bool(select.select([], [_fd(obj)], [], timeout)[1])


@_check
def check_send_would_block(poller):
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
def check_large_transfer(poller):
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
def check_flow_control(poller):
    """Water marks: pause above high, resume at low, buffer size tracked."""
    with contextlib.ExitStack() as stack:
        client, server = _closing(stack, *connected_pair(poller))
        high, low = 65536, 16384
        client.set_write_buffer_limits(high=high, low=low)
        assert client.get_write_buffer_limits() == (low, high)
        sizes = {}
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


def _stalled_pair(poller, stack):
    t, peer = _closing(stack, *transport_and_peer(poller))
    t.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    return t, peer


@_check
def check_write_eof_after_queued(poller):
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
def check_close_when_done(poller):
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
def check_write_after_close(poller):
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


@_check
def check_datagram(poller):
    """UDP on 127.0.0.1: ``sendto`` / ``recvfrom`` and ``handle_read``."""
    with contextlib.ExitStack() as stack:
        a = _closing(stack, RecordingTransport(alternate_poller=poller))
        b = _closing(stack, RecordingTransport(alternate_poller=poller))
        for t in (a, b):
            t.create_socket(AF_INET, SOCK_DGRAM)
            t.bind(("127.0.0.1", 0))
        a_addr = a.socket.getsockname()
        b_addr = b.socket.getsockname()
        assert a.recvfrom(100) == (b"", None), "recvfrom with nothing pending"
        assert a.sendto(b"hello", b_addr) == 5
        run_until(poller, lambda: b.datagrams, what="a datagram")
        assert b.datagrams == [(b"hello", a_addr)], b.datagrams
        assert b.sendto(b"world", a_addr) == 5
        assert b.sendto(b"again", a_addr) == 5
        run_until(poller, lambda: len(a.datagrams) == 2, what="two datagrams")
        assert a.datagrams == [(b"world", b_addr), (b"again", b_addr)], a.datagrams
        assert_blocks(poller, duration=0.2, what="idle datagram sockets")
        for t in (a, b):
            assert "close" not in t.events and not t.errors and not t.late, t.events


def _echo_round_trip(poller, family):
    with contextlib.ExitStack() as stack:
        client, server = _closing(
            stack, *connected_pair(poller, family, server_factory=EchoTransport)
        )
        message = _pattern(300_000, 8)
        client.write(message)
        run_until(
            poller,
            lambda: len(client.received) >= len(message),
            what=f"the {_family_name(family)} echo",
        )
        assert bytes(client.received) == message
        client.close()
        run_until(poller, lambda: server.closed, what="the server to see the close")
        assert server.count("close") == 1
        for t in (client, server):
            assert not t.errors and not t.late, (t.errors, t.late)


@_check
def check_tcp_echo(poller):
    """An echo round trip over TCP on 127.0.0.1."""
    _echo_round_trip(poller, AF_INET)


@_check
def check_ipv6_echo(poller):
    """An echo round trip over TCP on ``::1`` (skipped without IPv6)."""
    _require_family(AF_INET6)
    _echo_round_trip(poller, AF_INET6)


@_check
def check_unix_echo(poller):
    """An echo round trip over a Unix stream socket; the socket file is removed."""
    _require_family(AF_UNIX)
    _echo_round_trip(poller, AF_UNIX)
    listener = tcp_listener(poller, AF_UNIX)
    path = listener.address
    assert os.path.exists(path)
    listener.close()
    assert not os.path.exists(os.path.dirname(path)), "the Unix socket was left behind"


@_check
def check_accept_none(poller):
    """``accept()`` returns None when nothing is pending, and an idle listener sleeps."""
    with contextlib.ExitStack() as stack:
        listener = _closing(stack, tcp_listener(poller))
        assert listener.accept() is None
        assert_blocks(poller, duration=0.2, what="an idle listener")
        assert listener.events == [], listener.events


@_check
def check_listener_accept(poller):
    """A listener gets ``handle_accept`` and one ``handle_accepted`` per client.

    Accepted sockets become working, connected transports.
    """
    for family in _stream_families():
        with contextlib.ExitStack() as stack:
            listener = _closing(stack, tcp_listener(poller, family))
            clients = []
            for _ in range(3):
                sock = _closing(stack, socket.socket(family, SOCK_STREAM))
                sock.settimeout(DEFAULT_TIMEOUT)
                sock.connect(listener.address)
                clients.append(sock)
            stack.callback(lambda: [t.close() for t in listener.accepted])
            run_until(poller, lambda: len(listener.accepted) == 3, what="3 accepts")
            assert listener.events.count("accepted") == 3, listener.events
            assert listener.events[0] == "accept", listener.events
            if family != AF_UNIX:
                assert sorted(listener.peer_addresses) == sorted(
                    c.getsockname() for c in clients
                )
            for t in listener.accepted:
                assert t.connected and t.poller is poller
            for i, sock in enumerate(clients):
                sock.sendall(b"client %d" % i)
            run_until(
                poller,
                lambda: all(t.received for t in listener.accepted),
                what="data on accepted transports",
            )
            assert sorted(bytes(t.received) for t in listener.accepted) == [
                b"client 0",
                b"client 1",
                b"client 2",
            ]
            assert listener.accept() is None


@_check
def check_connection_lost_in_callback(poller):
    """ConnectionResetError / BrokenPipeError from a callback mean ``handle_close``.

    Raised from ``handle_read`` (as a failed socket call would raise them),
    they are a lost connection, not a bug: ``handle_close`` runs, not
    ``handle_error``.
    """
    raisers = [
        ("ConnectionResetError", ConnectionResetError(errno.ECONNRESET, "reset")),
        ("BrokenPipeError", BrokenPipeError(errno.EPIPE, "broken pipe")),
        ("bare ConnectionResetError", ConnectionResetError("peer went away")),
        ("bare BrokenPipeError", BrokenPipeError()),
    ]
    for label, exc in raisers:
        with contextlib.ExitStack() as stack:
            t, peer = _closing(stack, *transport_and_peer(poller))

            def fail(exc=exc):
                raise exc

            t.hooks["read"] = fail
            peer.sendall(b"x")
            run_until(poller, lambda: t.closed, what=f"{label} to close the transport")
            assert t.events == ["read", "close"], f"{label}: {t.events}"
            assert not t.late


@_check
def check_error_in_callback(poller):
    """Any other exception from a callback goes to ``handle_error``.

    From ``handle_read``, ``handle_write`` and ``handle_connect``;
    ``sys.exc_info()`` holds it while ``handle_error`` runs.
    """
    for where in ("read", "write", "connect"):
        with contextlib.ExitStack() as stack:
            if where == "connect":
                lsock, address, cleanup = _listening_socket(AF_INET)
                stack.callback(cleanup)
                _closing(stack, lsock)
                t = _closing(stack, RecordingTransport(alternate_poller=poller))
                t.create_socket(AF_INET, SOCK_STREAM)
            else:
                t, peer = _closing(stack, *transport_and_peer(poller))
            boom = ValueError(f"boom in handle_{where}")

            def fail(exc=boom):
                raise exc

            t.hooks[where] = fail
            if where == "connect":
                t.connect(address)
            elif where == "read":
                peer.sendall(b"x")
            else:
                poller.defer_write(t)
            run_until(poller, lambda: t.closed, what=f"handle_error for {where}")
            assert t.errors == [boom], t.errors
            assert t.events == [where, "error"], t.events
            assert not t.late


@_check
def check_keyboard_interrupt(poller):
    """KeyboardInterrupt and SystemExit propagate out of ``poll()``.

    They are not handed to ``handle_error``, and the poller stays usable:
    the event is delivered again by the next ``poll()``.
    """
    for exc_type in (KeyboardInterrupt, SystemExit):
        with contextlib.ExitStack() as stack:
            t, peer = _closing(stack, *transport_and_peer(poller))

            def interrupt(exc_type=exc_type):
                del t.hooks["read"]
                raise exc_type()

            t.hooks["read"] = interrupt
            peer.sendall(b"data")
            wait_readable(t)
            try:
                run_until(poller, lambda: "read" in t.events, what="handle_read")
            except exc_type:
                pass
            else:
                raise AssertionError(f"{exc_type.__name__} did not leave poll()")
            assert t.events == ["read"], t.events
            assert not t.closed and not t.errors
            run_until(poller, lambda: t.received == b"data", what="the loop to resume")
            assert "error" not in t.events and not t.late, t.events


@_check
def check_failing_error_handler(poller):
    """The loop survives a ``handle_error`` that raises: it closes that channel.

    Other transports keep working, and ``poll()`` itself does not raise.
    """
    with contextlib.ExitStack() as stack:
        bad, bad_peer = _closing(stack, *transport_and_peer(poller))
        good, good_peer = _closing(stack, *transport_and_peer(poller))
        bad.close_on_error = False

        def fail():
            raise ValueError("handle_read failed")

        def fail_again():
            raise RuntimeError("handle_error failed too")

        bad.hooks["read"] = fail
        bad.hooks["error"] = fail_again
        logger = logging.getLogger("pike")
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger.addHandler(handler)
        try:
            bad_peer.sendall(b"x")
            good_peer.sendall(b"y")
            run_until(
                poller,
                lambda: bad.closed and good.received == b"y",
                what="the loop to go on after a failing handle_error",
            )
        finally:
            logger.removeHandler(handler)
        assert bad.events == ["read", "error"], bad.events
        assert bad not in poller.channels()
        good_peer.sendall(b"z")
        run_until(poller, lambda: good.received == b"yz", what="more data")
        assert not good.errors and not good.late and not bad.late


@_check
def check_alternate_poller(poller):
    """A transport on another poller is never dispatched by this one.

    ``Transport(alternate_poller=p2)`` lives on ``p2``: driving ``poller``
    with data pending for it runs nothing; driving ``p2`` delivers it.
    """
    with contextlib.ExitStack() as stack:
        p2 = type(poller)()
        stack.callback(p2.close)
        t, peer = _closing(stack, *transport_and_peer(p2))
        assert t.poller is p2
        assert t in p2.channels() and t not in poller.channels()
        peer.sendall(b"for p2")
        wait_readable(t)
        iterations, dispatched = count_polls(poller, 0.2, 0.05)
        assert dispatched == 0 and t.events == [], (
            f"another poller dispatched the transport: {t.events}"
        )
        run_until(p2, lambda: t.received == b"for p2", what="p2 to deliver")
        assert not t.late


@_check
def check_idle_blocks(poller):
    """An idle connection and listener: ``poll(timeout)`` blocks, nothing fires."""
    with contextlib.ExitStack() as stack:
        client, server = _closing(stack, *connected_pair(poller))
        listener = _closing(stack, tcp_listener(poller))
        client.events.clear()
        assert_blocks(poller, what="idle connections")
        start = time.monotonic()
        assert poller.poll(0.1) == 0
        assert time.monotonic() - start >= 0.05, "poll(0.1) returned at once"
        assert client.events == [] and server.events == [] and listener.events == []


@_check
def check_pause_reading(poller):
    """``pause_reading()`` stops read events without a spin; resume delivers."""
    with contextlib.ExitStack() as stack:
        t, peer = _closing(stack, *transport_and_peer(poller))
        t.pause_reading()
        assert not t.is_reading()
        peer.sendall(b"held back")
        wait_readable(t)
        assert_blocks(poller, what="a paused transport with data pending")
        assert t.events == [], t.events
        t.resume_reading()
        assert t.is_reading()
        run_until(poller, lambda: t.received == b"held back", what="resumed reading")
        assert not t.late


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
def check_fd_closed_behind(poller):
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
def check_fd_reused_by_file(poller):
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
def check_eof_sends_queued_data(poller):
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
def check_deferred_close_no_spin(poller):
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
def check_reset_mid_write(poller):
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
def check_accept_out_of_fds(poller):
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
        fillers = []
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


__all__ += [check.__name__ for check in CHECKS.values()]


# -- running the battery -------------------------------------------------------------


def check_all(poller_factory, checks=None):
    """Run every check, each on a fresh poller from ``poller_factory()``.

    Each poller is installed as the process's default poller while its
    check runs (see :func:`~pike.poller.set_poller`); afterwards, any
    channel left on it is closed and the poller is closed.

    :param poller_factory: a callable returning a new poller.
    :param checks: a mapping of name to check function (default: ``CHECKS``).
    :returns: a dict mapping each check name to ``"passed"`` or to
        ``"skipped: <reason>"``.
    :raises AssertionError: naming every check that failed, with its error.
    """
    if checks is None:
        checks = CHECKS
    results = {}
    failures = []
    for name, check in checks.items():
        poller = poller_factory()
        previous = set_poller(poller)
        try:
            check(poller)
        except CheckSkipped as exc:
            results[name] = f"skipped: {exc}"
        except Exception as exc:
            results[name] = "failed"
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            results[name] = "passed"
        finally:
            set_poller(previous)
            for channel in poller.channels():
                channel.close()
            poller.close()
    if failures:
        raise AssertionError(
            f"{len(failures)} of {len(checks)} checks failed:\n" + "\n".join(failures)
        )
    return results
