"""The epoll poller of the C accelerator: one C call per loop iteration.

:class:`EpollPoller` asks the kernel for events and then, per ready channel,
goes through Python to receive (``socket.recv``). Here one call into C
(``pike_epoll_batch``, in ``csrc/pike_batch.c``) collects the ready events and receives for
every ready channel whose ``_receive_size`` is above 0 (Transports that
deliver through ``handle_data``), into one reusable arena; the dispatch
below then only slices each channel's bytes out of the arena and calls it
back. Channels that read for themselves are dispatched as by the plain
poller.

What the C side needs to know -- which fds to receive for, and how much --
is a table indexed by fd, brought up to date with the kernel interest just
before each wait (the channels marked dirty); a channel dropped mid-batch is
in the stale set, as on the plain poller. The receive happens before any
callback runs, so a callback that pauses another channel of the same batch
finds its data already read: it is handed to the channel to hold
(``_hold_received``) instead of delivered.

Made by :class:`EpollPoller` itself while the C implementation is in force
(see :func:`pike.poller.epoll_backend.use_batched_wait`).
"""

from __future__ import annotations

import errno
import os

from .._pike_accel import ffi, lib
from .epoll_backend import EpollPoller

# Events taken per wait: what is left is reported by the next one.
_MAX_EVENTS = 1024
# Received bytes per iteration, at most. A channel's read takes what is left
# when that is less than its read size but at least 64 KiB; below that it
# is dispatched as on the plain poller (it receives itself).
_ARENA_SIZE = 1024 * 1024
_NOT_RECEIVED = lib.PIKE_NOT_RECEIVED
_RETRY_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class BatchedEpollPoller(EpollPoller):
    """epoll with the wait and the receives of an iteration in one C call."""

    def __init__(self) -> None:
        super().__init__()
        self._epfd = self._epoll.fileno()
        self._event_space = ffi.new("char[]", lib.pike_epoll_event_size() * _MAX_EVENTS)
        self._data_records = ffi.new("long[]", 2 * _MAX_EVENTS)
        self._other_records = ffi.new("long[]", 3 * _MAX_EVENTS)
        self._arena = ffi.new("char[]", _ARENA_SIZE)
        self._arena_bytes = ffi.buffer(self._arena)
        self._receive_sizes = ffi.new("long[]", 256)  # fd -> bytes to receive
        self._receive_sizes_len = 256
        self._read_mask = self._READ_EVENTS

    # -- the fd table the C side reads ------------------------------------

    def _set_receive_size(self, fd: int, size: int) -> None:
        if fd >= self._receive_sizes_len:
            if not size:
                return
            length = max(fd + 1, 2 * self._receive_sizes_len)
            grown = ffi.new("long[]", length)
            ffi.memmove(grown, self._receive_sizes, ffi.sizeof("long") * self._receive_sizes_len)
            self._receive_sizes = grown
            self._receive_sizes_len = length
        self._receive_sizes[fd] = size

    def _apply_interest(self) -> None:
        for fd, channel in self._dirty.items():
            self._set_receive_size(fd, channel._receive_size if channel._reading else 0)
        super()._apply_interest()

    def del_channel(self, channel):
        fd = channel._fileno
        if self._channels.get(fd) is channel and 0 <= fd:
            self._set_receive_size(fd, 0)
        super().del_channel(channel)

    def _lost_fd(self, fd, channel):
        self._set_receive_size(fd, 0)
        super()._lost_fd(fd, channel)

    # -- one iteration ----------------------------------------------------

    def _wait(self, timeout):
        """Collect and receive; returns the C call's record counts (packed).

        The C call never blocks. When it finds nothing and the caller may
        wait, the wait is Python's own ``epoll.poll`` (for one event), which
        releases the GIL and, when a signal interrupts it, runs the signal's
        Python handler; then the C call collects what is ready (epoll is
        level-triggered: what ended the wait is still there).
        """
        counts = self._collect()
        if not counts and timeout != 0 and self._epoll.poll(timeout, 1):
            counts = self._collect()
        return counts

    def _collect(self):
        counts = lib.pike_epoll_batch(
            self._epfd, self._event_space, _MAX_EVENTS,
            self._receive_sizes, self._receive_sizes_len, self._read_mask,
            self._arena, _ARENA_SIZE, self._data_records, self._other_records,
        )
        if counts < 0:
            raise OSError(-counts, os.strerror(-counts))
        return counts

    def _dispatch(self, counts):
        channels = self._channels
        stale = self._stale
        count = 0
        self._dispatching = True
        try:
            n_data = counts >> 16
            if n_data:
                # The common case, on a path of its own: bytes received.
                arena = self._arena_bytes
                fields = iter(ffi.unpack(self._data_records, 2 * n_data))
                start = 0
                count = n_data  # (less the skipped: counting each costs more)
                for fd, end in zip(fields, fields):
                    data = arena[start:end]
                    start = end
                    try:
                        channel = channels[fd]
                    except KeyError:  # (the poller was closed by a callback)
                        count -= 1
                        continue
                    if stale and fd in stale:
                        count -= 1  # closed (and maybe replaced) in this batch
                        continue
                    try:
                        if channel._reading:
                            channel.handle_data(data)
                        else:  # paused by an earlier callback of this batch
                            channel._hold_received(data)
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except BaseException:
                        self._callback_failed(channel)
            n_other = counts & 0xFFFF
            if n_other:
                count += self._dispatch_other(n_other)
        finally:
            self._dispatching = False
            if stale:
                stale.clear()
        return count

    def _dispatch_other(self, n):
        """Events without received bytes. An EOF or a failed receive is
        reported here; the rest (the waker, listeners, channels that read
        for themselves, write notifications) are the plain poller's."""
        channels = self._channels
        stale = self._stale
        fields = iter(ffi.unpack(self._other_records, 3 * n))
        plain = []
        count = 0
        for fd, bits, result in zip(fields, fields, fields):
            if result == _NOT_RECEIVED:
                plain.append((fd, bits))
                continue
            channel = channels.get(fd)
            if channel is None or (stale and fd in stale):
                continue
            count += 1
            if result == 0 and not channel._reading:
                channel._hold_received(b"")  # an EOF, paused in this batch
            elif -result not in _RETRY_ERRNOS:
                self._call_guarded(channel, channel._receive_ended, -result)
            if channel._write_armed and bits & self._write_bits and channels.get(fd) is channel:
                count += 1
                self._write_event(fd, channel)
        # (Last: the plain dispatch ends the batch, clearing the stale set.)
        if plain:
            count += super()._dispatch(plain)
        return count
