"""Pollers: one kernel readiness API each, one shared dispatch loop.

A poller maps fds to channels (Transports, or anything with the same small
interface) and fires their events:

* ``channel.handle_read_event()`` when the fd is readable (or hung up, or in
  error) and the channel is reading;
* ``channel.handle_write_event()`` once per armed write notification:
  :meth:`Poller.defer_write` arms one, and it is dropped again before the
  callback runs.

Facts the code relies on:

* Kernel interest is changed lazily. Arming, disarming, pausing and
  resuming only mark the channel dirty; just before the next wait the
  poller compares what it wants with what the kernel has and makes a system
  call only for real differences. A write notification that fires and is
  re-armed by its own callback costs no system call at all.
* A channel that wants nothing is removed from the kernel entirely: epoll
  and poll report hang-ups and errors even for an empty interest mask, so
  keeping it registered would wake the loop for ever (a spin).
* An fd closed during a batch is remembered until the batch ends, so a
  later event of the same batch (for it, or for a new socket that reused
  the number) is dropped instead of going to the wrong channel.
* EINTR is retried by Python itself (PEP 475) with the remaining timeout.

The channel interface the poller uses: ``_fileno``, ``_reading`` (bool),
``_write_armed`` (bool), ``_plain_read_event`` (bool), ``handle_read_event()``,
``handle_write_event()``, ``handle_close()``, ``handle_error()`` and
``close()``. ``_plain_read_event`` is a promise that ``handle_read_event()``
is Transport's own: when it is true, the poller makes that method's
decision itself (``handle_read()`` unless ``connecting`` or ``accepting``)
and saves a Python call per read event; other channels set it False.
"""

import collections
import errno
import logging
import math
import os
import select
import sys
import threading
import weakref

from .errors import is_connection_lost
from .timers import TimerQueue
from .waker import Waker

logger = logging.getLogger("pike")

#: pike's own interest bits. They equal POLLIN / POLLOUT (and EPOLLIN /
#: EPOLLOUT) on Linux, but the backends never rely on that.
READ = 1
WRITE = 4

# The longest single wait: waking once a day to wait again is harmless.
_MAX_WAIT = 86400.0

_live_pollers = weakref.WeakSet()


