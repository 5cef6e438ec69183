"""Which errors mean "the connection is gone" rather than "something broke"."""

from __future__ import annotations

import errno

#: OSError errnos that end a connection normally: raised from a callback they
#: go to ``handle_close``, not ``handle_error``.
CONNECTION_LOST_ERRNOS: frozenset[int] = frozenset(
    {
        errno.ECONNRESET,
        errno.EPIPE,
        errno.ENOTCONN,
        errno.ESHUTDOWN,
        errno.ECONNABORTED,
        errno.EBADF,
    }
)

#: accept() errnos that mean "out of a resource" (fds, buffers, memory): the
#: connection stays in the kernel's queue, so the listener stays readable and
#: retrying at once would spin. Back off, then retry.
ACCEPT_RESOURCE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")
    if hasattr(errno, name)
)

#: connect_ex() results that mean "under way": completion is reported later.
CONNECT_IN_PROGRESS_ERRNOS: frozenset[int] = frozenset(
    {errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK}
)


# Raised bare (errno None) by protocol code and socket wrappers, too.
_LOST_TYPES = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def is_connection_lost(exc: BaseException) -> bool:
    """True when ``exc`` says the connection is gone (see the errnos above).

    A failed connect (ConnectionRefusedError) is not a lost connection.
    """
    if isinstance(exc, _LOST_TYPES):
        return True
    return isinstance(exc, OSError) and exc.errno in CONNECTION_LOST_ERRNOS
