"""A drop-in ``asyncore`` for code that outlived the standard library's.

This module has the whole public API of Python 3.11's ``asyncore`` (removed
from the standard library in 3.12) and behaves the same to its callers:
``loop``, ``poll``, ``poll2`` / ``poll3``, ``read``, ``write``,
``readwrite``, ``close_all``, ``compact_traceback``, ``ExitNow``,
``dispatcher``, ``dispatcher_with_send``, ``file_wrapper`` and
``file_dispatcher``, the module-level ``socket_map``, and the module's own
``socket``, ``select``, ``time`` and ``os`` names, which applications and
their tests replace at run time. :func:`pike.compat.install` makes ``import
asyncore`` find it.

Where it differs is speed, in :func:`loop`. The original rebuilds a
``select()`` (or ``poll()``) set from scratch on every iteration, which
costs O(channels) system-call work and stops at fd 1024. Here ``loop()``
keeps one epoll set per map (:class:`_MapEngine`). A small map's
channels are all asked ``readable()`` and ``writable()`` on every
iteration, as the original does; in a large map only the channels whose
answers may have changed are asked (after an event of their own, a hint
from compat's own methods, or an attribute assignment on a class that
overrides the two), with a periodic full sweep as the safety net, so an
iteration costs O(active channels). The kernel interest follows the
answers: an ``epoll_ctl`` call is made only for a channel whose answers
changed, and the wait costs O(ready channels) with no fd limit.
The events are then dispatched with the original's semantics: in
``select`` mode (the default) as ``select()`` would report them (all reads,
then all writes, then exceptional conditions, with Linux's select mapping of
hang-ups and errors), in ``poll`` mode (``use_poll=True``) through
:func:`readwrite` as ``poll2()`` would.

The fast path is taken only when nobody replaced what the original loop
would have used: the module's ``select`` and ``time`` (and their
``select`` / ``poll`` / ``sleep`` functions), and the module's ``poll``,
``poll2``, ``read``, ``write``, ``_exception`` and ``readwrite``. Otherwise
``loop()`` calls the module's ``poll`` / ``poll2`` exactly as the original
does, and those always work on the module's own names, so fakes and
monkeypatches see what they expect. ``PIKE_ASYNCORE_FAST=0`` in the
environment turns the fast path off.

Differences a caller can notice, all deliberate:

* an fd that was closed behind its dispatcher's back (the dispatcher still
  in the map) gets ``handle_close()`` in the fast path, as ``poll2()``
  reports ``POLLNVAL``; the original ``select()`` loop raised ``EBADF``;
* a socket that hung up while its dispatcher only wants to write is not
  reported (as with ``select()``) and, so that the loop cannot spin on
  epoll's unmaskable hang-up event, its kernel interest is dropped until
  its ``readable()`` / ``writable()`` answers change;
* an event for an fd that was closed and reused during the same batch is
  dropped instead of reaching the new owner;
* while a loop runs on a map, pike holds one fd for it (the epoll object);
  it is released when a ``loop()`` call returns
  with the map empty, by :func:`close_all`, or when more than a handful of
  maps are in use.

Everything here is written from the documented behaviour of the 3.11 module
and its test-suite; no code is taken from it.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
import warnings
from errno import (  # noqa: F401 - all of them asyncore names, as the stdlib's does
    EAGAIN,
    EALREADY,
    EBADF,
    ECONNABORTED,
    ECONNRESET,
    EINPROGRESS,
    EINVAL,
    EISCONN,
    ENOTCONN,
    EPIPE,
    ESHUTDOWN,
    EWOULDBLOCK,
    errorcode,
)

import threading as _threading
import weakref as _weakref

from pike.poller import MAX_WAIT as _MAX_WAIT

from typing import TYPE_CHECKING as _TYPE_CHECKING

# The module's public names stay those of the standard library's: the
# __future__ import above binds one more (the compiler flag stays set).
del annotations

if _TYPE_CHECKING:  # hints only: no typing cost at import
    from typing import Any, Dict

    Map = Dict[int, Any]  # fd -> dispatcher (or any object with its methods)
from pike.errors import CONNECTION_LOST_ERRNOS as _CONNECTION_LOST_ERRNOS

# The map channels live in unless one is passed explicitly.
socket_map: dict = {}


class ExitNow(Exception):
    """Raised by a handler to leave :func:`loop` at once."""


# Exceptions that escape the event helpers instead of reaching handle_error.
_reraised_exceptions = (ExitNow, KeyboardInterrupt, SystemExit)

# Errors that mean "the peer is gone": they turn into handle_close(). (The
# same table as the transport's: asyncore's own list has the same six.)
_DISCONNECTED = _CONNECTION_LOST_ERRNOS


def _strerror(err):
    """A message for errno ``err``, even for numbers the C library rejects."""
    try:
        return os.strerror(err)
    except (ValueError, OverflowError, NameError):
        name = errorcode.get(err)
        return name if name is not None else "Unknown error %s" % err


# -- calling one handler ------------------------------------------------------


def read(obj: Any) -> None:
    """Call ``obj.handle_read_event()``; other errors go to ``handle_error``."""
    try:
        obj.handle_read_event()
    except _reraised_exceptions:
        raise
    except BaseException:
        obj.handle_error()


def write(obj: Any) -> None:
    """Call ``obj.handle_write_event()``; other errors go to ``handle_error``."""
    try:
        obj.handle_write_event()
    except _reraised_exceptions:
        raise
    except BaseException:
        obj.handle_error()


def _exception(obj):
    """Call ``obj.handle_expt_event()``; other errors go to ``handle_error``."""
    try:
        obj.handle_expt_event()
    except _reraised_exceptions:
        raise
    except BaseException:
        obj.handle_error()


def readwrite(obj: Any, flags: int) -> None:
    """Dispatch one ``poll()`` result: ``flags`` are ``select.POLL*`` bits.

    Read, write and priority events go to their ``handle_*_event`` method in
    that order; a hang-up, error or invalid fd to ``handle_close()``. An
    OSError meaning the peer went away also becomes ``handle_close()``;
    ``ExitNow``, ``KeyboardInterrupt`` and ``SystemExit`` escape; anything
    else goes to ``handle_error()``.
    """
    try:
        if flags & select.POLLIN:
            obj.handle_read_event()
        if flags & select.POLLOUT:
            obj.handle_write_event()
        if flags & select.POLLPRI:
            obj.handle_expt_event()
        if flags & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
            obj.handle_close()
    except OSError as exc:
        if exc.errno in _DISCONNECTED:
            obj.handle_close()
        else:
            obj.handle_error()
    except _reraised_exceptions:
        raise
    except BaseException:
        obj.handle_error()


# -- one iteration, the original way -------------------------------------------


def poll(timeout: float = 0.0, map: Map | None = None) -> None:
    """One ``select()`` iteration over ``map`` (default: ``socket_map``).

    Each channel is asked ``readable()`` and ``writable()`` (a listening
    channel is never watched for writing); when nobody wants anything the
    call just sleeps ``timeout`` seconds. Uses the module's ``select`` and
    ``time`` names, so both may be replaced.
    """
    if map is None:
        map = socket_map
    if not map:
        return
    readers = []
    writers = []
    excepts = []
    for fd, obj in list(map.items()):
        wants_read = obj.readable()
        wants_write = obj.writable()
        if wants_read:
            readers.append(fd)
        if wants_write and not obj.accepting:
            writers.append(fd)
        if wants_read or wants_write:
            excepts.append(fd)
    if not (readers or writers or excepts):
        time.sleep(timeout)
        return
    readers, writers, excepts = select.select(readers, writers, excepts, timeout)
    for ready, handler in ((readers, read), (writers, write), (excepts, _exception)):
        for fd in ready:
            obj = map.get(fd)
            if obj is not None:
                handler(obj)


def poll2(timeout: float = 0.0, map: Map | None = None) -> None:
    """One ``poll()`` iteration over ``map``; ``timeout`` is in seconds.

    Results are dispatched through :func:`readwrite`. Uses the module's
    ``select`` name, so it may be replaced.
    """
    if map is None:
        map = socket_map
    if timeout is not None:
        timeout = int(timeout * 1000)  # poll() takes whole milliseconds
    pollster = select.poll()
    if not map:
        return
    for fd, obj in list(map.items()):
        flags = 0
        if obj.readable():
            flags |= select.POLLIN | select.POLLPRI
        if obj.writable() and not obj.accepting:
            flags |= select.POLLOUT
        if flags:
            pollster.register(fd, flags)
    for fd, flags in pollster.poll(timeout):
        obj = map.get(fd)
        if obj is not None:
            readwrite(obj, flags)


poll3 = poll2  # the old name


def loop(
    timeout: float = 30.0, use_poll: bool = False, map: Map | None = None, count: int | None = None
) -> None:
    """Run iterations until ``map`` is empty, or ``count`` of them ran.

    ``timeout`` bounds each wait (seconds); ``use_poll`` asks for ``poll()``
    semantics instead of ``select()``'s; ``map`` defaults to ``socket_map``.
    """
    if map is None:
        map = socket_map
    poll_mode = bool(use_poll) and hasattr(select, "poll")
    engine = None
    if map and (count is None or count > 0):
        engine = _checkout(map, poll_mode)
    if engine is None:
        poll_fun = poll2 if poll_mode else poll
        if count is None:
            while map:
                poll_fun(timeout, map)
        else:
            while map and count > 0:
                poll_fun(timeout, map)
                count -= 1
        return
    engine.pending = True  # the caller ran code since the last call
    try:
        if count is None:
            while map:
                engine.run_once(map, timeout)
        else:
            while map and count > 0:
                engine.run_once(map, timeout)
                count -= 1
    finally:
        _checkin(map, engine)


# -- the channels ----------------------------------------------------------------


class dispatcher:
    """A thin wrapper around a non-blocking socket, driven by :func:`loop`.

    Override ``readable()`` / ``writable()`` to say what to wait for, and the
    ``handle_*`` methods to act on it.
    """

    _pike_library = True

    debug = False
    connected = False
    accepting = False
    connecting = False
    closing = False
    addr = None
    ignore_log_types = frozenset({"warning"})

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _classify(cls)

    def __init__(self, sock=None, map=None):
        self._map = socket_map if map is None else map
        self._fileno = None
        if not sock:
            self.socket = None
            return
        sock.setblocking(False)
        self.set_socket(sock, map)
        self.connected = True
        try:
            self.addr = sock.getpeername()
        except OSError as exc:
            if exc.errno not in (ENOTCONN, EINVAL):
                # Something worse than "not connected yet": leave the map
                # as it was before raising.
                self.del_channel(map)
                raise
            self.connected = False  # a listening or unconnected socket

    def __repr__(self):
        cls = type(self)
        module = cls.__module__
        if module == __name__:
            module = "asyncore"  # what the classes are known as to callers
        words = ["%s.%s" % (module, cls.__qualname__)]
        if self.accepting and self.addr:
            words.append("listening")
        elif self.connected:
            words.append("connected")
        if self.addr is not None:
            try:
                words.append("%s:%d" % self.addr)
            except TypeError:
                words.append(repr(self.addr))
        return "<%s at %#x>" % (" ".join(words), id(self))

    # -- the map ----------------------------------------------------------

    def add_channel(self, map: Map | None = None) -> None:
        if map is None:
            map = self._map
        map[self._fileno] = self
        _touch_in(map, self, self._fileno)

    def del_channel(self, map: Map | None = None) -> None:
        fd = self._fileno
        if map is None:
            map = self._map
        if fd in map:
            del map[fd]
            # Unregister from the fast path's kernel set now, while the fd
            # is still open: epoll forgets a closed fd by itself only when
            # no other descriptor shares its file.
            _forget(map, fd, self)
        self._fileno = None

    # -- socket set-up ------------------------------------------------------

    def create_socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> None:
        self.family_and_type = family, type
        sock = socket.socket(family, type)
        sock.setblocking(False)
        self.set_socket(sock)

    def set_socket(self, sock: socket.socket, map: Map | None = None) -> None:
        self.socket = sock
        self._fileno = sock.fileno()
        self.add_channel(map)

    def set_reuse_addr(self) -> None:
        """Set ``SO_REUSEADDR`` where the platform allows it."""
        try:
            current = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            self.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEADDR, current | 1
            )
        except OSError:
            pass

    # -- what to wait for --------------------------------------------------

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    # -- socket methods -------------------------------------------------

    def listen(self, num: int) -> None:
        self.accepting = True
        _touch(self)
        if os.name == "nt" and num > 5:
            num = 5
        return self.socket.listen(num)

    def bind(self, addr: Any) -> None:
        self.addr = addr
        return self.socket.bind(addr)

    def connect(self, address: Any) -> None:
        self.connected = False
        self.connecting = True
        _touch(self)
        err = self.socket.connect_ex(address)
        if err in (EINPROGRESS, EALREADY, EWOULDBLOCK) or (
            err == EINVAL and os.name == "nt"
        ):
            self.addr = address
            return
        if err in (0, EISCONN):
            self.addr = address
            self.handle_connect_event()
            return
        raise OSError(err, errorcode.get(err) or _strerror(err))

    def accept(self) -> tuple[socket.socket, Any] | None:
        """``(sock, address)`` of a waiting connection, or None."""
        try:
            conn, addr = self.socket.accept()
        except TypeError:
            return None
        except OSError as exc:
            if exc.errno in (EWOULDBLOCK, ECONNABORTED, EAGAIN):
                return None
            raise
        return conn, addr

    def send(self, data: Any) -> int:
        """Bytes sent; 0 when the socket would block or the peer is gone."""
        try:
            return self.socket.send(data)
        except OSError as exc:
            if exc.errno == EWOULDBLOCK:
                return 0
            if exc.errno in _DISCONNECTED:
                self.handle_close()
                return 0
            raise

    def recv(self, buffer_size: int) -> bytes:
        """Data received; b'' (after ``handle_close()``) at EOF or reset."""
        try:
            data = self.socket.recv(buffer_size)
        except OSError as exc:
            if exc.errno in _DISCONNECTED:
                self.handle_close()
                return b""
            raise
        if not data:
            self.handle_close()
            return b""
        return data

    def close(self) -> None:
        self.connected = False
        self.accepting = False
        self.connecting = False
        self.del_channel()
        if self.socket is not None:
            try:
                self.socket.close()
            except OSError as exc:
                if exc.errno not in (ENOTCONN, EBADF):
                    raise

    # -- logging ---------------------------------------------------------

    def log(self, message: Any) -> None:
        sys.stderr.write("log: %s\n" % str(message))

    def log_info(self, message: Any, type: str = "info") -> None:
        if type not in self.ignore_log_types:
            print("%s: %s" % (type, message))

    # -- events, as the loop reports them ----------------------------------

    def handle_read_event(self) -> None:
        if self.accepting:
            # A listening socket is readable when a connection waits.
            self.handle_accept()
            return
        if not self.connected and self.connecting:
            self.handle_connect_event()
        self.handle_read()

    def handle_connect_event(self) -> None:
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err, _strerror(err))
        self.handle_connect()
        self.connected = True
        self.connecting = False

    def handle_write_event(self) -> None:
        if self.accepting:
            return  # never watched for writing; ignore a stray event
        if not self.connected and self.connecting:
            self.handle_connect_event()
        self.handle_write()

    def handle_expt_event(self) -> None:
        # An error on the socket also shows up as an exceptional condition;
        # only a clean socket has real out-of-band data.
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            self.handle_close()
        else:
            self.handle_expt()

    def handle_error(self) -> None:
        (_, _, _), exc_type, exc_value, where = compact_traceback()
        try:
            me = repr(self)
        except BaseException:
            me = "<__repr__(self) failed for object at %0x>" % id(self)
        self.log_info(
            "uncaptured python exception, closing channel %s (%s:%s %s)"
            % (me, exc_type, exc_value, where),
            "error",
        )
        self.handle_close()

    # -- what subclasses override -----------------------------------------

    def handle_expt(self) -> None:
        self.log_info("unhandled incoming priority event", "warning")

    def handle_read(self) -> None:
        self.log_info("unhandled read event", "warning")

    def handle_write(self) -> None:
        self.log_info("unhandled write event", "warning")

    def handle_connect(self) -> None:
        self.log_info("unhandled connect event", "warning")

    def handle_accept(self) -> None:
        pair = self.accept()
        if pair is not None:
            self.handle_accepted(*pair)

    def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
        sock.close()
        self.log_info("unhandled accepted event", "warning")

    def handle_close(self) -> None:
        self.log_info("unhandled close event", "warning")
        self.close()


# -- which channels the fast path must ask again ---------------------------------
#
# The fast path asks a channel readable() / writable() again only when its
# answers may have changed (see _MapEngine): after an event of its own,
# after one of compat's methods changed what it waits for (_touch), or
# after any attribute of it was assigned, for classes whose own
# readable() / writable() the loop cannot see through. A periodic full
# sweep catches whatever changed some other way.

#: readable() / writable() functions of compat's own classes: their answers
#: change only through compat's methods, which call _touch().
_library_methods: set = set()


def _classify(cls):
    """Decide, once per class, how the loop learns that its answers changed."""
    if cls.__dict__.get("_pike_library"):
        # One of compat's own classes: trust its readable() / writable().
        for name in ("readable", "writable"):
            method = cls.__dict__.get(name)
            if method is not None:
                _library_methods.add(method)
        return
    if getattr(cls, "pike_event_driven", False):
        return  # declared by the application (documented opt-in)
    try:
        if cls.readable in _library_methods and cls.writable in _library_methods:
            return
    except TypeError:
        pass  # an unhashable callable: certainly not one of compat's
    _watch_assignments(cls)


def _watch_assignments(cls):
    """Make every attribute assignment on ``cls``'s instances a hint."""
    current = cls.__setattr__
    if getattr(current, "_pike_watching", False):
        return  # inherited from a watched base already
    if current is object.__setattr__:

        def __setattr__(self, name, value):
            object.__setattr__(self, name, value)
            _touch(self)

    else:  # the class (or a base) has a __setattr__ of its own: keep it

        def __setattr__(self, name, value, _inner=current):  # type: ignore[misc]
            _inner(self, name, value)
            _touch(self)

    __setattr__._pike_watching = True
    cls.__setattr__ = __setattr__


