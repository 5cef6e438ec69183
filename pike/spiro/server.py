"""The SPIRO server: remote interpreter sessions on a pike listener.

Threading model. The server's poller (one thread) does all the I/O: it
accepts, authenticates, frames input and writes output. Each authenticated
connection gets a *session* with a worker thread of its own, which
unpickles requests, runs them and pickles replies. The poller hands a
received frame to the worker through a queue; the worker hands a frame to
send back to the poller with ``call_soon_threadsafe``. So the poller never
waits for session code, and a session may block (in a callback to its
client, or in code it runs) without holding up the others. A callback is
a request the worker sends, after which it keeps taking messages from its
queue, running the client's nested requests, until the reply comes.

What a session's code writes to ``sys.stdout``/``sys.stderr`` goes back to
its client as ``out`` notices (:mod:`pike.spiro.output`), sent before the
reply of the request that wrote it.

Admission. Connections that have not authenticated yet are capped in all
and per peer address (:mod:`pike.spiro.admission`), the oldest giving way
to the newest; sessions are capped, and a key holder past that cap is told
so. The listener stops accepting only when both caps are reached.
"""

import builtins
import functools
import importlib
import ipaddress
import itertools
import logging
import pickle
import queue
import secrets
import ssl
import threading

try:
    import resource
except ImportError:  # not on Windows
    resource = None

from pike.chat import Chat
from pike.poller import make_poller
from pike.server.listener import Listener

from . import output, protocol
from .admission import (
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_PENDING_PER_PEER,
    DEFAULT_MAX_SESSIONS,
    DropLog,
    PendingConnections,
    peer_of,
)
from .protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_NESTING,
    HANDSHAKE_MAX_FRAME_SIZE,
    HEADER,
    MAC_SIZE,
    MAGIC,
    NONCE_SIZE,
    ProtocolError,
    by_value,
    check_message,
    encode_exception,
    frame,
)

__all__ = ["SpiroServer", "is_loopback"]

logger = logging.getLogger("pike.spiro")

_CLOSED = object()  # put in a session's queue when its connection closed
_PAUSE_AT = 32  # frames queued for a worker before reading pauses
_OUTPUT_BATCH = 8192  # characters of printed output held before they are sent
# Bytes a worker may hand to the poller beyond what the connection's write
# buffer holds: past it (or while the buffer is over its high water mark)
# the worker waits, so a client that does not read stops its session
# instead of growing the server's memory.
_SEND_WINDOW = 256 << 10
#: The handshake reply to a key holder when the server has all the sessions it takes.
BUSY = b"BUSY"


class _SessionClosed(BaseException):
    """Unwinds a worker whose connection went away (not an Exception, so that
    session code with ``except Exception`` does not swallow it)."""


