"""Pollers: one kernel readiness API each, beneath one shared loop.

The package is layered as CPython's ``selectors`` sits beneath asyncio's
selector loop, but with the loop on top of the backends:

* :mod:`pike.poller.loop`: :class:`Poller`, the loop every backend shares
  (channels, lazy kernel interest, dispatch, timers, calls from other
  threads, fork), and the facts about readiness it relies on;
* :mod:`pike.poller.channel`: the public channel contract --
  :class:`Channel`, the small base class anything the loop watches builds
  on, and fd watching in the style of ``add_reader`` / ``add_writer``;
* one module per kernel backend, each saying which readiness bits it
  reports: :mod:`~pike.poller.epoll_backend`,
  :mod:`~pike.poller.kqueue_backend`, :mod:`~pike.poller.poll_backend`,
  :mod:`~pike.poller.select_backend`;
* :mod:`pike.poller.default`: which backends this platform has, and the
  process's default poller (made on first use, anew in a forked child).

Nothing here imports anything above it, and no module imports back.
"""

import select as _select

from .channel import Channel
from .default import available_pollers, get_poller, loop, make_poller, set_poller
from .loop import MAX_WAIT, READ, RECV_CAP, WRITE, Poller
from .select_backend import SelectPoller

if hasattr(_select, "poll"):
    from .poll_backend import PollPoller
if hasattr(_select, "epoll"):
    from .epoll_backend import EpollPoller
if hasattr(_select, "kqueue"):
    from .kqueue_backend import KQueuePoller

__all__ = [
    "MAX_WAIT",
    "RECV_CAP",
    "READ",
    "WRITE",
    "Channel",
    "Poller",
    "SelectPoller",
    "available_pollers",
    "get_poller",
    "loop",
    "make_poller",
    "set_poller",
]
for _name in ("PollPoller", "EpollPoller", "KQueuePoller"):
    if _name in globals():
        __all__.append(_name)
del _name