def _touch(obj):
    """``obj``'s readable() / writable() answers may have changed."""
    # (_touch_in written out: this runs on every watched assignment.)
    state = obj.__dict__
    map = state.get("_map")
    engine = _engines.get(id(map))
    if engine is not None and map.get(state.get("_fileno")) is obj:
        engine.suspects[id(obj)] = obj


def _touch_in(map, obj, fd):
    engine = _engines.get(id(map))
    # Only a channel in the map: the engine must not keep a closed one alive.
    if engine is not None and map.get(fd) is obj:
        engine.suspects[id(obj)] = obj


def _interest_changed(obj):
    """Tell the loop that ``obj.readable()`` / ``writable()`` may answer anew.

    Only needed for changes the loop cannot see: a class that declares
    ``pike_event_driven = True`` and changes what it waits for outside its
    own handlers and without calling compat's methods. Without the call, the
    change is seen at the next full sweep.
    """
    _touch(obj)


_classify(dispatcher)


class dispatcher_with_send(dispatcher):
    """A dispatcher that buffers what :meth:`send` cannot send at once."""

    _pike_library = True

    def __init__(self, sock=None, map=None):
        dispatcher.__init__(self, sock, map)
        self.out_buffer = b""

    def initiate_send(self):
        sent = dispatcher.send(self, self.out_buffer[:65536])
        self.out_buffer = self.out_buffer[sent:]

    def handle_write(self):
        self.initiate_send()

    def writable(self):
        return (not self.connected) or len(self.out_buffer)

    def send(self, data):
        if self.debug:
            self.log_info("sending %s" % repr(data))
        self.out_buffer = self.out_buffer + data
        self.initiate_send()
        _touch(self)


