"""The C accelerator's primitive beneath Transport: sending.

Transport's logic (``write``, ``send``, the queue, the states) exists once,
in :mod:`pike.transport`. What the implementations differ in is beneath it:

* sending: ``pike.transport._send_now``, ``socket.socket.send`` on the pure
  path and :func:`send_now` here on the C one;
* waiting and receiving: the epoll poller, which on the C path is
  :class:`pike.poller.epoll_batch.BatchedEpollPoller` (one C call per loop
  iteration collects and receives for every ready ``handle_data`` transport).

:func:`send_now` keeps ``socket.send``'s contract with two differences
that make it cheaper: a send that would block returns 0 instead of
building and raising a BlockingIOError (what an asyncore-style ``send``
loop ends with every time), and the GIL is kept (the accelerator's wrappers
do not release it around a non-blocking call, which saves ~400 user-space
instructions a call; see ``pike/_accel_build.py``). User-space
instructions per call (``python -m pike bench --mode callgrind-io``,
callgrind, CPython 3.11, 1 KiB messages; compare within a row):

======================  ======  ======
operation               python  c
======================  ======  ======
send, would block       9056    4311
======================  ======  ======

(``write`` uses the socket's own send on both: 4766 each.)

It sends on the fd the socket object holds now (``socket.fileno()``),
never on a number remembered earlier: a socket closed behind the transport
reports -1 there, and the send fails with EBADF exactly as ``socket.send``
does, instead of reaching whatever the kernel gave that number to next.

:func:`install` puts the C primitive in force (and the batched epoll poller
for pollers made from then on); :func:`uninstall` puts the pure one back.
The ``pike._impl`` module decides which is in force.
"""

import errno
import os
import socket

from . import transport
from ._pike_accel import ffi, lib

_c_send = lib.pike_send
_from_buffer = ffi.from_buffer
_WOULD_BLOCK = (-errno.EAGAIN, -errno.EWOULDBLOCK)


def send_now(sock, data):
    """``sock.send(data)``, but 0 instead of BlockingIOError, in C."""
    # The socket's fd now (-1 once closed: the kernel answers EBADF).
    if type(data) is bytes:
        # cffi passes bytes to ``const char *`` without a copy.
        sent = _c_send(sock.fileno(), data, len(data))
    else:
        # Other buffers (bytearray, memoryview, array...) need a view, and
        # their length in bytes: len() of an array or a cast memoryview
        # counts items.
        view = _from_buffer(data)
        sent = _c_send(sock.fileno(), view, len(view))
    if sent >= 0:
        return sent
    if sent in _WOULD_BLOCK:
        return 0
    raise OSError(-sent, os.strerror(-sent))


def install():
    """Make Transport send through the C primitive."""
    transport._send_now = send_now


def uninstall():
    """Put the pure primitive (the socket's own ``send``) back."""
    transport._send_now = socket.socket.send
