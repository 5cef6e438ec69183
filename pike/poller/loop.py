"""The loop every poller shares: channels, lazy interest, dispatch, timers.

A backend (one module each beside this one) subclasses :class:`Poller` and
supplies only its kernel calls; everything else -- which channel owns which
fd, what the kernel should watch, dispatching a batch of events, timers,
calls from other threads, fork -- is here, once. The channels it drives
follow the contract in :mod:`pike.poller.channel`:

* ``channel.handle_read_event()`` when the fd is readable (or hung up, or
  in error) and the channel is reading;
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
* A new channel may take an fd number whose channel lost its socket (it was
  closed behind the channel's back): the old channel is closed, not the
  newcomer refused.
* EINTR is retried by Python itself (PEP 475) with the remaining timeout.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import sys
import weakref

from ..errors import is_connection_lost
from ..timers import TimerQueue
from ..waker import Waker
from .channel import FdWatch

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only: no typing cost at import
    from typing import Any, Callable, Deque, Iterable, Protocol, Union

    from ..timers import TimerHandle
    from .channel import ChannelLike

    class _HasFileno(Protocol):
        def fileno(self) -> int: ...

    FileDescriptorLike = Union[int, _HasFileno]

logger = logging.getLogger("pike")

#: pike's own interest bits. They equal POLLIN / POLLOUT (and EPOLLIN /
#: EPOLLOUT) on Linux, but the backends never rely on that.
READ = 1
WRITE = 4

#: The most bytes one ``socket.recv`` asks for on behalf of a channel. A
#: larger request makes CPython allocate that much for every call before
#: shrinking it, and from 128 KiB on glibc maps and unmaps it each time:
#: ``recv(262144)`` with 1 KiB waiting took 14 us where ``recv(65536)``
#: took 1.4 (CPython 3.11 and 3.13, Linux). The C path's batch is bounded
#: by its own receive budget instead (csrc/pike_batch.c).
RECV_CAP = 65536

#: The longest single wait, in seconds: the kernels' millisecond timeouts
#: overflow at ~24 days, and waking once a day to wait again is harmless.
MAX_WAIT = 86400.0

#: Every poller alive, so that a forked child can mark them all.
live_pollers: weakref.WeakSet[Poller] = weakref.WeakSet()


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

    def __init__(self) -> None:
        self._channels: dict[int, ChannelLike] = {}  # fd -> channel
        self._registered: dict[int, int] = {}  # fd -> mask the kernel has now
        self._dirty: dict[int, ChannelLike] = {}  # fd -> channel whose wanted mask may have changed
        self._stale: set[int] = set()  # fds closed during the running batch
        self._dispatching = False
        self._timers = TimerQueue()
        self._callbacks: Deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()  # from call_soon_threadsafe
        self._stopping = False
        self._closed = False
        self._forked_away = False
        self._waker = Waker()
        self._waker_fd = self._waker.fileno()
        # Copies of the class's event bits: read every iteration, and 3.11
        # only specialises lookups that the instance itself answers.
        self._read_bits = self._READ_EVENTS
        self._write_bits = self._WRITE_EVENTS
        self._watches: dict[int, FdWatch] = {}  # fd -> FdWatch, for add_reader / add_writer
        live_pollers.add(self)

    # -- channels ---------------------------------------------------------

    def add_channel(self, channel: ChannelLike) -> None:
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

    def del_channel(self, channel: ChannelLike) -> None:
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

    def defer_write(self, channel: ChannelLike) -> None:
        """Arm one write notification: ``handle_write_event`` fires once."""
        if not channel._write_armed:
            channel._write_armed = True
            fd = channel._fileno
            if self._channels.get(fd) is channel:
                self._dirty[fd] = channel

    def cancel_write(self, channel: ChannelLike) -> None:
        """Disarm a pending write notification, if any."""
        if channel._write_armed:
            channel._write_armed = False
            fd = channel._fileno
            if self._channels.get(fd) is channel:
                self._dirty[fd] = channel

    def update_interest(self, channel: ChannelLike) -> None:
        """Note that ``channel._reading`` changed; applied before the next wait."""
        fd = channel._fileno
        if self._channels.get(fd) is channel:
            self._dirty[fd] = channel

    # -- fd watching in the style of asyncio's add_reader / add_writer -----

    def add_reader(self, fd: FileDescriptorLike, callback: Callable[..., Any], *args: Any) -> None:
        """Call ``callback(*args)`` each time ``fd`` is readable.

        ``fd`` is an int or an object with ``fileno()``. Replaces an earlier
        reader of the same fd. Call :meth:`remove_reader` before closing the
        fd (a watched fd found closed is dropped with a warning). Raises
        ValueError when a Transport or other channel already watches ``fd``.
        """
        watch = self._watch_for(fd)
        watch.reader = (callback, args)
        watch.set_reading(True)

    def remove_reader(self, fd: FileDescriptorLike) -> bool:
        """Stop calling ``fd``'s reader; True when there was one."""
        watch = self._watches.get(_fd_number(fd))
        if watch is None or watch.reader is None:
            return False
        watch.reader = None
        watch.set_reading(False)
        self._drop_idle_watch(watch)
        return True

    def add_writer(self, fd: FileDescriptorLike, callback: Callable[..., Any], *args: Any) -> None:
        """Call ``callback(*args)`` in each iteration in which ``fd`` is writable."""
        watch = self._watch_for(fd)
        watch.writer = (callback, args)
        self.defer_write(watch)

    def remove_writer(self, fd: FileDescriptorLike) -> bool:
        """Stop calling ``fd``'s writer; True when there was one."""
        watch = self._watches.get(_fd_number(fd))
        if watch is None or watch.writer is None:
            return False
        watch.writer = None
        self.cancel_write(watch)
        self._drop_idle_watch(watch)
        return True

    def _watch_for(self, fd: FileDescriptorLike) -> FdWatch:
        self._check_usable()
        fd = _fd_number(fd)
        watch = self._watches.get(fd)
        if watch is None or watch.closed:
            watch = FdWatch(self, fd)
            self.add_channel(watch)
            self._watches[fd] = watch
        return watch

    def _drop_idle_watch(self, watch: FdWatch) -> None:
        if watch.reader is None and watch.writer is None:
            fd = watch.fileno()
            watch.close()
            if self._watches.get(fd) is watch:
                del self._watches[fd]

    def channels(self) -> list[ChannelLike]:
        """A snapshot list of the channels being watched."""
        return list(self._channels.values())

    def __len__(self) -> int:
        return len(self._channels)

    # -- timers and other threads -----------------------------------------

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``fn(*args)`` in this poller's loop after ``delay`` seconds.

        Returns a handle whose ``cancel()`` stops the call.
        """
        self._check_usable()
        return self._timers.schedule(delay, fn, args)

    def call_soon_threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` from any thread and wake the loop at once."""
        self._check_usable()
        self._callbacks.append((fn, args))
        self._waker.wake()

    def stop(self) -> None:
        """Make the running :meth:`loop` return after this iteration.

        Safe from any thread. Called while no loop runs, the next
        :meth:`loop` returns at once.
        """
        self._stopping = True
        if not self._closed:
            self._waker.wake()

    def time(self) -> float:
        """The clock timers use (monotonic seconds)."""
        return self._timers.clock()

    # -- the loop ---------------------------------------------------------

    def poll(self, timeout: float | None = None) -> int:
        """One iteration: wait at most ``timeout`` seconds, dispatch.

        ``None`` waits until an event, a due timer or a wake-up. Returns
        how many callbacks ran (I/O events, timers, queued calls).
        """
        if self._closed or self._forked_away:
            self._check_usable()
        if self._dirty:
            self._apply_interest()
        if timeout is None and not self._callbacks and not self._timers.heap:
            wait = None  # a busy server's every iteration: nothing to work out
        else:
            wait = self._next_wait(timeout)
        events = self._wait(wait)
        count = self._dispatch(events) if events else 0
        if self._timers.heap:
            count += self._run_timers()
        if self._callbacks:
            count += self._run_callbacks()
        return count

    def _next_wait(self, timeout: float | None) -> float | None:
        """How long the next wait may last: ``timeout``, capped by timers."""
        if self._callbacks:
            return 0.0
        wait = None if timeout is None else max(timeout, 0.0)
        due = self._timers.next_delay()
        if due is not None and (wait is None or due < wait):
            wait = due
        if wait is not None and wait > MAX_WAIT:
            wait = MAX_WAIT  # the kernel's ms timeouts overflow at ~24 days
        return wait

    def loop(self, timeout: float | None = None, count: int | None = None) -> int:
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

    def close(self) -> None:
        """Release the kernel object and the waker. Channels are left open."""
        if self._closed:
            return
        self._closed = True
        if not self._forked_away:
            self._close_kernel()
        else:
            self._abandon_kernel()
        self._waker.close()
        self._watches.clear()
        self._channels.clear()
        self._registered.clear()
        self._dirty.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._channels)} channels"
        return f"<{type(self).__name__} {state}>"

    # -- internals --------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError("the poller is closed")
        if self._forked_away:
            raise RuntimeError(
                "this poller belongs to the parent process; a forked child "
                "must use get_poller() or make a poller of its own"
            )

    def _check_fd(self, fd: int) -> None:
        """Refuse fds this backend cannot watch (select's FD_SETSIZE)."""

    # The kernel calls a backend supplies (see the class docstring).

    def _register(self, fd: int, mask: int) -> None:
        raise NotImplementedError

    def _modify(self, fd: int, old: int, new: int) -> None:
        raise NotImplementedError

    def _unregister(self, fd: int, old: int) -> None:
        raise NotImplementedError

    def _wait(self, timeout: float | None) -> Iterable[tuple[int, int]]:
        raise NotImplementedError

    def _close_kernel(self) -> None:
        raise NotImplementedError

    def _apply_interest(self) -> None:
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

    def _lost_fd(self, fd: int, channel: ChannelLike) -> None:
        """A watched fd turned out to be closed: end its channel cleanly."""
        if self._channels.get(fd) is channel:
            del self._channels[fd]
        try:
            channel.handle_close()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            self._callback_failed(channel)

    def _dispatch(self, events: Iterable[tuple[int, int]]) -> int:
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
                        size = channel._receive_size
                        if size:
                            # The channel delivers through handle_data: receive
                            # for it here (see pike.poller.channel).
                            if size > RECV_CAP:
                                size = RECV_CAP
                            try:
                                data = channel.socket.recv(size)  # type: ignore[attr-defined]
                            except (BlockingIOError, InterruptedError):
                                pass  # a spurious wake-up
                            except OSError as exc:
                                channel._receive_ended(exc.errno or errno.EIO)  # type: ignore[attr-defined]
                            else:
                                if data:
                                    channel.handle_data(data)  # type: ignore[attr-defined]
                                else:
                                    channel._receive_ended(0)  # type: ignore[attr-defined]
                        # What Transport.handle_read_event would do, without
                        # its frame: the most frequent call of the loop.
                        # (_plain_read_event promises a Transport.)
                        elif channel._plain_read_event and not (
                            channel.connecting or channel.accepting  # type: ignore[attr-defined]
                        ):
                            channel.handle_read()  # type: ignore[attr-defined]
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
                    count += 1
                    self._write_event(fd, channel)
        finally:
            self._dispatching = False
            if stale:
                stale.clear()
        return count

    def _write_event(self, fd: int, channel: ChannelLike) -> None:
        """An armed write notification fired: disarm it, then call back.

        One-shot: disarmed first, so that the callback can arm it again.
        """
        channel._write_armed = False
        self._dirty[fd] = channel
        self._call_guarded(channel, channel.handle_write_event)

    def _call_guarded(self, channel: ChannelLike, callback: Callable[..., Any], *args: Any) -> None:
        """Run one of ``channel``'s callbacks; what it raises goes to
        :meth:`_callback_failed` (KeyboardInterrupt and SystemExit go on)."""
        try:
            callback(*args)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            self._callback_failed(channel)

    def _callback_failed(self, channel: ChannelLike) -> None:
        """Route the exception being handled to the channel's callbacks.

        Connection-lost errors go to ``handle_close``, everything else to
        ``handle_error``; if those fail too, log and close, so one broken
        channel never stops the loop.
        """
        exc = sys.exc_info()[1]
        try:
            if exc is not None and is_connection_lost(exc):
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

    def _run_timers(self) -> int:
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

    def _run_callbacks(self) -> int:
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

    def _mark_forked(self) -> None:
        """In a forked child: never touch the parent's kernel object again."""
        self._forked_away = True

    def _abandon_kernel(self) -> None:
        """Close our copy of the kernel object without unregistering."""


def _fd_number(fd: FileDescriptorLike) -> int:
    """An fd given as an int or as an object with ``fileno()``."""
    if isinstance(fd, int):
        return fd
    try:
        return int(fd.fileno())
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"not an fd or an object with fileno(): {fd!r}") from None


def _lost_its_socket(channel: ChannelLike, fd: int) -> bool:
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


def round_up_ms(timeout: float | None) -> int:
    """Seconds to whole milliseconds, rounded up so a short wait never spins."""
    return -1 if timeout is None else math.ceil(timeout * 1000.0)


