"""The socketserver model on pike's pollers.

This module has the classes and the behaviour of the standard library's
:mod:`socketserver` -- server objects that take one request at a time and
hand each to a fresh request handler, in the calling thread, in a thread of
its own (:class:`ThreadingMixIn`) or in a forked child (:class:`ForkingMixIn`)
-- but every wait for a request is a wait on a pike poller:

* Each server owns a *private* poller (made on first use, of the kind named
  by :attr:`BaseServer.poller_name`, closed by :meth:`BaseServer.server_close`)
  on which its listening socket is watched for reading.
* :meth:`BaseServer.serve_forever` blocks in that poller until a request
  arrives; ``poll_interval`` is only the longest it stays away from
  :meth:`BaseServer.service_actions`.
* :meth:`BaseServer.shutdown`, called from another thread, wakes the poller at
  once through its thread-safe wake-up, so the loop stops without waiting for
  the rest of a poll interval.

The listening socket itself stays in blocking mode, exactly as the standard
library leaves it, so handlers and subclasses see the sockets they expect.

The module is importable on its own name too (``scripts/run_cpython_suite.py``
loads it as ``socketserver`` to run CPython's own test suite against it), so
it imports pike with absolute imports only.
"""

import io
import os
import socket
import ssl
import sys
import threading
import time
import traceback

from pike.poller import Channel, make_poller

__version__ = "0.4"

__all__ = [
    "BaseServer",
    "TCPServer",
    "UDPServer",
    "ThreadingMixIn",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "BaseRequestHandler",
    "StreamRequestHandler",
    "DatagramRequestHandler",
]
if hasattr(os, "fork"):
    __all__ += ["ForkingMixIn", "ForkingTCPServer", "ForkingUDPServer"]
if hasattr(socket, "AF_UNIX"):
    __all__ += [
        "UnixStreamServer",
        "UnixDatagramServer",
        "ThreadingUnixStreamServer",
        "ThreadingUnixDatagramServer",
    ]
    if hasattr(os, "fork"):
        __all__ += ["ForkingUnixStreamServer", "ForkingUnixDatagramServer"]


class _Readiness(Channel):
    """What the server's poller watches in place of the server socket.

    It does nothing but note that the fd became readable; the server then
    takes the request itself, with the socket left exactly as the
    application made it.
    """

    def __init__(self, poller, fd):
        super().__init__(poller, fd)
        self.ready = False

    @property
    def lost(self):
        """The fd was found closed (the poller dropped the channel)."""
        return self.closed

    def handle_read_event(self):
        self.ready = True


