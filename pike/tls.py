"""TLS as a layer of pike's own, beneath a Transport's plaintext API.

:meth:`pike.transport.Transport.start_tls` puts a :class:`TLSLayer` under a
transport. The layer keeps an ``ssl.SSLObject`` between two
``ssl.MemoryBIO`` objects: ciphertext read from the socket goes into one,
ciphertext to send comes out of the other and travels through the
transport's ordinary buffered write path. No socket is ever wrapped, so the
layer never blocks and works the same on every poller and on both
implementations (only the raw send beneath it differs).

How it sits on the transport: through the transport's seam for layers
(``Transport.install_layer`` and the methods beside it; the contract is in
the contributors' design page). ``start_tls`` replaces, on that one
instance, the hot methods whose meaning changes (``recv``, ``send``,
``write``, ``writelines``, ``get_write_buffer_size``, ``resume_reading``
and the read, write and connect events); ``write_eof``,
``close_when_done``, ``discard_write_buffer``, ``sendfile`` and ``close``,
which subclasses override, ask :attr:`Transport.tls` (one attribute test,
only on those rare calls). A transport without TLS runs the code it ran
before. The layer uses no private name of the transport.

Reading. One raw ``recv`` feeds the incoming BIO; the application's
``handle_read`` then gets plaintext from :meth:`TLSLayer.recv`. Decrypted
data can stay buffered in the layer after the socket has been drained, so
the layer calls ``handle_read`` again while plaintext is left (a bounded
number of times per event, then once more from a timer), and again after
``resume_reading``.

Writing. Plaintext written before the handshake finished waits in the layer
(it counts in ``get_write_buffer_size``, so the water marks still hold) and
is encrypted once the handshake is done; after that every ``write`` is
encrypted at once and the records are queued like any data. Nothing written
after ``start_tls`` reaches the wire unencrypted.

Files. ``sendfile`` cannot hand a file to the kernel under TLS: the layer
reads it in 64 KiB pieces and encrypts each when the transport's queue is
short, so a large file never sits in memory. Records must leave in the
order they were made, so what is written after a file waits in the layer
(as plaintext written before the handshake does) until the file's last
piece is encrypted. The request's ``sent`` counts the file's bytes whose
records the kernel took.

Ending. The peer's close_notify is its EOF: the transport's end-of-file
contract follows (``handle_read_eof``, then ``handle_close`` once queued
data is sent). A peer that closes TCP without close_notify is an EOF too,
but :attr:`TLSLayer.ragged_eof` records it (the data may be truncated).
``close()`` sends close_notify behind any queued records and waits at most
:attr:`TLSLayer.close_timeout` seconds for them to leave; ``abort()`` sends
nothing.
"""

import collections
import logging
import socket
import ssl

from .errors import CONNECTION_LOST_ERRNOS
from .poller import Channel
from .sendfile import FileSegment
from .transport import WRITE_SHUT, Transport
from .write_queue import WriteQueue

logger = logging.getLogger("pike")

#: Seconds a handshake may take before it fails (asyncio's default too).
DEFAULT_HANDSHAKE_TIMEOUT = 60.0
#: Seconds ``close()`` keeps trying to send queued records and close_notify.
DEFAULT_CLOSE_TIMEOUT = 5.0

# Ciphertext taken from the socket per raw read: four full records. (Not
# more: a larger bytes object is mmap-allocated, two system calls a read.)
_RAW_READ = 64 * 1024
# The most plaintext one recv() returns: one full TLS record. (SSL_read
# gives one record at a time anyway, and asking for more makes the ssl
# module allocate, and for 128 KiB and up mmap, a buffer it then shrinks.)
_PLAIN_READ = 16 * 1024
# handle_read calls per read event while decrypted data is left: enough to
# drain one raw read, few enough that one connection cannot starve others.
_READS_PER_EVENT = 32
# The most plaintext one send() takes (send() reports what it took).
_SEND_CHUNK = 64 * 1024
# sendfile under TLS: plaintext read from the file per piece (four records),
# the transport's queue is topped up to this many bytes of records, and at
# most this many pieces are encrypted per write event (others get a turn).
_FILE_PIECE = 64 * 1024
_FILE_QUEUE_TARGET = 256 * 1024
_FILE_PIECES_PER_EVENT = 16


