"""The channel contract: what a poller watches, and how.

A *channel* is one fd and the methods the loop calls for it. Transport is
the channel most code meets; anything else the loop should watch (a
server's listening fd, a child's pidfd, a legacy dispatcher, a pipe)
builds on :class:`Channel`, or needs no class at all and uses
:meth:`~pike.poller.Poller.add_reader` / :meth:`~pike.poller.Poller.add_writer`.

The contract, all of which :class:`Channel` sets up:

``_fileno`` (int)
    The fd; -1 once closed. The poller keys its tables on it, so it must not
    change while the channel is added.
``_reading`` (bool)
    The channel wants read events. Call ``poller.update_interest(channel)``
    after changing it; the kernel is told lazily, before the next wait.
``_write_armed`` (bool)
    A one-shot write notification is armed. Only the poller sets it
    (``defer_write``) and clears it (``cancel_write``, or just before it
    calls ``handle_write_event``).
``_plain_read_event`` (bool)
    A promise that ``handle_read_event`` is Transport's own, so the poller
    may make its decision inline (a Python call saved per read event).
    False for every other channel.
``_receive_size`` (int)
    0: the channel reads for itself in ``handle_read_event``. Above 0 (a
    Transport whose class delivers through ``handle_data``): when the fd is
    readable, the poller receives up to that many bytes from the channel's
    ``socket`` on its behalf and calls ``handle_data(data)`` with them, or
    ``_receive_ended(err)`` for an EOF (``err`` 0) or a failed receive
    (``err`` the errno); a receive that would block calls nothing. A poller
    that receives for several channels before calling any back (the C
    accelerator's epoll poller) hands data that arrives for a channel paused
    meanwhile to ``_hold_received(data)`` (b"" for an EOF). Call
    ``poller.update_interest(channel)`` after changing it.
``handle_read_event()`` / ``handle_write_event()``
    The fd is readable (or hung up, or in error) while reading; an armed
    write notification fired.
``handle_close()`` / ``handle_error()``
    The fd turned out to be closed behind the channel (or a callback raised
    a connection-lost error); a callback raised anything else.
``close()``
    Stop: ``poller.del_channel(channel)`` first, then release the fd.

The attribute names begin with an underscore because applications have no
business with them; they are the contract between a poller and the classes
built on this one, and they stay plain attributes because the loop reads
them on every event.
"""

from __future__ import annotations

import logging

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only: no typing cost at import
    from typing import Any, Callable, Protocol

    from .loop import Poller

    class ChannelLike(Protocol):
        """The contract above, as a type: Channel, Transport and the rest."""

        _fileno: int
        _reading: bool
        _write_armed: bool
        _plain_read_event: bool
        _receive_size: int

        def handle_read_event(self) -> None: ...
        def handle_write_event(self) -> None: ...
        def handle_close(self) -> None: ...
        def handle_error(self) -> None: ...
        def close(self) -> None: ...


logger = logging.getLogger("pike")

__all__ = ["Channel", "FdWatch"]


class Channel:
    """The base of anything a poller watches: one fd, ``handle_*`` methods.

    ``Channel(poller, fd, reading=True)`` sets up the contract above; call
    ``poller.add_channel(channel)`` to start watching. The default
    callbacks do nothing, except that ``handle_close`` and
    ``handle_error`` (which logs) close the channel. :meth:`close` stops
    watching; it does not close the fd, which belongs to whoever made it.
    """

    _plain_read_event = False
    _receive_size = 0

    def __init__(self, poller: Poller, fd: int, reading: bool = True) -> None:
        self.poller = poller
        self._fileno = fd
        self._reading = reading
        self._write_armed = False
        self.closed = False

    def fileno(self) -> int:
        """The fd watched (-1 once closed)."""
        return self._fileno

    def set_reading(self, reading: bool) -> None:
        """Want read events (True) or not (False); applied before the next wait."""
        if self._reading != reading:
            self._reading = reading
            self.poller.update_interest(self)

    def handle_read_event(self) -> None:
        """The fd is readable (or hung up, or in error)."""

    def handle_write_event(self) -> None:
        """An armed write notification fired (``poller.defer_write``)."""

    def handle_close(self) -> None:
        """The fd was found closed behind the channel: stop watching it."""
        self.close()

    def handle_error(self) -> None:
        """A callback raised (``sys.exc_info()``): log it and stop watching."""
        logger.error("pike: unhandled error in %r", self, exc_info=True)
        self.close()

    def close(self) -> None:
        """Stop watching the fd. Idempotent; the fd itself stays open."""
        if self.closed:
            return
        self.closed = True
        self.poller.del_channel(self)
        self._fileno = -1

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fileno}"
        return f"<{type(self).__name__} {state}>"


class FdWatch(Channel):
    """The channel behind ``add_reader`` / ``add_writer`` for one fd.

    A reader is called on every read event; a writer on every iteration in
    which the fd is writable (it is re-armed after each call, which costs no
    system call: interest changes are applied lazily).
    """

    def __init__(self, poller: Poller, fd: int) -> None:
        super().__init__(poller, fd, reading=False)
        self.reader: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
        self.writer: tuple[Callable[..., Any], tuple[Any, ...]] | None = None

    def handle_read_event(self) -> None:
        assert self.reader is not None
        callback, args = self.reader
        callback(*args)

    def handle_write_event(self) -> None:
        assert self.writer is not None
        callback, args = self.writer
        callback(*args)
        if self.writer is not None and not self.closed:
            self.poller.defer_write(self)

    def handle_close(self) -> None:
        # The fd was closed without remove_reader/remove_writer first.
        logger.warning("pike: fd %d was closed while watched; dropping its callbacks", self._fileno)
        self.reader = self.writer = None
        self.close()

    def handle_error(self) -> None:
        # A callback raised: as asyncio does, log and keep watching.
        logger.error("pike: callback for fd %d failed", self._fileno, exc_info=True)
