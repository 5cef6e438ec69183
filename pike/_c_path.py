"""The C accelerator's primitives beneath Transport: sending.

Transport's logic (``write``, ``send``, the queue, the states) exists once,
in :mod:`pike.transport`. What the implementations differ in is beneath it:

* sending: ``pike.transport._send_rest`` (beneath ``write``: how many
  bytes the kernel did not take) and ``pike.transport._send_now`` (beneath
  ``send``) are built on ``socket.socket.send`` on the pure path and are
  the accelerator's ``send_rest`` and ``send_now`` on the C one
  (``csrc/pike_send.c``);
* waiting and receiving: the epoll poller, which on the C path is
  :class:`pike.poller.epoll_batch.BatchedEpollPoller` (one C call per loop
  iteration collects and receives for every ready ``handle_data`` transport).

The C sends keep ``socket.socket.send``'s contract on a non-blocking
socket, fd and errors included (they send on the fd the socket holds now,
-1 once closed). They are cheaper because they keep the GIL (a non-blocking
call's own work costs less than releasing and retaking it) and skip the
argument parsing of a method call. ``send_now`` returns 0 where
``socket.send`` raises BlockingIOError, which is what an asyncore-style
``send`` loop ends with every time; ``send_rest`` returns what is left (0,
a cached int, when the kernel took everything). Figures:
docs/accelerator.rst.

:func:`install` puts the C primitives in force (and the batched epoll poller
for pollers made from then on, see :mod:`pike._impl`); :func:`uninstall`
puts the pure ones back. The ``pike._impl`` module decides which is in
force.
"""

import socket

from . import _pike_accel, transport


def install() -> None:
    """Make Transport send through the C primitives."""
    transport._send_now = _pike_accel.send_now
    transport._send_rest = _pike_accel.send_rest


def uninstall() -> None:
    """Put the pure primitives (the socket's own ``send``) back."""
    transport._send_now = socket.socket.send
    transport._send_rest = transport._socket_send_rest