class TLSHandshakeTimeout(TimeoutError):
    """The TLS handshake did not finish within the handshake timeout."""


class TLSLayer:
    """The TLS state of one transport; made by ``Transport.start_tls``.

    After :meth:`~pike.transport.Transport.handle_tls_handshake` the
    negotiated parameters can be read here: :attr:`alpn_protocol`,
    :attr:`server_name`, :meth:`peer_certificate`, :attr:`cipher` and
    :attr:`version`.
    """

    def __init__(self, transport, context, server_side=False, server_hostname=None,
                 handshake_timeout=None, close_timeout=None):
        if not isinstance(context, ssl.SSLContext):
            raise TypeError(f"start_tls needs an ssl.SSLContext, not {context!r}")
        if handshake_timeout is None:
            handshake_timeout = DEFAULT_HANDSHAKE_TIMEOUT
        if close_timeout is None:
            close_timeout = DEFAULT_CLOSE_TIMEOUT
        if handshake_timeout <= 0 or close_timeout < 0:
            raise ValueError("TLS timeouts must be positive")
        if server_side:
            _record_sni(context)
        self.transport = transport
        self.server_side = server_side
        self.handshake_timeout = handshake_timeout
        #: Seconds :meth:`close` waits for queued records and close_notify.
        self.close_timeout = close_timeout
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        #: True once the handshake finished.
        self.handshake_done = False
        #: The exception that ended the TLS session (None while it is fine).
        self.error = None
        #: True when the peer closed TCP without sending close_notify first.
        self.ragged_eof = False
        self._began = False
        # Plaintext not encrypted yet, in order: bytes and FileSegments. It
        # holds what is written before the handshake finishes, and what is
        # written behind a file until the file is encrypted.
        self._backlog = collections.deque()
        self._backlog_size = 0  # its plaintext bytes (a file's: remaining)
        self._end = None  # "eof" or "close" once write_eof/close_when_done came
        self._end_held = False  # ... and the layer holds it (see end_requested)
        # Bytes of records handed to Transport.write, counted while file
        # pieces are in flight: the queue's size then tells which records
        # the kernel took. Pieces in flight: (end mark, size, segment).
        self._emitted = 0
        self._in_flight = collections.deque()
        # write() takes the slow way (_write_slowly): until the handshake is
        # done, and while a file is read or its records are queued.
        self._slow_writes = True
        self._starved = True  # the last recv() found nothing more to read
        self._goodbye_sent = False  # close_notify produced
        self._abandoned = False  # abort(): no close_notify, no lingering
        self._timer = None
        self._more_timer = None

    # -- negotiated parameters ---------------------------------------------

    @property
    def alpn_protocol(self):
        """The ALPN protocol both sides agreed on, or None."""
        return self._ssl.selected_alpn_protocol()

    @property
    def server_name(self):
        """The SNI name: the one sent (client) or received (server), or None.

        On a server it is recorded only when the context had no
        ``sni_callback`` of its own.
        """
        if not self.server_side:
            return self._ssl.server_hostname
        return getattr(self._ssl, "_pike_server_name", None)

    def peer_certificate(self, binary_form=False):
        """The peer's certificate (see ``ssl.SSLObject.getpeercert``)."""
        return self._ssl.getpeercert(binary_form)

    @property
    def cipher(self):
        """``(name, protocol, secret bits)`` of the cipher in use, or None."""
        return self._ssl.cipher()

    @property
    def version(self):
        """The protocol version ('TLSv1.3'...), or None before the handshake."""
        return self._ssl.version()

    @property
    def ssl_object(self):
        """The underlying ``ssl.SSLObject`` (for what the properties lack)."""
        return self._ssl

    # -- putting the layer on a transport ---------------------------------

    def install(self):
        """Replace the transport's plaintext methods with this layer's."""
        t = self.transport
        if t.write_state:
            self._end = "eof"  # (write_eof came before start_tls)
        t.install_layer({
            "recv": self.recv,
            "send": self.send,
            "write": self.write,
            "writelines": self.writelines,
            "get_write_buffer_size": self.get_write_buffer_size,
            "resume_reading": self.resume_reading,
            "handle_read_event": self.read_event,
            "handle_write_event": self.write_event,
            "handle_connect_event": self.connect_event,
        })

    def begin(self):
        """The transport is connected: start the handshake and its timer."""
        if self._began:
            return
        self._began = True
        t = self.transport
        self._timer = t.poller.call_later(self.handshake_timeout, self._timed_out)
        self._handshake_step()

    # -- events -----------------------------------------------------------

    def connect_event(self):
        t = self.transport
        type(t).handle_connect_event(t)
        if t.connected and not t.closed:
            self.begin()

    def read_event(self):
        if self.handshake_done:
            # The steady state first, with _deliver's first round inline.
            t = self.transport
            self._starved = False
            t.handle_read()
            if self._starved or not t.is_reading() or t.eof_received:
                return
            self._deliver()
            return
        t = self.transport
        if t.connecting:
            t.handle_connect_event()
            if not t.connected:
                return
        elif t.accepting:
            t.handle_accept()
            return
        if not self._began:
            return
        # The handshake is under way.
        self._pull()
        if t.closed:
            return
        self._handshake_step()
        if self.handshake_done and not t.closed and self._buffered():
            self._deliver()  # application data came with the last flight

    def _deliver(self):
        """Call handle_read while decrypted data is left, a bounded number."""
        t = self.transport
        for _ in range(_READS_PER_EVENT):
            self._starved = False
            t.handle_read()
            if self._starved or not t.is_reading() or t.eof_received:
                return
        self._come_back()

    def _come_back(self):
        if self._more_timer is None and not self.transport.closed:
            self._more_timer = self.transport.poller.call_later(0, self._more)

    def _more(self):
        self._more_timer = None
        t = self.transport
        if t.is_reading() and self.handshake_done and self._buffered():
            self._deliver()

    def resume_reading(self):
        t = self.transport
        type(t).resume_reading(t)
        if t.is_reading() and self.handshake_done and self._buffered():
            self._come_back()  # buffered here, so the socket may stay quiet

    def _buffered(self):
        return self._in.pending or self._ssl.pending()

    def write_event(self):
        t = self.transport
        type(t).handle_write_event(t)  # the flush, handle_write, an EOF's close
        if (self._backlog or self._in_flight or self._end_held) and self.handshake_done \
                and not t.closed:
            self._pump()

    # -- the handshake ------------------------------------------------------

    def _handshake_step(self):
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._send_out()
            return
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            self._fail(exc)
            return
        self._send_out()
        self.handshake_done = True
        self._cancel_timer()
        t = self.transport
        t.handle_tls_handshake()
        if t.closed:
            return
        if self._backlog:
            self._pump()  # what was written meanwhile, in order
        else:
            self._slow_writes = False
            self._backlog_done(notify=False)

    def _timed_out(self):
        self._timer = None
        if not self.handshake_done and not self.transport.closed:
            self._fail(TLSHandshakeTimeout(
                f"TLS handshake not finished after {self.handshake_timeout:g}s"
            ))

    def _cancel_timer(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, exc):
        """End the session on a TLS error: report it, then abort."""
        if self.error is not None:
            return
        self.error = exc
        self._cancel_timer()
        t = self.transport
        # Best effort, one try: the alert OpenSSL prepared tells the peer why.
        alert = self._out.read()
        if alert and t.socket is not None and not t.closed \
                and not Transport.get_write_buffer_size(t):
            try:
                t.socket.send(alert)
            except OSError:
                pass
        try:
            t.handle_tls_failed(exc)
        finally:
            self.abandon()
            t.close()

    # -- raw ciphertext ---------------------------------------------------

    def _pull(self):
        """Read ciphertext from the socket into the layer; False if none came."""
        t = self.transport
        sock = t.socket
        if sock is None:
            raise t.not_open_error()
        try:
            data = sock.recv(_RAW_READ)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._raw_read_failed(exc)
            return False
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()
        return True

    def _raw_read_failed(self, exc):
        t = self.transport
        if t.closed:
            raise t.not_open_error() from None
        if exc.errno in CONNECTION_LOST_ERRNOS:
            t.handle_close()
            return
        raise exc

    def _send_out(self):
        """Queue the records the SSL object produced (handshake, alerts...)."""
        out = self._out
        if out.pending:
            data = out.read()
            t = self.transport
            if t.closed or t.write_state:
                return  # after close_notify nothing more may be sent
            self._emitted += len(data)
            Transport.write(t, data)

    # -- the plaintext API (bound onto the transport) ---------------------

    def recv(self, bufsize):
        """Plaintext, up to ``bufsize`` bytes; b'' when none is ready.

        Same contract as :meth:`pike.transport.Transport.recv`; the peer's
        close_notify (or a TCP EOF) is its EOF.
        """
        t = self.transport
        if t.closed:
            raise t.not_open_error()
        if not self.handshake_done:
            return b""
        sslobj = self._ssl
        if not self._in.pending and not sslobj.pending():
            # (_pull, inline: this is the path of every request.)
            try:
                raw = t.socket.recv(_RAW_READ)
            except (BlockingIOError, InterruptedError):
                self._starved = True
                return b""
            except OSError as exc:
                self._starved = True
                self._raw_read_failed(exc)
                return b""
            if raw:
                self._in.write(raw)
            else:
                self._in.write_eof()
        if bufsize > _PLAIN_READ:
            bufsize = _PLAIN_READ
        while True:
            try:
                data = sslobj.read(bufsize)
            except ssl.SSLWantReadError:
                self._send_out()  # a post-handshake message may want a reply
                if t.closed or not self._pull():
                    self._starved = True
                    return b""
                continue
            except ssl.SSLEOFError:
                # TCP ended without close_notify: an EOF, but maybe truncated.
                self.ragged_eof = True
                logger.debug("pike: %r: the peer closed without close_notify", t)
                return self._eof()
            except ssl.SSLZeroReturnError:
                return self._eof()
            except ssl.SSLError as exc:
                self._starved = True
                self._fail(exc)
                return b""
            if self._out.pending:
                self._send_out()
            if not data:
                return self._eof()  # close_notify
            if not self._in.pending and not sslobj.pending():
                self._starved = True
            return data

    def _eof(self):
        self._starved = True
        t = self.transport
        if not t.eof_received and not t.closed:
            t.peer_eof()
        return b""

    def write(self, data):
        """Encrypt and send ``data`` (queued until the handshake is done).

        Same contract as :meth:`pike.transport.Transport.write`.
        """
        if not data:
            return
        t = self.transport
        if self._end is not None or t.closed or t.socket is None:
            if self._end is not None:
                raise RuntimeError("write after write_eof() or close_when_done()")
            t.check_writable()  # raises
        if self._slow_writes:
            self._write_slowly(data)
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            self._fail(exc)
            return
        Transport.write(t, self._out.read())

    def _write_slowly(self, data):
        """write() before the handshake is done, or while a file is sent:
        keep the plaintext until what is ahead of it is encrypted, or
        encrypt it and count its records."""
        if self._backlog or not self.handshake_done:
            if type(data) is not bytes:
                data = memoryview(data).cast("B").tobytes()  # the caller may reuse it
            self._backlog.append(data)
            self._backlog_size += len(data)
            self.transport.check_water_marks()
            return
        self._encrypt(data)

    def writelines(self, buffers):
        """Write each buffer of ``buffers`` in order, as one TLS write."""
        self.write(b"".join(buffers))

    def send(self, data):
        """Take up to 64 KiB of ``data`` into the TLS layer; return the count.

        Returns 0 (and arms a write notification) while records wait to be
        sent, as :meth:`pike.transport.Transport.send` does.
        """
        t = self.transport
        if t.closed or t.socket is None:
            raise t.not_open_error()
        if Transport.get_write_buffer_size(t) or (self._backlog and self.handshake_done):
            t.poller.defer_write(t)
            return 0
        view = memoryview(data).cast("B")
        if len(view) > _SEND_CHUNK:
            view = view[:_SEND_CHUNK]
        self.write(view)
        return len(view)

    def get_write_buffer_size(self):
        """Queued ciphertext plus plaintext not encrypted yet (waiting for
        the handshake, or behind a file)."""
        t = self.transport
        return Transport.get_write_buffer_size(t) + self._backlog_size

    # -- files (Transport.sendfile) ---------------------------------------

    def sendfile(self, segment):
        """``Transport.sendfile`` under TLS: read, encrypt and send ``segment``
        (a :class:`pike.sendfile.FileSegment`) behind what was written."""
        t = self.transport
        if self._end is not None:
            raise RuntimeError("sendfile after write_eof() or close_when_done()")
        self._backlog.append(segment)
        self._backlog_size += segment.remaining
        self._slow_writes = True
        if self.handshake_done:
            t.poller.defer_write(t)  # the write event pumps (_pump)
        t.check_water_marks()

    def _pump(self):
        """Encrypt the backlog in order into the transport's queue.

        Bytes are encrypted at once; a file only while the queue holds less
        than _FILE_QUEUE_TARGET, and a bounded number of pieces per call (a
        write event comes back for the rest). Then credits the files whose
        records left, and once the backlog is empty runs what waited for it.
        """
        t = self.transport
        backlog = self._backlog
        had_items = bool(backlog)
        pieces = 0
        while backlog and not t.closed:
            item = backlog[0]
            if type(item) is not FileSegment:
                backlog.popleft()
                self._backlog_size -= len(item)
                if not self._encrypt(item):
                    return
                continue
            if Transport.get_write_buffer_size(t) >= _FILE_QUEUE_TARGET:
                break  # (the queue's drain brings a write event)
            if pieces == _FILE_PIECES_PER_EVENT:
                t.poller.defer_write(t)  # more on the next turn
                break
            pieces += 1
            before = item.remaining
            data = item.take(_FILE_PIECE)
            self._backlog_size -= before - item.remaining
            if not item.remaining:
                backlog.popleft()
            if not data:
                # The file ended (maybe before ``count``): done once its
                # last records are out, or now if none are in flight.
                if not (self._in_flight and self._in_flight[-1][2] is item):
                    item.request._finish()
                continue
            if not self._encrypt(data, item):
                return
        if t.closed:
            return
        self._account()
        if not backlog and not self._in_flight:
            self._slow_writes = False
        if not backlog and (had_items or self._end_held):
            self._backlog_done(notify=had_items)
        elif had_items:
            t.check_water_marks()  # (a file that ended early shrank the size)

    def _encrypt(self, data, segment=None):
        """Encrypt ``data`` (a piece of ``segment``, if given) and write the
        records; False if that ended the session or closed the transport."""
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            self._fail(exc)
            return False
        records = self._out.read()
        self._emitted += len(records)
        if segment is not None:
            # (Before the write: a reset there closes, and the close ends
            # the requests of the pieces in flight.)
            self._in_flight.append((self._emitted, len(data), segment))
        t = self.transport
        Transport.write(t, records)
        return not t.closed

    def _account(self):
        """Credit each file piece whose records the kernel took; end the
        requests whose last piece went."""
        flight = self._in_flight
        if not flight:
            return
        delivered = self._emitted - Transport.get_write_buffer_size(self.transport)
        while flight and flight[0][0] <= delivered:
            _, size, segment = flight.popleft()
            request = segment.request
            request.sent += size
            if not segment.remaining and not (flight and flight[0][2] is segment):
                request._finish()

    def _backlog_done(self, notify):
        """The backlog is empty: what waited for it may go on."""
        t = self.transport
        if notify:
            # One write notification, as after a connect: a layer that
            # waited for the buffer to drain (Chat's close_when_done) is
            # told even when the kernel took everything at once.
            t.poller.defer_write(t)
        if self._end_held:
            self._end_held = False
            if self._end == "eof":
                t.write_eof()
            else:
                t.close_when_done()
        else:
            t.check_water_marks()

    def _drop_held(self):
        """Drop the backlog and forget the pieces in flight, crediting those
        the kernel took. Returns a callable that ends the files' requests:
        with ``error``, or as a success for a file that did go out whole.
        (The caller decides when: callbacks may run into the transport.)"""
        delivered = self._emitted - Transport.get_write_buffer_size(self.transport)
        segments = {}  # (an ordered set)
        short = set()
        for mark, size, segment in self._in_flight:
            segments[segment] = None
            if mark <= delivered:
                segment.request.sent += size
            else:
                short.add(segment)
        for item in self._backlog:
            if type(item) is FileSegment:
                segments[item] = None
                short.add(item)
        self._backlog.clear()
        self._backlog_size = 0
        self._in_flight.clear()
        self._slow_writes = not self.handshake_done
        if not segments:
            return None

        def end(error):
            for segment in segments:
                whole = segment not in short and not segment.remaining
                segment.request._finish(None if whole else error)

        return end

    # -- ending (called by Transport.write_eof, close_when_done, close) ----

    def end_requested(self, kind):
        """``write_eof`` ("eof") or ``close_when_done`` ("close") was called.

        Returns True when the layer keeps the request until the handshake
        is done and the plaintext it holds (behind a file) is encrypted;
        otherwise close_notify is queued and the transport goes on as
        without TLS.
        """
        if self.error is None and (
            self._backlog if self.handshake_done
            else self._began or self.transport.connecting
        ):
            # Held until the handshake is done and the backlog encrypted
            # (_backlog_done asks again). close_when_done after write_eof
            # closes.
            if self._end is None or kind == "close":
                self._end = kind
            self._end_held = True
            return True
        if self._end is None:
            self._end = kind
        self._goodbye()
        return False

    def _goodbye(self):
        """Produce close_notify and queue it behind everything else."""
        if self._goodbye_sent or not self.handshake_done or self.error is not None:
            return
        self._goodbye_sent = True
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # (the peer's close_notify has not come: that is expected)
        except ssl.SSLError:
            return
        self._send_out()

    def discard(self):
        """``discard_write_buffer`` under TLS: drop the plaintext not
        encrypted yet (files end with an error); return True when records
        are about to be dropped too, which the session cannot survive (the
        peer would miss records it must decrypt in sequence)."""
        t = self.transport
        end_files = self._drop_held()
        if end_files is not None:
            end_files(BrokenPipeError("the write buffer was discarded"))
        if self._end_held and self.handshake_done:
            t.poller.defer_write(t)  # write_eof/close_when_done may go on now
        return self.handshake_done and Transport.get_write_buffer_size(t) > 0

    def abandon(self):
        """Make the next close() an abort: no close_notify, nothing waits."""
        self._abandoned = True

    def prepare_close(self):
        """Called by ``Transport.close`` before it unregisters.

        Queues close_notify behind any records still queued; plaintext not
        encrypted yet is dropped, and unfinished files end with an error.
        Unless the peer's EOF came already and nothing is left to send, the
        socket and its queue are taken from the transport, and a callable is
        returned that hands them to a lingerer with a deadline once the
        transport has unregistered (and ends the files' requests, so that
        their callbacks see a closed transport); else None.
        """
        t = self.transport
        self._cancel_timer()
        if self._more_timer is not None:
            self._more_timer.cancel()
            self._more_timer = None
        end_files = self._drop_held()
        linger = self._linger()
        if end_files is None:
            return linger
        error = self.error or BrokenPipeError("the transport closed before the file was sent")

        def after_close():
            if linger is not None:
                linger()
            end_files(error)

        return after_close

    def _linger(self):
        t = self.transport
        if self._abandoned or t.socket is None or not self.handshake_done:
            return None
        queued = Transport.get_write_buffer_size(t)
        if t.write_state != WRITE_SHUT and not self._goodbye_sent and self.error is None:
            # (shut: close_notify went already.) One try to send it now;
            # errors are not reported, the transport is closing anyway.
            self._goodbye_sent = True
            try:
                self._ssl.unwrap()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return None
            notify = self._out.read()
            if not queued:
                try:
                    notify = notify[t.socket.send(notify):]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    return None  # the peer is gone: nothing to wait for
            if notify:
                t.write_queue.append(notify)
                queued += len(notify)
        if self.close_timeout <= 0 or (t.eof_received and not queued):
            return None
        # Wait (bounded) for the records to leave and for the peer's answer:
        # closing now, with its data unread, would reset the connection.
        sock, queue = t.detach_socket()
        if queue is None:
            queue = WriteQueue()
        poller = t.poller
        timeout = self.close_timeout
        return lambda: _Lingerer(poller, sock, queue, timeout)


