"""pike: a callback-style transport layer for Python.

A :class:`~pike.transport.Transport` mirrors one non-blocking socket onto a
:class:`~pike.poller.Poller` (epoll, kqueue, poll or select) and fires
``handle_*`` callbacks into the protocol layers above it.

Importing pike creates no kernel object: the default poller is made the
first time :func:`get_poller` (or :func:`loop`) asks for it.
"""

__version__: str = "0.1.0"

from . import _impl  # noqa: E402
from . import errors  # noqa: E402,F401  (part of the public API)

#: Which implementation of the hot path is in force, ``"c"`` (the C
#: accelerator) or ``"python"``. ``PIKE_IMPL`` chooses it at import (see
#: :doc:`accelerator`); ``python -m pike info`` prints it, and why C is not
#: in use when it is not.
IMPLEMENTATION: str = _impl.IMPLEMENTATION
from .poller import (  # noqa: E402
    available_pollers,
    get_poller,
    loop,
    make_poller,
    set_poller,
)
from .transport import Transport  # noqa: E402
from .chat import Chat  # noqa: E402

_impl.apply_at_import()

__all__ = [
    "__version__",
    "IMPLEMENTATION",
    "Chat",
    "Transport",
    "available_pollers",
    "get_poller",
    "loop",
    "make_poller",
    "set_poller",
]
