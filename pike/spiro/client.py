"""The SPIRO client: a session on a blocking socket, and proxies.

A :class:`Session` is used from one thread at a time (a lock makes other
threads wait). While it waits for a reply it serves the server's callback
requests, calling the client's own functions, which may make requests of
their own: these nest on the one connection.

Nothing a server sends can take the client's process down: a frame is
checked for size and nesting before it is unpickled, only ``complex`` may
be named as a global in it, and its shape is checked by type. A frame that
fails any of this closes the session with :exc:`~pike.spiro.ProtocolError`.
"""

import functools
import itertools
import pickle
import socket
import sys
import threading
import types

from . import protocol
from .pickleguard import NestingError, check_nesting
from .protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_NESTING,
    HEADER,
    MAC_SIZE,
    MAGIC,
    NONCE_SIZE,
    AuthenticationError,
    ProtocolError,
    check_message,
    decode_exception,
    encode_exception,
    frame,
)

__all__ = ["Proxy", "Session", "callback", "connect"]

_CALLBACK_TYPES = (
    types.FunctionType,
    types.MethodType,
    types.BuiltinMethodType,
    functools.partial,
)

# What a server may send: only values by value, so no global but complex.
_ALLOWED_GLOBALS = frozenset({("builtins", "complex")})
_SHAPES = {"ok": 3, "err": 3, "cb": 5, "cbrelease": 2, "out": 3}
_BUSY = b"BUSY"  # the server's handshake reply when all its sessions are taken
_STREAMS = ("stdout", "stderr")


class callback:  # noqa: N801 - reads like a function
    """Mark ``fn`` to be passed to the server as a callback.

    Plain functions, lambdas, bound methods and ``functools.partial``
    objects are callbacks anyway; wrap other callables (an object with
    ``__call__``, a builtin function) to pass them as callbacks rather than
    pickle them by value.
    """

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def parse_address(address):
    """``(host, port)`` from a tuple or a ``"host:port"`` string.

    Raises ValueError for a string that is not ``HOST:PORT`` with a port
    from 1 to 65535.
    """
    if isinstance(address, str):
        host, sep, port = address.rpartition(":")
        if not sep:
            raise ValueError(f"an address is HOST:PORT, not {address!r}")
        if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(f"the port of {address!r} is not a number from 1 to 65535")
        return (host.strip("[]") or "127.0.0.1", int(port))
    return tuple(address)


