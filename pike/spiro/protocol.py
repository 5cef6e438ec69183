"""The SPIRO wire protocol, shared by the server and the client.

Every frame is a 4-byte big-endian length followed by that many bytes.
A frame is never empty, and never longer than the side's frame limit.

The handshake comes first, in plain bytes (nothing is unpickled before it
has succeeded)::

    server -> client   MAGIC + server_nonce                       (32 bytes)
    client -> server   MAGIC + client_mac + client_nonce          (32 + 32)
    server -> client   b"OK" + server_mac                         (32)

    client_mac = HMAC-SHA256(key, b"spiro-client" + server_nonce + client_nonce)
    server_mac = HMAC-SHA256(key, b"spiro-server" + server_nonce + client_nonce)

Each side proves it holds the key over a nonce the other side chose, and
the role labels keep a proof from being reflected back. Macs are compared
with :func:`hmac.compare_digest`.

After it, every frame is one pickled message, a tuple:

``("req", rid, op, args)``
    A request from the client; ``op`` names the operation.
``("cb", rid, cid, args, kwargs)``
    A request from the server: call the client's callable ``cid``.
``("ok", rid, value)`` / ``("err", rid, exc_info)``
    The reply to the request ``rid`` of the other side.
``("release", oids)`` / ``("cbrelease", cids)``
    Notices (no reply): the sender no longer refers to these ids.

Either side may send a request while it waits for a reply, so the requests
of one connection nest like calls on a stack: a reply always answers the
innermost request still open.

Objects cross by value when :func:`by_value` says so, and otherwise as
pickle *persistent ids*: ``("ref", oid, type_name)`` for a server object
(a proxy on the client), ``("obj", oid)`` for a proxy going back to the
server, ``("cb", cid)`` for a client callable (a callback on the server).
"""

import builtins
import hashlib
import hmac
import io
import os
import pickle
import struct
import traceback

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "AuthenticationError",
    "ProtocolError",
    "RemoteError",
    "by_value",
    "decode_exception",
    "encode_exception",
]

#: The default limit of one frame, 16 MiB.
DEFAULT_MAX_FRAME_SIZE = 16 << 20
#: The limit of a frame before authentication.
HANDSHAKE_MAX_FRAME_SIZE = 256

MAGIC = b"SPIRO/1\n"
NONCE_SIZE = 32
MAC_SIZE = 32
HEADER = struct.Struct(">I")

_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})
_MAX_DEPTH = 32


class AuthenticationError(ConnectionError):
    """The peer did not prove that it holds the shared key."""


class ProtocolError(ConnectionError):
    """The peer sent something that is not SPIRO; the session is closed."""


class RemoteError(Exception):
    """An exception raised on the other side that cannot be rebuilt here.

    :attr:`type_name` is the remote exception's ``module.qualname``,
    :attr:`remote_traceback` its formatted traceback.
    """

    def __init__(self, type_name, message, remote_traceback):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = remote_traceback


def frame(body):
    """``body`` with its length header."""
    return HEADER.pack(len(body)) + body


def make_nonce():
    return os.urandom(NONCE_SIZE)


def mac(key, role, server_nonce, client_nonce):
    """The HMAC-SHA256 proof of ``role`` (b"client" or b"server")."""
    return hmac.new(key, b"spiro-" + role + server_nonce + client_nonce, hashlib.sha256).digest()


def as_key(authkey):
    """A key as bytes; a str is UTF-8 encoded. An empty key is refused."""
    if isinstance(authkey, str):
        authkey = authkey.encode("utf-8")
    if not isinstance(authkey, (bytes, bytearray)):
        raise TypeError("authkey must be bytes or str")
    if not authkey:
        raise ValueError("authkey must not be empty")
    return bytes(authkey)


def by_value(obj, _depth=0):
    """True when ``obj`` is sent by value.

    That is an exact ``int``, ``float``, ``complex``, ``str``, ``bytes``,
    ``bool`` or None, or a ``tuple`` or ``frozenset`` of such (nested at
    most 32 deep). Everything else goes by reference.
    """
    kind = type(obj)
    if kind in _SCALARS:
        return True
    if (kind is tuple or kind is frozenset) and _depth < _MAX_DEPTH:
        return all(by_value(item, _depth + 1) for item in obj)
    return False


def encode_exception(exc, skip=0):
    """What crosses the wire for ``exc``: a tuple of plain values.

    ``skip`` leaves out that many outermost frames of the traceback (the
    server's own machinery), as long as one frame is left.
    """
    kind = type(exc)
    tb = exc.__traceback__
    for _ in range(skip):
        if tb is None or tb.tb_next is None:
            break
        tb = tb.tb_next
    text = "".join(traceback.format_exception(kind, exc, tb))
    args = exc.args if by_value(exc.args) else tuple(repr(arg) for arg in exc.args)
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable>"
    return (kind.__module__, kind.__qualname__, args, message, text)


def decode_exception(info):
    """The exception to raise for what :func:`encode_exception` made.

    A built-in exception type is rebuilt as itself, with the remote
    traceback in ``remote_traceback`` and in a note; anything else becomes
    a :class:`RemoteError`.
    """
    try:
        module, qualname, args, message, text = info
    except (TypeError, ValueError):
        return ProtocolError(f"malformed exception info {info!r:.200}")
    exc = None
    if module == "builtins" and isinstance(qualname, str):
        kind = getattr(builtins, qualname, None)
        if isinstance(kind, type) and issubclass(kind, BaseException):
            try:
                exc = kind(*args)
            except Exception:
                exc = None
    if exc is None:
        exc = RemoteError(f"{module}.{qualname}", message, text)
    exc.remote_traceback = text
    exc.add_note("--- remote traceback ---\n" + text.rstrip())
    return exc


class _HookedPickler(pickle.Pickler):
    # persistent_id as a method of a subclass: assigning it on an instance
    # fails on CPython 3.13.0 (the attribute became read-only there).
    def __init__(self, file, hook):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._hook = hook

    def persistent_id(self, obj):
        return self._hook(obj)


class _HookedUnpickler(pickle.Unpickler):
    def __init__(self, file, hook):
        super().__init__(file)
        self._hook = hook

    def persistent_load(self, pid):
        return self._hook(pid)


def dumps(message, persistent_id):
    """Pickle ``message``, naming objects ``persistent_id`` gives an id for."""
    out = io.BytesIO()
    _HookedPickler(out, persistent_id).dump(message)
    return out.getvalue()


def loads(body, persistent_load):
    """Unpickle a message body, resolving ids with ``persistent_load``."""
    return _HookedUnpickler(io.BytesIO(body), persistent_load).load()