def is_loopback(host):
    """True when ``host`` names only this machine (``localhost``, 127/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ByRef:
    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj


class ClientCallback:
    """A callable of the client, as server-side code sees it.

    Calling it sends a callback request to the client and waits for the
    result; meanwhile the client's nested requests are served. It may only
    be called from its session's own thread.
    """

    __slots__ = ("_session", "_cid", "__weakref__")

    def __init__(self, session, cid):
        self._session = session
        self._cid = cid

    def __call__(self, *args, **kwargs):
        return self._session.call_client(self._cid, args, kwargs)

    def __repr__(self):
        return f"<spiro client callback {self._cid}>"

    def __del__(self):
        try:
            self._session.released_callbacks.append(self._cid)
        except Exception:
            pass


class _Session:
    """One client's interpreter: namespace, object table, worker thread."""

    _numbers = itertools.count(1)

    def __init__(self, server, connection):
        self.number = next(self._numbers)
        self.server = server
        self.connection = connection
        self.namespace = {"__name__": "__spiro__", "__builtins__": builtins}
        self.objects = {}
        self._oids = itertools.count(1)
        self._rids = itertools.count(1)
        self.inbox = queue.SimpleQueue()
        self.released_callbacks = []
        self._output = []
        self._output_size = 0
        self.busy = 0
        self.closed = False
        self.thread = threading.Thread(
            target=self._run, name=f"spiro-session-{self.number}", daemon=True
        )

    def __repr__(self):
        return f"<spiro session {self.number} {self.connection.addr!r}>"

    # -- messages --------------------------------------------------------------

    def _send(self, message):
        if self._output:
            self._flush_output()
        released = self.released_callbacks
        if released:
            cids = released[:]
            del released[: len(cids)]
            self._push(self._dumps(("cbrelease", tuple(cids))))
        self._push(self._dumps(message))

    def _push(self, body):
        if len(body) > self.server.max_frame_size:
            raise ValueError(
                f"a message of {len(body)} bytes is over the frame limit "
                f"({self.server.max_frame_size})"
            )
        data = frame(body)
        connection = self.connection
        connection.wait_for_room()
        if connection.closed:
            raise _SessionClosed()
        connection.in_flight(len(data))
        try:
            self.server.poller.call_soon_threadsafe(connection._send_frame, data)
        except Exception:
            raise _SessionClosed() from None

    def _write_output(self, stream, text):
        # the sink of this session thread's sys.stdout / sys.stderr
        if type(text) is not str:
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._output.append((stream, text))
        self._output_size += len(text)
        if self._output_size >= _OUTPUT_BATCH:
            self._flush_output()
        return len(text)

    def _flush_output(self):
        pieces, self._output = self._output, []
        self._output_size = 0
        # pieces of one stream in a row go as one text, cut to fit a frame
        chunk = max(1, min(1 << 16, (self.server.max_frame_size - 64) // 4))
        merged = []
        for stream, text in pieces:
            if merged and merged[-1][0] == stream:
                merged[-1][1].append(text)
            else:
                merged.append((stream, [text]))
        for stream, texts in merged:
            text = "".join(texts)
            for start in range(0, len(text), chunk):
                self._push(self._dumps(("out", stream, text[start:start + chunk])))

    def _dumps(self, message):
        return protocol.dumps(message, self._persistent_id)

    def _persistent_id(self, obj):
        kind = type(obj)
        if kind is _ByRef:
            oid = next(self._oids)
            self.objects[oid] = obj.obj
            return ("ref", oid, type(obj.obj).__qualname__)
        if kind is ClientCallback and obj._session is self:
            return ("cb", obj._cid)
        return None

    def _persistent_load(self, pid):
        if type(pid) is not tuple or len(pid) != 2:
            raise pickle.UnpicklingError(f"bad persistent id {pid!r:.100}")
        kind, ident = pid
        if kind == "obj":
            try:
                return self.objects[ident]
            except (KeyError, TypeError):
                raise pickle.UnpicklingError(f"no object {ident!r:.50} in this session") from None
        if kind == "cb":
            return ClientCallback(self, ident)
        raise pickle.UnpicklingError(f"bad persistent id {pid!r:.100}")

    def _receive(self):
        if self.closed:
            raise _SessionClosed()
        body = self.inbox.get()
        if body is _CLOSED:
            self.closed = True
            raise _SessionClosed()
        connection = self.connection
        if connection._paused:
            self.server.poller.call_soon_threadsafe(connection._maybe_resume)
        try:
            message = protocol.loads(body, self._persistent_load, self.server.max_nesting)
            check_message(message, _SHAPES)
        except Exception as exc:  # MemoryError and RecursionError too: this session only
            raise ProtocolError(f"malformed frame ({type(exc).__name__}: {exc})") from None
        return message

    @staticmethod
    def _wrap(value):
        if by_value(value) or type(value) is ClientCallback:
            return value
        return _ByRef(value)

    # -- the worker ------------------------------------------------------------

    def _run(self):
        try:
            if self.server.capture_output:
                output.route_to(self._write_output)
            try:
                while True:
                    self._dispatch(self._receive())
            finally:
                # before anything is logged: a log handler may write to stderr
                output.route_to(None)
        except _SessionClosed:
            pass
        except ProtocolError as exc:
            logger.error("spiro: %r: %s; closing the session", self, exc)
        except Exception:
            logger.exception("spiro: %r failed; closing the session", self)
        finally:
            self.closed = True
            try:
                self.server.poller.call_soon_threadsafe(self.connection.close)
            except Exception:
                pass
            self.objects.clear()
            self.namespace.clear()
            self.released_callbacks.clear()
            self.server._forget(self)

    def _dispatch(self, message):
        kind = message[0]
        if kind == "req":
            self._serve(message[1], message[2], message[3])
        elif kind == "release":
            self._release(message[1])
        else:
            raise ProtocolError(f"unexpected {kind!r} message")

    def _serve(self, rid, op, args):
        if type(rid) is not int:
            raise ProtocolError("a request id that is not an int")
        if self.server.capture_output:
            output.ensure()
        self.busy += 1
        try:
            method = _OPERATIONS.get(op) if isinstance(op, str) else None
            if method is None:
                raise ValueError(f"unknown operation {op!r:.50}")
            if type(args) is not tuple:
                raise TypeError("the arguments must be a tuple")
            value = method(self, *args)
            reply = ("ok", rid, self._wrap(value))
        except _SessionClosed:
            raise
        except BaseException as exc:  # noqa: B036 - SystemExit too goes back
            reply = ("err", rid, encode_exception(exc, skip=2))
        finally:
            self.busy -= 1
        try:
            self._send(reply)
        except _SessionClosed:
            raise
        except Exception as exc:  # e.g. a value that cannot be pickled
            self._send(("err", rid, encode_exception(exc)))

    def call_client(self, cid, args, kwargs):
        """Call the client's callable ``cid`` and return its result."""
        if threading.current_thread() is not self.thread:
            raise RuntimeError("a client callback may only be called from its session's thread")
        rid = next(self._rids)
        self._send((
            "cb", rid, cid,
            tuple(self._wrap(arg) for arg in args),
            {key: self._wrap(value) for key, value in kwargs.items()},
        ))
        while True:
            message = self._receive()
            kind = message[0]
            if kind in ("ok", "err"):
                if type(message[1]) is not int or message[1] != rid:
                    raise ProtocolError(f"a reply to {message[1]!r}, expected {rid}")
                if kind == "ok":
                    return message[2]
                raise protocol.decode_exception(message[2])
            self._dispatch(message)

    def _release(self, oids):
        for oid in oids if type(oids) is tuple else ():
            self.objects.pop(oid, None)

    # -- operations ----------------------------------------------------------------

    def op_do(self, source):
        exec(compile(source, "<spiro>", "exec"), self.namespace)

    def op_eval(self, source):
        return eval(compile(source, "<spiro>", "eval"), self.namespace)

    def op_doimport(self, modname, attr=None):
        module = importlib.import_module(modname)
        if attr is not None:
            value = getattr(module, attr)
            self.namespace[attr] = value
            return value
        top = modname.partition(".")[0]
        self.namespace[top] = importlib.import_module(top)
        return module

    def op_dir(self, *target):
        if target:
            return tuple(dir(target[0]))
        return tuple(sorted(name for name in self.namespace if name != "__builtins__"))

    def op_getattr(self, obj, name):
        return getattr(obj, name)

    def op_setattr(self, obj, name, value):
        setattr(obj, name, value)

    def op_delattr(self, obj, name):
        delattr(obj, name)

    def op_call(self, obj, args, kwargs):
        return obj(*args, **kwargs)

    def op_getitem(self, obj, key):
        return obj[key]

    def op_setitem(self, obj, key, value):
        obj[key] = value

    def op_delitem(self, obj, key):
        del obj[key]

    def op_contains(self, obj, item):
        return item in obj

    def op_len(self, obj):
        return len(obj)

    def op_bool(self, obj):
        return bool(obj)

    def op_iter(self, obj):
        return iter(obj)

    def op_next(self, obj):
        return next(obj)

    def op_repr(self, obj):
        return repr(obj)

    def op_str(self, obj):
        return str(obj)

    def op_release(self, oids):
        self._release(oids)


_SHAPES = {"req": 4, "cb": 5, "ok": 3, "err": 3, "release": 2, "cbrelease": 2}
_OPERATIONS = {
    name[3:]: method for name, method in vars(_Session).items() if name.startswith("op_")
}


class _Connection(Chat):
    """One client connection on the server's poller: handshake, then frames."""

    def __init__(self, server, alternate_poller=None, sock=None):
        self.server = server
        self.session = None
        self.peer = None
        self._chunks = []
        self._header = True
        self._paused = False
        self._refused = False
        self._flow = threading.Condition()
        self._in_flight = 0            # bytes handed over by the worker, not yet pushed
        self._output_paused = False    # the write buffer is over its high water mark
        self._nonce = protocol.make_nonce()
        self._timer = None
        super().__init__(alternate_poller, sock)
        if server.ssl_context is not None:
            # Before the greeting below: nothing may leave unencrypted. The
            # auth timeout bounds the TLS handshake too.
            self.start_tls(server.ssl_context, server_side=True)
        self.max_frame_size = None  # int counts only; the header is checked below
        self.set_terminator(HEADER.size)
        self._last = self.poller.time()
        self._timer = self.poller.call_later(server.auth_timeout, self._check_idle)
        self.peer = peer_of(self.addr)
        self.push(frame(MAGIC + self._nonce))
        server._admit(self)

    def __repr__(self):
        return f"<spiro connection {self.addr!r}>"

    # -- input -------------------------------------------------------------------

    def collect_incoming_data(self, data):
        if not self._refused:
            self._chunks.append(data)

    def found_terminator(self):
        if self._refused:  # told BUSY, closing: nothing more is read
            return
        data = b"".join(self._chunks)
        self._chunks.clear()
        if self._header:
            (size,) = HEADER.unpack(data)
            limit = (
                self.server.max_frame_size if self.session is not None
                else HANDSHAKE_MAX_FRAME_SIZE
            )
            if size == 0 or size > limit:
                report = logger.error if self.session is not None else functools.partial(
                    self.server.drop_log.note, "oversized handshakes", logging.ERROR
                )
                report(
                    "spiro: %r announced a frame of %d bytes (limit %d); closing the session",
                    self, size, limit,
                )
                self.close()
                return
            self._header = False
            self.set_terminator(size)
            return
        self._header = True
        self.set_terminator(HEADER.size)
        self._last = self.poller.time()
        if self.session is None:
            self._authenticate(data)
            return
        self.session.inbox.put(data)
        if self.session.inbox.qsize() >= _PAUSE_AT and not self._paused:
            self._paused = True
            self.pause_reading()

    def _maybe_resume(self):
        if self._paused and self.session.inbox.qsize() < _PAUSE_AT // 2:
            self._paused = False
            if not self.closed:
                self.resume_reading()

    def _authenticate(self, data):
        expected = len(MAGIC) + MAC_SIZE + NONCE_SIZE
        drop_log = self.server.drop_log
        if len(data) != expected or not data.startswith(MAGIC):
            drop_log.note("malformed handshakes", logging.ERROR,
                          "spiro: %r sent a malformed handshake; closing the session", self)
            self.close()
            return
        proof = data[len(MAGIC):len(MAGIC) + MAC_SIZE]
        client_nonce = data[len(MAGIC) + MAC_SIZE:]
        key = self.server.authkey
        if not protocol.hmac.compare_digest(
            proof, protocol.mac(key, b"client", self._nonce, client_nonce)
        ):
            drop_log.note("failed authentications", logging.WARNING,
                          "spiro: %r failed authentication; closing the session", self)
            self.close()
            return
        server = self.server
        server.pending.discard(self, self.peer)
        if server.max_sessions is not None and len(server.sessions) >= server.max_sessions:
            drop_log.note("logins over the session limit", logging.WARNING,
                          "spiro: %r authenticated, but all %d sessions are taken; closing it",
                          self, server.max_sessions)
            self._refused = True
            self.push(frame(BUSY))
            self.close_when_done()
            return
        self.push(frame(b"OK" + protocol.mac(key, b"server", self._nonce, client_nonce)))
        session = self.session = _Session(self.server, self)
        self.server._adopt(session)
        session.thread.start()
        self._restart_timer(self.server.idle_timeout)

    # -- output, idleness, closing ---------------------------------------------------

    def _send_frame(self, data):
        # in the poller's thread: a frame from the worker
        if not self.closed:
            self._last = self.poller.time()
            self.push(data)
        with self._flow:
            self._in_flight -= len(data)
            self._flow.notify_all()

    def in_flight(self, size):
        """The worker hands ``size`` more bytes to the poller."""
        with self._flow:
            self._in_flight += size

    def wait_for_room(self):
        """In the worker's thread: wait until the client has read enough."""
        with self._flow:
            while not self.closed and (self._output_paused or self._in_flight > _SEND_WINDOW):
                self._flow.wait(1.0)

    def handle_pause_writing(self):
        with self._flow:
            self._output_paused = True

    def handle_resume_writing(self):
        with self._flow:
            self._output_paused = False
            self._flow.notify_all()
        super().handle_resume_writing()

    def _restart_timer(self, delay):
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.poller.call_later(delay, self._check_idle)

    def _check_idle(self):
        self._timer = None
        if self.closed:
            return
        server = self.server
        if self.session is None:
            server.drop_log.note(
                "authentication timeouts", logging.ERROR,
                "spiro: %r did not authenticate within %gs; closing the session",
                self, server.auth_timeout,
            )
            self.close()
            return
        idle = self.poller.time() - self._last
        if self.session.busy:
            self._restart_timer(server.idle_timeout)
        elif idle >= server.idle_timeout:
            logger.warning(
                "spiro: %r idle for %.1fs (timeout %gs); closing the session",
                self, idle, server.idle_timeout,
            )
            self.close()
        else:
            self._restart_timer(server.idle_timeout - idle)

    def handle_error(self):
        logger.exception("spiro: %r failed; closing the session", self)
        self.close()

    def close(self):
        if self.closed:
            return
        super().close()
        with self._flow:
            self._flow.notify_all()   # a worker waiting for room: it is over
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.session is not None:
            self.session.inbox.put(_CLOSED)
        elif self.peer is not None:
            self.server.pending.discard(self, self.peer)


def _check_fd_limit(max_sessions, max_pending):
    """Warn when the open-file limit cannot hold every connection allowed."""
    if resource is None or max_sessions is None:
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_sessions + max_pending + 16   # the listener, the poller, logs...
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning(
            "spiro: the open-file limit (%d) is below the %d that %d sessions and %d "
            "pending connections need; lower the caps or raise the limit (ulimit -n)",
            soft, needed, max_sessions, max_pending,
        )


class SpiroServer:
    """A SPIRO server: remote interpreter sessions, one per connection.

    :param address: ``(host, port)`` to listen on; port 0 picks a free one
        (see :attr:`address`). The default is ``("127.0.0.1", 0)``.
    :param authkey: the shared key (bytes or str). When None a random key is
        made (see :attr:`authkey`); this is refused for a host that is not
        loopback.
    :param poller: the poller to serve on. When None the server makes one
        of its own, and closes it in :meth:`close`.
    :param idle_timeout: seconds a session may stay silent (while it runs
        no request) before it is closed.
    :param auth_timeout: seconds a new connection has to authenticate.
    :param max_frame_size: the longest frame taken or sent, in bytes.
    :param max_nesting: how deep the containers of one message may nest;
        a deeper message closes its session before it is unpickled.
    :param max_sessions: the most authenticated sessions at once (None: no
        limit). A key holder past it is told the server is busy
        (:exc:`ConnectionRefusedError` on the client).
    :param max_pending: the most connections still authenticating at once.
    :param max_pending_per_peer: the most of those from one peer address.
        At either cap the oldest such connection is closed for the new one.
    :param capture_output: send what session code prints to ``sys.stdout``
        and ``sys.stderr`` to its client (see "Printed output" in the docs).
    :param ssl_context: a server-side ``ssl.SSLContext``: every connection
        is TLS, and the key's challenge and response travel inside it.

    Serve with :meth:`serve_forever` in the calling thread, or
    :meth:`start` for a thread of the server's own; :meth:`close` ends
    everything. Usable as a context manager.
    """

    def __init__(
        self,
        address=("127.0.0.1", 0),
        authkey=None,
        *,
        poller=None,
        idle_timeout=300.0,
        auth_timeout=10.0,
        max_frame_size=DEFAULT_MAX_FRAME_SIZE,
        max_nesting=DEFAULT_MAX_NESTING,
        max_sessions=DEFAULT_MAX_SESSIONS,
        max_pending=DEFAULT_MAX_PENDING,
        max_pending_per_peer=DEFAULT_MAX_PENDING_PER_PEER,
        capture_output=True,
        ssl_context=None,
    ):
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, not {ssl_context!r}")
        #: The ``ssl.SSLContext`` connections use (None: plain TCP).
        self.ssl_context = ssl_context
        host = address[0]
        if authkey is None:
            if not is_loopback(host):
                raise ValueError(
                    f"refusing to serve on {host!r}, which is not loopback, "
                    "without an explicit authkey"
                )
            authkey = secrets.token_hex(32)
            #: True when :attr:`authkey` was made up by the server.
            self.generated_key = True
        else:
            self.generated_key = False
        #: The shared key, as bytes.
        self.authkey = protocol.as_key(authkey)
        for name, value in (("max_frame_size", max_frame_size), ("max_nesting", max_nesting),
                            ("max_sessions", 1 if max_sessions is None else max_sessions)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        self.idle_timeout = idle_timeout
        self.auth_timeout = auth_timeout
        self.max_frame_size = max_frame_size
        self.max_nesting = max_nesting
        self.max_sessions = max_sessions
        #: The connections still authenticating (see :mod:`pike.spiro.admission`).
        self.pending = PendingConnections(max_pending, min(max_pending_per_peer, max_pending))
        #: Logs the connections turned away before authenticating, boundedly;
        #: ``drop_log.totals`` counts them by reason.
        self.drop_log = DropLog(logger)
        self.capture_output = capture_output
        _check_fd_limit(max_sessions, max_pending)
        self._own_poller = poller is None
        self.poller = make_poller() if poller is None else poller
        #: The live sessions, by session number.
        self.sessions = {}
        self._lock = threading.Lock()
        self._thread = None
        self._closed = False
        try:
            self.listener = Listener(
                functools.partial(_Connection, self),
                address,
                poller=self.poller,
                # both caps reached: nothing could be admitted, so wait in the backlog
                max_connections=None if max_sessions is None else max_sessions + max_pending,
            )
        except BaseException:
            if self._own_poller:
                self.poller.close()
            raise
        if capture_output:
            output.install()

    @property
    def address(self):
        """The address listened on, with the real port."""
        return self.listener.address

    def object_count(self):
        """How many objects the sessions hold for their clients, all told."""
        with self._lock:
            return sum(len(session.objects) for session in self.sessions.values())

    def _admit(self, connection):
        # a new connection, not authenticated yet: older ones may give way
        for old in self.pending.add(connection, connection.peer):
            self.drop_log.note(
                "evicted while authenticating", logging.WARNING,
                "spiro: %r evicted: %d connections of %s (or %d in all) are authenticating",
                old, self.pending.per_peer, connection.peer, self.pending.limit,
            )
            old.close()

    def _adopt(self, session):
        with self._lock:
            self.sessions[session.number] = session
        logger.info("spiro: %r authenticated", session)

    def _forget(self, session):
        with self._lock:
            self.sessions.pop(session.number, None)
        logger.info("spiro: %r ended", session)

    def serve_forever(self):
        """Serve until :meth:`close` (from another thread) or an exception."""
        try:
            while not self._closed:
                self.poller.loop(timeout=1.0)
        finally:
            if not self._closed and not self.listener.closed:
                self.listener.close()

    def start(self):
        """Serve in a daemon thread of the server's own; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="spiro-server",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self, timeout=5.0):
        """Close the listener and every session, and wait for their threads.

        A session thread stuck in code that never returns is left behind
        (it is a daemon thread) after ``timeout`` seconds.
        """
        if self._closed:
            return
        if self._thread is not None and self._thread.is_alive():
            def shut():
                self.listener.close()
                self._closed = True
                self.poller.stop()

            self.poller.call_soon_threadsafe(shut)
            self._thread.join(timeout)
        else:
            self.listener.close()
            self._closed = True
        with self._lock:
            sessions = list(self.sessions.values())
        for session in sessions:
            session.inbox.put(_CLOSED)
            session.thread.join(timeout)
        if self._own_poller:
            self.poller.close()
        if self.capture_output:
            output.uninstall()
        self.drop_log.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return f"<SpiroServer {self.address!r} {len(self.sessions)} sessions>"
