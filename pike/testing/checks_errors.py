"""Exceptions from callbacks: connection lost, errors, KeyboardInterrupt,
a failing error handler.
"""

from __future__ import annotations

import contextlib
import errno
import logging

from .recording import (
    RecordingTransport,
    transport_and_peer,
)
from .registry import _check
from .sockets import (
    AF_INET,
    SOCK_STREAM,
    _listening_socket,
)
from .support import _closing
from .waiting import run_until, wait_readable

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only
    from ..poller import Poller



@_check
def check_connection_lost_in_callback(poller: Poller) -> None:
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
def check_error_in_callback(poller: Poller) -> None:
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
def check_keyboard_interrupt(poller: Poller) -> None:
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
def check_failing_error_handler(poller: Poller) -> None:
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
        records: list = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign,assignment]
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
