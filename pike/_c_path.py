"""The C accelerator's primitives beneath Transport: sending.

Transport's logic (``write``, ``send``, the queue, the states) exists once,
in :mod:`pike.transport`. What the implementations differ in is beneath it:

* sending: ``pike.transport._socket_send`` (beneath ``write``) and
  ``pike.transport._send_now`` (beneath ``send``) are ``socket.socket.send``
  on the pure path and the accelerator's ``send`` and ``send_now`` on the
  C one (``csrc/pike_send.c``);
* waiting and receiving: the epoll poller, which on the C path is
  :class:`pike.poller.epoll_batch.BatchedEpollPoller` (one C call per loop
  iteration collects and receives for every ready ``handle_data`` transport).

The C ``send`` keeps ``socket.socket.send``'s contract on a non-blocking
socket, fd and errors included (it sends on the fd the socket holds now,
-1 once closed). It is cheaper because it keeps the GIL (a non-blocking
call's own work costs less than releasing and retaking it) and skips the
argument parsing of a method call. ``send_now`` also returns 0 where
``send`` raises BlockingIOError, which is what an asyncore-style ``send``
loop ends with every time. Figures: docs/accelerator.rst.

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
    transport._socket_send = _pike_accel.send


def uninstall() -> None:
    """Put the pure primitives (the socket's own ``send``) back."""
    transport._send_now = socket.socket.send
    transport._socket_send = socket.socket.send
