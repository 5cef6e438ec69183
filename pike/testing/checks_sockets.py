"""Kinds of socket: datagrams, TCP, IPv6 and Unix echo, listeners.
"""

from __future__ import annotations

import contextlib
import os
import socket

from .recording import (
    EchoTransport,
    RecordingTransport,
    connected_pair,
    tcp_listener,
)
from .registry import DEFAULT_TIMEOUT, _check
from .sockets import (
    AF_INET,
    AF_INET6,
    AF_UNIX,
    SOCK_DGRAM,
    SOCK_STREAM,
    _family_name,
    _require_family,
)
from .support import _closing, _pattern, _stream_families
from .waiting import assert_blocks, run_until

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only
    from ..poller import Poller



@_check
def check_datagram(poller: Poller) -> None:
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
def check_tcp_echo(poller: Poller) -> None:
    """An echo round trip over TCP on 127.0.0.1."""
    _echo_round_trip(poller, AF_INET)


@_check
def check_ipv6_echo(poller: Poller) -> None:
    """An echo round trip over TCP on ``::1`` (skipped without IPv6)."""
    _require_family(AF_INET6)
    _echo_round_trip(poller, AF_INET6)


@_check
def check_unix_echo(poller: Poller) -> None:
    """An echo round trip over a Unix stream socket; the socket file is removed."""
    _require_family(AF_UNIX)
    _echo_round_trip(poller, AF_UNIX)
    listener = tcp_listener(poller, AF_UNIX)  # type: ignore[arg-type] # (checked above)
    path = listener.address
    assert os.path.exists(path)
    listener.close()
    assert not os.path.exists(os.path.dirname(path)), "the Unix socket was left behind"


@_check
def check_accept_none(poller: Poller) -> None:
    """``accept()`` returns None when nothing is pending, and an idle listener sleeps."""
    with contextlib.ExitStack() as stack:
        listener = _closing(stack, tcp_listener(poller))
        assert listener.accept() is None
        assert_blocks(poller, duration=0.2, what="an idle listener")
        assert listener.events == [], listener.events


@_check
def check_listener_accept(poller: Poller) -> None:
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
