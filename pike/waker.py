"""A thread-safe way to wake a poller that is blocked in the kernel.

One byte written to a non-blocking pipe makes its read end readable; the
poller watches that end like any other fd. ``_armed`` keeps a burst of
wake-ups from many threads down to one byte, and a full pipe is fine: a
wake-up is already pending then.
"""

from __future__ import annotations

import os


class Waker:
    """The self-pipe of one poller."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        for fd in (self._read_fd, self._write_fd):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self._armed = False

    def fileno(self) -> int:
        """The fd to watch for reading."""
        return self._read_fd

    def wake(self) -> None:
        """Make the poller's next (or current) wait return. Any thread."""
        if self._armed:
            return
        self._armed = True
        try:
            os.write(self._write_fd, b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the pipe already holds a wake-up
        except OSError:
            pass  # closed during interpreter or poller shutdown

    def clear(self) -> None:
        """Called by the poller's thread before it runs queued callbacks.

        Drain first, disarm after: a wake() that lands during the drain saw
        ``_armed`` still set and wrote nothing, but its callback was queued
        before it, so this iteration runs it. Disarming first could let the
        drain swallow a fresh byte and leave ``_armed`` set for ever.
        """
        try:
            while os.read(self._read_fd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._armed = False

    def close(self) -> None:
        """Close both ends of the pipe; calling it again is harmless."""
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._read_fd = self._write_fd = -1