class BaseServer:
    """The request loop, independent of any kind of socket.

    ``BaseServer(server_address, RequestHandlerClass)``. Subclasses supply
    :meth:`fileno` and :meth:`get_request` (see :class:`TCPServer`); each
    request then goes ``get_request`` -> :meth:`verify_request` ->
    :meth:`process_request` -> :meth:`finish_request` (which makes the
    handler) -> :meth:`shutdown_request`.

    Attributes: :attr:`server_address`, :attr:`RequestHandlerClass`,
    :attr:`timeout` (seconds :meth:`handle_request` waits; ``None`` for no
    limit) and :attr:`poller_name`.
    """

    #: Seconds :meth:`handle_request` waits for a request (None: no limit).
    timeout = None
    #: The kind of the server's private poller ("epoll", "kqueue", "poll",
    #: "select"); None takes ``PIKE_POLLER`` or the platform's best.
    poller_name = None

    _pike_poller = None
    _pike_watch = None

    def __init__(self, server_address, RequestHandlerClass):
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self._loop_stopped = threading.Event()
        self._stop_requested = False
        self._poller_lock = threading.Lock()

    # -- overridable steps --------------------------------------------------

    def server_activate(self):
        """Called by the constructor to start taking requests (e.g. listen)."""

    def service_actions(self):
        """Called once per :meth:`serve_forever` iteration, in its thread.

        Runs at least every ``poll_interval`` seconds; subclasses and mix-ins
        hook periodic work in here (the forking mix-in reaps children).
        """

    def handle_timeout(self):
        """Called when :meth:`handle_request` saw no request in time."""

    def verify_request(self, request, client_address):
        """Return True to serve the request, False to drop it (default True)."""
        return True

    def process_request(self, request, client_address):
        """Serve one request: :meth:`finish_request`, then :meth:`shutdown_request`.

        The mix-ins override this to serve it in a thread or a child process.
        """
        self.finish_request(request, client_address)
        self.shutdown_request(request)

    def finish_request(self, request, client_address):
        """Make the request handler, which serves the request."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request):
        """End one request (the default only calls :meth:`close_request`)."""
        self.close_request(request)

    def close_request(self, request):
        """Release what one request holds (nothing, in this base class)."""

    def handle_error(self, request, client_address):
        """An exception escaped the handler: report it on ``sys.stderr``.

        Called from within the ``except`` block, so ``sys.exc_info()`` is the
        error. The server goes on serving.
        """
        stream = sys.stderr
        rule = "-" * 40
        print(rule, file=stream)
        print(
            "Exception occurred during processing of request from",
            client_address,
            file=stream,
        )
        traceback.print_exc(file=stream)
        print(rule, file=stream)

    def server_close(self):
        """Release the server's resources; here, its private poller."""
        with self._lock():
            poller, self._pike_poller = self._pike_poller, None
            watch, self._pike_watch = self._pike_watch, None
        if poller is not None:
            if watch is not None:
                poller.del_channel(watch)
            if not poller.closed:
                poller.close()

    # -- the loop -----------------------------------------------------------

    def serve_forever(self, poll_interval=0.5):
        """Serve requests until :meth:`shutdown` is called.

        The thread blocks in the server's poller until a request arrives or
        :meth:`shutdown` wakes it; ``poll_interval`` (seconds) is the longest
        it blocks before calling :meth:`service_actions` again.
        """
        self._loop_stopped.clear()
        try:
            while not self._stop_requested:
                ready = self._wait_for_request(poll_interval, stoppable=True)
                if self._stop_requested:
                    break
                if ready:
                    self._handle_request_noblock()
                self.service_actions()
        finally:
            self._stop_requested = False
            self._loop_stopped.set()

    def shutdown(self):
        """Stop the :meth:`serve_forever` loop and wait until it has stopped.

        Call it from another thread than the one running
        :meth:`serve_forever` (or that is about to): the loop's poller is woken
        at once, so this returns as soon as the current request, if any, is
        done. Called from the serving thread itself, or with no loop ever to
        run, it would wait for ever.
        """
        self._stop_requested = True
        poller = self._pike_poller
        if poller is not None:
            poller.stop()  # thread-safe: wakes a blocked poll at once
        self._loop_stopped.wait()

    def handle_request(self):
        """Wait for one request and serve it.

        Waits at most :attr:`timeout` seconds (or the socket's own timeout,
        whichever is shorter); when none comes, calls :meth:`handle_timeout`
        instead.
        """
        timeout = self._socket_timeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                wait = None
            else:
                wait = deadline - time.monotonic()
                if wait < 0:
                    wait = 0.0
            if self._wait_for_request(wait):
                return self._handle_request_noblock()
            if deadline is not None and time.monotonic() >= deadline:
                return self.handle_timeout()

    def _socket_timeout(self):
        sock = getattr(self, "socket", None)
        gettimeout = getattr(sock, "gettimeout", None)
        return gettimeout() if gettimeout is not None else None

    def _handle_request_noblock(self):
        """Take one request that is known to be waiting, and serve it."""
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        if not self.verify_request(request, client_address):
            self.shutdown_request(request)
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    # -- the private poller -------------------------------------------------

    def _lock(self):
        lock = self.__dict__.get("_poller_lock")
        if lock is None:  # a subclass that skipped BaseServer.__init__
            lock = self._poller_lock = threading.Lock()
        return lock

    def _server_poller(self):
        """The server's poller, with the server's fd watched for reading."""
        with self._lock():
            poller = self._pike_poller
            if poller is None or poller.closed:
                poller = self._pike_poller = make_poller(self.poller_name)
                self._pike_watch = None
            fd = self.fileno()
            watch = self._pike_watch
            if watch is not None and (watch.lost or watch.fileno() != fd):
                watch.close()
                watch = self._pike_watch = None
            if watch is None and fd >= 0:
                watch = _Readiness(poller, fd)
                poller.add_channel(watch)
                self._pike_watch = watch
            return poller, watch

    def _wait_for_request(self, timeout, stoppable=False):
        """Block in the poller for at most ``timeout`` seconds (None: no limit).

        True when the server's fd is readable; False on a timeout or a
        wake-up from :meth:`shutdown`.
        """
        poller, watch = self._server_poller()
        # shutdown() sets the flag, then wakes the poller if it sees one: a
        # shutdown() that ran before the poller existed is caught here.
        if stoppable and self._stop_requested:
            return False
        if watch is None:  # no socket any more: just wait, without spinning
            poller.poll(timeout)
            return False
        watch.ready = False
        poller.poll(timeout)
        return watch.ready

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.server_close()