class Poller:
    """The shared loop; a subclass supplies the kernel calls.

    Subclasses set ``name`` and ``_READ_EVENTS`` / ``_WRITE_EVENTS`` (the
    kernel's event bits that count as readable / writable) and implement
    ``_register(fd, mask)``, ``_modify(fd, old_mask, new_mask)``,
    ``_unregister(fd, old_mask)``, ``_wait(timeout)`` (returning ``(fd,
    events)`` pairs) and ``_close_kernel()``.
    """

    name = "base"
    _READ_EVENTS = READ
    _WRITE_EVENTS = WRITE

    def __init__(self):
        self._channels = {}  # fd -> channel
        self._registered = {}  # fd -> mask the kernel has now
        self._dirty = {}  # fd -> channel whose wanted mask may have changed
        self._stale = set()  # fds closed during the running batch
        self._dispatching = False
        self._timers = TimerQueue()
        self._callbacks = collections.deque()  # from call_soon_threadsafe
        self._stopping = False
        self._closed = False
        self._forked_away = False
        self._waker = Waker()
        self._waker_fd = self._waker.fileno()
        # Copies of the class's event bits: read every iteration, and 3.11
        # only specialises lookups that the instance itself answers.
        self._read_bits = self._READ_EVENTS
        self._write_bits = self._WRITE_EVENTS
        _live_pollers.add(self)

    # -- channels ---------------------------------------------------------

    def add_channel(self, channel):
        """Start watching ``channel``'s fd for reading."""
        self._check_usable()
        fd = channel._fileno
        if fd < 0:
            raise ValueError(f"{channel!r} has no open socket")
        if not hasattr(channel, "_plain_read_event"):
            raise TypeError(f"{channel!r} is not a channel: no _plain_read_event")
        current = self._channels.get(fd)
        if current is not None and current is not channel:
            if not _lost_its_socket(current, fd):
                raise ValueError(f"fd {fd} is already watched by {current!r}")
            # The number was closed behind ``current`` and the kernel gave it
            # to this new socket: ``current`` is gone, the newcomer is not.
            self._registered.pop(fd, None)  # the kernel forgot the old file
            if self._dispatching:
                self._stale.add(fd)  # this batch's events were the old file's
            self._lost_fd(fd, current)
        self._check_fd(fd)
        self._channels[fd] = channel
        # A stale mark stays: every event of the running batch for this fd
        # was collected before the new socket existed.
        self._dirty[fd] = channel

    def del_channel(self, channel):
        """Stop watching ``channel``; tolerant of fds already closed."""
        fd = channel._fileno
        if self._channels.get(fd) is not channel:
            return
        del self._channels[fd]
        self._dirty.pop(fd, None)
        if self._dispatching:
            self._stale.add(fd)
        old = self._registered.pop(fd, 0)
        # A forked child shares the parent's epoll set: unregistering there
        # would silently unregister the parent's fd too.
        if old and not self._closed and not self._forked_away:
            try:
                self._unregister(fd, old)
            except (OSError, ValueError):
                pass  # already closed behind our back: the kernel forgot it

    def defer_write(self, channel):
        """Arm one write notification: ``handle_write_event`` fires once."""
        if not channel._write_armed:
            channel._write_armed = True
            fd = channel._fileno
            if self._channels.get(fd) is channel:
                self._dirty[fd] = channel

    def cancel_write(self, channel):
        """Disarm a pending write notification, if any."""
        if channel._write_armed:
            channel._write_armed = False
            fd = channel._fileno
            if self._channels.get(fd) is channel:
                self._dirty[fd] = channel

    def update_interest(self, channel):
        """Note that ``channel._reading`` changed; applied before the next wait."""
        fd = channel._fileno
        if self._channels.get(fd) is channel:
            self._dirty[fd] = channel

    def channels(self):
        """A snapshot list of the channels being watched."""
        return list(self._channels.values())

    def __len__(self):
        return len(self._channels)

    # -- timers and other threads -----------------------------------------

    def call_later(self, delay, fn, *args):
        """Run ``fn(*args)`` in this poller's loop after ``delay`` seconds.

        Returns a handle whose ``cancel()`` stops the call.
        """
        self._check_usable()
        return self._timers.schedule(delay, fn, args)

    def call_soon_threadsafe(self, fn, *args):
        """Queue ``fn(*args)`` from any thread and wake the loop at once."""
        self._check_usable()
        self._callbacks.append((fn, args))
        self._waker.wake()

    def stop(self):
        """Make the running :meth:`loop` return after this iteration.

        Safe from any thread. Called while no loop runs, the next
        :meth:`loop` returns at once.
        """
        self._stopping = True
        if not self._closed:
            self._waker.wake()

    def time(self):
        """The clock timers use (monotonic seconds)."""
        return self._timers.clock()

    # -- the loop ---------------------------------------------------------

    def poll(self, timeout=None):
        """One iteration: wait at most ``timeout`` seconds, dispatch.

        ``None`` waits until an event, a due timer or a wake-up. Returns
        how many callbacks ran (I/O events, timers, queued calls).
        """
        if self._closed or self._forked_away:
            self._check_usable()
        if self._dirty:
            self._apply_interest()
        if timeout is None and not self._callbacks and not self._timers._heap:
            wait = None  # a busy server's every iteration: nothing to work out
        else:
            wait = self._next_wait(timeout)
        events = self._wait(wait)
        count = self._dispatch(events) if events else 0
        if self._timers._heap:
            count += self._run_timers()
        if self._callbacks:
            count += self._run_callbacks()
        return count

    def _next_wait(self, timeout):
        """How long the next wait may last: ``timeout``, capped by timers."""
        if self._callbacks:
            return 0.0
        wait = None if timeout is None else max(timeout, 0.0)
        due = self._timers.next_delay()
        if due is not None and (wait is None or due < wait):
            wait = due
        if wait is not None and wait > _MAX_WAIT:
            wait = _MAX_WAIT  # the kernel's ms timeouts overflow at ~24 days
        return wait

    def loop(self, timeout=None, count=None):
        """Run iterations until one of these ends it.

        ``timeout`` seconds have passed; ``count`` iterations were made;
        :meth:`stop` was called; nothing is left to wait for (no channels,
        no timers, no queued calls).
        """
        self._check_usable()
        deadline = None if timeout is None else self.time() + timeout
        iterations = 0
        try:
            while not self._stopping:
                if count is not None and iterations >= count:
                    break
                if not (self._channels or len(self._timers) or self._callbacks):
                    break
                if deadline is None:
                    self.poll(None)
                else:
                    remaining = deadline - self.time()
                    if remaining <= 0:
                        break
                    self.poll(remaining)
                iterations += 1
        finally:
            self._stopping = False
        return iterations

    def close(self):
        """Release the kernel object and the waker. Channels are left open."""
        if self._closed:
            return
        self._closed = True
        if not self._forked_away:
            self._close_kernel()
        else:
            self._abandon_kernel()
        self._waker.close()
        self._channels.clear()
        self._registered.clear()
        self._dirty.clear()

    @property
    def closed(self):
        return self._closed

    def __repr__(self):
        state = "closed" if self._closed else f"{len(self._channels)} channels"
        return f"<{type(self).__name__} {state}>"

    # -- internals --------------------------------------------------------

    def _check_usable(self):
        if self._closed:
            raise RuntimeError("the poller is closed")
        if self._forked_away:
            raise RuntimeError(
                "this poller belongs to the parent process; a forked child "
                "must use get_poller() or make a poller of its own"
            )

    def _check_fd(self, fd):
        """Refuse fds this backend cannot watch (select's FD_SETSIZE)."""

    def _apply_interest(self):
        # Item by item: if a callback raises (KeyboardInterrupt from a
        # handle_close), what is left stays dirty for the next poll.
        dirty = self._dirty
        registered = self._registered
        while dirty:
            fd, channel = dirty.popitem()
            want = (READ if channel._reading else 0) | (
                WRITE if channel._write_armed else 0
            )
            have = registered.get(fd, 0)
            if want == have:
                continue
            try:
                if not have:
                    self._register(fd, want)
                elif not want:
                    self._unregister(fd, have)
                else:
                    self._modify(fd, have, want)
            except (OSError, ValueError) as exc:
                registered.pop(fd, None)
                if isinstance(exc, PermissionError):
                    # epoll refuses regular files and some devices: say so.
                    logger.error(
                        "pike: the %s poller cannot watch fd %d of %r (%s); "
                        "closing it", self.name, fd, channel, exc,
                    )
                # Otherwise the fd was closed behind the transport's back.
                self._lost_fd(fd, channel)
                continue
            if want:
                registered[fd] = want
            else:
                del registered[fd]

    def _lost_fd(self, fd, channel):
        """A watched fd turned out to be closed: end its channel cleanly."""
        if self._channels.get(fd) is channel:
            del self._channels[fd]
        try:
            channel.handle_close()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            self._callback_failed(channel)

    def _dispatch(self, events):
        channels = self._channels
        stale = self._stale
        read_bits = self._read_bits
        write_bits = self._write_bits
        count = 0
        self._dispatching = True
        try:
            for fd, bits in events:
                channel = channels.get(fd)
                if channel is None:
                    if fd == self._waker_fd:
                        self._waker.clear()
                    continue
                if stale and fd in stale:
                    continue
                if bits & read_bits and channel._reading:
                    count += 1
                    try:
                        # What Transport.handle_read_event would do, without
                        # its frame: the most frequent call of the loop.
                        if channel._plain_read_event and not (
                            channel.connecting or channel.accepting
                        ):
                            channel.handle_read()
                        else:
                            channel.handle_read_event()
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except BaseException:
                        self._callback_failed(channel)
                    if not channel._write_armed or channels.get(fd) is not channel:
                        continue  # no write wanted, or closed by its read callback
                # (_write_armed first: the cheaper test, and mostly False.)
                if channel._write_armed and bits & write_bits:
                    # One-shot: disarm first so the callback can re-arm.
                    channel._write_armed = False
                    self._dirty[fd] = channel
                    count += 1
                    try:
                        channel.handle_write_event()
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except BaseException:
                        self._callback_failed(channel)
        finally:
            self._dispatching = False
            if stale:
                stale.clear()
        return count

    def _callback_failed(self, channel):
        """Route the exception being handled to the channel's callbacks.

        Connection-lost errors go to ``handle_close``, everything else to
        ``handle_error``; if those fail too, log and close, so one broken
        channel never stops the loop.
        """
        exc = sys.exc_info()[1]
        try:
            if is_connection_lost(exc):
                channel.handle_close()
            else:
                channel.handle_error()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            logger.exception("pike: error handler of %r failed; closing it", channel)
            try:
                channel.close()
            except Exception:
                logger.exception("pike: close() of %r failed", channel)
                self.del_channel(channel)

    def _run_timers(self):
        count = 0
        due = self._timers.pop_due()
        for index, handle in enumerate(due):
            if handle.cancelled:  # cancelled by an earlier timer of this batch
                continue
            count += 1
            try:
                handle._run()
            except (KeyboardInterrupt, SystemExit):
                self._timers.requeue(due[index + 1 :])  # not lost, just later
                raise
            except BaseException:
                logger.exception("pike: timer callback %r failed", handle)
        return count

    def _run_callbacks(self):
        # Only what is queued now: calls queued by these calls wait for the
        # next iteration, so a call that requeues itself cannot starve I/O.
        callbacks = self._callbacks
        count = 0
        for _ in range(len(callbacks)):
            fn, args = callbacks.popleft()
            count += 1
            try:
                fn(*args)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:
                logger.exception("pike: callback %r failed", fn)
        return count

    def _mark_forked(self):
        """In a forked child: never touch the parent's kernel object again."""
        self._forked_away = True

    def _abandon_kernel(self):
        """Close our copy of the kernel object without unregistering."""


