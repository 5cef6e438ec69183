"""Which errors mean "the connection is gone" rather than "something broke"."""

import errno

#: OSError errnos that end a connection normally: raised from a callback they
#: go to ``handle_close``, not ``handle_error``.
CONNECTION_LOST_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.EPIPE,
        errno.ENOTCONN,
        errno.ESHUTDOWN,
        errno.ECONNABORTED,
        errno.EBADF,
    }
)

#: connect_ex() results that mean "under way": completion is reported later.
CONNECT_IN_PROGRESS_ERRNOS = frozenset(
    {errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK}
)


def is_connection_lost(exc):
    """True when ``exc`` is an OSError of the connection-lost family."""
    return isinstance(exc, OSError) and exc.errno in CONNECTION_LOST_ERRNOS