class TCPServer(BaseServer):
    """A stream server.

    ``TCPServer(server_address, RequestHandlerClass, bind_and_activate=True,
    ssl_context=None)``: the constructor makes :attr:`socket`; with
    ``bind_and_activate`` it also calls :meth:`server_bind` and
    :meth:`server_activate` (and closes the socket again if either fails).
    With ``ssl_context`` every request is a server-side ``ssl.SSLSocket``
    whose handshake runs on its first read or write, in the handler (so a
    slow client never holds up the accepting loop). The class attributes
    :attr:`address_family`, :attr:`socket_type`, :attr:`request_queue_size`,
    :attr:`allow_reuse_address` and :attr:`allow_reuse_port` shape it.
    """

    #: The socket family (``AF_INET``; ``AF_INET6`` and ``AF_UNIX`` work too).
    address_family = socket.AF_INET
    #: The socket type.
    socket_type = socket.SOCK_STREAM
    #: The backlog given to ``listen()``.
    request_queue_size = 5
    #: Set ``SO_REUSEADDR`` before binding.
    allow_reuse_address = False
    #: Set ``SO_REUSEPORT`` before binding (where the platform has it).
    allow_reuse_port = False

    #: The ``ssl.SSLContext`` requests are wrapped in (None: plain TCP).
    ssl_context = None

    def __init__(self, server_address, RequestHandlerClass, bind_and_activate=True,
                 ssl_context=None):
        if ssl_context is not None:
            if not isinstance(ssl_context, ssl.SSLContext):
                raise TypeError(f"ssl_context must be an ssl.SSLContext, not {ssl_context!r}")
            self.ssl_context = ssl_context
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    def server_bind(self):
        """Set the reuse options asked for, bind, and note the real address."""
        sock = self.socket
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.allow_reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(self.server_address)
        self.server_address = sock.getsockname()

    def server_activate(self):
        """Listen, with a backlog of :attr:`request_queue_size`."""
        self.socket.listen(self.request_queue_size)

    def server_close(self):
        """Close the listening socket and the server's poller."""
        # Unwatch before closing, so the poller never sees a dead fd.
        BaseServer.server_close(self)
        self.socket.close()

    def fileno(self):
        """The listening socket's fd."""
        return self.socket.fileno()

    def get_request(self):
        """Accept one connection: ``(connection, client_address)``."""
        connection, address = self.socket.accept()
        if self.ssl_context is not None:
            try:
                connection = self.ssl_context.wrap_socket(
                    connection, server_side=True, do_handshake_on_connect=False
                )
            except BaseException:
                connection.close()
                raise
        return connection, address

    def shutdown_request(self, request):
        """Shut the connection down for writing, then close it."""
        try:
            # Tell the peer we are done before closing, so that the close
            # cannot turn unread input into a reset that loses our output.
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer may be gone already
        self.close_request(request)

    def close_request(self, request):
        """Close the connection."""
        request.close()


class UDPServer(TCPServer):
    """A datagram server: each datagram is one request.

    The request a handler gets is ``(data, server_socket)``; datagrams longer
    than :attr:`max_packet_size` are truncated.
    """

    allow_reuse_address = False
    allow_reuse_port = False
    socket_type = socket.SOCK_DGRAM
    #: The largest datagram read, in bytes.
    max_packet_size = 8192

    def get_request(self):
        """Receive one datagram: ``((data, socket), client_address)``."""
        data, client_address = self.socket.recvfrom(self.max_packet_size)
        return (data, self.socket), client_address

    def server_activate(self):
        """Nothing to do: a datagram socket takes requests once bound."""

    def shutdown_request(self, request):
        """Nothing to shut down: the socket is the server's own."""
        self.close_request(request)

    def close_request(self, request):
        """Nothing to close: the socket is the server's own."""


