"""Timers for a poller: a heap of handles ordered by due time.

Cancelled handles stay in the heap (removing from the middle of a heap is
O(n)) and are skipped when they come due; when they outnumber the live ones
the heap is rebuilt, so a program that schedules and cancels in a loop does
not grow memory without bound.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only: no typing cost at import
    from typing import Any, Callable, Iterable, Sequence


class TimerHandle:
    """A call scheduled by :meth:`Poller.call_later`; :meth:`cancel` stops it."""

    __slots__ = ("when", "_seq", "_callback", "_args", "_queue", "cancelled")

    when: float
    cancelled: bool
    _callback: Any  # None once run or cancelled
    _args: Any

    def __init__(
        self,
        when: float,
        seq: int,
        callback: Callable[..., Any],
        args: Sequence[Any],
        queue: TimerQueue | None,
    ) -> None:
        self.when = when
        self._seq = seq
        self._callback = callback
        self._args = args
        self._queue = queue
        self.cancelled = False

    def __lt__(self, other: TimerHandle) -> bool:
        return (self.when, self._seq) < (other.when, other._seq)

    def cancel(self) -> None:
        """Stop the call if it has not run yet. Calling it again is harmless."""
        if not self.cancelled:
            self.cancelled = True
            self._callback = self._args = None
            if self._queue is not None:
                self._queue._note_cancelled()

    def _run(self) -> None:
        self._queue = None  # ran: a late cancel() must not count it again
        callback, args = self._callback, self._args
        self._callback = self._args = None
        callback(*args)

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else f"when={self.when:.6f}"
        return f"<TimerHandle {state}>"


class TimerQueue:
    """Due-time ordered timers, on the monotonic clock."""

    # Rebuild the heap when this many cancelled handles are in it and they
    # are more than half of it.
    _MIN_CANCELLED_TO_PURGE = 64

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        #: The heap of handles, live and cancelled: a poller tests its
        #: truthiness each iteration (a call would cost more than the test).
        #: Always the same list object; only this class changes it.
        self.heap: list[TimerHandle] = []
        self._cancelled = 0
        self._counter = itertools.count()

    def __len__(self) -> int:
        """The number of timers that are still to run."""
        return len(self.heap) - self._cancelled

    def schedule(
        self, delay: float, callback: Callable[..., Any], args: Sequence[Any]
    ) -> TimerHandle:
        """Run ``callback(*args)`` after ``delay`` seconds (NaN: ValueError)."""
        if delay != delay:  # NaN would never compare as due
            raise ValueError("delay must be a number, not NaN")
        handle = TimerHandle(
            self.clock() + max(delay, 0.0), next(self._counter), callback, args, self
        )
        heapq.heappush(self.heap, handle)
        return handle

    def _note_cancelled(self) -> None:
        self._cancelled += 1
        if (
            self._cancelled >= self._MIN_CANCELLED_TO_PURGE
            and self._cancelled * 2 > len(self.heap)
        ):
            self.heap[:] = [h for h in self.heap if not h.cancelled]
            heapq.heapify(self.heap)
            self._cancelled = 0

    def next_delay(self) -> float | None:
        """Seconds until the next live timer is due (>= 0), or None if none."""
        heap = self.heap
        while heap and heap[0].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        if not heap:
            return None
        return max(heap[0].when - self.clock(), 0.0)

    def requeue(self, handles: Iterable[TimerHandle]) -> None:
        """Put back due handles that could not run (an exception stopped the batch)."""
        for handle in handles:
            if not handle.cancelled:
                handle._queue = self
                heapq.heappush(self.heap, handle)

    def pop_due(self) -> Sequence[TimerHandle]:
        """Remove and return the live handles that are due now, in order.

        Timers scheduled by these callbacks wait for the next iteration, so
        a callback that reschedules itself with delay 0 cannot starve I/O.
        """
        heap = self.heap
        if not heap:
            return ()
        now = self.clock()
        due: list[TimerHandle] = []
        while heap and heap[0].when <= now:
            handle = heapq.heappop(heap)
            if handle.cancelled:
                self._cancelled -= 1
            else:
                handle._queue = None
                due.append(handle)
        return due
