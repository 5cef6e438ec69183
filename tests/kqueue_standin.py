"""A pure-Python stand-in for the BSD ``select.kqueue`` / ``select.kevent`` API.

Purpose
-------
``select.kqueue`` only exists on BSD-family systems (FreeBSD, macOS, ...).
This module reproduces the part of that API a socket poller relies on, built
on Linux ``select.poll``, so that pike's KQueuePoller *logic* can be exercised
on Linux::

    from tests.kqueue_standin import kqueue_module
    poller = KQueuePoller(select_module=kqueue_module)

Behaviour was modelled on the FreeBSD kqueue(2)/kevent(2) manual page and on
the documented behaviour of CPython's ``select.kqueue`` wrapper; no code was
taken from either.

What a passing test under this stand-in DOES show
-------------------------------------------------
* the poller drives the CPython-level API correctly: ``kevent(...)``
  construction, ``control(changelist, max_events, timeout)`` calls, timeouts
  (None blocks, 0 polls, negative -> ValueError), ``close()``/``closed``/
  ``fileno()``, ValueError on a closed kqueue;
* it copes with per-(ident, filter) registrations: read and write interest on
  one fd are separate registrations and come back as SEPARATE kevents;
* it copes with the kernel's change-list error reporting: an error in the
  changelist (ENOENT for deleting/modifying a missing registration, EBADF for
  a bad descriptor, EINVAL) raises ``OSError`` from ``control()`` only when
  there is no room left in the event list (``max_events == 0`` or exhausted);
  when there IS room, the failing change comes back as a kevent with
  ``flags == KQ_EV_ERROR`` and ``data == errno``, and ``control()`` returns
  just those error events without waiting (FreeBSD behaviour; macOS ORs
  EV_ERROR into the original flags, so test with ``flags & KQ_EV_ERROR``);
* level-triggered default, EV_ONESHOT, EV_DISABLE/EV_ENABLE, EV_CLEAR
  (approximated, see below), EV_ADD on an existing registration modifying it,
  ``max_events`` truncation (with BSD-like round-robin of level-triggered
  events, so a small ``max_events`` does not starve anyone), ``max_events=0``
  applying changes and returning ``[]`` without waiting;
* EV_EOF handling: on the read filter when the read side is shut down (peer
  shut down writing / hung up), possibly while data is still buffered
  (``data`` = bytes available); on the write filter when the connection is
  gone (peer closed a socketpair, TCP reset...); ``fflags`` carrying the
  socket error (SO_ERROR) with an EOF;
* closing a registered fd silently drops its registrations (no event is ever
  reported for them, a later EV_DELETE gets EBADF or ENOENT), including the
  case where the fd number is reused by a new file before the next wait;
* EINTR during a wait is retried with the remaining timeout (as CPython does).

What it does NOT show (run the real thing on a BSD/macOS CI job for those)
-------------------------------------------------------------------------
* anything about the real kernel's kqueue: wake-up latency and timing,
  scalability, the exact moment a knote is activated;
* EV_EOF / ``data`` / ``fflags`` details for every socket type and state.
  They are derived from Linux poll() bits (POLLRDHUP, POLLHUP, POLLERR),
  FIONREAD and SO_ERROR.  Known differences:
    - a local ``shutdown(SHUT_WR)`` sets EV_EOF on the BSD write filter, not
      here (Linux poll does not reveal it);
    - a never-connected stream socket reports EOF here (Linux POLLHUP); BSD
      reports nothing until it is connected;
    - UDP read ``data`` is the size of the next datagram (Linux FIONREAD), not
      the total bytes buffered as on BSD;
    - listening sockets report ``data == 1`` when a connection is pending
      (BSD: the number of pending connections);
    - write ``data`` is an estimate (SO_SNDBUF minus the output queue);
    - fetching SO_ERROR for ``fflags`` CONSUMES the pending socket error on
      Linux, so a subsequent recv()/send() will not raise it (on BSD both the
      kevent and the next recv() see it).  The value is cached and repeated
      in later events for that socket;
    - errno values in ``fflags`` are Linux numbers (ECONNRESET is 104 here,
      54 on BSD): compare with the ``errno`` module's names, never literals;
* EV_CLEAR is an approximation: an EV_CLEAR registration is reported when its
  condition becomes true (not-ready -> ready, seen at a scan), when ``data``
  grew since the previous scan, when EOF appears, or after it was re-added/
  re-enabled.  Registrations that are ready but already reported are
  re-checked on a 5 ms tick instead of by kernel wake-ups, so a change that
  is undone within one tick, or a drain-and-refill to the same byte count,
  can be missed;
* EVFILT_USER, EVFILT_TIMER, EVFILT_SIGNAL, EVFILT_PROC, EVFILT_VNODE and
  EVFILT_AIO: not emulated (NotImplementedError);
* udata lifetimes: udata is a plain integer, as in CPython; nothing here
  checks that an object whose id() was stored is still alive;
* behaviour after fork: a real kqueue is NOT inherited by the child; here the
  child's ``control()`` raises OSError(EBADF), which mimics the visible
  result but not the kernel's bookkeeping (e.g. fds inherited by the child
  stay registered in the parent's queue on both systems, which is untested);
* a kqueue's own descriptor being pollable (readable when events are pending)
  or registrable in another kqueue: ``fileno()`` here is an internal wake-up
  pipe, not a real queue;
* fd reuse when the new file is the SAME file (``dup2(b, a)`` where ``a`` was
  registered and ``b`` is a dup of it): BSD drops the registration on close;
  here the (st_dev, st_ino) identity is unchanged, so it survives;
* CPython re-submits the changelist when it retries kevent() after EINTR;
  here changes are applied exactly once;
* returned ``flags``: FreeBSD strips EV_ADD/EV_DELETE/EV_ENABLE/EV_DISABLE
  from delivered events and so does this module; macOS/older BSDs may echo
  them back, so test flags with masks, never with equality;
* re-adding an existing registration follows FreeBSD: udata, fflags and data
  are replaced (by ANY non-delete change, even a bare EV_ENABLE, unless
  EV_KEEPUDATA), EV_ONESHOT/EV_CLEAR/EV_DISPATCH are not changed, and a
  DISABLED registration stays disabled unless EV_ENABLE is passed.

The module-level names mirror ``select``'s kqueue names; ``kqueue_module``
bundles exactly the names CPython's ``select`` exports for kqueue (plus
``error``).  ``KQ_EV_RECEIPT``, ``KQ_EV_DISPATCH`` and ``KQ_EV_KEEPUDATA`` are
extra module-level names (CPython does not export them) with FreeBSD values.
"""