if hasattr(os, "fork"):

    class ForkingMixIn:
        """Serve each request in a forked child process.

        :attr:`active_children` holds the pids of the children still
        running (None before the first); at most :attr:`max_children` run at
        once; :meth:`server_close` waits for them when :attr:`block_on_close`
        is true. Only this server's own children are ever waited for.
        """

        #: :meth:`handle_request` waits this long; then children are reaped.
        timeout = 300
        #: Pids of the children that have not been reaped (None before any).
        active_children = None
        #: More children than this make the server wait for one to end.
        max_children = 40
        #: :meth:`server_close` waits for every child to end.
        block_on_close = True

        def _reap(self, pid, blocking):
            """Wait for one child; True once it is gone."""
            try:
                done, _ = os.waitpid(pid, 0 if blocking else os.WNOHANG)
            except ChildProcessError:
                return True  # somebody else reaped it
            return done == pid

        def collect_children(self, *, blocking=False):
            """Reap the children that have ended (all of them if ``blocking``).

            While :attr:`max_children` or more run, wait until one ends.
            """
            children = self.active_children
            if children is None:
                return
            pause = 0.001
            while len(children) >= self.max_children:
                for pid in list(children):
                    if self._reap(pid, False):
                        children.discard(pid)
                if len(children) >= self.max_children:
                    time.sleep(pause)  # bounded back-off: ours only, no wait(-1)
                    pause = min(pause * 2, 0.05)
            for pid in list(children):
                if self._reap(pid, blocking):
                    children.discard(pid)

        def handle_timeout(self):
            """No request came in time: reap finished children."""
            self.collect_children()

        def service_actions(self):
            """Reap finished children once per loop iteration."""
            self.collect_children()

        def process_request(self, request, client_address):
            """Fork; the child serves the request and exits, the parent goes on."""
            pid = os.fork()
            if pid:
                if self.active_children is None:
                    self.active_children = set()
                self.active_children.add(pid)
                self.close_request(request)  # the child has its own copy
                return
            # In the child: serve, then leave without running the parent's
            # clean-ups (atexit, finally blocks of the serving loop...).
            status = 1
            try:
                self.finish_request(request, client_address)
                status = 0
            except Exception:
                self.handle_error(request, client_address)
            finally:
                try:
                    self.shutdown_request(request)
                finally:
                    os._exit(status)

        def server_close(self):
            """Close the server, then reap children (waiting if :attr:`block_on_close`)."""
            super().server_close()
            self.collect_children(blocking=self.block_on_close)


class _ThreadList:
    """The request threads a server must join on close.

    Finished threads are dropped whenever one is added, so a long-lived
    server does not keep every thread it ever ran.
    """

    def __init__(self):
        self._threads = []
        self._lock = threading.Lock()

    def append(self, thread):
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def join(self):
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join()

    def __len__(self):
        return len(self._threads)

    def __iter__(self):
        return iter(list(self._threads))


class _NoThreadList:
    """Stands in for :class:`_ThreadList` when nothing is to be joined."""

    def append(self, thread):
        pass

    def join(self):
        pass

    def __len__(self):
        return 0

    def __iter__(self):
        return iter(())