class _Lingerer(Channel):
    """Sends a closed TLS transport's last records, then closes the socket.

    A poller channel (:class:`pike.poller.Channel`) that owns the socket.
    Once the records are out it shuts its side down and reads (and drops)
    what still comes until the peer's EOF: closing with unread data would
    send a reset, and a reset makes the peer's kernel throw away what it
    had not read yet. A deadline bounds it all.
    """

    def __init__(self, poller, sock, queue, timeout):
        super().__init__(poller, sock.fileno())
        self.socket = sock
        self._queue = queue
        self._timer = None
        try:
            poller.add_channel(self)
            self._timer = poller.call_later(timeout, self.close)
        except (OSError, ValueError, RuntimeError):
            # (RuntimeError: the poller is closed, or a forked child's.)
            super().close()
            sock.close()
            return
        poller.defer_write(self)

    def handle_read_event(self):
        try:
            data = self.socket.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:  # the peer's EOF: stop reading (an EOF stays readable)
            if not self._queue:
                self.close()
                return
            self.set_reading(False)

    def handle_write_event(self):
        try:
            self._queue.send_to(self.socket)
        except OSError:
            self.close()
            return
        if self._queue:
            self.poller.defer_write(self)
            return
        if not self._reading:
            self.close()  # the peer's EOF came already
            return
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()

    def handle_close(self):
        self.close()

    def handle_error(self):
        self.close()

    def close(self):
        if self.closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        super().close()  # unregisters
        self._queue.clear()
        self.socket.close()

    def __repr__(self):
        return f"<TLS close of fd={self._fileno}>"