from __future__ import annotations

import collections
import errno as _errno
import fcntl
import math
import operator
import os
import select as _select
import socket
import stat
import struct
import termios
import threading
import time
import types

__all__ = [
    "kevent", "kqueue", "kqueue_module", "install_into",
    "KQ_FILTER_READ", "KQ_FILTER_WRITE", "KQ_FILTER_AIO", "KQ_FILTER_VNODE",
    "KQ_FILTER_PROC", "KQ_FILTER_SIGNAL", "KQ_FILTER_TIMER",
    "KQ_EV_ADD", "KQ_EV_DELETE", "KQ_EV_ENABLE", "KQ_EV_DISABLE",
    "KQ_EV_ONESHOT", "KQ_EV_CLEAR", "KQ_EV_SYSFLAGS", "KQ_EV_FLAG1",
    "KQ_EV_EOF", "KQ_EV_ERROR", "KQ_NOTE_LOWAT",
]

# --------------------------------------------------------------------------
# Constants (BSD values)
# --------------------------------------------------------------------------
KQ_FILTER_READ = -1
KQ_FILTER_WRITE = -2
KQ_FILTER_AIO = -3
KQ_FILTER_VNODE = -4
KQ_FILTER_PROC = -5
KQ_FILTER_SIGNAL = -6
KQ_FILTER_TIMER = -7

KQ_EV_ADD = 0x0001
KQ_EV_DELETE = 0x0002
KQ_EV_ENABLE = 0x0004
KQ_EV_DISABLE = 0x0008
KQ_EV_ONESHOT = 0x0010
KQ_EV_CLEAR = 0x0020
KQ_EV_SYSFLAGS = 0xF000
KQ_EV_FLAG1 = 0x2000
KQ_EV_ERROR = 0x4000
KQ_EV_EOF = 0x8000