# -- helpers -----------------------------------------------------------------


def compact_traceback() -> tuple[tuple[str, str, str], Any, Any, str]:
    """Summarise the exception being handled.

    Returns ``((file, function, line), type, value, info)``: the innermost
    frame, and every frame as ``[file|function|line]`` joined by spaces.
    """
    exc_type, exc_value, tb = sys.exc_info()
    if not tb:
        raise AssertionError("traceback does not exist")
    frames = []
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append((code.co_filename, code.co_name, str(tb.tb_lineno)))
        tb = tb.tb_next
    info = " ".join("[%s|%s|%s]" % frame for frame in frames)
    return frames[-1], exc_type, exc_value, info


def close_all(map: Map | None = None, ignore_all: bool = False) -> None:
    """Close every channel of ``map`` (default ``socket_map``), then empty it.

    EBADF from a close is ignored; other errors propagate unless
    ``ignore_all`` is true.
    """
    if map is None:
        map = socket_map
    for obj in list(map.values()):
        try:
            obj.close()
        except OSError as exc:
            if exc.errno != EBADF and not ignore_all:
                raise
        except _reraised_exceptions:
            raise
        except BaseException:
            if not ignore_all:
                raise
    map.clear()
    _release(map)


# -- files as channels (Unix) ---------------------------------------------------

