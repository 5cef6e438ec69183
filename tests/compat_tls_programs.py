"""Legacy asyncore / asynchat TLS programs, written the way such programs are.

Nothing here knows about pike: :func:`build` defines the classes on one
pair of ``asyncore`` / ``asynchat`` modules (pike.compat's or the standard
library's), so the very same program runs on both. The sockets are
``ssl.SSLSocket`` objects wrapped with ``do_handshake_on_connect=False``;
the handshake is driven from ``handle_read`` / ``handle_write``, and
``readable()`` / ``writable()`` follow what it waits for.

Decrypted data that an ``SSLSocket`` holds (``pending()``) is invisible to
``select()`` / ``poll()`` / epoll: the handlers here read less than a record
at a time and drain ``pending()`` themselves, as legacy code must.
"""

import hashlib
import socket
import ssl
import sys
from types import SimpleNamespace

# Smaller than one TLS record (16 KiB of plaintext): a read leaves plaintext
# pending inside the SSL object.
RECV_SIZE = 4096
# What one SSL write is tried with; kept until it is all sent, since OpenSSL
# wants a write that would block retried with the same bytes.
WRITE_CHUNK = 16384
HOSTNAME = "localhost"


class HandshakingChannel:
    """What a legacy TLS dispatcher adds to ``asyncore.dispatcher``.

    ``want`` is what the handshake waits for ("read" or "write"); the
    subclasses' ``readable()`` / ``writable()`` follow it while
    ``handshaking``. ``recv()`` / ``send()`` treat want-read / want-write as
    "nothing now". An exception in a handler is recorded in ``failure`` and
    closes the channel.
    """

    handshaking = False
    want = None
    failure = None
    write_blocked = 0  # sends that met want-write (the socket buffer full)
    handshake_wants = ()
    unexpected = ()

    def start_handshake(self, want):
        self.handshaking = True
        self.want = want
        self.handshake_wants = []  # what each unfinished step waited for
        self.unexpected = []  # events readable()/writable() had declined

    def handshake_event(self, kind):
        """A read or write event during the handshake: take the next step."""
        if kind != self.want:
            self.unexpected.append((kind, self.want))
        self.step_handshake()

    def step_handshake(self):
        try:
            self.socket.do_handshake()
        except ssl.SSLWantReadError:
            self.want = "read"
            self.handshake_wants.append("read")
            return
        except ssl.SSLWantWriteError:
            self.want = "write"
            self.handshake_wants.append("write")
            return
        self.handshaking = False
        self.want = None
        self.handshake_done()

    def handshake_done(self):
        pass

    def recv(self, size):
        try:
            return super().recv(size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return b""

    def send(self, data):
        try:
            return super().send(data)
        except ssl.SSLWantWriteError:
            self.write_blocked += 1
            return 0
        except ssl.SSLWantReadError:
            return 0

    def pending(self):
        """Decrypted bytes held in the SSL object (0 on a plain socket)."""
        sock = self.socket
        return sock.pending() if isinstance(sock, ssl.SSLSocket) else 0

    def handle_error(self):
        self.failure = sys.exc_info()[1]
        self.close()


class Tally:
    """A byte count and a SHA-256 of a stream."""

    def __init__(self):
        self.count = 0
        self.sha = hashlib.sha256()

    def add(self, data):
        self.count += len(data)
        self.sha.update(data)

    @property
    def digest(self):
        return self.sha.hexdigest()


def build(asyncore, asynchat):
    """The legacy programs' classes on ``asyncore`` / ``asynchat``."""

    class EchoHandler(HandshakingChannel, asyncore.dispatcher):
        """Server side of the TLS echo: handshake, then echo everything."""

        drain_pending = True  # read what the SSL object holds, as one must

        def __init__(self, sock, map):
            asyncore.dispatcher.__init__(self, sock, map=map)
            self.out = bytearray()
            self.inflight = b""
            self.tally = Tally()
            self.reads = 0
            self.closed_by_peer = False
            self.start_handshake("read")

        def readable(self):
            if self.handshaking:
                return self.want == "read"
            return True

        def writable(self):
            if self.handshaking:
                return self.want == "write"
            return bool(self.inflight or self.out)

        def handle_read(self):
            if self.handshaking:
                self.handshake_event("read")
                return
            data = self.recv(RECV_SIZE)
            while data:
                self.reads += 1
                self.tally.add(data)
                self.out += data
                if not (self.drain_pending and self.pending()):
                    break
                data = self.recv(RECV_SIZE)

        def handle_write(self):
            if self.handshaking:
                self.handshake_event("write")
                return
            if not self.inflight:
                self.inflight = bytes(self.out[:WRITE_CHUNK])
                del self.out[:WRITE_CHUNK]
            sent = self.send(self.inflight)
            self.inflight = self.inflight[sent:]

        def handle_close(self):
            self.closed_by_peer = True
            self.close()

    class Listener(asyncore.dispatcher):
        """Listens on 127.0.0.1; keeps the handlers it makes in ``handlers``."""

        def __init__(self, context, map):
            asyncore.dispatcher.__init__(self, map=map)
            self.context = context
            self.channel_map = map
            self.handlers = []
            self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
            self.set_reuse_addr()
            self.bind(("127.0.0.1", 0))
            self.listen(16)
            self.address = self.socket.getsockname()

    class EchoServer(Listener):
        """Accepts, wraps each socket for TLS, hands it to an EchoHandler."""

        def __init__(self, context, map, handler_class=EchoHandler, sndbuf=None):
            self.handler_class = handler_class
            self.sndbuf = sndbuf
            Listener.__init__(self, context, map)

        def handle_accepted(self, sock, addr):
            if self.sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            tls = self.context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
            self.handlers.append(self.handler_class(tls, self.channel_map))

    class EchoClient(HandshakingChannel, asyncore.dispatcher):
        """Connects over TLS, sends ``message``, counts what comes back.

        While ``hold`` is true it reads nothing after the handshake
        (``readable()`` says no). ``rcvbuf``: a small receive buffer.
        """

        hold = False

        def __init__(self, context, address, message, map, rcvbuf=None):
            asyncore.dispatcher.__init__(self, map=map)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            tls = context.wrap_socket(
                sock, server_hostname=HOSTNAME, do_handshake_on_connect=False
            )
            self.set_socket(tls)
            self.out = bytearray(message)
            self.inflight = b""
            self.tally = Tally()
            self.handshake_seen = False
            self.reads_after_handshake = 0
            self.start_handshake("write")  # the connect, then the ClientHello
            self.connect(address)

        def readable(self):
            if self.handshaking:
                return self.want == "read"
            return not self.hold

        def writable(self):
            if self.handshaking:
                return self.connecting or self.want == "write"
            return bool(self.inflight or self.out)

        def handle_connect(self):
            pass

        def handshake_done(self):
            self.handshake_seen = True

        def handle_read(self):
            if self.handshaking:
                self.handshake_event("read")
                return
            self.reads_after_handshake += 1
            data = self.recv(RECV_SIZE)
            while data:
                self.tally.add(data)
                if not self.pending():
                    break
                data = self.recv(RECV_SIZE)

        handle_write = EchoHandler.handle_write

        def handle_close(self):
            self.close()

    class TLSLineChannel(HandshakingChannel, asynchat.async_chat):
        """A CRLF line protocol that can move onto TLS in mid-stream."""

        ac_in_buffer_size = RECV_SIZE  # less than a record: pending() matters

        def __init__(self, sock=None, map=None):
            asynchat.async_chat.__init__(self, sock, map=map)
            self.set_terminator(b"\r\n")
            self.tls = False
            self.line = []

        def readable(self):
            if self.handshaking:
                return self.want == "read"
            return asynchat.async_chat.readable(self)

        def writable(self):
            if self.handshaking:
                return self.want == "write"
            return asynchat.async_chat.writable(self)

        def wrap(self, context, **options):
            """Switch the connected socket to TLS (STARTTLS)."""
            self.socket = context.wrap_socket(
                self.socket, do_handshake_on_connect=False, **options
            )
            self.tls = True

        def collect_incoming_data(self, data):
            self.line.append(data)

        def found_terminator(self):
            line = b"".join(self.line)
            self.line = []
            self.handle_line(line)

        def handle_read(self):
            if self.handshaking:
                self.handshake_event("read")
                return
            asynchat.async_chat.handle_read(self)
            while self.tls and not self.handshaking and self.pending():
                asynchat.async_chat.handle_read(self)

        def handle_write(self):
            if self.handshaking:
                self.handshake_event("write")
                return
            asynchat.async_chat.handle_write(self)
            self.after_write()

        def after_write(self):
            pass

    class StartTLSHandler(TLSLineChannel):
        """Server: echoes "250 <line>", upgrades on STARTTLS, ends on QUIT."""

        def __init__(self, sock, context, map):
            TLSLineChannel.__init__(self, sock, map=map)
            self.context = context
            self.upgrade_when_flushed = False
            self.plain_lines = []
            self.tls_tally = Tally()
            self.refused = None

        def handle_line(self, line):
            if not self.tls:
                self.plain_lines.append(line)
            if line == b"STARTTLS":
                if self.tls:
                    self.push(b"503 TLS already\r\n")
                elif self.ac_in_buffer:
                    # Bytes sent behind STARTTLS before our answer: they
                    # would be taken as TLS-protected. Refuse and end.
                    self.refused = bytes(self.ac_in_buffer)
                    self.ac_in_buffer = b""
                    self.push(b"554 pipelined after STARTTLS\r\n")
                    self.close_when_done()
                else:
                    self.push(b"220 go ahead\r\n")
                    self.upgrade_when_flushed = True
                    self.after_write()
            elif line == b"QUIT":
                self.push(b"221 bye\r\n")
                self.close_when_done()
            else:
                if self.tls:
                    self.tls_tally.add(line + b"\n")
                self.push(b"250 " + line + b"\r\n")

        def after_write(self):
            # The answer to STARTTLS has left in plaintext: now wrap.
            if self.upgrade_when_flushed and not self.producer_fifo:
                self.upgrade_when_flushed = False
                self.wrap(self.context, server_side=True)
                self.start_handshake("read")

    class StartTLSServer(Listener):
        """Accepts plaintext line connections (TLS comes with STARTTLS)."""

        def handle_accepted(self, sock, addr):
            self.handlers.append(StartTLSHandler(sock, self.context, self.channel_map))

    class StartTLSClient(TLSLineChannel):
        """Client: STARTTLS, then ``lines`` over TLS, then QUIT."""

        def __init__(self, context, address, lines, map, first=b"STARTTLS\r\n"):
            TLSLineChannel.__init__(self, map=map)
            self.context = context
            self.lines = lines
            self.first = first
            self.replies = []
            self.echo_tally = Tally()
            self.handshake_seen = False
            self.said_bye = False
            self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
            self.connect(address)

        def handle_connect(self):
            self.push(self.first)

        def handle_line(self, line):
            if line.startswith(b"220") and not self.tls:
                self.wrap(self.context, server_hostname=HOSTNAME)
                self.start_handshake("write")
                self.step_handshake()  # the ClientHello goes out now
            elif line.startswith(b"250 ") and self.tls:
                self.echo_tally.add(line[4:] + b"\n")
            elif line.startswith(b"221"):
                self.said_bye = True
            else:
                self.replies.append(line)

        def handshake_done(self):
            self.handshake_seen = True
            for line in self.lines:
                self.push(line + b"\r\n")
            self.push(b"QUIT\r\n")

        def handle_close(self):
            self.close()

    return SimpleNamespace(
        asyncore=asyncore,
        asynchat=asynchat,
        EchoHandler=EchoHandler,
        EchoServer=EchoServer,
        EchoClient=EchoClient,
        StartTLSServer=StartTLSServer,
        StartTLSClient=StartTLSClient,
    )
