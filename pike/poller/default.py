"""Which pollers this platform has, and the process's default poller.

The default poller is made on first use (no kernel object at import time),
once per process: a forked child marks every inherited poller as its
parent's and makes its own.
"""

from __future__ import annotations

import os
import select
import threading

from .loop import Poller, live_pollers
from .select_backend import SelectPoller


def _poller_classes() -> dict[str, type[Poller]]:
    """Poller name -> class, for the backends this platform has."""
    classes: dict[str, type[Poller]] = {"select": SelectPoller}
    if hasattr(select, "poll"):
        from .poll_backend import PollPoller

        classes["poll"] = PollPoller
    if hasattr(select, "epoll"):
        from .epoll_backend import EpollPoller

        classes["epoll"] = EpollPoller
    if hasattr(select, "kqueue"):
        from .kqueue_backend import KQueuePoller

        classes["kqueue"] = KQueuePoller
    return classes


#: Poller names this platform has, best first.
_PREFERENCE = ("epoll", "kqueue", "poll", "select")


def available_pollers() -> list[str]:
    """The names of the pollers this platform has, best first."""
    classes = _poller_classes()
    return [name for name in _PREFERENCE if name in classes]


def make_poller(name: str | None = None) -> Poller:
    """Build a new poller by name: "epoll", "kqueue", "poll" or "select".

    ``None`` takes ``PIKE_POLLER`` from the environment when it is set, else
    the best poller the platform has.
    """
    if name is None:
        name = os.environ.get("PIKE_POLLER") or available_pollers()[0]
    classes = _poller_classes()
    try:
        cls = classes[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown or unavailable poller {name!r}; this platform has: "
            f"{', '.join(available_pollers())}"
        ) from None
    return cls()


_default_poller = None
_default_lock = threading.Lock()


def get_poller() -> Poller:
    """The process's default poller, made on first use (and anew after fork)."""
    poller = _default_poller
    if poller is None or poller._closed or poller._forked_away:
        return _make_default()
    return poller


def _make_default() -> Poller:
    global _default_poller
    with _default_lock:
        poller = _default_poller
        if poller is None or poller._closed or poller._forked_away:
            kind = None
            if poller is not None and poller._forked_away:
                kind = poller.name  # a forked child keeps its parent's kind
            if poller is not None and not poller._closed:
                poller.close()
            try:
                poller = make_poller(kind)
            except ValueError:  # a kind this platform cannot build anew
                poller = make_poller()
            _default_poller = poller
        return poller


def set_poller(poller: Poller | None) -> Poller | None:
    """Make ``poller`` the process's default; returns the previous one."""
    global _default_poller
    with _default_lock:
        previous, _default_poller = _default_poller, poller
    return previous


def loop(timeout: float | None = None, count: int | None = None) -> int:
    """Drive the default poller; see :meth:`Poller.loop`."""
    return get_poller().loop(timeout=timeout, count=count)


def _after_fork_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()  # another thread may have held it
    for poller in list(live_pollers):
        poller._mark_forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
