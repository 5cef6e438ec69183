"""Transports that record their callbacks, and the connections made of them."""

from __future__ import annotations

import sys

from ..transport import Transport
from .registry import DEFAULT_TIMEOUT
from .sockets import (
    AF_INET,
    SOCK_DGRAM,
    SOCK_STREAM,
    _family_name,
    _listening_socket,
    socket_pair,
)
from .waiting import run_until

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only
    import socket
    from typing import Any, Callable

    from ..poller import Poller



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

    def count(self, name: str) -> int:
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


def tcp_listener(
    poller: Poller, family: int = AF_INET, factory: Callable[..., Transport] = RecordingTransport
) -> RecordingListener:
    """A :class:`RecordingListener` on the loopback address of ``family``.

    Despite the name it makes a Unix stream listener for ``AF_UNIX`` (in a
    private temporary directory, removed on close).

    :raises CheckSkipped: when ``family`` is not available.
    """
    return RecordingListener(poller, family, factory)


def connected_pair(
    poller: Poller,
    family: int = AF_INET,
    client_factory: Callable[..., Any] = RecordingTransport,
    server_factory: Callable[..., Any] = RecordingTransport,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[Any, Any]:
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


def transport_and_peer(
    poller: Poller, family: int = AF_INET, factory: Callable[..., Any] = RecordingTransport
) -> tuple[Any, socket.socket]:
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