def _lost_its_socket(channel, fd):
    """True when ``channel``'s socket object no longer holds ``fd``.

    (A socket closed behind its transport reports fileno() -1.) Channels
    without a ``socket`` attribute are taken at their word.
    """
    sock = getattr(channel, "socket", None)
    if sock is None or not hasattr(sock, "fileno"):
        return False
    try:
        return sock.fileno() != fd
    except (OSError, ValueError):
        return True


def _round_up_ms(timeout):
    """Seconds to whole milliseconds, rounded up so a short wait never spins."""
    return -1 if timeout is None else math.ceil(timeout * 1000.0)


class SelectPoller(Poller):
    """``select()``: everywhere, but limited to fds below FD_SETSIZE (1024)."""

    name = "select"
    FD_SETSIZE = 1024

    def __init__(self):
        self._readers = set()
        self._writers = set()
        super().__init__()
        self._readers.add(self._waker_fd)

    def _check_fd(self, fd):
        if fd >= self.FD_SETSIZE:
            raise ValueError(
                f"fd {fd} is out of range for select() (FD_SETSIZE "
                f"{self.FD_SETSIZE}); use the poll or epoll poller"
            )

    def _register(self, fd, mask):
        self._modify(fd, 0, mask)

    def _modify(self, fd, old, new):
        (self._readers.add if new & READ else self._readers.discard)(fd)
        (self._writers.add if new & WRITE else self._writers.discard)(fd)

    def _unregister(self, fd, old):
        self._readers.discard(fd)
        self._writers.discard(fd)

    def _wait(self, timeout):
        try:
            readable, writable, _ = select.select(
                self._readers, self._writers, (), timeout
            )
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            self._drop_closed_fds()
            return ()
        if not writable:
            return [(fd, READ) for fd in readable]
        events = dict.fromkeys(readable, READ)
        for fd in writable:
            events[fd] = events.get(fd, 0) | WRITE
        return events.items()

    def _drop_closed_fds(self):
        for fd in list(self._readers | self._writers):
            try:
                os.fstat(fd)
            except OSError:
                self._readers.discard(fd)
                self._writers.discard(fd)
                self._registered.pop(fd, None)
                channel = self._channels.get(fd)
                if channel is not None:
                    self._lost_fd(fd, channel)

    def _close_kernel(self):
        self._readers.clear()
        self._writers.clear()