def server_context(certfile, keyfile=None, cafile=None):
    """A server-side ``ssl.SSLContext`` with the certificate chain in
    ``certfile`` (and its key in ``keyfile`` when separate). With ``cafile``
    the clients must present a certificate that it signed.

    Raises OSError or ``ssl.SSLError`` when the files cannot be used.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    if cafile is not None:
        context.load_verify_locations(cafile)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(cafile=None):
    """A client-side ``ssl.SSLContext`` that verifies the server: against
    ``cafile`` when given, else against the system's trusted CAs."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)


def with_tls(factory, context, handshake_timeout=None):
    """Wrap a connection factory (as :class:`pike.server.Listener` takes
    one) so that every connection it makes starts TLS as the server."""
    if not isinstance(context, ssl.SSLContext):
        raise TypeError(f"ssl_context must be an ssl.SSLContext, not {context!r}")

    def make(*args, **kwargs):
        connection = factory(*args, **kwargs)
        if connection is not None and not connection.closed:
            connection.start_tls(context, server_side=True, handshake_timeout=handshake_timeout)
        return connection

    return make


def _record_sni(context):
    """Make ``context`` note the SNI name each server connection received.

    Only a context without an ``sni_callback`` of its own is touched.
    """
    if context.sni_callback is not None:
        return

    def note_server_name(sslobj, server_name, ctx):
        sslobj._pike_server_name = server_name
        return None

    context.sni_callback = note_server_name


__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "TLSHandshakeTimeout",
    "TLSLayer",
    "client_context",
    "server_context",
    "with_tls",
]
