"""The C implementation of Transport's would-block-prone I/O methods.

Only what measured faster than the pure path lives here. The C functions
return ``-errno`` instead of raising, and building and catching a
BlockingIOError is where the pure path loses time. Measured in user-space
instructions per call (callgrind, CPython 3.11, 1 KiB messages; the
``bench/`` microbenchmarks time the same calls):

======================  ======  ======
operation               python  c
======================  ======  ======
send, would block       ~9400   ~5000
recv, nothing to read   ~9000   ~3600
recv, 1 KiB waiting     ~5100   ~6400
write, kernel takes it  ~6700   ~7400
======================  ======  ======

A cffi call (plus building the bytes object, for recv) costs more than
CPython's own socket methods when the system call succeeds, which is the
common case for ``recv`` (called when the poller said readable) and for
``write`` (the kernel usually takes the data): those stay pure. ``send``
is the raw API that asyncore-style code calls in a loop until it returns
0, so every such loop ends in a would-block: it uses C.

:func:`install` puts these methods on :class:`pike.transport.Transport`
(subclasses inherit them); :func:`uninstall` restores the pure ones. The
``pike._impl`` module decides which is in force.
"""

import errno
import os

from ._pike_accel import ffi, lib
from .errors import CONNECTION_LOST_ERRNOS

_EAGAIN = errno.EAGAIN
_EWOULDBLOCK = errno.EWOULDBLOCK

_c_send = lib.pike_send
_from_buffer = ffi.from_buffer


def send(self, data):
    """C version of :meth:`Transport.send` (same contract)."""
    if self._queue:
        self.poller.defer_write(self)
        return 0
    if type(data) is bytes:
        # cffi passes bytes to ``const char *`` without a copy.
        n = _c_send(self._fileno, data, len(data))
    else:
        # Other buffers (bytearray, memoryview, array...) need a view, and
        # their length in bytes: len() of an array or a cast memoryview
        # counts items.
        view = _from_buffer(data)
        n = _c_send(self._fileno, view, len(view))
    if n >= 0:
        return n
    return self._c_send_failed(-n)


def _c_send_failed(self, err):
    if err == _EAGAIN or err == _EWOULDBLOCK:
        self.poller.defer_write(self)
        return 0
    if self.closed or self.socket is None:
        raise self._not_open()
    if err in CONNECTION_LOST_ERRNOS:
        self.handle_close()
        return 0
    raise OSError(err, os.strerror(err))


_C_METHODS = {
    "send": send,
    "_c_send_failed": _c_send_failed,
}
_saved = {}


def install(cls):
    """Put the C methods on ``cls`` (Transport), keeping the pure ones."""
    for name, function in _C_METHODS.items():
        if name not in _saved:
            _saved[name] = cls.__dict__.get(name)
        setattr(cls, name, function)


def uninstall(cls):
    """Restore the pure-Python methods on ``cls`` (if C ones were installed)."""
    if not _saved:
        return
    for name in _C_METHODS:
        original = _saved.get(name)
        if original is None:
            if name in cls.__dict__:
                delattr(cls, name)
        else:
            setattr(cls, name, original)
