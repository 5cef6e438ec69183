"""Send what a session's code prints to its client.

Each session runs on a thread of its own, so ``sys.stdout`` and
``sys.stderr`` are replaced, while a capturing server runs, by routers that
write to the current thread's sink when it has one and to the stream they
replaced otherwise. Threads that are not session threads (the server's
own, the application's, threads that session code starts) print where
they always did.

Other code swaps ``sys.stdout`` too (``contextlib.redirect_stdout``, test
runners). So a session checks before each request that the routers are
still in place, and wraps whatever stream it finds there if not.
"""

import sys
import threading

__all__ = ["ensure", "install", "route_to", "uninstall"]

_local = threading.local()
_lock = threading.Lock()
_users = 0
_routers = {}   # "stdout"/"stderr" -> the router installed in sys


class _Router:
    """Stands in for ``sys.stdout`` or ``sys.stderr``."""

    def __init__(self, name, fallback):
        self._name = name
        self.fallback = fallback

    def _target(self):
        return getattr(_local, "sink", None)

    def write(self, text):
        sink = self._target()
        if sink is not None:
            return sink(self._name, text)
        if self.fallback is None:  # no console at all (pythonw)
            return len(text)
        return self.fallback.write(text)

    def flush(self):
        if self._target() is None and self.fallback is not None:
            self.fallback.flush()

    def isatty(self):
        return False if self._target() is not None else bool(
            self.fallback is not None and self.fallback.isatty()
        )

    def __getattr__(self, name):
        # encoding, errors, fileno, buffer...: those of the real stream
        return getattr(self.fallback, name)


def install():
    """Put the routers in place (counted: each call needs an :func:`uninstall`)."""
    global _users
    with _lock:
        _users += 1
        if _users == 1:
            _wrap_displaced()


def ensure():
    """Put a router back in place of a stream that replaced it since."""
    with _lock:
        if _users:
            _wrap_displaced()


def _wrap_displaced():
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if type(current) is not _Router:
            router = _Router(name, current)
            _routers[name] = router
            setattr(sys, name, router)


def uninstall():
    """Undo one :func:`install`; the last one puts the streams back.

    A stream that someone replaced since is left as it is.
    """
    global _users
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users:
            return
        for name, router in _routers.items():
            if getattr(sys, name) is router:
                setattr(sys, name, router.fallback)
        _routers.clear()


def route_to(sink):
    """Send the calling thread's ``sys.stdout``/``sys.stderr`` writes to
    ``sink(stream_name, text)`` (None: back to the real streams)."""
    _local.sink = sink