if hasattr(select, "poll"):

    class PollPoller(Poller):
        """``poll()``: no fd limit, but O(watched fds) per wait."""

        name = "poll"
        _READ_EVENTS = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL
        _WRITE_EVENTS = select.POLLOUT | select.POLLERR | select.POLLHUP | select.POLLNVAL

        def __init__(self):
            self._poll = select.poll()
            super().__init__()
            self._poll.register(self._waker_fd, select.POLLIN)

        @staticmethod
        def _kernel_mask(mask):
            return (select.POLLIN if mask & READ else 0) | (
                select.POLLOUT if mask & WRITE else 0
            )

        def _register(self, fd, mask):
            self._poll.register(fd, self._kernel_mask(mask))

        def _modify(self, fd, old, new):
            self._poll.modify(fd, self._kernel_mask(new))

        def _unregister(self, fd, old):
            self._poll.unregister(fd)

        def _wait(self, timeout):
            return self._poll.poll(_round_up_ms(timeout))

        def _close_kernel(self):
            self._poll = None


if hasattr(select, "epoll"):

    class EpollPoller(Poller):
        """Linux ``epoll``: O(ready fds) per wait, no fd limit."""

        name = "epoll"
        _READ_EVENTS = select.EPOLLIN | select.EPOLLPRI | select.EPOLLERR | select.EPOLLHUP
        _WRITE_EVENTS = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP

        def __init__(self):
            self._epoll = select.epoll()
            super().__init__()
            self._epoll.register(self._waker_fd, select.EPOLLIN)
            if type(self)._wait is EpollPoller._wait:
                # epoll.poll takes our timeout as it is: calling it straight
                # saves a Python frame per iteration. (A subclass that
                # overrides _wait keeps its override.)
                self._wait = self._epoll.poll

        @staticmethod
        def _kernel_mask(mask):
            return (select.EPOLLIN if mask & READ else 0) | (
                select.EPOLLOUT if mask & WRITE else 0
            )

        def _register(self, fd, mask):
            self._epoll.register(fd, self._kernel_mask(mask))

        def _modify(self, fd, old, new):
            self._epoll.modify(fd, self._kernel_mask(new))

        def _unregister(self, fd, old):
            self._epoll.unregister(fd)

        def _wait(self, timeout):
            # epoll takes seconds (None: no limit) and rounds up to whole
            # milliseconds itself.
            return self._epoll.poll(timeout)

        def _close_kernel(self):
            self._epoll.close()

        def _abandon_kernel(self):
            # Closing our copy of the fd removes nothing from the parent's set.
            self._epoll.close()


