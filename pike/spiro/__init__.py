"""SPIRO: remote interpreter sessions on pike.

A :class:`SpiroServer` gives each client connection a Python namespace of
its own on the server; :func:`connect` opens such a session. See
``docs/spiro.rst`` for the protocol, the threading model and the security
rules.
"""

from .client import Proxy, Session, callback, connect
from .protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_NESTING,
    MIN_KEY_LENGTH,
    AuthenticationError,
    ProtocolError,
    RemoteError,
)
from .server import SpiroServer

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_NESTING",
    "MIN_KEY_LENGTH",
    "AuthenticationError",
    "ProtocolError",
    "Proxy",
    "RemoteError",
    "Session",
    "SpiroServer",
    "callback",
    "connect",
]
