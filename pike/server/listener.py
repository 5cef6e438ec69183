"""The event-driven listener: one poller, many connections.

A :class:`Listener` owns one listening socket on a pike poller. Each
connection it accepts becomes a :class:`~pike.transport.Transport` (or a
subclass, such as a ``Chat``) made by the application's factory, living on
the same poller. The listener keeps count of the connections it made, and
from that count it can cap them and shut down gracefully.

Facts the code relies on:

* The listening socket is level-triggered in every poller: connections left
  in the kernel's queue when a readiness event ends are reported again by the
  next wait. So pausing (``pause_reading``) and resuming the listening
  transport is all it takes to stop and restart accepting; nothing is lost,
  clients just wait in the backlog.
* ``accept()`` failing with EMFILE, ENFILE, ENOBUFS or ENOMEM leaves the
  connection in the queue, so the listener stays readable: retrying at once
  would spin. The listener pauses instead and retries after a back-off that
  doubles while the error lasts, serving its connections meanwhile.
* A connection's end is learnt from its ``close()``, which every way of
  ending a Transport goes through.
"""

import errno
import logging
import os
import socket
import stat

from pike.errors import ACCEPT_RESOURCE_ERRNOS
from pike.poller import get_poller
from pike.transport import Transport

__all__ = ["Listener", "RESOURCE_ERRNOS", "UnixPath", "family_of", "listening_socket"]

logger = logging.getLogger("pike.server")

#: accept() errnos that mean "out of a resource": back off, then retry.
RESOURCE_ERRNOS = ACCEPT_RESOURCE_ERRNOS

#: accept() errnos about the one connection being accepted: go on with the next.
_SKIP_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ECONNABORTED", "EPROTO", "EPERM", "ECONNRESET", "EAGAIN", "EINTR")
    if hasattr(errno, name)
)

# Connections accepted per readiness event: enough to drain a burst, few
# enough that a flood of clients cannot starve the connections being served.
_ACCEPTS_PER_EVENT = 64


def family_of(address):
    """The socket family an address is written in.

    A ``str``/``bytes`` path is ``AF_UNIX``; a tuple whose host contains a
    colon (or of four items) is ``AF_INET6``; any other tuple ``AF_INET``.
    """
    if isinstance(address, (str, bytes, os.PathLike)):
        return socket.AF_UNIX
    host = address[0] if address else ""
    if len(address) == 4 or (isinstance(host, str) and ":" in host):
        return socket.AF_INET6
    return socket.AF_INET


class UnixPath:
    """The file of a Unix socket this process bound, to remove it on close.

    :meth:`remove` unlinks the path only while it is still the same file
    (device and inode): another server may have taken the path since.
    """

    def __init__(self, path):
        self.path = path
        info = os.stat(path)
        self._identity = (info.st_dev, info.st_ino)

    def remove(self):
        try:
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self.path)
        except OSError:
            pass

    def __repr__(self):
        return f"<UnixPath {self.path!r}>"