def connect(address, authkey, *, timeout=10.0, max_frame_size=DEFAULT_MAX_FRAME_SIZE,
            max_nesting=DEFAULT_MAX_NESTING, ssl_context=None, server_hostname=None):
    """Open a :class:`Session` on the SPIRO server at ``address``.

    ``address`` is ``(host, port)`` or ``"host:port"``; ``authkey`` the
    shared key (bytes or str, at least 16 bytes), without which nothing is
    attempted. ``timeout`` bounds connecting and the handshake; after it
    the session waits for replies as long as they take. ``max_frame_size``
    and ``max_nesting`` bound what the server may send. Raises
    :exc:`~pike.spiro.AuthenticationError` when the key is wrong, and
    :exc:`ConnectionRefusedError` when the server has all the sessions it
    takes. With ``ssl_context`` (a client ``ssl.SSLContext``) the session
    runs over TLS, the server's certificate checked for ``server_hostname``
    (default: the host of ``address``); the key is still proved, inside
    the encrypted channel. A failed verification raises
    ``ssl.SSLCertVerificationError``.
    """
    if authkey is None:
        raise ValueError("a SPIRO server needs its authkey")
    key = protocol.as_key(authkey)
    address = parse_address(address)
    sock = socket.create_connection(address, timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(
                sock, server_hostname=server_hostname or address[0]
            )  # (the handshake, bounded by ``timeout``)
        session = Session(sock, max_frame_size, max_nesting)
        session._handshake(key)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return session


class Session:
    """A remote interpreter session. Make one with :func:`connect`.

    Its namespace lives on the server, for as long as the connection does.
    Results come back by value when immutable (numbers, strings, bytes,
    None, tuples and frozensets of such), otherwise as a :class:`Proxy`.

    What the server-side code prints is written to :attr:`stdout` and
    :attr:`stderr`: file objects, or None (the default) for whatever
    ``sys.stdout`` / ``sys.stderr`` are when the text arrives.
    """

    def __init__(self, sock, max_frame_size=DEFAULT_MAX_FRAME_SIZE,
                 max_nesting=DEFAULT_MAX_NESTING):
        self._sock = sock
        self._rfile = sock.makefile("rb")
        self.max_frame_size = max_frame_size
        self.max_nesting = max_nesting
        #: Where the server's printed output goes; None means ``sys.stdout``.
        self.stdout = None
        #: Where the server's error output goes; None means ``sys.stderr``.
        self.stderr = None
        self._lock = threading.RLock()
        self._rids = itertools.count(1)
        self._cids = itertools.count(1)
        self._callbacks = {}
        self._released = []
        self.closed = False

    # -- the wire ------------------------------------------------------------------

    def _read_frame(self, limit):
        header = self._rfile.read(HEADER.size)
        if len(header) < HEADER.size:
            raise ConnectionError("the SPIRO server closed the connection")
        (size,) = HEADER.unpack(header)
        if size == 0 or size > limit:
            raise ProtocolError(f"the server announced a frame of {size} bytes (limit {limit})")
        body = self._rfile.read(size)
        if len(body) < size:
            raise ConnectionError("the SPIRO server closed the connection")
        return body

    def _handshake(self, key):
        hello = self._read_frame(protocol.HANDSHAKE_MAX_FRAME_SIZE)
        if len(hello) != len(MAGIC) + NONCE_SIZE or not hello.startswith(MAGIC):
            raise ProtocolError("not a SPIRO server")
        server_nonce = hello[len(MAGIC):]
        client_nonce = protocol.make_nonce()
        proof = protocol.mac(key, b"client", server_nonce, client_nonce)
        self._sock.sendall(frame(MAGIC + proof + client_nonce))
        try:
            reply = self._read_frame(protocol.HANDSHAKE_MAX_FRAME_SIZE)
        except ConnectionError:
            raise AuthenticationError("the server refused the key") from None
        if reply == _BUSY:
            raise ConnectionRefusedError("the SPIRO server has all the sessions it takes")
        expected = protocol.mac(key, b"server", server_nonce, client_nonce)
        if (
            len(reply) != 2 + MAC_SIZE
            or not reply.startswith(b"OK")
            or not protocol.hmac.compare_digest(reply[2:], expected)
        ):
            raise AuthenticationError("the server did not prove that it holds the key")

    def _send(self, message):
        body = protocol.dumps(message, self._persistent_id)
        if len(body) > self.max_frame_size:
            raise ValueError(
                f"a message of {len(body)} bytes is over the frame limit ({self.max_frame_size})"
            )
        try:  # the server would close the session for it: say why here instead
            check_nesting(body, self.max_nesting)
        except NestingError as exc:
            raise ValueError(f"a message the server would refuse: {exc}") from None
        self._sock.sendall(frame(body))

    def _persistent_id(self, obj):
        if isinstance(obj, Proxy):
            if object.__getattribute__(obj, "_spiro_session") is not self:
                raise TypeError("a proxy of another SPIRO session")
            return ("obj", object.__getattribute__(obj, "_spiro_oid"))
        if isinstance(obj, _CALLBACK_TYPES) or type(obj) is callback:
            cid = next(self._cids)
            self._callbacks[cid] = obj
            return ("cb", cid)
        return None

    def _receive(self):
        body = self._read_frame(self.max_frame_size)
        try:
            message = protocol.loads(body, self._persistent_load, self.max_nesting,
                                     _ALLOWED_GLOBALS)
            check_message(message, _SHAPES)
            if message[0] in ("ok", "err", "cb") and type(message[1]) is not int:
                raise ValueError("an id that is not an int")
        except Exception as exc:  # MemoryError and RecursionError too
            raise ProtocolError(
                f"a malformed message from the server ({type(exc).__name__}: {str(exc):.200})"
            ) from None
        return message

    def _persistent_load(self, pid):
        if type(pid) is tuple and len(pid) == 3 and pid[0] == "ref":
            if type(pid[1]) is int and type(pid[2]) is str:
                return Proxy(self, pid[1], pid[2])
        elif type(pid) is tuple and len(pid) == 2 and pid[0] == "cb":
            if type(pid[1]) is int and pid[1] in self._callbacks:
                return self._callbacks[pid[1]]
        raise pickle.UnpicklingError("a bad persistent id")

    def _write_output(self, stream, text):
        if type(stream) is not str or type(text) is not str or stream not in _STREAMS:
            raise ProtocolError("a malformed output notice")
        target = getattr(self, stream)
        if target is None:
            target = getattr(sys, stream)
        try:
            target.write(text)
            target.flush()
        except (OSError, ValueError, AttributeError):
            pass  # no place to print to: the output is lost, the session is not

    def _request(self, op, *args):
        with self._lock:
            if self.closed:
                raise ConnectionError("the SPIRO session is closed")
            try:
                if self._released:
                    oids = tuple(self._released)
                    del self._released[: len(oids)]
                    self._send(("release", oids))
                rid = next(self._rids)
                self._send(("req", rid, op, args))
            except (OSError, EOFError):
                self.close()
                raise
            # Once the request is out, any failure leaves the connection out
            # of step with the server: it is closed.
            try:
                while True:
                    message = self._receive()
                    kind = message[0]
                    if kind == "ok" or kind == "err":
                        if message[1] != rid:
                            raise ProtocolError(f"a reply to {message[1]!r}, expected {rid}")
                        break
                    if kind == "out":
                        self._write_output(message[1], message[2])
                    elif kind == "cb":
                        self._serve_callback(*message[1:])
                    elif kind == "cbrelease":
                        for cid in message[1] if type(message[1]) is tuple else ():
                            if type(cid) is int:
                                self._callbacks.pop(cid, None)
                    else:
                        raise ProtocolError(f"unexpected {kind!r} message")
            except BaseException:
                self.close()
                raise
        if kind == "ok":
            return message[2]
        raise decode_exception(message[2])

    def _serve_callback(self, rid, cid, args, kwargs):
        if type(cid) is not int or type(args) is not tuple or type(kwargs) is not dict:
            raise ProtocolError("a malformed callback request")
        try:
            fn = self._callbacks[cid]
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._send(("err", rid, encode_exception(exc)))
            return
        try:
            self._send(("ok", rid, result))
        except (TypeError, ValueError, AttributeError, pickle.PicklingError) as exc:
            self._send(("err", rid, encode_exception(exc)))

    # -- operations -----------------------------------------------------------------

    def do(self, source):
        """Run statements in the session's namespace; returns None."""
        return self._request("do", source)

    def eval(self, source):
        """The value of an expression evaluated in the session's namespace."""
        return self._request("eval", source)

    def doimport(self, modname, attr=None):
        """Import ``modname`` on the server (or its attribute ``attr``).

        The name is bound in the session's namespace, and the module (or
        the attribute) returned: ``s.doimport("os").getpid()``.
        """
        if attr is None:
            return self._request("doimport", modname)
        return self._request("doimport", modname, attr)

    def dir(self, obj=None):
        """The names in the session's namespace, or ``dir()`` of a proxy."""
        if obj is None:
            return list(self._request("dir"))
        return list(self._request("dir", obj))

    def release(self, proxy):
        """Drop the server's reference for ``proxy`` now (it is unusable after)."""
        oid = object.__getattribute__(proxy, "_spiro_oid")
        object.__setattr__(proxy, "_spiro_oid", None)
        if oid is not None:
            self._request("release", (oid,))

    def close(self):
        """Close the connection; the server drops everything of the session."""
        if self.closed:
            return
        self.closed = True
        self._callbacks.clear()
        try:
            self._rfile.close()
        finally:
            self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else "open"
        return f"<spiro Session {state}>"


class Proxy:
    """A remote object: attributes, calls, indexing, iteration, ``len`` and
    ``repr`` are done on the server.

    The server keeps the object while the proxy lives (or until
    :meth:`Session.release`).
    """

    __slots__ = ("_spiro_session", "_spiro_oid", "_spiro_type", "__weakref__")

    def __init__(self, session, oid, type_name):
        object.__setattr__(self, "_spiro_session", session)
        object.__setattr__(self, "_spiro_oid", oid)
        object.__setattr__(self, "_spiro_type", type_name)

    def _spiro(self, op, *args):
        session = object.__getattribute__(self, "_spiro_session")
        if object.__getattribute__(self, "_spiro_oid") is None:
            raise ValueError("a released SPIRO proxy")
        return session._request(op, self, *args)

    def __getattr__(self, name):
        if name.startswith("_spiro"):
            raise AttributeError(name)
        return self._spiro("getattr", name)

    def __setattr__(self, name, value):
        self._spiro("setattr", name, value)

    def __delattr__(self, name):
        self._spiro("delattr", name)

    def __call__(self, *args, **kwargs):
        return self._spiro("call", args, kwargs)

    def __getitem__(self, key):
        return self._spiro("getitem", key)

    def __setitem__(self, key, value):
        self._spiro("setitem", key, value)

    def __delitem__(self, key):
        self._spiro("delitem", key)

    def __contains__(self, item):
        return self._spiro("contains", item)

    def __len__(self):
        return self._spiro("len")

    def __bool__(self):
        return self._spiro("bool")

    def __iter__(self):
        return self._spiro("iter")

    def __next__(self):
        return self._spiro("next")

    def __repr__(self):
        return self._spiro("repr")

    def __str__(self):
        return self._spiro("str")

    def __dir__(self):
        return list(self._spiro("dir"))

    def __del__(self):
        try:
            session = object.__getattribute__(self, "_spiro_session")
            oid = object.__getattribute__(self, "_spiro_oid")
            if oid is not None and not session.closed:
                session._released.append(oid)
        except Exception:
            pass