if os.name == "posix":

    class file_wrapper:
        """Just enough of the socket interface over a file descriptor.

        Holds its own duplicate of the fd, so the caller may close theirs.
        """

        def __init__(self, fd):
            self.fd = os.dup(fd)

        def __del__(self):
            if getattr(self, "fd", -1) >= 0:  # (-1 too if os.dup() failed)
                warnings.warn("unclosed file %r" % self, ResourceWarning, source=self)
                self.close()

        def recv(self, *args):
            return os.read(self.fd, *args)

        def send(self, *args):
            return os.write(self.fd, *args)

        def getsockopt(self, level, optname, buflen=None):
            if level == socket.SOL_SOCKET and optname == socket.SO_ERROR and not buflen:
                return 0  # a file never has a pending socket error
            raise NotImplementedError("Only asyncore specific behaviour implemented.")

        read = recv
        write = send

        def close(self):
            fd = self.fd
            if fd < 0:
                return
            self.fd = -1  # closed even when os.close() fails
            os.close(fd)

        def fileno(self):
            return self.fd

    class file_dispatcher(dispatcher):
        """A dispatcher over a file descriptor (a pipe, a tty...)."""

        def __init__(self, fd, map=None):
            dispatcher.__init__(self, None, map)
            self.connected = True
            try:
                fd = fd.fileno()
            except AttributeError:
                pass
            self.set_file(fd)
            os.set_blocking(fd, False)

        def set_file(self, fd):
            self.socket = file_wrapper(fd)
            self._fileno = self.socket.fileno()
            self.add_channel()


