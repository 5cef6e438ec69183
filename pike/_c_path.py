"""The C implementation of Transport's per-call I/O methods.

Only what measured faster than the pure path lives here. The C functions
return ``-errno`` instead of raising (building and catching a
BlockingIOError is where the pure path loses most), and the accelerator's
wrappers keep the GIL (see ``pike/_accel_build.py``), which saves ~400
instructions a call over a socket method, which releases and retakes it.
User-space instructions per call (``python bench/callgrind_io.py``,
callgrind, CPython 3.11, 1 KiB messages; compare within a row):

======================  ======  ======  ============
operation               python  c       c candidate
======================  ======  ======  ============
send, would block       8745    4043
recv, nothing to read   8443    8439    2280
recv, 1 KiB waiting     4307    4308    5378
write, kernel takes it  4756    4829
======================  ======  ======  ============

Reading the fd from the socket object on every call (see below) costs
~290 instructions a write; before, on a remembered fd, the C write took
4542, and sent into whatever reused the number.

``send`` and ``write`` are in C. They send on the fd their socket object
has now (``socket.fileno()``), never on a number remembered earlier: a
socket closed behind the transport reports -1 there, and the send fails
with EBADF exactly as ``socket.send`` does on the pure path, instead of
reaching whatever the kernel gave that number to next. ``recv`` is not: its result must become a
bytes object, and making one from C memory through cffi costs more than
the whole of CPython's ``socket.recv``. The case the candidate wins,
nothing to read, is rare: the poller calls ``recv`` when the fd is readable.

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
    sock = self.socket
    if sock is None:
        raise self._not_open()
    # The socket's fd now (-1 once closed: the kernel answers EBADF).
    fd = sock.fileno()
    if type(data) is bytes:
        # cffi passes bytes to ``const char *`` without a copy.
        n = _c_send(fd, data, len(data))
    else:
        # Other buffers (bytearray, memoryview, array...) need a view, and
        # their length in bytes: len() of an array or a cast memoryview
        # counts items.
        view = _from_buffer(data)
        n = _c_send(fd, view, len(view))
    if n >= 0:
        return n
    return self._c_send_failed(-n)


def write(self, data):
    """C version of :meth:`Transport.write` (same contract)."""
    if not data:
        return
    if self._write_state or self.closed or self.socket is None:
        self._check_writable()  # raises
    if type(data) is bytes:
        buf = data
        size = len(data)
    else:
        if type(data) is not bytearray:
            data = memoryview(data).cast("B")  # so offsets count bytes
        buf = _from_buffer(data)
        size = len(buf)
    if self._queue or self.connecting:
        self._enqueue(data)
        return
    sent = _c_send(self.socket.fileno(), buf, size)  # (-1 once closed: EBADF)
    if sent == size:
        return
    if sent < 0:
        err = -sent
        if err in CONNECTION_LOST_ERRNOS:
            self.handle_close()
            return
        if err != _EAGAIN and err != _EWOULDBLOCK:
            raise OSError(err, os.strerror(err))
        sent = 0
    self._enqueue(data, sent)


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
    "write": write,
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
