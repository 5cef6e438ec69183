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
``("out", stream, text)``
    A notice from the server: text that the code a request runs wrote to
    ``"stdout"`` or ``"stderr"``; the client writes it to its own stream.

Either side may send a request while it waits for a reply, so the requests
of one connection nest like calls on a stack: a reply always answers the
innermost request still open.

Before a body is unpickled, its opcodes are walked to bound how deep it
nests (:mod:`pike.spiro.pickleguard`), and after it the message's shape is
checked by type, never by hashing or comparing what a peer sent; the
client also refuses every global but ``complex`` (a server sends nothing
else by value).

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

from .pickleguard import DEFAULT_MAX_NESTING, check_nesting

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_NESTING",
    "MIN_KEY_LENGTH",
    "AuthenticationError",
    "ProtocolError",
    "RemoteError",
    "by_value",
    "check_message",
    "decode_exception",
    "encode_exception",
]

#: The default limit of one frame, 16 MiB.
DEFAULT_MAX_FRAME_SIZE = 16 << 20
#: The shortest key taken, in bytes.
MIN_KEY_LENGTH = 16
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

    ``type_name`` is the remote exception's ``module.qualname``,
    ``remote_traceback`` its formatted traceback.
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
    """A key as bytes; a str is UTF-8 encoded.

    A key shorter than :data:`MIN_KEY_LENGTH` bytes is refused with
    ValueError: a short key can be guessed offline from one recorded
    handshake.
    """
    if isinstance(authkey, str):
        authkey = authkey.encode("utf-8")
    if not isinstance(authkey, (bytes, bytearray)):
        raise TypeError("authkey must be bytes or str")
    if len(authkey) < MIN_KEY_LENGTH:
        raise ValueError(
            f"the authkey is {len(authkey)} byte{'' if len(authkey) == 1 else 's'} long; "
            f"at least {MIN_KEY_LENGTH} are needed "
            "(make one with: python -c \"import secrets; print(secrets.token_hex(32))\")"
        )
    return bytes(authkey)


def check_message(message, shapes):
    """The kind of ``message``, a tuple whose first item names its kind.

    ``shapes`` maps each kind to the message's length. Only types are
    looked at, so nothing a peer built (a tuple nested deep, an object with
    its own ``__eq__``) is hashed or compared. Raises ValueError.
    """
    if type(message) is not tuple or not message:
        raise ValueError("not a SPIRO message")
    kind = message[0]
    if type(kind) is not str or kind not in shapes:
        raise ValueError("not a SPIRO message")
    if len(message) != shapes[kind]:
        raise ValueError(f"a {kind!r} message of the wrong length")
    return kind


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
    if type(info) is not tuple or len(info) != 5:
        return ProtocolError("malformed exception info")
    module, qualname, args, message, text = info
    if not all(type(item) is str for item in (module, qualname, message, text)) or (
        type(args) is not tuple
    ):
        return ProtocolError("malformed exception info")
    exc = None
    if module == "builtins":
        kind = getattr(builtins, qualname, None)
        # Only an Exception is rebuilt: a peer must not make this side
        # raise SystemExit or KeyboardInterrupt.
        if isinstance(kind, type) and issubclass(kind, Exception):
            try:
                exc = kind(*args)
            except Exception:
                exc = None
    if exc is None:
        exc = RemoteError(f"{module}.{qualname}", message, text)
    exc.remote_traceback = text
    if hasattr(exc, "add_note"):  # Python 3.11 and later
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
    def __init__(self, file, hook, allowed_globals):
        super().__init__(file)
        self._hook = hook
        self._allowed = allowed_globals

    def persistent_load(self, pid):
        return self._hook(pid)

    def find_class(self, module, name):
        if self._allowed is not None and (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"the global {module}.{name} is not allowed here")
        return super().find_class(module, name)


def dumps(message, persistent_id):
    """Pickle ``message``, naming objects ``persistent_id`` gives an id for."""
    out = io.BytesIO()
    _HookedPickler(out, persistent_id).dump(message)
    return out.getvalue()


def loads(body, persistent_load, max_nesting=DEFAULT_MAX_NESTING, allowed_globals=None):
    """Unpickle a message body, resolving ids with ``persistent_load``.

    The body is refused (:exc:`pickle.UnpicklingError`) when its containers
    nest deeper than ``max_nesting``, before any object is built; with
    ``allowed_globals`` (a set of ``(module, name)``), so is any other global.
    """
    check_nesting(body, max_nesting)
    return _HookedUnpickler(io.BytesIO(body), persistent_load, allowed_globals).load()
