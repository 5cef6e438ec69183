"""A conformance battery for pollers and transports.

Every poller (epoll, kqueue, poll, select) on every implementation (pure
Python and the C accelerator) must behave the same way as seen from a
:class:`~pike.transport.Transport`. This module states that behaviour as
executable checks, in the spirit of a stream conformance battery: each check
is a plain function taking a poller, raising :class:`AssertionError` when the
poller (or the transport on top of it) misbehaves, and closing every socket
it opened, whether it passes or not.

``CHECKS`` maps a short name (``"graceful_eof"``, ``"fd_reuse_in_batch"``,
...) to each check function, in a sensible order. :func:`check_all` runs them
all, each on a fresh poller::

    import pike
    from pike.testing import check_all

    check_all(lambda: pike.make_poller("poll"))

The helpers the checks are built from are public too, for tests of protocol
layers: :func:`run_until` drives a poller until a condition holds (every wait
in this module is bounded), :func:`connected_pair` and
:func:`transport_and_peer` make real connections over ``127.0.0.1``, ``::1``
or a Unix socket in a private temporary directory, and
:class:`RecordingTransport` logs its callbacks in order.

Network traffic never leaves the machine: only loopback addresses and Unix
sockets are used.

The package is split by topic: :mod:`~pike.testing.waiting` (bounded
waits), :mod:`~pike.testing.sockets` (loopback pairs, a peer reader),
:mod:`~pike.testing.recording` (recording transports and listeners),
:mod:`~pike.testing.registry` (``CHECKS``, :func:`check_all`) and one
``checks_*`` module per topic. Everything public is importable from
``pike.testing`` itself.
"""

from .registry import CHECKS, DEFAULT_TIMEOUT, CheckSkipped, check_all  # noqa: F401
from .waiting import assert_blocks, count_polls, run_until, wait_readable
from .sockets import (  # noqa: F401 (the families: for checks written elsewhere)
    AF_INET,
    AF_INET6,
    AF_UNIX,
    SOCK_DGRAM,
    SOCK_STREAM,
    PeerReader,
    has_family,
    socket_pair,
)
from .recording import (
    EchoTransport,
    RecordingListener,
    RecordingTransport,
    connected_pair,
    tcp_listener,
    transport_and_peer,
)

# The checks register themselves in CHECKS on import, in this order.
from . import checks_eof  # noqa: E402
from . import checks_connect  # noqa: E402
from . import checks_batch  # noqa: E402
from . import checks_writing  # noqa: E402
from . import checks_sockets  # noqa: E402
from . import checks_errors  # noqa: E402
from . import checks_loop  # noqa: E402
from . import checks_integrity  # noqa: E402

_CHECK_MODULES = (
    checks_eof,
    checks_connect,
    checks_batch,
    checks_writing,
    checks_sockets,
    checks_errors,
    checks_loop,
    checks_integrity,
)
for _module in _CHECK_MODULES:
    for _name in dir(_module):
        if _name.startswith("check_"):
            globals()[_name] = getattr(_module, _name)
del _module, _name

__all__ = [
    "CHECKS",
    "CheckSkipped",
    "EchoTransport",
    "PeerReader",
    "RecordingListener",
    "RecordingTransport",
    "assert_blocks",
    "check_all",
    "connected_pair",
    "count_polls",
    "has_family",
    "run_until",
    "socket_pair",
    "tcp_listener",
    "transport_and_peer",
    "wait_readable",
]
__all__ += [check.__name__ for check in CHECKS.values()]
__all__.append("DEFAULT_TIMEOUT")