# Not exported by CPython's select module (FreeBSD values).
KQ_EV_RECEIPT = 0x0040
KQ_EV_DISPATCH = 0x0080
KQ_EV_KEEPUDATA = 0x0200

KQ_NOTE_LOWAT = 0x0001
_NOTE_FILE_POLL = 0x0002  # FreeBSD, vnode read filter

KQ_NOTE_DELETE = 0x0001
KQ_NOTE_WRITE = 0x0002
KQ_NOTE_EXTEND = 0x0004
KQ_NOTE_ATTRIB = 0x0008
KQ_NOTE_LINK = 0x0010
KQ_NOTE_RENAME = 0x0020
KQ_NOTE_REVOKE = 0x0040
KQ_NOTE_EXIT = 0x80000000
KQ_NOTE_FORK = 0x40000000
KQ_NOTE_EXEC = 0x20000000
KQ_NOTE_PCTRLMASK = 0xF0000000
KQ_NOTE_PDATAMASK = 0x000FFFFF
KQ_NOTE_TRACK = 0x00000001
KQ_NOTE_TRACKERR = 0x00000002
KQ_NOTE_CHILD = 0x00000004

_UNSUPPORTED_FILTERS = {
    KQ_FILTER_AIO: "EVFILT_AIO", KQ_FILTER_VNODE: "EVFILT_VNODE",
    KQ_FILTER_PROC: "EVFILT_PROC", KQ_FILTER_SIGNAL: "EVFILT_SIGNAL",
    KQ_FILTER_TIMER: "EVFILT_TIMER", -8: "EVFILT_PROCDESC",
    -9: "EVFILT_FS", -10: "EVFILT_LIO", -11: "EVFILT_USER",
    -12: "EVFILT_SENDFILE", -13: "EVFILT_EMPTY",
}

_U64 = (1 << 64) - 1
_POLLRDHUP = getattr(_select, "POLLRDHUP", 0x2000)
_READ_BITS = _select.POLLIN | _POLLRDHUP
_WRITE_BITS = _select.POLLOUT
_HUP_ERR = _select.POLLHUP | _select.POLLERR

#: how often ready-but-already-reported registrations (EV_CLEAR, NOTE_LOWAT,
#: regular files at EOF) are re-examined while a control() call is blocked.
CLEAR_TICK = 0.005


# --------------------------------------------------------------------------
# kevent
# --------------------------------------------------------------------------
def _as_int(value, what):
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError("%s must be an integer, not %s"
                        % (what, type(value).__name__)) from None


def _coerce_ident(value):
    if isinstance(value, int):
        if value < 0:
            raise OverflowError("can't convert negative value to size_t")
        if value > _U64:
            raise OverflowError("Python int too large to convert to C size_t")
        return int(value)
    meth = getattr(value, "fileno", None)
    if meth is None:
        raise TypeError("argument must be an int, or have a fileno() method.")
    fd = meth()
    if not isinstance(fd, int):
        raise TypeError("fileno() returned a non-integer")
    if fd < 0:
        raise ValueError("file descriptor cannot be a negative integer (%i)"
                         % fd)
    return int(fd)


def _coerce_filter(value):
    v = _as_int(value, "filter")
    if v < -32768:
        raise OverflowError("signed short integer is less than minimum")
    if v > 32767:
        raise OverflowError("signed short integer is greater than maximum")
    return v


def _coerce_flags(value):
    return _as_int(value, "flags") & 0xFFFF      # u_short, masked like "H"


def _coerce_fflags(value):
    return _as_int(value, "fflags") & 0xFFFFFFFF  # u_int, masked like "I"


def _coerce_data(value):
    v = _as_int(value, "data")
    if not -(1 << 63) <= v < (1 << 63):
        raise OverflowError("Python int too large to convert to C ssize_t")
    return v


def _coerce_udata(value):
    return _as_int(value, "udata") & _U64         # uintptr_t, masked


def _signed64(v):
    return v - (1 << 64) if v >= (1 << 63) else v


