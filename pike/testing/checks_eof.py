"""End of file and resets: graceful EOF, half-close, a reset.
"""

from __future__ import annotations

import contextlib
import socket

from .recording import (
    transport_and_peer,
)
from .registry import _check
from .sockets import (
    PeerReader,
    _reset,
)
from .support import _closing, _pattern, _stream_families
from .waiting import assert_blocks, run_until, wait_readable

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only
    from ..poller import Poller



@_check
def check_graceful_eof(poller: Poller) -> None:
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
def check_half_close(poller: Poller) -> None:
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
def check_reset(poller: Poller) -> None:
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
