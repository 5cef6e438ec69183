"""The Linux ``epoll`` backend: O(ready fds) per wait, no fd limit.

Import it only where ``select.epoll`` exists (see :mod:`pike.poller.default`).
"""

import select

from .loop import READ, WRITE, Poller


# The class EpollPoller() makes instead of itself: the C accelerator's
# batched poller while the C implementation is in force (None: plain).
_batched_class = None


def use_batched_wait(cls):
    """Make ``EpollPoller()`` build ``cls`` (a subclass), or itself for None.

    Called by :mod:`pike._impl` when the implementation is chosen, so that
    every way of making an epoll poller gets the implementation in force.
    """
    global _batched_class
    _batched_class = cls


class EpollPoller(Poller):
    """Linux ``epoll``: O(ready fds) per wait, no fd limit."""

    name = "epoll"

    def __new__(cls, *args, **kwargs):
        if cls is EpollPoller and _batched_class is not None:
            cls = _batched_class
        return super().__new__(cls)
    _READ_EVENTS = select.EPOLLIN | select.EPOLLPRI | select.EPOLLERR | select.EPOLLHUP
    _WRITE_EVENTS = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP

    def __init__(self):
        self._epoll = select.epoll()
        super().__init__()
        self._epoll.register(self._waker_fd, select.EPOLLIN)
        if type(self)._wait is EpollPoller._wait:
            # epoll.poll takes our timeout as it is: calling it straight
            # saves a Python frame per iteration. (A subclass that
            # overrides _wait keeps its override.)
            self._wait = self._epoll.poll

    @staticmethod
    def _kernel_mask(mask):
        return (select.EPOLLIN if mask & READ else 0) | (
            select.EPOLLOUT if mask & WRITE else 0
        )

    def _register(self, fd, mask):
        self._epoll.register(fd, self._kernel_mask(mask))

    def _modify(self, fd, old, new):
        self._epoll.modify(fd, self._kernel_mask(new))

    def _unregister(self, fd, old):
        self._epoll.unregister(fd)

    def _wait(self, timeout):
        # epoll takes seconds (None: no limit) and rounds up to whole
        # milliseconds itself.
        return self._epoll.poll(timeout)

    def _close_kernel(self):
        self._epoll.close()

    def _abandon_kernel(self):
        # Closing our copy of the fd removes nothing from the parent's set.
        self._epoll.close()