def _clear_stale_socket(path):
    """Remove a socket file nobody listens on; refuse to touch anything else."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(errno.EEXIST, "not a socket, left alone", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # a dead server's leftover
        return
    except OSError:
        return  # let bind() report what is wrong
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "a server is listening there", path)


def listening_socket(address, family=None, backlog=128, reuse_port=False, listen=True):
    """Make a bound (and, with ``listen``, listening) stream socket.

    Returns ``(sock, unix_path)``: ``unix_path`` is a :class:`UnixPath` for a
    Unix socket bound to a file (None otherwise), whose ``remove()`` deletes
    the file again. TCP sockets get ``SO_REUSEADDR``, and ``SO_REUSEPORT``
    when ``reuse_port`` is true (OSError where the platform lacks it). For a
    Unix path, a stale socket file nobody listens on is replaced; a live
    one raises EADDRINUSE, and a file that is not a socket FileExistsError.
    """
    family = family_of(address) if family is None else family
    sock = socket.socket(family, socket.SOCK_STREAM)
    unix_path = None
    try:
        if family == socket.AF_UNIX:
            path = os.fspath(address)
            abstract = path[:1] in ("\0", b"\0")
            if not abstract:
                _clear_stale_socket(path)
            sock.bind(path)
            if not abstract:
                unix_path = UnixPath(path)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                if not hasattr(socket, "SO_REUSEPORT"):
                    raise OSError(errno.ENOPROTOOPT, "SO_REUSEPORT is not available")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        if listen:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        if unix_path is not None:
            unix_path.remove()
        raise
    return sock, unix_path


class _ListeningTransport(Transport):
    """The listening socket on the poller; it reports back to its Listener."""

    tcp_nodelay = False

    def __init__(self, listener, poller):
        self._listener = listener
        super().__init__(alternate_poller=poller)

    def handle_accept(self):
        self._listener._accept_some()

    def handle_error(self):
        # An unexpected failure must not close the listening socket: back
        # off and try again later.
        self._listener._accept_failed(None)

    def handle_close(self):
        # The poller found the listening fd closed behind our back: nothing
        # more can be accepted; the connections already made go on.
        logger.error("pike: the listening socket of %r was lost", self._listener)
        self.close()


class Listener:
    """Accept connections on a poller and make a transport for each.

    ``Listener(factory, address, family=None, poller=None, backlog=128,
    max_connections=None, reuse_port=False)``

    :param factory: called as ``factory(alternate_poller=poller, sock=sock)``
        for each accepted socket (so a :class:`~pike.transport.Transport`
        subclass can be given as it is); it returns the connection's
        transport, which must live on ``poller``. Its ``addr`` is the peer's
        address.
    :param address: ``(host, port)`` for TCP (port 0 picks a free one;
        see :attr:`address`), ``(host, port, flowinfo, scope_id)`` or a host
        with a colon for IPv6, a path for a Unix socket (removed again on
        close if it is still this listener's socket; a stale socket file left
        by a dead server is replaced).
    :param family: the socket family; guessed from ``address`` when None.
    :param poller: the poller to live on; the process's default when None.
    :param backlog: the ``listen()`` backlog.
    :param max_connections: the most connections open at once; at the cap
        the listener stops accepting (clients wait in the kernel's backlog)
        until one closes.
    :param reuse_port: set ``SO_REUSEPORT``, so that several processes can
        listen on the same port and the kernel spreads connections among them.
    :param sock: an already bound and listening socket to adopt instead of
        making one (``address`` and ``family`` are then taken from it).
    :param backoff: ``(first, longest)`` seconds of the pause after an
        accept error such as EMFILE; it doubles while errors go on.
    :param ssl_context: an ``ssl.SSLContext``: every connection starts TLS
        as the server (``start_tls``) before it sees a byte.
    :param ssl_handshake_timeout: seconds a TLS handshake may take
        (default 60).

    A connection transport may define ``handle_shutdown()``: it is called once
    when a graceful :meth:`shutdown` begins (for instance to finish the
    current exchange and then ``close_when_done()``).
    """

    def __init__(
        self,
        factory,
        address=None,
        family=None,
        poller=None,
        backlog=128,
        max_connections=None,
        reuse_port=False,
        sock=None,
        backoff=(0.05, 1.0),
        ssl_context=None,
        ssl_handshake_timeout=None,
    ):
        if ssl_context is not None:
            from pike.tls import with_tls

            factory = with_tls(factory, ssl_context, ssl_handshake_timeout)
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1 (or None)")
        if sock is None and address is None:
            raise ValueError("give an address to listen on, or a listening sock")
        self.factory = factory
        self.poller = poller if poller is not None else get_poller()
        self.max_connections = max_connections
        self.connections = set()
        self.accepted_total = 0
        self.accept_errors = 0
        self._backoff_first, self._backoff_max = backoff
        self._backoff = 0.0
        self._backoff_timer = None
        self._deadline_timer = None
        self._shutting_down = False
        self._closed = False
        self._done_callbacks = []
        self._unix_path = None
        if sock is None:
            sock, self._unix_path = listening_socket(
                address, family, backlog=backlog, reuse_port=reuse_port
            )
        self.family = sock.family
        try:
            self.address = sock.getsockname()
            self._transport = _ListeningTransport(self, self.poller)
            self._transport.set_socket(sock)
        except BaseException:
            sock.close()
            self._remove_unix_path()
            raise

    def _remove_unix_path(self):
        path, self._unix_path = self._unix_path, None
        if path is not None:
            path.remove()

    # -- state ---------------------------------------------------------------

    @property
    def socket(self):
        """The listening socket (None once closed)."""
        return None if self._transport.closed else self._transport.socket

    def fileno(self):
        """The listening socket's fd (-1 once closed)."""
        return self._transport.fileno()

    @property
    def accepting(self):
        """True while new connections are being taken."""
        return self._transport.is_reading()

    @property
    def closed(self):
        """True once the listener and all its connections are closed."""
        return self._closed

    def __len__(self):
        return len(self.connections)

    def __repr__(self):
        state = "closed" if self._closed else (
            "shutting down" if self._shutting_down else "listening"
        )
        return (
            f"<{type(self).__name__} {self.address!r} {state} "
            f"{len(self.connections)} connections>"
        )

    # -- accepting -----------------------------------------------------------

    def _accept_some(self):
        transport = self._transport
        for _ in range(_ACCEPTS_PER_EVENT):
            if self.max_connections is not None and len(self.connections) >= self.max_connections:
                self._update_accepting()
                return
            try:
                pair = transport.accept()
            except OSError as exc:
                if exc.errno in _SKIP_ERRNOS:
                    continue
                self._accept_failed(exc)
                return
            if pair is None:
                return
            self._backoff = 0.0
            self._adopt(*pair)
            if not transport.is_reading():
                return

    def _adopt(self, sock, addr):
        try:
            connection = self.factory(alternate_poller=self.poller, sock=sock)
        except Exception:
            logger.exception("pike: the factory of %r failed for %r", self, addr)
            sock.close()
            return
        if connection is None or connection.closed:
            return  # the factory refused it (and closed it)
        self.accepted_total += 1
        self._track(connection)
        self._update_accepting()

    def _track(self, connection):
        self.connections.add(connection)
        close = connection.close

        def close_and_forget():
            try:
                close()
            finally:
                self._forget(connection)

        connection.close = close_and_forget

    def _forget(self, connection):
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        connection.__dict__.pop("close", None)  # break the reference cycle
        if self._shutting_down:
            if not self.connections:
                self._finish()
        else:
            self._update_accepting()

    def _accept_failed(self, exc):
        """accept() failed for want of a resource (or worse): pause, retry later."""
        self.accept_errors += 1
        first = not self._backoff
        self._backoff = min(
            self._backoff_max, self._backoff * 2 if self._backoff else self._backoff_first
        )
        if exc is None:
            logger.error("pike: %r failed while accepting", self, exc_info=True)
        elif first or exc.errno not in RESOURCE_ERRNOS:
            logger.warning(
                "pike: %r cannot accept (%s); pausing for %.3fs", self, exc, self._backoff
            )
        if self._transport.closed:
            return
        if self._backoff_timer is not None:
            self._backoff_timer.cancel()
        self._backoff_timer = self.poller.call_later(self._backoff, self._backoff_over)
        self._update_accepting()

    def _backoff_over(self):
        self._backoff_timer = None
        self._update_accepting()

    def _update_accepting(self):
        transport = self._transport
        if transport.closed:
            return
        want = (
            not self._shutting_down
            and self._backoff_timer is None
            and (self.max_connections is None or len(self.connections) < self.max_connections)
        )
        if want:
            transport.resume_reading()
        else:
            transport.pause_reading()

    # -- ending ----------------------------------------------------------------

    def stop_accepting(self):
        """Close the listening socket (and remove a Unix socket's path).

        Connections already made go on. Idempotent.
        """
        if self._backoff_timer is not None:
            self._backoff_timer.cancel()
            self._backoff_timer = None
        self._transport.close()
        self._remove_unix_path()

    def shutdown(self, deadline=None):
        """Shut down gracefully: stop accepting, let connections end, close the rest.

        The listening socket is closed at once. Each connection with a
        ``handle_shutdown()`` method has it called; connections then have
        ``deadline`` seconds (None: as long as they need) to close on their
        own, and those still open after that are closed. Returns at once:
        the work happens in the poller's loop, and callbacks given to
        :meth:`add_done_callback` run when the last connection is gone.
        Call it from the poller's thread (from another thread or a signal
        handler, go through ``poller.call_soon_threadsafe``).
        """
        if self._closed:
            return
        first = not self._shutting_down
        self._shutting_down = True
        self.stop_accepting()
        if first:
            for connection in list(self.connections):
                hook = getattr(connection, "handle_shutdown", None)
                if hook is None or connection.closed:
                    continue
                try:
                    hook()
                except Exception:
                    logger.exception("pike: handle_shutdown of %r failed", connection)
                    connection.close()
        if not self.connections:
            self._finish()
            return
        if deadline is not None:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()  # a later call may shorten it
            self._deadline_timer = self.poller.call_later(max(0.0, deadline), self.close)

    def close(self):
        """Stop accepting and close every connection now. Idempotent."""
        if self._closed:
            return
        self._shutting_down = True
        self.stop_accepting()
        for connection in list(self.connections):
            try:
                connection.close()
            except Exception:
                logger.exception("pike: close() of %r failed", connection)
                self._forget(connection)
        self._finish()

    def _finish(self):
        if self._closed:
            return
        self._closed = True
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                logger.exception("pike: done callback %r of %r failed", callback, self)

    def add_done_callback(self, fn):
        """Call ``fn(listener)`` once the listener and its connections are closed."""
        if self._closed:
            fn(self)
        else:
            self._done_callbacks.append(fn)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