class ThreadingMixIn:
    """Serve each request in a new thread.

    :attr:`daemon_threads` makes the threads daemons; with
    :attr:`block_on_close` (the default) :meth:`server_close` joins the
    threads still running.
    """

    #: Make request threads daemon threads.
    daemon_threads = False
    #: :meth:`server_close` joins the request threads.
    block_on_close = True
    _threads = _NoThreadList()

    def process_request_thread(self, request, client_address):
        """The body of a request thread: the same steps as a synchronous server."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def process_request(self, request, client_address):
        """Start a thread that serves the request."""
        if self.block_on_close:
            threads = self.__dict__.get("_threads")
            if threads is None:
                threads = self._threads = _ThreadList()
        else:
            threads = self._threads
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"{type(self).__name__} request {client_address!r}",
        )
        thread.daemon = self.daemon_threads
        threads.append(thread)
        thread.start()

    def server_close(self):
        """Close the server, then join request threads (with :attr:`block_on_close`)."""
        super().server_close()
        self._threads.join()


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    """A :class:`UDPServer` serving each datagram in a thread."""


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    """A :class:`TCPServer` serving each connection in a thread."""


if hasattr(os, "fork"):

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        """A :class:`UDPServer` serving each datagram in a child process."""

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        """A :class:`TCPServer` serving each connection in a child process."""


if hasattr(socket, "AF_UNIX"):

    class UnixStreamServer(TCPServer):
        """A stream server on a Unix socket path (the path is not unlinked)."""

        address_family = socket.AF_UNIX

    class UnixDatagramServer(UDPServer):
        """A datagram server on a Unix socket path (the path is not unlinked)."""

        address_family = socket.AF_UNIX

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        """A :class:`UnixStreamServer` serving each connection in a thread."""

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        """A :class:`UnixDatagramServer` serving each datagram in a thread."""

    if hasattr(os, "fork"):

        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            """A :class:`UnixStreamServer` serving each connection in a child."""

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            """A :class:`UnixDatagramServer` serving each datagram in a child."""


class BaseRequestHandler:
    """One request's handler: made per request, it serves it in its constructor.

    ``BaseRequestHandler(request, client_address, server)`` stores the three
    as attributes, then calls :meth:`setup`, :meth:`handle` and (even when
    :meth:`handle` raised) :meth:`finish`.
    """

    def __init__(self, request, client_address, server):
        self.request = request
        self.client_address = client_address
        self.server = server
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self):
        """Prepare for :meth:`handle` (nothing by default)."""

    def handle(self):
        """Serve the request (override this; the default does nothing)."""

    def finish(self):
        """Clean up after :meth:`handle` (nothing by default)."""


class _SocketWriter(io.BufferedIOBase):
    """An unbuffered binary writer on a socket: every write is sent whole.

    ``write`` returns only once all bytes went to the kernel (``sendall``
    resumes after a signal interrupts it), so nothing waits for a flush.
    """

    def __init__(self, sock):
        self._sock = sock

    def writable(self):
        return True

    def write(self, b):
        if self.closed:
            raise ValueError("write to a closed file")
        with memoryview(b) as view:
            self._sock.sendall(view)
            return view.nbytes

    def fileno(self):
        return self._sock.fileno()


class StreamRequestHandler(BaseRequestHandler):
    """A handler for stream requests with file objects on the connection.

    :attr:`rfile` reads from the connection and :attr:`wfile` writes to it.
    Class attributes: :attr:`rbufsize` and :attr:`wbufsize` (``0`` for
    :attr:`wfile` means every write is sent at once), :attr:`timeout` (a
    socket timeout for the connection) and :attr:`disable_nagle_algorithm`
    (set ``TCP_NODELAY``).
    """

    #: Buffer size of :attr:`rfile` (-1: the default size).
    rbufsize = -1
    #: Buffer size of :attr:`wfile` (0: unbuffered, every write sent whole).
    wbufsize = 0
    #: Socket timeout for the connection, in seconds (None: blocking).
    timeout = None
    #: Set ``TCP_NODELAY`` on the connection.
    disable_nagle_algorithm = False

    def setup(self):
        self.connection = self.request
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.rfile = self.connection.makefile("rb", self.rbufsize)
        if self.wbufsize == 0:
            self.wfile = _SocketWriter(self.connection)
        else:
            self.wfile = self.connection.makefile("wb", self.wbufsize)

    def finish(self):
        if not self.wfile.closed:
            try:
                self.wfile.flush()
            except OSError:
                pass  # the peer went away; nothing more can be sent
        self.wfile.close()
        self.rfile.close()


class DatagramRequestHandler(BaseRequestHandler):
    """A handler for datagram requests with file objects on the datagram.

    :attr:`rfile` reads the datagram received; what is written to
    :attr:`wfile` goes back to the client as one datagram in :meth:`finish`.
    """

    def setup(self):
        self.packet, self.socket = self.request
        self.rfile = io.BytesIO(self.packet)
        self.wfile = io.BytesIO()

    def finish(self):
        self.socket.sendto(self.wfile.getvalue(), self.client_address)