if hasattr(select, "kqueue"):
    from ._kqueue_poller import KQueuePoller  # noqa: E402


# -- choosing and owning the default poller -----------------------------------

#: Poller names this platform has, best first.
_PREFERENCE = ("epoll", "kqueue", "poll", "select")


def _poller_classes():
    classes = {"select": SelectPoller}
    module = sys.modules[__name__]
    for name, attr in (
        ("poll", "PollPoller"),
        ("epoll", "EpollPoller"),
        ("kqueue", "KQueuePoller"),
    ):
        cls = getattr(module, attr, None)
        if cls is not None:
            classes[name] = cls
    return classes


def available_pollers():
    """The names of the pollers this platform has, best first."""
    classes = _poller_classes()
    return [name for name in _PREFERENCE if name in classes]


def make_poller(name=None):
    """Build a new poller by name: "epoll", "kqueue", "poll" or "select".

    ``None`` takes ``PIKE_POLLER`` from the environment when it is set, else
    the best poller the platform has.
    """
    if name is None:
        name = os.environ.get("PIKE_POLLER") or available_pollers()[0]
    classes = _poller_classes()
    try:
        cls = classes[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown or unavailable poller {name!r}; this platform has: "
            f"{', '.join(available_pollers())}"
        ) from None
    return cls()


_default_poller = None
_default_lock = threading.Lock()


def get_poller():
    """The process's default poller, made on first use (and anew after fork)."""
    poller = _default_poller
    if poller is None or poller._closed or poller._forked_away:
        return _make_default()
    return poller


def _make_default():
    global _default_poller
    with _default_lock:
        poller = _default_poller
        if poller is None or poller._closed or poller._forked_away:
            kind = None
            if poller is not None and poller._forked_away:
                kind = poller.name  # a forked child keeps its parent's kind
            if poller is not None and not poller._closed:
                poller.close()
            try:
                poller = make_poller(kind)
            except ValueError:  # a kind this platform cannot build anew
                poller = make_poller()
            _default_poller = poller
        return poller


def set_poller(poller):
    """Make ``poller`` the process's default; returns the previous one."""
    global _default_poller
    with _default_lock:
        previous, _default_poller = _default_poller, poller
    return previous


def loop(timeout=None, count=None):
    """Drive the default poller; see :meth:`Poller.loop`."""
    return get_poller().loop(timeout=timeout, count=count)


def _after_fork_in_child():
    global _default_lock
    _default_lock = threading.Lock()  # another thread may have held it
    for poller in list(_live_pollers):
        poller._mark_forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
