"""The ``select()`` backend: everywhere, but only for fds below FD_SETSIZE."""

import errno
import os
import select

from .loop import READ, WRITE, Poller


class SelectPoller(Poller):
    """``select()``: everywhere, but limited to fds below FD_SETSIZE (1024)."""

    name = "select"
    FD_SETSIZE = 1024

    def __init__(self):
        self._readers = set()
        self._writers = set()
        super().__init__()
        self._readers.add(self._waker_fd)

    def _check_fd(self, fd):
        if fd >= self.FD_SETSIZE:
            raise ValueError(
                f"fd {fd} is out of range for select() (FD_SETSIZE "
                f"{self.FD_SETSIZE}); use the poll or epoll poller"
            )

    def _register(self, fd, mask):
        self._modify(fd, 0, mask)

    def _modify(self, fd, old, new):
        (self._readers.add if new & READ else self._readers.discard)(fd)
        (self._writers.add if new & WRITE else self._writers.discard)(fd)

    def _unregister(self, fd, old):
        self._readers.discard(fd)
        self._writers.discard(fd)

    def _wait(self, timeout):
        try:
            readable, writable, _ = select.select(
                self._readers, self._writers, (), timeout
            )
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            self._drop_closed_fds()
            return ()
        if not writable:
            return [(fd, READ) for fd in readable]
        events = dict.fromkeys(readable, READ)
        for fd in writable:
            events[fd] = events.get(fd, 0) | WRITE
        return events.items()

    def _drop_closed_fds(self):
        for fd in list(self._readers | self._writers):
            try:
                os.fstat(fd)
            except OSError:
                self._readers.discard(fd)
                self._writers.discard(fd)
                self._registered.pop(fd, None)
                channel = self._channels.get(fd)
                if channel is not None:
                    self._lost_fd(fd, channel)

    def _close_kernel(self):
        self._readers.clear()
        self._writers.clear()