class kevent:
    """Mirror of ``select.kevent``: a plain record of a struct kevent."""

    __slots__ = ("_ident", "_filter", "_flags", "_fflags", "_data", "_udata")

    def __init__(self, ident, filter=KQ_FILTER_READ, flags=KQ_EV_ADD,
                 fflags=0, data=0, udata=0):
        self._ident = _coerce_ident(ident)
        self._filter = _coerce_filter(filter)
        self._flags = _coerce_flags(flags)
        self._fflags = _coerce_fflags(fflags)
        self._data = _coerce_data(data)
        self._udata = _coerce_udata(udata)

    # writable members, like CPython's PyMemberDef fields
    ident = property(lambda s: s._ident,
                     lambda s, v: setattr(s, "_ident", _coerce_ident(
                         _as_int(v, "ident"))))
    filter = property(lambda s: s._filter,
                      lambda s, v: setattr(s, "_filter", _coerce_filter(v)))
    flags = property(lambda s: s._flags,
                     lambda s, v: setattr(s, "_flags", _coerce_flags(v)))
    fflags = property(lambda s: s._fflags,
                      lambda s, v: setattr(s, "_fflags", _coerce_fflags(v)))
    data = property(lambda s: s._data,
                    lambda s, v: setattr(s, "_data", _coerce_data(v)))
    udata = property(lambda s: s._udata,
                     lambda s, v: setattr(s, "_udata", _coerce_udata(v)))

    def _key(self):
        return (self._ident, self._filter, self._flags, self._fflags,
                self._data, _signed64(self._udata))

    def _cmp(self, other, op):
        if not isinstance(other, kevent):
            return NotImplemented
        return op(self._key(), other._key())

    def __eq__(self, other):
        return self._cmp(other, operator.eq)

    def __ne__(self, other):
        return self._cmp(other, operator.ne)

    def __lt__(self, other):
        return self._cmp(other, operator.lt)

    def __le__(self, other):
        return self._cmp(other, operator.le)

    def __gt__(self, other):
        return self._cmp(other, operator.gt)

    def __ge__(self, other):
        return self._cmp(other, operator.ge)

    __hash__ = None  # CPython's kevent defines rich comparison only

    def __repr__(self):
        return ("<select.kevent ident=%d filter=%d flags=0x%x fflags=0x%x "
                "data=0x%x udata=0x%x>"
                % (self._ident, self._filter, self._flags, self._fflags,
                   self._data & _U64, self._udata))


# --------------------------------------------------------------------------
# internal registration record ("knote")
# --------------------------------------------------------------------------
class _Knote:
    __slots__ = ("ident", "filter", "flags", "sfflags", "sdata", "udata",
                 "enabled", "dev", "ino", "mode", "is_sock", "sotype",
                 "last_ready", "last_data", "last_eof", "pending", "rearm")

    def __init__(self, kev, st):
        self.ident = kev.ident
        self.filter = kev.filter
        # persistent behaviour flags; action bits are not kept (FreeBSD)
        self.flags = kev.flags & (KQ_EV_ONESHOT | KQ_EV_CLEAR |
                                  KQ_EV_DISPATCH | KQ_EV_RECEIPT)
        self.sfflags = kev.fflags
        self.sdata = kev.data
        self.udata = kev.udata
        self.enabled = not (kev.flags & KQ_EV_DISABLE)
        self.dev, self.ino, self.mode = st.st_dev, st.st_ino, st.st_mode
        self.is_sock = stat.S_ISSOCK(st.st_mode)
        self.sotype = None
        if self.is_sock:
            try:
                self.sotype = _getsockopt(self.ident, socket.SOL_SOCKET,
                                          socket.SO_TYPE)
            except OSError:
                pass
        # EV_CLEAR bookkeeping
        self.last_ready = False
        self.last_data = 0
        self.last_eof = False
        self.pending = False
        self.rearm = True


def _with_sock(fd, fn):
    # Borrow the descriptor without taking ownership of it.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
    try:
        return fn(s)
    finally:
        s.detach()


def _getsockopt(fd, level, opt):
    return _with_sock(fd, lambda s: s.getsockopt(level, opt))


