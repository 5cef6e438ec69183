"""Connecting: a refused connect, a connect followed by data at once.
"""

from __future__ import annotations

import contextlib

from .recording import (
    RecordingTransport,
)
from .registry import DEFAULT_TIMEOUT, _check
from .sockets import (
    AF_INET,
    SOCK_STREAM,
    PeerReader,
    _closed_port,
    _listening_socket,
)
from .support import _closing, _stream_families
from .waiting import assert_blocks, run_until, wait_readable

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only
    from ..poller import Poller



@_check
def check_connect_refused(poller: Poller) -> None:
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
def check_connect_then_data(poller: Poller) -> None:
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
