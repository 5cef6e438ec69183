"""The ``poll()`` backend: no fd limit, but O(watched fds) per wait.

Import it only where ``select.poll`` exists (see :mod:`pike.poller.default`).
"""

import select

from .loop import READ, WRITE, Poller, round_up_ms


class PollPoller(Poller):
    """``poll()``: no fd limit, but O(watched fds) per wait."""

    name = "poll"
    _READ_EVENTS = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL
    _WRITE_EVENTS = select.POLLOUT | select.POLLERR | select.POLLHUP | select.POLLNVAL

    def __init__(self):
        self._poll = select.poll()
        super().__init__()
        self._poll.register(self._waker_fd, select.POLLIN)

    @staticmethod
    def _kernel_mask(mask):
        return (select.POLLIN if mask & READ else 0) | (
            select.POLLOUT if mask & WRITE else 0
        )

    def _register(self, fd, mask):
        self._poll.register(fd, self._kernel_mask(mask))

    def _modify(self, fd, old, new):
        self._poll.modify(fd, self._kernel_mask(new))

    def _unregister(self, fd, old):
        self._poll.unregister(fd)

    def _wait(self, timeout):
        return self._poll.poll(round_up_ms(timeout))

    def _close_kernel(self):
        self._poll = None
