"""Transport: one non-blocking socket mirrored onto a poller.

A Transport is both the socket's owner and the place its events land: the
poller calls ``handle_read_event`` / ``handle_write_event``, which turn
into the ``handle_*`` callbacks an application overrides. It is a drop-in
for most uses of ``asyncore.dispatcher``, with two differences that make it
fast: write notifications are single-shot and only armed on demand, and
there is a buffered write path (:meth:`Transport.write`) with flow control.

Write notifications are armed by a pending connect, by a send that would
block, by queued data, and by ``poller.defer_write(transport)``; each fires
``handle_write_event`` once. Connect success is read from ``SO_ERROR``.

The peer's EOF: reading stops for good (an EOF stays readable, so reading on
would spin), :meth:`Transport.handle_read_eof` runs, and then, unless
``half_close`` is set, :meth:`Transport.handle_close` -- but only once the
data already queued has been sent. A connection that ends by EOF loses no
byte that was written to it; only :meth:`Transport.close` before the queue
drains (an abort), a reset, or :meth:`Transport.discard_write_buffer` drop
queued data.

The attributes every event reads are set on the instance by ``__init__``;
those that rarely change (water marks, the peer address, EOF and connect
error records) live on the class as defaults, so an idle connection's
instance dict stays small.
"""

from __future__ import annotations

import errno
import logging
import os
import socket

from .errors import (
    ACCEPT_RESOURCE_ERRNOS,
    CONNECT_IN_PROGRESS_ERRNOS,
    CONNECTION_LOST_ERRNOS,
)
from .poller import RECV_CAP, get_poller
from .sendfile import FileSegment, SendfileRequest, file_span
from .write_queue import WriteQueue

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only: no typing cost at import
    import ssl
    from typing import Any, Callable, Iterable, Mapping, TypeVar, Union

    from typing import BinaryIO

    from .poller import Poller
    from .timers import TimerHandle
    from .tls import TLSLayer

    Buffer = Union[bytes, bytearray, memoryview]
    _T = TypeVar("_T", bound="Transport")

logger = logging.getLogger("pike")

#: Default high water mark of the write buffer, in bytes.
DEFAULT_HIGH_WATER = 64 * 1024

# Connections accepted per readiness event of a listener: enough to drain a
# burst in one go, few enough that a flood cannot starve other channels.
_ACCEPTS_PER_EVENT = 32

# Default arguments are evaluated in the class body, where ``socket`` names
# the class attribute, not the module.
_AF_INET = socket.AF_INET
_SOCK_STREAM = socket.SOCK_STREAM
_SOMAXCONN = socket.SOMAXCONN
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)

# The primitives beneath send() and write(): where the two implementations
# differ beneath Transport's logic (with the epoll poller's batched wait,
# pike.poller.epoll_batch). The C accelerator installs its own
# (pike._c_path). A socket subclass's send() override is not used, as the C
# send, which sends on the fd, never does.
#
# _send_now(sock, data), beneath send(): socket.send's contract, except that
# it may return 0 instead of raising BlockingIOError. The pure one is the
# socket method itself, called unbound: no Python frame of its own.
_send_now = _socket_send = socket.socket.send


def _socket_send_rest(sock: socket.socket, data: Buffer) -> int:
    """Beneath write(): send, and return how many bytes of ``data`` (bytes,
    or a buffer whose len() counts bytes) the kernel did not take.

    Raises what ``socket.send`` raises; the C one returns ``len(data)``
    instead of raising BlockingIOError. (Write compares the result with 0,
    a cached int: a count of bytes sent is a new int object every time.)
    """
    return len(data) - _socket_send(sock, data)


_send_rest = _socket_send_rest

# A receive that found nothing after all (a spurious wake-up).
_RECEIVE_RETRY_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})

# The states of a transport's sending side (``_write_state``). OPEN is 0 so
# that the hot path tests "anything but open" with one truth test.
WRITE_OPEN = 0  # write() accepted
WRITE_EOF_AFTER_DRAIN = 1  # write_eof() called: shut down once the queue drains
WRITE_SHUT = 2  # our side is shut down (write_eof done)
WRITE_CLOSE_AFTER_DRAIN = 3  # close_when_done() called: close once drained