# -- the fast path: one epoll set per map -----------------------------------------

# What loop() may only bypass while nobody replaced it (checked per call).
_select_module = select
_time_module = time
_orig_select_select = select.select
_orig_select_poll = getattr(select, "poll", None)
_orig_sleep = time.sleep
_orig = {
    "poll": poll,
    "poll2": poll2,
    "read": read,
    "write": write,
    "_exception": _exception,
    "readwrite": readwrite,
}

_FAST_PATH = os.environ.get("PIKE_ASYNCORE_FAST", "1").strip().lower() not in (
    "0",
    "no",
    "off",
    "false",
)

# How the fast path finds out which channels to ask readable()/writable():
# "auto" (default) sweeps small maps whole on every iteration and larger
# ones every _SWEEP_INTERVAL seconds, asking only suspects in between;
# "always" sweeps every iteration (the original cost); "incremental" uses
# suspects whatever the map's size.
_SWEEP_MODE = os.environ.get("PIKE_ASYNCORE_SWEEP", "auto").strip().lower()
if _SWEEP_MODE not in ("auto", "always", "incremental"):
    _SWEEP_MODE = "auto"
# Maps of at most this many channels are swept whole in "auto" mode: the
# sweep costs them less than a microsecond per channel.
_SMALL_MAP = 64

# Longest time, in seconds, between two full sweeps of a map while the
# loop runs handlers: the latency bound for a change that nothing reported.
_SWEEP_INTERVAL = 0.1
try:
    _SWEEP_INTERVAL = max(float(os.environ.get("PIKE_ASYNCORE_SWEEP_INTERVAL", "")), 0.001)
except ValueError:
    pass

# A full sweep that took d seconds is followed by the next one no sooner
# than d times this: the sweeps cost at most 2% of the loop's time. (About
# 10,000 channels take 10-20 ms to sweep, hence 0.5-1 s between sweeps.)
_SWEEP_COST_RATIO = 50

_monotonic = time.monotonic

# At most this many maps keep an engine between loop() calls.
_MAX_ENGINES = 8

_engines: dict = {}  # id(map) -> _MapEngine; most recently used last
_engines_lock = _threading.Lock()


def _fast_path_allowed(poll_mode):
    if not _FAST_PATH or _MapEngine is None:
        return False
    if select is not _select_module or time is not _time_module:
        return False
    if _time_module.sleep is not _orig_sleep:
        return False
    names = globals()
    if poll_mode:
        if _select_module.poll is not _orig_select_poll:
            return False
        wanted = ("poll2", "readwrite")
    else:
        if _select_module.select is not _orig_select_select:
            return False
        wanted = ("poll", "read", "write", "_exception")
    for name in wanted:
        if names.get(name) is not _orig[name]:
            return False
    return True


def _checkout(map, poll_mode):
    """The engine for ``map``, locked for this thread; None: use the original."""
    if not _fast_path_allowed(poll_mode):
        return None
    key = id(map)
    with _engines_lock:
        engine = _engines.pop(key, None)
        if engine is not None:
            usable = not (engine.closed or engine.forked_away)
            if not engine.in_use.acquire(False):
                if usable:
                    # Another thread (or an outer loop() of this one) is
                    # driving this map: this call takes the original path.
                    _engines[key] = engine
                    return None
                # A forked child inherited a lock held in the parent.
            elif usable and engine.poll_mode == poll_mode:
                _engines[key] = engine  # most recently used
                return engine
            else:
                engine.in_use.release()
            engine.close()
        while len(_engines) >= _MAX_ENGINES:
            if not _evict_one():
                return None
        try:
            engine = _MapEngine(poll_mode)
        except (OSError, ValueError):
            return None  # out of fds, say: the original path still works
        engine.in_use.acquire()
        _engines[key] = engine
        return engine


def _evict_one():
    for key, engine in list(_engines.items()):
        if engine.in_use.acquire(False):
            del _engines[key]
            engine.close()
            engine.in_use.release()
            return True
    return False