def _ioctl_int(fd, req):
    try:
        buf = fcntl.ioctl(fd, req, b"\0\0\0\0")
    except OSError:
        return None
    return struct.unpack("i", buf)[0]


class _FdInfo:
    """Per-scan lazily computed facts about one descriptor."""

    def __init__(self, kq, kn, revents):
        self.kq = kq
        self.fd = kn.ident
        self.key = (kn.ident, kn.dev, kn.ino)
        self.revents = revents
        self.is_sock = kn.is_sock
        self.sotype = kn.sotype
        self.mode = kn.mode
        self._nread = None
        self._listening = None

    @property
    def nread(self):
        if self._nread is None:
            n = _ioctl_int(self.fd, termios.FIONREAD)
            self._nread = n if n is not None and n > 0 else 0
        return self._nread

    @property
    def listening(self):
        if self._listening is None:
            self._listening = False
            if self.is_sock and self.sotype == socket.SOCK_STREAM:
                try:
                    self._listening = bool(_getsockopt(
                        self.fd, socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
                except OSError:
                    pass
        return self._listening

    def sock_error(self):
        """SO_ERROR, fetched only when poll says an error is pending (on
        Linux reading it clears it) and then remembered for this socket."""
        if not self.is_sock:
            return 0
        cache = self.kq._sockerr
        if self.revents & _select.POLLERR:
            try:
                err = _getsockopt(self.fd, socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError:
                err = 0
            if err:
                cache[self.key] = err
        return cache.get(self.key, 0)

    def write_space(self):
        if self.is_sock:
            try:
                sndbuf = _getsockopt(self.fd, socket.SOL_SOCKET,
                                     socket.SO_SNDBUF)
            except OSError:
                return 0
            outq = _ioctl_int(self.fd, termios.TIOCOUTQ) or 0
            return max(0, sndbuf - outq)
        if stat.S_ISFIFO(self.mode):
            try:
                size = fcntl.fcntl(self.fd, fcntl.F_GETPIPE_SZ)
            except (OSError, AttributeError):
                return 0
            return max(0, size - self.nread)
        return 0


def _evaluate(kn, info):
    """Return (ready, data, eof, fflags, poll_ready) for one registration.

    ``poll_ready`` says whether poll() would currently report this filter's
    bits (or HUP/ERR) for the fd, i.e. whether a blocking poll on it would
    return at once.
    """
    rev = info.revents
    if kn.filter == KQ_FILTER_READ:
        poll_ready = bool(rev & (_READ_BITS | _HUP_ERR))
        if stat.S_ISREG(kn.mode):
            try:
                data = os.fstat(kn.ident).st_size - os.lseek(kn.ident, 0,
                                                              os.SEEK_CUR)
            except OSError:
                data = 0
            ready = data != 0 or bool(kn.sfflags & _NOTE_FILE_POLL)
            return ready, data, False, 0, poll_ready
        if info.listening:
            ready = bool(rev & _select.POLLIN)
            return ready, (1 if ready else 0), False, 0, poll_ready
        data = info.nread
        eof = bool(rev & (_POLLRDHUP | _select.POLLHUP))
        if (not eof and info.sotype == socket.SOCK_STREAM
                and rev & _select.POLLIN and data == 0
                and not rev & _select.POLLERR):
            eof = True  # readable stream socket with nothing to read
        if eof:
            return True, data, True, info.sock_error(), poll_ready
        if rev & _select.POLLERR:
            info.sock_error()
            return True, data, False, 0, poll_ready
        if not rev & _select.POLLIN:
            return False, data, False, 0, poll_ready
        lowat = kn.sdata if kn.sfflags & KQ_NOTE_LOWAT else 1
        return data >= lowat, data, False, 0, poll_ready

    # KQ_FILTER_WRITE
    poll_ready = bool(rev & (_WRITE_BITS | _HUP_ERR))
    if info.is_sock:
        eof = bool(rev & _select.POLLHUP)
        if eof:
            return True, info.write_space(), True, info.sock_error(), \
                poll_ready
        if rev & _select.POLLERR:
            info.sock_error()
            return True, info.write_space(), False, 0, poll_ready
    else:
        if rev & _HUP_ERR:  # pipe/fifo whose reader went away
            return True, info.write_space(), True, 0, poll_ready
    if not rev & _select.POLLOUT:
        return False, 0, False, 0, poll_ready
    space = info.write_space()
    if kn.sfflags & KQ_NOTE_LOWAT:
        return space >= kn.sdata, space, False, 0, poll_ready
    return True, space, False, 0, poll_ready


# --------------------------------------------------------------------------
# kqueue
# --------------------------------------------------------------------------
def _closed_error():
    return ValueError("I/O operation on closed kqueue object")


def _oserror(code):
    return OSError(code, os.strerror(code))


class kqueue:
    """Mirror of ``select.kqueue`` implemented with ``select.poll``."""

    def __init__(self):
        self._pid = os.getpid()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closed = False
        self._lock = threading.RLock()
        self._knotes = collections.OrderedDict()   # (ident, filter) -> _Knote
        self._sockerr = {}                         # (fd, dev, ino) -> errno
        self._waiters = 0

    # -- object protocol ---------------------------------------------------
    @property
    def closed(self):
        return self._closed

    def fileno(self):
        if self._closed:
            raise _closed_error()
        return self._wake_r

    @classmethod
    def fromfd(cls, fd):
        raise NotImplementedError("kqueue.fromfd() is not emulated")

    def close(self):
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._knotes.clear()
            self._sockerr.clear()
            if self._waiters:
                self._wake()
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        return "<%s.kqueue object (stand-in)%s>" % (
            __name__, " closed" if self._closed else "")

    # -- control -------------------------------------------------------------
    def control(self, changelist, maxevents, timeout=None, /):
        if self._closed:
            raise _closed_error()
        maxevents = operator.index(maxevents)
        if maxevents < 0:
            raise ValueError("Length of eventlist must be 0 or positive, "
                             "got %d" % maxevents)
        if timeout is not None:
            if not isinstance(timeout, (int, float)) or isinstance(timeout,
                                                                   bool):
                try:
                    timeout = operator.index(timeout)
                except TypeError:
                    raise TypeError(
                        "timeout argument must be a number or None, got %.200s"
                        % type(timeout).__name__) from None
            if isinstance(timeout, float) and math.isnan(timeout):
                raise ValueError("Invalid value NaN (not a number)")
            if timeout < 0:
                raise ValueError("timeout must be positive or None")
        changes = []
        if changelist is not None:
            try:
                it = iter(changelist)
            except TypeError:
                raise TypeError("changelist is not iterable") from None
            for ev in it:
                if not isinstance(ev, kevent):
                    raise TypeError("changelist must be an iterable of "
                                    "select.kevent objects")
                changes.append(ev)
        if os.getpid() != self._pid:
            # kqueues are not inherited across fork(): the child's descriptor
            # does not refer to a queue.
            raise _oserror(_errno.EBADF)

        with self._lock:
            if changes:
                errors = self._apply(changes, maxevents)
                if self._waiters:
                    self._wake()
                if errors is not None:
                    return errors
            if maxevents == 0:
                return []

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._closed:
                    raise _oserror(_errno.EBADF)
                events, masks, tick = self._scan(maxevents)
                if events:
                    return events
                self._waiters += 1
            try:
                if deadline is None:
                    wait = None
                else:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        return []
                if tick:
                    wait = CLEAR_TICK if wait is None else min(wait,
                                                               CLEAR_TICK)
                self._block(masks, wait)
            finally:
                with self._lock:
                    self._waiters -= 1
                    # the last waiter out empties the wake-up pipe, so that a
                    # second blocked thread is not robbed of its wake-up
                    if not self._closed and not self._waiters:
                        self._drain_wake()

    # -- internals -----------------------------------------------------------
    def _wake(self):
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _drain_wake(self):
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
            pass

    def _block(self, masks, wait):
        p = _select.poll()
        for fd, mask in masks.items():
            p.register(fd, mask)
        p.register(self._wake_r, _select.POLLIN)
        # select.poll retries on EINTR with a recomputed timeout (PEP 475),
        # running signal handlers in between, as CPython's kqueue does.
        p.poll(None if wait is None else wait * 1000.0)

    def _drop(self, key):
        kn = self._knotes.pop(key, None)
        if kn is None:
            return
        fdkey = (kn.ident, kn.dev, kn.ino)
        if not any((k.ident, k.dev, k.ino) == fdkey
                   for k in self._knotes.values()):
            self._sockerr.pop(fdkey, None)

    def _purge_ident(self, ident, st):
        """Drop registrations of ``ident`` that belong to a file that has been
        closed (st is None) or replaced by another file (fd reuse)."""
        for filt in (KQ_FILTER_READ, KQ_FILTER_WRITE):
            kn = self._knotes.get((ident, filt))
            if kn is not None and (st is None or (st.st_dev, st.st_ino)
                                   != (kn.dev, kn.ino)):
                self._drop((ident, filt))

    def _check_alive(self, kn):
        try:
            st = os.fstat(kn.ident)
        except (OSError, OverflowError):
            return False
        return (st.st_dev, st.st_ino) == (kn.dev, kn.ino)

    def _purge_all(self):
        for key, kn in list(self._knotes.items()):
            if not self._check_alive(kn):
                self._drop(key)

    def _register(self, kev):
        """Apply one change; return 0 or an errno value."""
        flags = kev.flags & ~KQ_EV_SYSFLAGS & 0xFFFF
        filt = kev.filter
        if filt == 0:
            return 0
        if filt in _UNSUPPORTED_FILTERS:
            raise NotImplementedError(
                "%s is not emulated by the kqueue stand-in"
                % _UNSUPPORTED_FILTERS[filt])
        if filt not in (KQ_FILTER_READ, KQ_FILTER_WRITE):
            return _errno.EINVAL
        if flags & KQ_EV_ADD and flags & KQ_EV_KEEPUDATA:
            return _errno.EINVAL
        ident = kev.ident
        try:
            st = os.fstat(ident)
        except OverflowError:
            return _errno.EBADF
        except OSError as exc:
            self._purge_ident(ident, None)
            return exc.errno or _errno.EBADF
        self._purge_ident(ident, st)
        key = (ident, filt)
        kn = self._knotes.get(key)
        if kn is None:
            if not flags & KQ_EV_ADD:
                return _errno.ENOENT
            if filt == KQ_FILTER_WRITE and (stat.S_ISREG(st.st_mode)
                                            or stat.S_ISDIR(st.st_mode)):
                return _errno.EINVAL  # EVFILT_WRITE unsupported on vnodes
            self._knotes[key] = _Knote(kev, st)
            return 0
        if flags & KQ_EV_DELETE:
            self._drop(key)
            return 0
        # modification of an existing registration (FreeBSD semantics)
        if not flags & KQ_EV_KEEPUDATA:
            kn.udata = kev.udata
        kn.sfflags = kev.fflags
        kn.sdata = kev.data
        if flags & KQ_EV_ENABLE:
            kn.enabled = True
        elif flags & KQ_EV_DISABLE:
            kn.enabled = False
        kn.rearm = True  # the filter is re-run: a true condition is queued
        return 0

    def _apply(self, changes, maxevents):
        """Apply the changelist.  Returns None when the caller should go on to
        collect events, or the list of EV_ERROR events to return at once."""
        room = maxevents
        posted = []
        for kev in changes:
            err = self._register(kev)
            receipt = kev.flags & KQ_EV_RECEIPT
            if err or receipt:
                if room == 0:
                    if err:
                        raise _oserror(err)
                    return []
                posted.append(kevent(kev.ident, kev.filter, KQ_EV_ERROR,
                                     kev.fflags, err, kev.udata))
                room -= 1
        return posted if posted else None

    def _scan(self, maxevents):
        """Non-blocking evaluation of every enabled registration.

        Returns (events, poll_masks_for_blocking_wait, need_tick)."""
        self._purge_all()
        live = [kn for kn in self._knotes.values() if kn.enabled]
        if not live:
            return [], {}, False
        want = {}
        for kn in live:
            bits = _READ_BITS if kn.filter == KQ_FILTER_READ else _WRITE_BITS
            want[kn.ident] = want.get(kn.ident, 0) | bits
        p = _select.poll()
        for fd, mask in want.items():
            p.register(fd, mask)
        revents = dict(p.poll(0))

        infos = {}
        events = []
        delivered = []
        masks = {}
        excluded = set()
        tick = False
        for kn in live:
            key = (kn.ident, kn.filter)
            rev = revents.get(kn.ident, 0)
            if rev & _select.POLLNVAL:
                self._drop(key)
                continue
            info = infos.get(kn.ident)
            if info is None:
                info = infos[kn.ident] = _FdInfo(self, kn, rev)
            ready, data, eof, fflags, poll_ready = _evaluate(kn, info)
            if kn.flags & KQ_EV_CLEAR:
                if ready and (kn.rearm or not kn.last_ready
                              or data > kn.last_data
                              or (eof and not kn.last_eof)):
                    kn.pending = True
                if not ready:
                    kn.pending = False
                kn.rearm = False
                kn.last_ready, kn.last_data, kn.last_eof = ready, data, eof
                report = kn.pending
            else:
                report = ready
            if report and len(events) < maxevents:
                if not self._check_alive(kn):   # closed/reused meanwhile
                    self._drop(key)
                    continue
                flags = kn.flags | (KQ_EV_EOF if eof else 0)
                events.append(kevent(kn.ident, kn.filter, flags, fflags,
                                     data, kn.udata))
                delivered.append((key, kn))
                continue
            # not delivered: decide how a blocking wait can watch it
            if rev & _HUP_ERR:
                excluded.add(kn.ident)
                tick = True
            elif poll_ready or report:
                tick = True
            else:
                bits = (_READ_BITS if kn.filter == KQ_FILTER_READ
                        else _WRITE_BITS)
                masks[kn.ident] = masks.get(kn.ident, 0) | bits
        for fd in excluded:
            masks.pop(fd, None)

        for key, kn in delivered:
            if kn.flags & KQ_EV_ONESHOT:
                self._drop(key)
                continue
            if kn.flags & KQ_EV_DISPATCH:
                kn.enabled = False
            kn.pending = False
            # level-triggered knotes go back to the tail of the queue
            self._knotes.move_to_end(key)
        return events, masks, tick


# --------------------------------------------------------------------------
# module-like bundle
# --------------------------------------------------------------------------
_EXPORTED = [
    "KQ_FILTER_READ", "KQ_FILTER_WRITE", "KQ_FILTER_AIO", "KQ_FILTER_VNODE",
    "KQ_FILTER_PROC", "KQ_FILTER_SIGNAL", "KQ_FILTER_TIMER",
    "KQ_EV_ADD", "KQ_EV_DELETE", "KQ_EV_ENABLE", "KQ_EV_DISABLE",
    "KQ_EV_ONESHOT", "KQ_EV_CLEAR", "KQ_EV_SYSFLAGS", "KQ_EV_FLAG1",
    "KQ_EV_EOF", "KQ_EV_ERROR",
    "KQ_NOTE_LOWAT", "KQ_NOTE_DELETE", "KQ_NOTE_WRITE", "KQ_NOTE_EXTEND",
    "KQ_NOTE_ATTRIB", "KQ_NOTE_LINK", "KQ_NOTE_RENAME", "KQ_NOTE_REVOKE",
    "KQ_NOTE_EXIT", "KQ_NOTE_FORK", "KQ_NOTE_EXEC", "KQ_NOTE_PCTRLMASK",
    "KQ_NOTE_PDATAMASK", "KQ_NOTE_TRACK", "KQ_NOTE_TRACKERR",
    "KQ_NOTE_CHILD",
]


def install_into(namespace):
    """Set ``kqueue``, ``kevent``, ``error`` and the KQ_* constants on
    ``namespace`` (a module, object or dict) and return it."""
    values = {name: globals()[name] for name in _EXPORTED}
    values.update(kqueue=kqueue, kevent=kevent, error=OSError)
    if isinstance(namespace, dict):
        namespace.update(values)
    else:
        for name, value in values.items():
            setattr(namespace, name, value)
    return namespace


#: ``KQueuePoller(select_module=kqueue_module)``
kqueue_module = install_into(types.SimpleNamespace(__name__="select"))
