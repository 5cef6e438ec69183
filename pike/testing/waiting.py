"""Bounded waits: drive a poller until something holds, or prove it blocks.

Every wait in pike.testing is bounded; a check that waits too long fails
with a message saying what it waited for.
"""

from __future__ import annotations

import select
import time

from .registry import DEFAULT_TIMEOUT

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only
    from typing import Any, Callable

    from ..poller import Poller



def _describe(predicate, what):
    if what:
        return what
    name = getattr(predicate, "__qualname__", None) or repr(predicate)
    return f"predicate {name}"


def run_until(
    poller: Poller,
    predicate: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT,
    step: float = 0.05,
    what: str | None = None,
) -> int:
    """Drive ``poller`` until ``predicate()`` is true.

    The poller is polled in slices of at most ``step`` seconds; the
    predicate is evaluated before each slice (so it may have side effects,
    such as reading a peer socket).

    :param poller: the :class:`~pike.poller.Poller` to drive.
    :param predicate: a callable returning a true value when done.
    :param timeout: seconds to wait at most.
    :param step: the longest single ``poll()`` call.
    :param what: words for the failure message (what was awaited).
    :returns: the number of ``poll()`` calls made.
    :raises AssertionError: when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    iterations = 0
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"timed out after {timeout:g}s ({iterations} polls of {poller!r}) "
                f"waiting for {_describe(predicate, what)}"
            )
        poller.poll(min(step, remaining))
        iterations += 1
    return iterations


def count_polls(poller: Poller, duration: float = 0.3, step: float = 0.1) -> tuple[int, int]:
    """Poll ``poller`` for ``duration`` seconds in slices of ``step``.

    :returns: ``(iterations, dispatched)``: how many ``poll()`` calls were
        made and the sum of what they returned (callbacks run). A poller
        with nothing to do blocks for each slice, so ``iterations`` stays
        near ``duration / step``; a spinning one makes many more.
    """
    deadline = time.monotonic() + duration
    iterations = dispatched = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return iterations, dispatched
        dispatched += poller.poll(min(step, remaining))
        iterations += 1


def assert_blocks(
    poller: Poller,
    duration: float = 0.3,
    step: float = 0.1,
    max_iterations: int = 10,
    what: str = "idle",
) -> None:
    """Assert that ``poller`` has nothing to dispatch and does not spin.

    Polls for ``duration`` seconds (see :func:`count_polls`) and fails
    unless no callback ran and at most ``max_iterations`` ``poll()`` calls
    were made (blocking ones make about ``duration / step``).

    :raises AssertionError: on a dispatched callback or a spin.
    """
    iterations, dispatched = count_polls(poller, duration, step)
    assert dispatched == 0, (
        f"{what}: {dispatched} callbacks dispatched in {duration:g}s where none "
        f"were expected"
    )
    assert iterations <= max_iterations, (
        f"{what}: poll({step:g}) returned {iterations} times in {duration:g}s: "
        f"the poller spins instead of blocking"
    )


def _fd(obj):
    return obj if isinstance(obj, int) else obj.fileno()


def wait_readable(*objs: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Block (outside any poller) until every fd or socket in ``objs`` is readable.

    Used to make sure that several events are ready before a single
    ``poll()`` call, so that they are dispatched in one batch.

    :raises AssertionError: when ``timeout`` seconds pass first.
    """
    fds = {_fd(obj) for obj in objs}
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"fds {sorted(fds)} did not all become readable")
        if hasattr(select, "poll"):
            p = select.poll()
            for fd in fds:
                p.register(fd, select.POLLIN)
            ready = {fd for fd, _ in p.poll(max(1, int(remaining * 1000)))}
        else:
            ready = set(select.select(list(fds), [], [], remaining)[0])
        if fds <= ready:
            return