class Transport:
    """One socket on one poller, firing ``handle_*`` callbacks.

    ``Transport(alternate_poller=None, sock=None)``: the transport lives on
    ``alternate_poller`` when given, else on the process's default poller.
    ``sock``, when given, is passed to :meth:`set_socket`.

    Set ``half_close = True`` (on the class or the instance) to keep the
    connection open for writing after the peer's EOF: :meth:`handle_eof`
    is called instead of :meth:`handle_close`.

    A *layer* (TLS: :meth:`start_tls`) can sit between this logic and the
    socket. It uses only the methods marked "for layers"
    (:meth:`install_layer` first); the contract is in the contributors'
    design page, "Transport -> layers".
    """

    #: Keep writing after the peer's EOF (see :meth:`handle_eof`).
    half_close = False
    #: Turn Nagle's algorithm off on TCP sockets, as asyncio does: a
    #: callback-driven protocol writes whole messages, and Nagle would hold
    #: back the second of two small writes for a round trip.
    tcp_nodelay = True

    _addr = None
    #: True once the peer's EOF was seen; reading has stopped for good.
    eof_received = False
    # The peer's EOF came while data was queued: handle_close() waits for it
    # to drain (see _peer_eof).
    _close_after_drain = False
    #: The OSError of a failed connect, once one failed.
    connect_error = None

    #: The poller may skip :meth:`handle_read_event` (see pike.poller): true
    #: for every class that does not override it (``__init_subclass__``).
    _plain_read_event = True

    #: Bytes asked of the kernel per read for :meth:`handle_data` (as
    #: asyncio and uvloop, 256 KiB: a stream moves in few, large reads;
    #: at most ``pike.poller.RECV_CAP`` a read except on the C batch).
    read_size = 256 * 1024
    # The class overrides handle_data (__init_subclass__) ...
    _has_handle_data = False
    # ... and neither handle_read nor handle_read_event: the poller may
    # receive for it.
    _delivers_data = False
    # Data (and b"" for an EOF) received for this transport while it was
    # paused: see _hold_received.
    _held: list[bytes] | None = None
    _held_release: TimerHandle | None = None  # resume_reading's call to _release_held

    #: Seconds a listening transport stops accepting after accept() ran out
    #: of a resource (EMFILE...), as asyncio does; see :meth:`handle_accept`.
    accept_retry_delay = 1.0
    _accept_retry = None  # the timer handle while accepting is paused

    #: The :class:`pike.tls.TLSLayer` once :meth:`start_tls` was called.
    tls = None
    _layered = False  # install_layer was called

    _writing_paused = False
    _high_water = DEFAULT_HIGH_WATER
    _low_water = DEFAULT_HIGH_WATER // 4

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._plain_read_event = cls.handle_read_event is Transport.handle_read_event
        cls._has_handle_data = cls.handle_data is not Transport.handle_data
        cls._delivers_data = (
            cls._has_handle_data
            and cls.handle_read is Transport.handle_read
            and cls._plain_read_event
        )

    def __init__(self, alternate_poller: Poller | None = None, sock: socket.socket | None = None) -> None:
        self.poller = alternate_poller if alternate_poller is not None else get_poller()
        # The attributes every event reads live on the instance: CPython
        # 3.11 cannot specialise an instance lookup that falls through to
        # the class, and these are read several times per event.
        self.socket: Any = None  # the socket.socket, once set
        self._fileno = -1
        self.connected = self.connecting = self.accepting = self.closed = False
        self._reading = True
        self._write_armed = False
        self._queue: WriteQueue | None = None  # made on first use
        self._write_state = WRITE_OPEN  # one of the WRITE_* states above
        # True while write() may send at once, skipping its checks: open
        # for writing, a socket, not connecting, nothing queued. Only
        # write's checked path sets it, having made every check; whatever
        # could make one fail clears it: connect, _shutdown_write, close,
        # detach_socket, and _write_queue (every append asks for the queue,
        # so write_eof or close_when_done with data queued finds it clear).
        self._write_direct = False
        self._plain_read_event = type(self)._plain_read_event  # (a copy: as above)
        # > 0: the poller receives up to this many bytes for us and calls
        # handle_data (see _update_receive_size and pike.poller.channel).
        self._receive_size = 0
        if sock is not None:
            self.set_socket(sock)

    # -- socket set-up ----------------------------------------------------

    def create_socket(self, family: int = _AF_INET, type: int = _SOCK_STREAM) -> socket.socket:
        """Create a non-blocking socket and register it with the poller."""
        sock = socket.socket(family, type)
        try:
            self.set_socket(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def set_socket(self, sock: socket.socket) -> None:
        """Mirror ``sock`` on this transport and register it with the poller.

        The socket is made non-blocking. A connected stream socket makes the
        transport ``connected``; a listening one makes it ``accepting``.
        """
        if self.socket is not None:
            raise RuntimeError(f"{self!r} already has a socket")
        if self.closed:
            raise RuntimeError(f"{self!r} is closed")
        sock.setblocking(False)
        self.socket = sock
        self._fileno = sock.fileno()
        try:
            if sock.type == socket.SOCK_STREAM:
                if self.tcp_nodelay and sock.family in _TCP_FAMILIES:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._note_existing_state(sock)
            self.poller.add_channel(self)
            self._update_receive_size()
        except BaseException:
            # Leave the transport as it was; the caller still owns ``sock``.
            self.socket = None
            self._fileno = -1
            self.connected = self.accepting = False
            self.addr = None
            raise

    def _note_existing_state(self, sock: socket.socket) -> None:
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                self.accepting = True
                return
        except OSError:
            pass
        try:
            sock.getpeername()  # kept lazily by ``addr``: ~150 bytes a connection
        except OSError:
            return  # not connected (yet)
        self.connected = True

    @property
    def addr(self) -> Any:
        """The peer's address once connected (the bound one for a listener)."""
        addr = self._addr
        if addr is None and self.connected and self.socket is not None:
            try:
                addr = self._addr = self.socket.getpeername()
            except OSError:
                return None
        return addr

    @addr.setter
    def addr(self, value: Any) -> None:
        self._addr = value

    def fileno(self) -> int:
        """The socket's fd (-1 when there is none)."""
        return self._fileno

    def set_reuse_addr(self) -> None:
        """Set ``SO_REUSEADDR`` so a server can rebind a port in TIME_WAIT."""
        self.socket.setsockopt(
            socket.SOL_SOCKET,
            socket.SO_REUSEADDR,
            self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) | 1,
        )

    def bind(self, address: Any) -> None:
        self.addr = address
        self._require_socket().bind(address)

    def listen(self, backlog: int = _SOMAXCONN) -> None:
        self._require_socket().listen(backlog)
        self.accepting = True
        self._update_receive_size()

    def accept(self) -> tuple[socket.socket, Any] | None:
        """Accept one pending connection: ``(sock, address)``, or None."""
        try:
            return self._require_socket().accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            # The client gave up between the kernel's queue and accept().
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                return None
            raise

    def connect(self, address: Any) -> None:
        """Begin connecting to ``address``; :meth:`handle_connect` follows.

        Completion (or failure) is always reported from the loop, even when
        the kernel connects at once (Unix sockets). An error the kernel
        reports at once is raised here, and the transport is closed.
        """
        sock = self._require_socket()
        self._write_direct = False  # writes queue until connected
        self.connected = False
        self.connecting = True
        self.addr = address
        err = sock.connect_ex(address)
        if err in CONNECT_IN_PROGRESS_ERRNOS or err in (0, errno.EISCONN):
            self.poller.defer_write(self)
            return
        self.connecting = False
        self.connect_error = OSError(err, os.strerror(err))
        self.close()
        raise self.connect_error

    def start_tls(
        self,
        context: ssl.SSLContext,
        server_side: bool = False,
        server_hostname: str | None = None,
        handshake_timeout: float | None = None,
        close_timeout: float | None = None,
    ) -> TLSLayer:
        """Encrypt this connection with TLS from now on; return the layer.

        ``context`` is an ``ssl.SSLContext``. Call it on a connected
        transport (STARTTLS), before :meth:`connect` on a client, or on an
        accepted socket with ``server_side=True``. The handshake runs from
        the loop; :meth:`handle_tls_handshake` reports its end and
        :meth:`handle_tls_failed` a failure (then the transport closes).
        ``recv``, ``handle_read``, ``write`` and the water marks then work
        on plaintext. ``handshake_timeout`` defaults to 60 s; ``close()``
        waits up to ``close_timeout`` (default 5 s) for close_notify to
        leave. See :mod:`pike.tls`.
        """
        from .tls import TLSLayer  # (the ssl module only when TLS is used)

        if self.tls is not None:
            raise RuntimeError(f"{self!r} already runs TLS")
        if self.closed or self.accepting:
            raise RuntimeError(f"start_tls on a {'closed' if self.closed else 'listening'} transport")
        if self.socket is not None and self.socket.type != socket.SOCK_STREAM:
            raise ValueError("start_tls needs a stream socket")
        layer = TLSLayer(self, context, server_side, server_hostname,
                         handshake_timeout, close_timeout)
        self.tls = layer
        layer.install()
        if self.connected:
            layer.begin()
        return layer

    # -- events from the poller -------------------------------------------

    def handle_read_event(self) -> None:
        """Called by the poller when the socket is readable."""
        if self.connecting:
            self.handle_connect_event()
            if not self.connected:
                return
        elif self.accepting:
            self.handle_accept()
            return
        self.handle_read()

    def handle_write_event(self) -> None:
        """Called by the poller once per armed write notification."""
        if self.connecting:
            self.handle_connect_event()
            return
        state = self._write_state
        if self._queue or state == WRITE_EOF_AFTER_DRAIN or state == WRITE_CLOSE_AFTER_DRAIN:
            self._flush_queue()
            if self.closed:
                return
        self.handle_write()
        if self._close_after_drain and not self.closed and not self.get_write_buffer_size():
            # Everything queued before (and after) the peer's EOF is sent.
            # (Checked after handle_write: a layer such as Chat refills the
            # queue from its producers there.)
            self._report_eof_close()

    def handle_connect_event(self) -> None:
        """Decide a pending connect from ``SO_ERROR``, report it, once."""
        if not self.connecting:
            return
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(OSError(err, os.strerror(err)))
            return
        try:
            self.socket.getpeername()
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
            # Not decided yet (a spurious wake-up): wait for the next event.
            self.poller.defer_write(self)
            return
        self.connecting = False
        self.connected = True
        self._update_receive_size()
        # The connect's own write notification, if still armed, is spent.
        pending = bool(self._queue) or self._write_state
        if not pending:
            self.poller.cancel_write(self)
        self.handle_connect()
        if (self._queue or self._write_state) and not self.closed:
            self._flush_queue()  # what was written while connecting

    def _connect_failed(self, exc: OSError) -> None:
        self.connecting = False
        self.connect_error = exc
        try:
            self.handle_connect_failed(exc)
        finally:
            self.close()

    # -- callbacks for subclasses -----------------------------------------

    def handle_connect(self) -> None:
        """The connection is established."""

    def handle_connect_failed(self, exc: OSError) -> None:
        """The connection could not be made; the transport closes after this.

        The default hands ``exc`` to :meth:`handle_error`.
        """
        # handle_error() reads the exception from sys.exc_info(), as in
        # asyncore: raise it so that it is the one being handled there.
        try:
            raise exc
        except OSError:
            self.handle_error()

    def handle_read(self) -> None:
        """The socket has data (or EOF) to read: call :meth:`recv`.

        A class that overrides :meth:`handle_data` gets its data there (an
        override of this method may call it); otherwise the default
        discards what it reads, and notices the EOF.
        """
        if self._has_handle_data:
            data = self.recv(min(self.read_size, RECV_CAP))
            if data:
                self.handle_data(data)
        else:
            self.recv(65536)

    def handle_data(self, data: bytes) -> None:
        """Opt in to receive data here instead of calling :meth:`recv`.

        Override it (and leave :meth:`handle_read` and
        :meth:`handle_read_event` alone) and the transport receives for you:
        each call brings the bytes of one read, never empty: up to
        :attr:`read_size` on the C accelerator's epoll poller, up to the
        smaller of that and 64 KiB elsewhere (see
        ``pike.poller.loop.RECV_CAP``). The EOF still goes to
        :meth:`handle_read_eof` and then :meth:`handle_close` (or
        :meth:`handle_eof`), and a lost connection to :meth:`handle_close`,
        exactly as with ``recv()``. No calls come while reading is paused.

        Besides sparing a protocol its ``recv()`` call, this lets the poller
        receive for many transports at once: with the C accelerator on
        epoll, one call into C receives for every ready transport
        of a loop iteration.
        """

    def handle_write(self) -> None:
        """A write notification fired: the socket may take more data now."""

    def handle_accept(self) -> None:
        """A listening transport has connections waiting.

        The default accepts them (a bounded number per event) and passes each
        to :meth:`handle_accepted`. When accept() runs out of a resource
        (EMFILE, ENFILE, ENOBUFS, ENOMEM) it logs a warning and stops
        accepting for :attr:`accept_retry_delay` seconds: the connection
        stays queued in the kernel, so retrying at once would spin.
        """
        for _ in range(_ACCEPTS_PER_EVENT):
            try:
                pair = self.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_RESOURCE_ERRNOS:
                    raise
                self._pause_accepting(exc)
                return
            if pair is None:
                return
            self.handle_accepted(*pair)

    def _pause_accepting(self, exc: OSError) -> None:
        logger.warning(
            "pike: %r cannot accept (%s); retrying in %gs", self, exc, self.accept_retry_delay
        )
        self.pause_reading()
        self._accept_retry = self.poller.call_later(
            self.accept_retry_delay, self._resume_accepting
        )

    def _resume_accepting(self) -> None:
        self._accept_retry = None
        if not self.closed:
            self.resume_reading()

    def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
        """Take ownership of an accepted connection. The default closes it."""
        logger.warning("pike: %r dropped a connection from %r", self, addr)
        sock.close()

    def handle_eof(self) -> None:
        """With ``half_close``: the peer will send no more; we may still write.

        The default shuts our side down once queued data is sent.
        """
        self.write_eof()

    def handle_tls_handshake(self) -> None:
        """The TLS handshake finished: ``self.tls`` tells what was agreed."""

    def handle_tls_failed(self, exc: BaseException) -> None:
        """TLS failed (handshake, verification, timeout, bad records); the
        transport aborts after this. The default logs the reason once.
        """
        logger.warning("pike: TLS failed on %r: %s", self, exc)

    def handle_read_eof(self) -> None:
        """:meth:`recv` saw the peer's EOF; runs before :meth:`handle_close`
        (or :meth:`handle_eof`). A framing layer delivers what it held back.
        """

    def handle_close(self) -> None:
        """The connection is gone (EOF, reset...). The default closes."""
        self.close()

    def handle_error(self) -> None:
        """An unexpected exception escaped a callback (``sys.exc_info()``).

        The default logs it and closes the transport.
        """
        logger.error("pike: unhandled error in %r", self, exc_info=True)
        self.close()

    def handle_pause_writing(self) -> None:
        """The write buffer rose above the high water mark: stop producing."""

    def handle_resume_writing(self) -> None:
        """The write buffer fell to the low water mark: produce again."""

    # -- raw I/O ----------------------------------------------------------

    def recv(self, bufsize: int) -> bytes:
        """Receive up to ``bufsize`` bytes; b'' when it would block.

        The peer's EOF also returns b'', after :meth:`handle_read_eof` and
        then :meth:`handle_close` (or :meth:`handle_eof` with
        ``half_close``) ran; when data is still queued, ``handle_close``
        comes once it has been sent. A lost connection calls
        :meth:`handle_close` and returns b''.
        """
        try:
            data = self.socket.recv(bufsize)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            if self.closed:
                raise self._not_open() from None
            if exc.errno in CONNECTION_LOST_ERRNOS:
                self.handle_close()
                return b""
            raise
        except AttributeError:
            raise self._not_open() from None
        if not data and self.socket.type != socket.SOCK_DGRAM:
            self._peer_eof()  # (an empty datagram is data, not an EOF)
        return data

    def send(self, data: Buffer) -> int:
        """Send what the kernel takes now; return the byte count.

        Returns 0 when the socket would block, and then a write notification
        is armed. Also 0 while buffered data waits, so bytes stay in order.
        """
        if self._queue:
            self.poller.defer_write(self)
            return 0
        sock = self.socket
        if sock is None:
            raise self._not_open()
        try:
            sent = _send_now(sock, data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            if self.closed:
                raise self._not_open() from None
            if exc.errno in CONNECTION_LOST_ERRNOS:
                self.handle_close()
                return 0
            raise
        if not sent and data:
            self.poller.defer_write(self)  # it would block: say when it won't
        return sent

    def sendto(self, data: Buffer, address: Any) -> int:
        """Send one datagram; 0 when it would block (a notification is armed)."""
        try:
            return self._require_socket().sendto(data, address)
        except (BlockingIOError, InterruptedError):
            self.poller.defer_write(self)
            return 0

    def recvfrom(self, bufsize: int) -> tuple[bytes, Any]:
        """Receive one datagram: ``(data, address)``, or ``(b'', None)``.

        ``(b'', None)`` means nothing was waiting (or an ICMP error from an
        earlier send was reported, which says nothing about this socket).
        """
        try:
            return self._require_socket().recvfrom(bufsize)
        except (BlockingIOError, InterruptedError, ConnectionRefusedError):
            return b"", None

    def _peer_eof(self) -> None:
        if self.eof_received:
            return  # reported once; a second recv() after EOF changes nothing
        self.eof_received = True
        # An EOF stays readable: reading on would spin (and would call
        # handle_close again and again while queued data drains).
        self.pause_reading()
        self.handle_read_eof()
        if self.closed:
            return
        if self.half_close:
            self.handle_eof()
            if self._write_state == WRITE_SHUT and not self.closed:
                self.handle_close()  # both directions are done
            return
        state = self._write_state
        if self.get_write_buffer_size() or state == WRITE_EOF_AFTER_DRAIN or self.connecting:
            # The connection ends by EOF: what was written to it still goes
            # out, and handle_close() follows (handle_write_event). (The
            # size, not the queue: a layer may hold bytes of its own.)
            self._close_after_drain = True
            self.poller.defer_write(self)
            return
        if state == WRITE_CLOSE_AFTER_DRAIN:
            return  # close_when_done() already closes once drained
        self.handle_close()

    def _update_receive_size(self) -> None:
        """Let the poller receive for us when we deliver through handle_data.

        Only on a connected stream socket without a layer (TLS decrypts in
        its own ``recv``): not while connecting, listening, or closed.
        """
        size = 0
        if (
            self._delivers_data
            and self.connected
            and not (self.closed or self.accepting or self.connecting)
            and not self._layered
            and self.socket is not None
            and self.socket.type == socket.SOCK_STREAM
        ):
            size = self.read_size
        if size != self._receive_size:
            self._receive_size = size
            self.poller.update_interest(self)

    def _receive_ended(self, err: int) -> None:
        """The poller's receive for us found EOF (``err`` 0) or failed."""
        if not err:
            self._peer_eof()
        elif err in CONNECTION_LOST_ERRNOS:
            self.handle_close()
        elif err not in _RECEIVE_RETRY_ERRNOS:
            raise OSError(err, os.strerror(err))

    def _hold_received(self, data: bytes) -> None:
        """Keep what the poller received for us while we were paused.

        The C poller receives for every ready transport before it calls any
        of them back, so a callback that pauses another transport in the
        same iteration finds that transport's data already read. It waits
        here (b"" for the EOF) and is delivered, in order, after
        :meth:`resume_reading`; until then reading stays paused.
        """
        if self._held is None:
            self._held = [data]
        else:
            self._held.append(data)

    def _release_held(self) -> None:
        self._held_release = None
        held = self._held
        if held is None or self.closed:
            return
        # Resumed: a handle_data below may pause again, which stops here.
        self._reading = True
        while held and self._reading and not self.closed:
            data = held.pop(0)
            if not data:
                self._held = None
                self._peer_eof()
                return
            self.handle_data(data)
        if not held:
            self._held = None
        if self._reading and not self.closed:
            self.poller.update_interest(self)

    def _report_eof_close(self) -> None:
        self._close_after_drain = False
        self.handle_close()

    # -- buffered writes --------------------------------------------------

    def write(self, data: Buffer) -> None:
        """Send ``data`` in order after anything already queued; never blocks.

        What the kernel does not take at once is queued and flushed from
        write notifications. Raises BrokenPipeError on a closed transport
        and RuntimeError after :meth:`write_eof`.
        """
        if not (self._write_direct and type(data) is bytes and data):
            # The checked path (the gate is shut, or data is not plain bytes).
            if not data:
                return
            if self._write_state or self.closed or self.socket is None:
                self._check_writable()  # raises
            if type(data) is not bytes:
                if type(data) is not bytearray:
                    data = memoryview(data).cast("B")  # so len() counts bytes
            if self._queue or self.connecting:
                self._enqueue(data)
                return
            # Every check passed: the next writes may skip them (on CPython
            # 3.11 they cost more than the send's own call).
            self._write_direct = True
        try:
            unsent = _send_rest(self.socket, data)
        except (BlockingIOError, InterruptedError):
            unsent = len(data)
        except OSError as exc:
            if exc.errno in CONNECTION_LOST_ERRNOS:
                self.handle_close()
                return
            raise
        if unsent:
            self._enqueue(data, len(data) - unsent)

    def _enqueue(self, data: Buffer, offset: int = 0) -> None:
        """Queue ``data[offset:]`` behind what is queued; arm the flush."""
        self._write_queue().append(data, offset)
        self._queued_more()

    def _write_queue(self) -> WriteQueue:
        """The write queue, made on first use (most connections never queue).

        Whoever asks for it may append to it: write's gate shuts.
        """
        self._write_direct = False
        queue = self._queue
        if queue is None:
            queue = self._queue = WriteQueue()
        return queue

    def writelines(self, buffers: Iterable[Buffer]) -> None:
        """Write each buffer of ``buffers`` in order, in as few sends as may be."""
        self._check_writable()
        queue = self._write_queue()
        was_empty = not queue
        for data in buffers:
            queue.append(data)
        if not queue:
            return
        if was_empty and not self.connecting:
            self._flush_queue()
        else:
            self._queued_more()

    def sendfile(self, file: BinaryIO, offset: int = 0, count: int | None = None) -> SendfileRequest:
        """Send ``count`` bytes of ``file`` from ``offset`` (None: to its end).

        The bytes go out in order with :meth:`write`'s: after what was
        written before, before what is written after. ``os.sendfile`` moves
        them where the platform has it (no copy through Python); a file
        object without an fd, or a file system that refuses it, is read and
        sent instead. They count in :meth:`get_write_buffer_size`, so the
        water marks apply. ``file`` must be a regular file or a seekable file
        object, and stay open until the request is done; its position is not
        used or changed (except by the read fallback of an object without an
        fd). Returns a :class:`~pike.sendfile.SendfileRequest`: its
        ``add_done_callback`` reports the end, ``sent`` the bytes sent (fewer
        than ``count`` if the file is shorter).

        Under TLS the bytes must be encrypted, so there is no zero-copy: the
        layer reads the file in pieces (``os.pread``: the position is left
        alone here too) and encrypts each as the transport's queue drains,
        in order with the writes around it; ``sent`` counts the file's bytes
        whose records the kernel took. See :doc:`tls`.
        """
        self._check_writable()
        span = file_span(file, offset, count)
        request = SendfileRequest(span)
        if not span:
            request._finish()
            return request
        segment = FileSegment(file, offset, span, request)
        if self.tls is not None:
            self.tls.sendfile(segment)  # read, encrypted and sent by the layer
            return request
        queue = self._write_queue()
        queue.append_file(segment)
        self._queued_more()
        return request

    def write_eof(self) -> None:
        """Shut down our sending side once queued data has been sent."""
        if self.closed or self._write_state:
            return
        if self.tls is not None and self.tls.end_requested("eof"):
            return  # (after the handshake)
        if self._queue or self.connecting:
            self._write_state = WRITE_EOF_AFTER_DRAIN
            self.poller.defer_write(self)
            return
        self._shutdown_write()

    def close_when_done(self) -> None:
        """Close once queued data has been sent (at once if none is)."""
        if self.closed:
            return
        if self.tls is not None and self.tls.end_requested("close"):
            return  # (after the handshake)
        if self._queue or self.connecting:
            self._write_state = WRITE_CLOSE_AFTER_DRAIN
            self.poller.defer_write(self)
        else:
            self.close()

    def can_write_eof(self) -> bool:
        return True

    def discard_write_buffer(self) -> None:
        """Drop queued, unsent data (a partly sent buffer is cut off).

        Under TLS, dropping encrypted records ends the session: the
        transport aborts (the peer could not decrypt what follows).
        """
        if self.tls is not None and self.tls.discard():
            self.abort()
            return
        queue = self._queue
        if queue:
            queue.clear()
            self._check_water_marks()
            if self._close_after_drain:
                self.poller.defer_write(self)  # handle_close is due now

    def get_write_buffer_size(self) -> int:
        """Bytes queued and not yet taken by the kernel."""
        queue = self._queue
        return queue.size if queue is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low_water, self._high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks; ``handle_pause_writing`` fires above ``high``.

        Defaults as in asyncio: ``high`` 64 KiB, ``low`` a quarter of ``high``.
        """
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"need high ({high!r}) >= low ({low!r}) >= 0")
        self._high_water, self._low_water = high, low
        self._check_water_marks()

    def is_writing_paused(self) -> bool:
        return self._writing_paused

    def _check_writable(self) -> None:
        if self._write_state:
            raise RuntimeError("write after write_eof() or close_when_done()")
        if self.closed or self.socket is None:
            raise BrokenPipeError(errno.EPIPE, "the transport is not open")

    def _queued_more(self) -> None:
        if not self.connecting:
            self.poller.defer_write(self)
        # (Only called with a queue: _enqueue and writelines made it.)
        if not self._writing_paused and self._queue.size > self._high_water:  # type: ignore[union-attr]
            self._writing_paused = True
            self.handle_pause_writing()

    def _check_water_marks(self) -> None:
        if self.closed:
            return  # no callback after close
        size = self.get_write_buffer_size()
        if self._writing_paused:
            if size <= self._low_water:
                self._writing_paused = False
                self.handle_resume_writing()
        elif size > self._high_water:
            self._writing_paused = True
            self.handle_pause_writing()

    def _flush_queue(self) -> None:
        queue = self._write_queue()
        try:
            queue.send_to(self.socket)
        except OSError as exc:
            if exc.errno in CONNECTION_LOST_ERRNOS:
                self.handle_close()
                return
            raise
        if queue:
            self.poller.defer_write(self)
        elif self._write_state == WRITE_EOF_AFTER_DRAIN:
            self._shutdown_write()
            if self.closed:
                return
        elif self._write_state == WRITE_CLOSE_AFTER_DRAIN:
            self.close()
            return
        self._check_water_marks()

    def _shutdown_write(self) -> None:
        self._write_direct = False
        self._write_state = WRITE_SHUT
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno not in CONNECTION_LOST_ERRNOS:
                raise
            self.handle_close()
            return
        if self.eof_received and not self.closed and (
            self.half_close or self._close_after_drain
        ):
            self._close_after_drain = False
            self.handle_close()  # both directions are done

    # -- reading control --------------------------------------------------

    def pause_reading(self) -> None:
        """Stop read events until :meth:`resume_reading` (flow control)."""
        if self._reading:
            self._reading = False
            self.poller.update_interest(self)
        elif self._held_release is not None:
            # Paused again before held data went out: it waits on.
            self._held_release.cancel()
            self._held_release = None

    def resume_reading(self) -> None:
        if self._held is not None:
            # Deliver what was held first, from the loop (as any data).
            if self._held_release is None:
                self._held_release = self.poller.call_later(0, self._release_held)
            return
        if not self._reading and not self.eof_received:
            self._reading = True
            self.poller.update_interest(self)

    def is_reading(self) -> bool:
        return self._reading and not self.closed

    # -- closing ----------------------------------------------------------

    def close(self) -> None:
        """Unregister from the poller, then close the socket. Idempotent.

        Data still queued is discarded: use :meth:`close_when_done` to send
        it first. Under TLS, close_notify is sent behind the records already
        queued, which may take up to ``tls.close_timeout`` seconds (after
        the transport is closed); :meth:`abort` sends nothing.
        """
        if self.closed:
            return
        linger = None
        if self.tls is not None:
            linger = self.tls.prepare_close()
            if self.closed:
                return  # (closed again from a callback on the way)
        self.closed = True
        self._write_direct = False
        self.connected = self.connecting = self.accepting = False
        self._reading = False
        self._receive_size = 0
        self._held = None
        if self._held_release is not None:
            self._held_release.cancel()
            self._held_release = None
        self._write_armed = False
        self.poller.del_channel(self)
        if self._queue is not None:
            self._queue.clear()
        if self._accept_retry is not None:
            self._accept_retry.cancel()
            self._accept_retry = None
        sock = self.socket
        # The number may be reused by the next socket anyone opens: forget it.
        self._fileno = -1
        if sock is not None:
            try:
                sock.close()
            except OSError as exc:
                if exc.errno not in (errno.EBADF, errno.ENOTCONN):
                    raise
        if linger is not None:
            linger()

    def abort(self) -> None:
        """Close at once: queued data is dropped, and under TLS no
        close_notify is sent."""
        if self.tls is not None:
            self.tls.abandon()
        self.close()

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- for layers (TLS...) ------------------------------------------------
    #
    # A layer sits between the transport's logic and its socket: it takes
    # over receiving and sending on one instance, and uses the methods of
    # this section, and nothing private, to act on the transport beneath.
    # The contract is written down in docs/design.rst ("Transport ->
    # layers"). A transport without a layer never runs any of it.

    #: The methods a layer may put on one instance (:meth:`install_layer`).
    LAYER_METHODS = frozenset((
        "recv", "send", "write", "writelines", "get_write_buffer_size",
        "resume_reading", "handle_read_event", "handle_connect_event",
        "handle_write_event",
    ))

    def install_layer(self, methods: Mapping[str, Callable[..., Any]]) -> None:
        """For layers: put ``methods`` on this instance in place of the class's.

        ``methods`` maps names of :attr:`LAYER_METHODS` to callables (the
        layer's bound methods). Instance attributes win over the class, so
        a transport with a layer runs the layer's code, and one without
        runs exactly what it ran before. What a layer replaced stays
        reachable on the class: ``Transport.write(transport, data)`` is the
        transport's own buffered write (in C when the accelerator runs),
        ``type(transport).handle_connect_event(transport)`` the event as the
        application's class defines it. Replacing ``handle_read_event``
        tells the poller to call it instead of deciding inline. One layer
        per transport: a second ``install_layer`` raises RuntimeError.
        """
        unknown = set(methods) - self.LAYER_METHODS
        if unknown:
            raise ValueError(f"not methods a layer may replace: {sorted(unknown)}")
        # (A flag, not a look at self.__dict__: on CPython 3.11+ reading
        # __dict__ turns the instance's inline attributes into a real dict,
        # and every attribute access on the transport gets slower.)
        if self._layered:
            raise RuntimeError(f"{self!r} already has a layer")
        self._layered = True
        for name, function in methods.items():
            setattr(self, name, function)
        if "handle_read_event" in methods:
            # The poller must call the layer's handle_read_event, not
            # handle_read (see pike.poller.channel).
            self._plain_read_event = False
        # The poller must not receive for us any more: the layer's recv()
        # stands between the socket and handle_data.
        self._update_receive_size()

    @property
    def write_state(self) -> int:
        """For layers: the sending side's state, one of ``WRITE_OPEN`` (0:
        ``write`` accepted), ``WRITE_EOF_AFTER_DRAIN``, ``WRITE_SHUT``,
        ``WRITE_CLOSE_AFTER_DRAIN`` (module constants). Anything but
        ``WRITE_OPEN`` means no more data may be written."""
        return self._write_state

    @property
    def write_queue(self) -> WriteQueue:
        """For layers: the transport's own :class:`~pike.write_queue.WriteQueue`
        (made on first use), what ``Transport.write`` queued beneath any layer.

        A layer may read its ``size`` and append to it while closing (see
        :meth:`detach_socket`); the transport flushes it.
        """
        return self._write_queue()

    def check_water_marks(self) -> None:
        """For layers: the write buffer size changed outside ``write()``
        (a layer's own buffer): fire ``handle_pause_writing`` or
        ``handle_resume_writing`` if a water mark was crossed. Nothing
        fires on a closed transport."""
        self._check_water_marks()

    def check_writable(self) -> None:
        """For layers: raise what ``write()`` raises when the transport takes
        no more data (RuntimeError after ``write_eof``/``close_when_done``,
        BrokenPipeError once closed or before it has a socket); else nothing."""
        self._check_writable()

    def not_open_error(self) -> OSError:
        """For layers: the OSError that ``recv``/``send`` raise on a transport
        that is closed (EBADF) or has no socket yet (ENOTCONN)."""
        return self._not_open()

    def peer_eof(self) -> None:
        """For layers: the stream the layer reads ended (for TLS: close_notify,
        or a TCP EOF). Runs the end-of-file contract once, as ``recv`` does
        on a plain transport: reading stops, ``handle_read_eof``, then
        ``handle_close`` (or ``handle_eof``) once what was written has left;
        "what was written" is :meth:`get_write_buffer_size`, so bytes a layer
        still holds count."""
        self._peer_eof()

    def detach_socket(self) -> tuple[socket.socket | None, WriteQueue | None]:
        """For a layer's close hook: take the socket and the write queue away.

        Returns ``(socket, queue)`` (either may be None) and leaves the
        transport with neither, so that ``close()`` unregisters it without
        closing the socket: the layer now owns both, and must send what it
        must (TLS: the last records and close_notify) and close the socket
        itself, within a deadline. Only for ``prepare_close`` (see
        docs/design.rst).
        """
        sock, queue = self.socket, self._queue
        self._write_direct = False
        self.socket = None
        self._queue = None
        return sock, queue

    # -- helpers ----------------------------------------------------------

    def _require_socket(self) -> socket.socket:
        if self.socket is None or self.closed:
            raise self._not_open()
        return self.socket

    def _not_open(self) -> OSError:
        if self.closed:
            return OSError(errno.EBADF, f"{self!r} is closed")
        return OSError(errno.ENOTCONN, f"{self!r} has no socket: call create_socket()")

    def __repr__(self) -> str:
        if self.closed:
            state = "closed"
        elif self.accepting:
            state = "listening"
        elif self.connecting:
            state = "connecting"
        elif self.connected:
            state = "connected"
        else:
            state = "idle"
        addr = f" {self.addr!r}" if self.addr is not None else ""
        return f"<{type(self).__name__} fd={self._fileno} {state}{addr}>"
