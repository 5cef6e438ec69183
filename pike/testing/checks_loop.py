"""The loop: an alternate poller, idling without a spin, paused reading.
"""

from __future__ import annotations

import contextlib
import time

from .recording import (
    connected_pair,
    tcp_listener,
    transport_and_peer,
)
from .registry import _check
from .support import _closing
from .waiting import assert_blocks, count_polls, run_until, wait_readable

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only
    from ..poller import Poller



@_check
def check_alternate_poller(poller: Poller) -> None:
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
def check_idle_blocks(poller: Poller) -> None:
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
def check_pause_reading(poller: Poller) -> None:
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
