"""The kqueue poller (BSD, macOS).

kqueue registers (fd, filter) pairs: reading and writing are separate
filters, added and deleted on their own, and each ready filter comes back
as its own kevent, so one fd can appear twice in a batch; the two are merged
into one (fd, bits) pair before dispatch. Closing an fd drops its filters in
the kernel, so deleting them afterwards fails with EBADF or ENOENT, which is
fine. A kqueue is not inherited by a forked child.

The module is importable everywhere: ``select_module`` lets tests run the
logic against a stand-in for ``select.kqueue`` on platforms without it.
"""

import select

from .loop import READ, WRITE, Poller


class KQueuePoller(Poller):
    """BSD/macOS ``kqueue``: O(ready fds) per wait, no fd limit."""

    name = "kqueue"

    def __init__(self, select_module=select):
        self._kq_module = kq = select_module
        self._kqueue = kq.kqueue()
        self._max_events = 64
        super().__init__()
        self._kqueue.control(
            [kq.kevent(self._waker_fd, kq.KQ_FILTER_READ, kq.KQ_EV_ADD)], 0
        )

    def _changes(self, fd, old, new):
        kq = self._kq_module
        changes = []
        for bit, kfilter in ((READ, kq.KQ_FILTER_READ), (WRITE, kq.KQ_FILTER_WRITE)):
            if new & bit and not old & bit:
                changes.append(kq.kevent(fd, kfilter, kq.KQ_EV_ADD))
            elif old & bit and not new & bit:
                changes.append(kq.kevent(fd, kfilter, kq.KQ_EV_DELETE))
        return changes

    def _register(self, fd, mask):
        self._kqueue.control(self._changes(fd, 0, mask), 0)

    def _modify(self, fd, old, new):
        self._kqueue.control(self._changes(fd, old, new), 0)

    def _unregister(self, fd, old):
        # One filter at a time: if the first delete fails because the fd is
        # gone, the second would fail the same way, and that is fine.
        for change in self._changes(fd, old, 0):
            try:
                self._kqueue.control([change], 0)
            except OSError:
                pass

    def _wait(self, timeout):
        kq = self._kq_module
        # Each registered fd can report a read and a write filter.
        max_events = max(self._max_events, 2 * len(self._registered) + 1)
        kevents = self._kqueue.control(None, max_events, timeout)
        if not kevents:
            return ()
        events = {}
        read_filter = kq.KQ_FILTER_READ
        for kev in kevents:
            bit = READ if kev.filter == read_filter else WRITE
            events[kev.ident] = events.get(kev.ident, 0) | bit
        return events.items()

    def _close_kernel(self):
        self._kqueue.close()

    _abandon_kernel = _close_kernel
