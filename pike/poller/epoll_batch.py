"""The epoll poller of the C accelerator: one C call per loop iteration.

:class:`EpollPoller` asks the kernel for events and then, per ready channel,
goes through Python to receive (``socket.recv``). Here one call into C
(``epoll_collect``, in ``csrc/pike_batch.c``) collects the ready events and
receives for every ready channel whose ``_receive_size`` is above 0
(Transports that deliver through ``handle_data``), each read into a bytes
object; the dispatch below hands each channel its bytes. Channels that
read for themselves are dispatched as by the plain poller.

What the C side needs to know -- which fds to receive for, and how much --
is a list indexed by fd, brought up to date with the kernel interest just
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

from .._pike_accel import NOT_RECEIVED, epoll_collect
from .epoll_backend import EpollPoller

# (At most MAX_EVENTS events per collect: what is left is reported by the
# next one. Its reads take at most RECEIVE_BUDGET bytes in all; a channel's
# read takes what is left when that is less than its read size but at
# least MIN_RECEIVE; below that it is dispatched as on the plain poller and
# receives itself. See csrc/pike_batch.c.)
_RETRY_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class BatchedEpollPoller(EpollPoller):
    """epoll with the wait and the receives of an iteration in one C call."""

    def __init__(self) -> None:
        super().__init__()
        self._epfd = self._epoll.fileno()
        self._receive_sizes = [0] * 256  # fd -> bytes to receive for it
        self._read_mask = self._READ_EVENTS

    # -- the fd table the C side reads ------------------------------------

    def _set_receive_size(self, fd: int, size: int) -> None:
        sizes = self._receive_sizes
        if fd >= len(sizes):
            if not size:
                return
            sizes.extend([0] * (max(fd + 1, 2 * len(sizes)) - len(sizes)))
        sizes[fd] = size

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
        """Collect and receive; returns the C call's records (or None).

        The C call never blocks. When it finds nothing and the caller may
        wait, the wait is Python's own ``epoll.poll`` (for one event), which
        releases the GIL and, when a signal interrupts it, runs the signal's
        Python handler; then the C call collects what is ready (epoll is
        level-triggered: what ended the wait is still there).
        """
        records = epoll_collect(self._epfd, self._receive_sizes, self._read_mask)
        if records is None and timeout != 0 and self._epoll.poll(timeout, 1):
            records = epoll_collect(self._epfd, self._receive_sizes, self._read_mask)
        return records

    def _dispatch(self, records):
        channels = self._channels
        stale = self._stale
        count = 0
        self._dispatching = True
        try:
            received, others = records
            if received:
                # The common case, on a path of its own: bytes received.
                count = len(received)  # (less the skipped: counting each costs more)
                for fd, data in received:
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
            if others:
                count += self._dispatch_other(others)
        finally:
            self._dispatching = False
            if stale:
                stale.clear()
        return count

    def _dispatch_other(self, records):
        """Events without received bytes. An EOF or a failed receive is
        reported here; the rest (the waker, listeners, channels that read
        for themselves, write notifications) are the plain poller's."""
        channels = self._channels
        stale = self._stale
        plain = []
        count = 0
        for fd, bits, result in records:
            if result == NOT_RECEIVED:
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