def _checkin(map, engine):
    try:
        if not map:
            with _engines_lock:
                if _engines.get(id(map)) is engine:
                    del _engines[id(map)]
            engine.close()
    finally:
        engine.in_use.release()


def _release(map):
    """Drop ``map``'s engine unless a loop is driving it right now."""
    with _engines_lock:
        engine = _engines.get(id(map))
        if engine is None or not engine.in_use.acquire(False):
            return
        del _engines[id(map)]
    try:
        engine.close()
    finally:
        engine.in_use.release()


def _forget(map, fd, obj):
    """``obj`` left ``map``: unregister its fd from the map's engine now."""
    engine = _engines.get(id(map))
    if engine is not None:
        engine.forget(fd, obj)


def _after_fork_in_child():
    global _engines_lock
    _engines_lock = _threading.Lock()
    # The engines' epoll sets are shared with the parent: never touch them.
    for engine in _engines.values():
        engine.forked_away = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Strong:
    """A strong reference with the call interface of a weak one."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __call__(self):
        return self.obj


class _Slot:
    """What the map's epoll set watches for one map entry.

    ``reading`` / ``writing`` hold the last ``readable()`` / ``writable()``
    answers (writing already excludes ``accepting``). The map entry is held
    weakly where it can be, so an engine kept for a map never keeps a
    dropped map's channels alive.
    """

    __slots__ = ("fd", "reading", "writing", "ref")

    def __init__(self, fd, obj, reading, writing):
        self.fd = fd
        self.reading = reading
        self.writing = writing
        try:
            self.ref = _weakref.ref(obj)
        except TypeError:
            self.ref = _Strong(obj)

    def __repr__(self):
        return "<asyncore slot fd=%s for %r>" % (self.fd, self.ref())


if hasattr(select, "epoll"):
    _EPOLLIN = select.EPOLLIN
    _EPOLLOUT = select.EPOLLOUT
    _EPOLLPRI = select.EPOLLPRI
    # What select() counts as readable, writable and exceptional (Linux).
    _SELECT_READ = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
    _SELECT_WRITE = select.EPOLLOUT | select.EPOLLERR
    _SELECT_EXCEPT = select.EPOLLPRI
    # epoll and poll share their bit values on Linux; readwrite() reads
    # poll bits.
    _SAME_BITS = all(
        getattr(select, "EPOLL" + n) == getattr(select, "POLL" + n)
        for n in ("IN", "OUT", "PRI", "ERR", "HUP")
    )

    def _epoll_to_poll(bits):
        if _SAME_BITS:
            return bits
        flags = 0
        for n in ("IN", "OUT", "PRI", "ERR", "HUP"):
            if bits & getattr(select, "EPOLL" + n):
                flags |= getattr(select, "POLL" + n)
        return flags

    class _MapEngine:
        """One epoll set that drives one asyncore map.

        Why not a :class:`pike.poller.Poller`: asyncore's contract is the
        opposite of the poller's at every point that matters here. Channels
        are fd numbers in a map, not objects that own their fd; interest is
        level-triggered (``writable()`` is asked again and again), where the
        poller's write notifications are one-shot; exceptional conditions
        (``EPOLLPRI``) are watched; an fd closed behind its dispatcher is
        reported to it as ``POLLNVAL`` instead of closing a channel; a
        regular file is always ready, as ``select()`` says. And the loop has
        no timers, no calls from other threads and nothing to wake it. So
        the engine holds a ``select.epoll`` object itself and keeps the
        kernel's interest in step with the answers, one ``epoll_ctl`` call
        per real change, as the pollers do.

        :meth:`run_once` is one iteration of :func:`loop`: bring the slots
        up to date with the channels' ``readable()`` / ``writable()``
        answers, wait, and dispatch with ``select()`` or ``poll()``
        semantics.

        Which channels are asked depends on the map's size. A small map
        (and every map with ``PIKE_ASYNCORE_SWEEP=always``) is swept whole
        on every iteration, as the original loop does. A larger one is
        swept whole at most every ``_SWEEP_INTERVAL`` seconds; in between,
        only the *suspects* are asked: the channels that had an event, the
        ones compat's own methods touched, the ones whose attributes were
        assigned (for classes that override readable()/writable()), and
        map entries that are not dispatchers at all.
        """

        def __init__(self, poll_mode):
            self.poll_mode = poll_mode
            self.in_use = _threading.Lock()
            self.closed = False
            # Set in a forked child: the epoll set is the parent's too, and
            # must never be changed from here.
            self.forked_away = False
            self.suspects = {}  # id(channel) -> channel, to ask again
            self.pending = True  # see _wait_sweeping()
            self._epoll = _select_module.epoll()
            self._slots = {}  # fd -> _Slot
            self._kernel = {}  # fd -> the epoll bits the kernel has now
            self._lost = []  # slots whose fd turned out to be closed
            self._unpollable = set()  # fds epoll refuses (regular files)
            self._always = []  # slots of entries asked on every iteration
            self._next_sweep = 0.0  # time.monotonic() of the next full sweep
            self._map_now = None  # the map, during one iteration only
            # The epoll bits for (reading, writing): select() watches every
            # fd it watches at all for exceptional conditions, poll2() only
            # readable ones.
            extra = 0 if poll_mode else _EPOLLPRI
            self._bits = {
                (False, False): 0,
                (True, False): _EPOLLIN | _EPOLLPRI,
                (False, True): _EPOLLOUT | extra,
                (True, True): _EPOLLIN | _EPOLLPRI | _EPOLLOUT,
            }

        def close(self):
            """Release the epoll object; idempotent."""
            if self.closed:
                return
            self.closed = True
            # (In a forked child this closes only the child's copy.)
            self._epoll.close()
            self._slots.clear()
            self._kernel.clear()
            self._unpollable.clear()
            self._always = []
            self.suspects = {}

        def __len__(self):
            return len(self._slots)

        def watched(self, fd):
            """``(reading, writing)`` as last asked for ``fd``, or None."""
            slot = self._slots.get(fd)
            return None if slot is None else (slot.reading, slot.writing)

        # -- one iteration ----------------------------------------------

        def run_once(self, map, timeout):
            """One iteration of loop() over ``map``."""
            now = _monotonic()
            if self._sweep_due(map, now):
                self._sweep(map, now)
            else:
                self._ask_suspects(map)
            if not (self.poll_mode or self._kernel or self._lost):
                # Nobody waits for anything: poll() sleeps then. Unless a
                # change may be unseen, when the sleep must end at the
                # sweep: the epoll wait below does both.
                if not self.pending or timeout is None:
                    time.sleep(timeout)
                    return
            if timeout is not None:
                timeout = min(max(timeout, 0.0), _MAX_WAIT)
            self._map_now = map
            try:
                events = self._wait_sweeping(map, timeout, now)
                if events:
                    self.pending = True
                    self._dispatch(events)
            finally:
                self._map_now = None
            if self._lost:
                self._report_lost(map)

        def _sweep_due(self, map, now):
            if _SWEEP_MODE == "always" or now >= self._next_sweep:
                return True
            if _SWEEP_MODE == "auto" and len(map) <= _SMALL_MAP:
                return True
            # An entry came or went without the channel's own methods.
            return len(map) != len(self._slots)

        def _wait_sweeping(self, map, timeout, now):
            """Wait up to ``timeout``, sweeping when the sweep falls due.

            ``pending`` says that code which may have changed answers
            without a hint ran since the last full sweep (handlers, or the
            caller between loop() calls). Without it the wait is the
            caller's; with it the wait is cut at the next sweep, which runs,
            and the wait goes on for the rest of ``timeout``: one loop()
            iteration still lasts as long as the caller asked, however many
            sweeps it holds.
            """
            while True:
                wait = timeout
                cut = False
                if self.pending:
                    left = max(self._next_sweep - now, 0.0)
                    if wait is None or left < wait:
                        wait, cut = left, True
                events = self._wait(wait)
                if events or not cut:
                    return events
                later = _monotonic()
                if timeout is not None:
                    timeout = max(timeout - (later - now), 0.0)
                now = later
                self._sweep(map, now)

        def _sweep(self, map, now):
            """Ask every channel of ``map``; the safety net of the hints."""
            self.suspects = {}
            always = []
            ask = self._ask
            slots = self._slots
            entries = list(map.items())
            try:
                for fd, obj in entries:
                    ask(map, fd, obj)
                    if not isinstance(obj, dispatcher):
                        watched = False
                    else:
                        state = obj.__dict__
                        watched = state.get("_fileno") == fd and not (
                            "readable" in state or "writable" in state
                        )
                    if not watched:
                        # No hint can name it (not a dispatcher, its own
                        # readable/writable, or filed under another fd):
                        # asked every time. Its slot holds it weakly.
                        slot = slots.get(fd)
                        if slot is not None:  # (None: readable() closed it)
                            always.append(slot)
            except BaseException:
                # readable()/writable() raised: it leaves loop(), as the
                # original's does, and the next iteration sweeps again.
                self._next_sweep = 0.0
                raise
            self._always = always
            if len(slots) != len(entries):
                # Some channel left the map without del_channel().
                for fd, slot in list(slots.items()):
                    obj = map.get(fd)
                    if obj is None or slot.ref() is not obj:
                        self._drop(fd)
            # A big map is swept less often: the sweeps take at most a
            # 1/_SWEEP_COST_RATIO share of the loop's time.
            done = _monotonic()
            self._next_sweep = done + max(_SWEEP_INTERVAL, (done - now) * _SWEEP_COST_RATIO)
            self.pending = False

        def _ask_suspects(self, map):
            suspects = self.suspects
            ask = self._ask
            if suspects:
                self.suspects = {}
                pending = list(suspects.values())
                for index, obj in enumerate(pending):
                    fd = getattr(obj, "_fileno", None)
                    if fd is None:
                        continue
                    try:
                        ask(map, fd, obj)
                    except BaseException:
                        # readable()/writable() raised (the exception leaves
                        # loop(), as the original's does): the channels not
                        # asked yet stay suspects for the next call.
                        for rest in pending[index + 1:]:
                            self.suspects[id(rest)] = rest
                        raise
            for slot in self._always:
                obj = slot.ref()
                if obj is not None:
                    ask(map, slot.fd, obj)

        def _ask(self, map, fd, obj):
            """Ask ``obj`` (the entry of ``fd``) readable() then writable().

            As poll() does, a writable one is also asked whether it is
            ``accepting``. The kernel is told only when the answers changed.
            """
            if map.get(fd) is not obj:
                return  # left the map (or is not in this one)
            reading = True if obj.readable() else False
            writing = True if obj.writable() and not obj.accepting else False
            slot = self._slots.get(fd)
            if slot is not None and slot.ref() is obj:
                if slot.reading is reading and slot.writing is writing:
                    return
                slot.reading = reading
                slot.writing = writing
            else:
                if slot is not None:
                    self._drop(fd)  # fd reused by another channel
                slot = self._slots[fd] = _Slot(fd, obj, reading, writing)
            self._apply(fd, slot)

        def forget(self, fd, obj):
            """``obj`` left the map: stop watching its fd now, while it is open.

            (epoll forgets a closed fd by itself only when no other
            descriptor shares its file.)
            """
            self.suspects.pop(id(obj), None)
            slot = self._slots.get(fd)
            if slot is not None and slot.ref() is obj:
                self._drop(fd)

        # -- the kernel --------------------------------------------------

        def _apply(self, fd, slot):
            """Make the kernel watch ``fd`` for ``slot``'s answers."""
            want = self._bits[slot.reading, slot.writing]
            kernel = self._kernel
            have = kernel.get(fd, 0)
            if want == have:
                return
            if fd in self._unpollable:
                # Not in the epoll set: _wait() reports it ready while wanted.
                if not want:
                    self._unpollable.discard(fd)
            elif not want:
                self._unregister(fd)
            else:
                try:
                    if have:
                        self._modify(fd, want)
                    else:
                        self._register(fd, want)
                except PermissionError:
                    # A regular file: epoll refuses it, select() and poll()
                    # call it always ready. _wait() says so.
                    self._unpollable.add(fd)
                except (OSError, ValueError):
                    # EBADF: the fd was closed behind the dispatcher's back.
                    # Reported after this iteration's wait.
                    del self._slots[fd]
                    kernel.pop(fd, None)
                    self._lost.append(slot)
                    return
            if want:
                kernel[fd] = want
            else:
                kernel.pop(fd, None)

        def _register(self, fd, bits):
            try:
                self._epoll.register(fd, bits)
            except FileExistsError:
                self._epoll.modify(fd, bits)

        def _modify(self, fd, bits):
            try:
                self._epoll.modify(fd, bits)
            except FileNotFoundError:
                # The kernel dropped it (closed, and the number reused).
                self._epoll.register(fd, bits)

        def _unregister(self, fd):
            if self.forked_away:
                return  # the parent's set: leave it alone
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # closed already: the kernel forgot it by itself

        def _drop(self, fd):
            """Stop watching ``fd`` (its map entry left, or changed)."""
            del self._slots[fd]
            have = self._kernel.pop(fd, 0)
            if fd in self._unpollable:
                self._unpollable.discard(fd)
            elif have and not self.closed:
                self._unregister(fd)

        def _mute(self, fd):
            """Stop watching ``fd`` until its answers change (no spinning)."""
            if self._kernel.pop(fd, 0):
                self._unregister(fd)

        def _wait(self, timeout):
            if not (self._unpollable or self._lost):
                return self._epoll.poll(-1 if timeout is None else timeout)
            ready = None
            if self._unpollable:
                kernel = self._kernel
                ready = []
                for fd in self._unpollable:
                    bits = kernel.get(fd, 0) & (_EPOLLIN | _EPOLLOUT)
                    if bits:
                        ready.append((fd, bits))
            if ready or self._lost:
                timeout = 0.0
            events = self._epoll.poll(-1 if timeout is None else timeout)
            if ready:
                events = list(events)
                events.extend(ready)
            return events

        # -- dispatch ----------------------------------------------------

        def _dispatch(self, events):
            map = self._map_now
            slots = self._slots
            suspects = self.suspects  # whoever gets an event is asked again
            if self.poll_mode:
                for fd, bits in events:
                    slot = slots.get(fd)
                    if slot is None:
                        continue
                    obj = slot.ref()
                    if obj is None or map.get(fd) is not obj:
                        continue
                    suspects[id(obj)] = obj
                    readwrite(obj, _epoll_to_poll(bits))
                return
            readers = []
            writers = []
            excepts = []
            for fd, bits in events:
                slot = slots.get(fd)
                if slot is None:
                    continue
                hit = False
                if bits & _SELECT_READ and slot.reading:
                    readers.append(slot)
                    hit = True
                if bits & _SELECT_WRITE and slot.writing:
                    writers.append(slot)
                    hit = True
                if bits & _SELECT_EXCEPT:
                    excepts.append(slot)
                    hit = True
                if not hit:
                    # A hang-up of an fd that only wants to write: select()
                    # would not report it, and epoll would report it for
                    # ever.
                    self._mute(fd)
            for batch, handler in ((readers, read), (writers, write), (excepts, _exception)):
                for slot in batch:
                    fd = slot.fd
                    if slots.get(fd) is not slot:
                        continue  # closed (or replaced) earlier in this batch
                    obj = slot.ref()
                    if obj is None or map.get(fd) is not obj:
                        continue
                    suspects[id(obj)] = obj
                    handler(obj)

        def _report_lost(self, map):
            lost, self._lost = self._lost, []
            for slot in lost:
                obj = slot.ref()
                if obj is not None and map.get(slot.fd) is obj:
                    self.suspects[id(obj)] = obj
                    readwrite(obj, select.POLLNVAL)

        def __repr__(self):
            mode = "poll" if self.poll_mode else "select"
            return "<asyncore map engine (%s semantics) %s>" % (
                mode,
                "closed" if self.closed else "%d channels" % len(self._slots),
            )

else:  # no epoll here: loop() always takes the original path
    _MapEngine = None  # type: ignore[misc,assignment]
