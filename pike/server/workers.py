"""All cores: N worker processes, one port, a supervising parent.

:class:`WorkerPool` forks ``workers`` processes. Each runs its own poller and
its own :class:`~pike.server.listener.Listener`; the parent accepts nothing,
it only supervises:

* **One port.** Where the platform has ``SO_REUSEPORT`` (and the address is
  TCP), every worker binds a listening socket of its own to the same address
  and the kernel spreads new connections among them. The parent holds one
  more socket bound to that address, never listening, so the port stays
  reserved while workers come and go (and a port 0 is picked once, for all).
  Otherwise (Unix sockets, or ``reuse_port=False``) the parent makes one
  listening socket and every worker inherits it.
* **Restarts.** A worker that dies is reaped and replaced. One that dies
  within a second of starting is restarted after a back-off that doubles
  (up to :attr:`WorkerPool.max_restart_delay`), so a crash loop cannot
  fork-bomb the machine.
* **Stopping.** SIGTERM or SIGINT to the parent is forwarded to the workers,
  which stop accepting and give their connections ``grace`` seconds to end
  (see :meth:`Listener.shutdown <pike.server.listener.Listener.shutdown>`);
  a worker still alive after that (plus a margin) is killed. Every child is
  reaped before :meth:`WorkerPool.run` returns.
* **Orphans.** Each worker watches one end of a socket pair whose other end
  only the parent holds: if the parent dies, even by SIGKILL, the workers see
  EOF and stop gracefully.

Children are watched through pidfds where the kernel has them (an exit makes
the parent's poller return at once); otherwise by SIGCHLD (in the main
thread) and a short poll.

With ``SO_REUSEPORT``, connections still queued in a worker's own backlog when
it dies are reset by the kernel: clients must retry, as with any server
restart. Pike does not invent a cluster beyond one machine: put pike servers
behind the usual load balancer for that.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback

from pike.poller import Channel, make_poller
from pike.transport import Transport

from .listener import Listener, family_of, listening_socket

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only: no typing cost at import
    from typing import Any, Callable, Tuple, Union

    Address = Union[str, bytes, Tuple[Any, ...]]


__all__ = ["WorkerPool"]

logger = logging.getLogger("pike.server")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _ChildWatch(Channel):
    """A pidfd on the parent's poller: readable once the child has exited.

    The event only wakes the parent's loop, which then reaps; the pidfd is
    the watch's own and :meth:`close` closes it too.
    """

    def handle_close(self):
        # The pidfd was found closed: stop watching, the loop reaps anyway.
        Channel.close(self)

    def close(self):
        fd = self.fileno()
        super().close()
        if fd >= 0:
            os.close(fd)


class _Lifeline(Transport):
    """In a worker: the parent's end of the socket pair went away."""

    def __init__(self, poller, sock, on_parent_gone):
        self._on_parent_gone = on_parent_gone
        super().__init__(alternate_poller=poller, sock=sock)

    def handle_read(self):
        self.recv(64)  # nothing is ever sent: only EOF arrives

    def handle_close(self):
        self.close()
        self._on_parent_gone()


class _Slot:
    def __init__(self, index):
        self.index = index
        self.pid = None
        self.started = 0.0
        self.watch = None  # _ChildWatch, when pidfds work
        self.restart_at = None
        self.quick_deaths = 0
        self.last_status = None


class WorkerPool:
    """Run a :class:`~pike.server.listener.Listener` in N supervised processes.

    ``WorkerPool(factory, address, workers=2, family=None, poller_name=None,
    backlog=128, max_connections=None, reuse_port=None, grace=5.0,
    on_worker_start=None)``

    :param factory: the connection factory, as for
        :class:`~pike.server.listener.Listener`, called in the workers.
    :param address: where to listen: ``(host, port)``, an IPv6 address, or a
        Unix socket path (created by the parent, removed when it stops).
    :param workers: how many worker processes to keep running.
    :param poller_name: each worker's poller kind (None: the best).
    :param max_connections: the cap of each worker's listener.
    :param reuse_port: True: one ``SO_REUSEPORT`` socket per worker; False:
        one socket inherited by all; None: ``SO_REUSEPORT`` where the
        platform has it and the address is TCP.
    :param grace: seconds the workers give their connections on a graceful
        stop before closing them.
    :param on_worker_start: called in each worker as ``fn(index, listener)``
        before it starts serving.

    :meth:`run` blocks until a stop; :meth:`start` alone forks the workers
    and returns once they listen (for supervising from another thread with
    :meth:`run`).
    :meth:`stop` is safe from any thread and from signal handlers.
    """

    #: The longest pause before restarting a worker that keeps dying.
    max_restart_delay = 5.0
    #: A worker that dies sooner than this after starting counts as a crash loop.
    quick_death = 1.0
    #: How long :meth:`start` waits for the first workers to listen.
    start_timeout = 10.0

    def __init__(
        self,
        factory: Callable[..., Transport],
        address: Address,
        workers: int = 2,
        *,
        family: int | None = None,
        poller_name: str | None = None,
        backlog: int = 128,
        max_connections: int | None = None,
        reuse_port: bool | None = None,
        grace: float = 5.0,
        on_worker_start: Callable[[int, Listener], Any] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.factory = factory
        self.family = family_of(address) if family is None else family
        self.requested_address = address
        self.address = None
        self.workers = workers
        self.poller_name = poller_name
        self.backlog = backlog
        self.max_connections = max_connections
        tcp = self.family in (socket.AF_INET, getattr(socket, "AF_INET6", None))
        if reuse_port is None:
            reuse_port = tcp and hasattr(socket, "SO_REUSEPORT")
        elif reuse_port and not tcp:
            raise ValueError("reuse_port needs a TCP address")
        self.reuse_port = bool(reuse_port)
        self.grace = grace
        self.on_worker_start = on_worker_start
        #: How many workers were started to replace one that died.
        self.restarts = 0
        self._slots = [_Slot(i) for i in range(workers)]
        self._sock: Any = None  # the reservation or the shared listening socket
        self._unix_path: Any = None
        self._lifeline: Any = None  # (parent end, child end)
        self._poller: Any = None
        self._started = False
        self._closed = False
        self._stop_signal: int | None = None
        self._use_pidfd = hasattr(os, "pidfd_open")
        self._parent_pid = os.getpid()

    # -- public ------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        """The pids of the workers running now."""
        return [slot.pid for slot in self._slots if slot.pid is not None]

    def start(self) -> None:
        """Bind, fork the workers and return. Idempotent."""
        if self._started:
            return
        if self._closed:
            raise RuntimeError("the pool is closed")
        self._started = True
        try:
            self._sock, self._unix_path = listening_socket(
                self.requested_address,
                self.family,
                backlog=self.backlog,
                reuse_port=self.reuse_port,
                listen=not self.reuse_port,  # a reservation never listens
            )
            self.address = self._sock.getsockname()
            self._lifeline = socket.socketpair()
            self._poller = make_poller(self.poller_name)
            ready = [self._spawn(slot, report_ready=True) for slot in self._slots]
            self._wait_ready(ready, self.start_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, fds, timeout):
        """Wait until each new worker listens (or died): one byte or EOF per pipe."""
        deadline = time.monotonic() + timeout
        pending = set(fds)
        try:
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.warning("pike: %d workers not ready after %.1fs", len(pending), timeout)
                    return
                if hasattr(select, "poll"):  # no FD_SETSIZE limit
                    waiter = select.poll()
                    for fd in pending:
                        waiter.register(fd, select.POLLIN)
                    readable = [fd for fd, _ in waiter.poll(max(1, int(remaining * 1000)))]
                else:
                    readable, _, _ = select.select(list(pending), [], [], remaining)
                for fd in readable:
                    os.read(fd, 1)  # b"1": listening; b"": it died first
                    pending.discard(fd)
                    os.close(fd)
        finally:
            for fd in pending:
                os.close(fd)

    def run(self) -> int:
        """Start (if not yet), supervise until stopped, stop the workers; 0.

        In the main thread, SIGTERM and SIGINT stop the pool (and are
        forwarded to the workers); elsewhere use :meth:`stop`.
        """
        in_main = threading.current_thread() is threading.main_thread()
        previous = {}
        if in_main:
            for signum in _STOP_SIGNALS:
                previous[signum] = signal.signal(signum, self._on_stop_signal)
            if not self._use_pidfd:
                previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_sigchld)
        try:
            self.start()
            while self._stop_signal is None:
                self._poller.poll(self._next_wait())
                self._reap()
                self._restart_due()
            self._stop_workers(self._stop_signal)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.close()
        return 0

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask :meth:`run` to stop the workers with ``signum`` (graceful)."""
        if self._stop_signal is None:
            self._stop_signal = signum
        poller = self._poller
        if poller is not None:
            poller.stop()  # wakes the supervising poll at once

    def close(self) -> None:
        """Kill the workers still running, reap them, release everything."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._parent_pid:
            return  # a forked child never tears down the parent's pool
        live = [slot for slot in self._slots if slot.pid is not None]
        for slot in live:
            self._signal(slot, signal.SIGKILL)
        for slot in live:
            self._wait_dead(slot, 5.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._unix_path is not None:
            self._unix_path.remove()
            self._unix_path = None
        if self._lifeline is not None:
            for end in self._lifeline:
                end.close()
            self._lifeline = None
        if self._poller is not None:
            self._poller.close()
            self._poller = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- signals -------------------------------------------------------------

    def _on_stop_signal(self, signum, frame):
        self.stop(signum)

    def _on_sigchld(self, signum, frame):
        poller = self._poller
        if poller is not None:
            poller.stop()

    # -- children --------------------------------------------------------------

    def _spawn(self, slot, report_ready=False):
        """Fork a worker for ``slot``; with ``report_ready``, return the read
        end of a pipe on which it writes one byte once it listens."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()  # or the child would print it again
            except (OSError, ValueError, AttributeError):
                pass
        ready_r = ready_w = None
        if report_ready:
            ready_r, ready_w = os.pipe()
        try:
            pid = os.fork()
        except BaseException:
            if report_ready:
                os.close(ready_r)
                os.close(ready_w)
            raise
        if pid == 0:
            status = 1
            try:
                if ready_r is not None:
                    os.close(ready_r)
                status = self._worker_main(slot.index, ready_w)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(status)
        if ready_w is not None:
            os.close(ready_w)
        slot.pid = pid
        slot.started = time.monotonic()
        slot.restart_at = None
        if self._use_pidfd:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                self._use_pidfd = False  # an old kernel: fall back to polling
            else:
                slot.watch = _ChildWatch(self._poller, pidfd)
                self._poller.add_channel(slot.watch)
        logger.info("pike: worker %d started, pid %d", slot.index, pid)
        return ready_r

    def _unwatch(self, slot):
        watch, slot.watch = slot.watch, None
        if watch is not None:
            watch.close()

    def _reap(self):
        """Reap the workers that exited; plan their restarts."""
        now = time.monotonic()
        for slot in self._slots:
            if slot.pid is None or not self._reaped(slot, blocking=False):
                continue
            if self._stop_signal is not None:
                continue
            if now - slot.started < self.quick_death:
                slot.quick_deaths += 1
                delay = min(self.max_restart_delay, 0.1 * 2 ** (slot.quick_deaths - 1))
            else:
                slot.quick_deaths = 0
                delay = 0.0
            slot.restart_at = now + delay
            logger.warning(
                "pike: worker %d (pid %s) exited with status %s; restarting in %.1fs",
                slot.index, slot.last_status[0], slot.last_status[1], delay,
            )

    def _reaped(self, slot, blocking):
        """waitpid one worker; True (and the slot emptied) once it is gone."""
        try:
            pid, status = os.waitpid(slot.pid, 0 if blocking else os.WNOHANG)
        except ChildProcessError:
            pid, status = slot.pid, None  # reaped by someone else
        if pid != slot.pid:
            return False
        code = os.waitstatus_to_exitcode(status) if status is not None else None
        slot.last_status = (slot.pid, code)
        slot.pid = None
        self._unwatch(slot)
        return True

    def _restart_due(self):
        if self._stop_signal is not None:
            return
        now = time.monotonic()
        for slot in self._slots:
            if slot.pid is None and slot.restart_at is not None and slot.restart_at <= now:
                self.restarts += 1
                self._spawn(slot)

    def _next_wait(self):
        """How long the supervising poll may block."""
        # Without pidfds nothing wakes us in a thread other than the main one.
        wait = 1.0 if self._use_pidfd else 0.1
        now = time.monotonic()
        for slot in self._slots:
            if slot.pid is None and slot.restart_at is not None:
                wait = min(wait, max(0.0, slot.restart_at - now))
        return wait

    def _signal(self, slot, signum):
        try:
            os.kill(slot.pid, signum)
        except ProcessLookupError:
            pass

    def _wait_dead(self, slot, timeout):
        """Poll one worker until it is reaped or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        while slot.pid is not None:
            if self._reaped(slot, blocking=False):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        return True

    def _stop_workers(self, signum):
        """Forward ``signum``; wait up to grace (+1 s); kill what is left."""
        live = [slot for slot in self._slots if slot.pid is not None]
        for slot in live:
            self._signal(slot, signum)
        deadline = time.monotonic() + self.grace + 1.0
        while any(slot.pid is not None for slot in live):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._poller.poll(min(remaining, 0.1))
            for slot in live:
                if slot.pid is not None:
                    self._reaped(slot, blocking=False)
        for slot in live:
            if slot.pid is not None:
                logger.warning("pike: worker %d (pid %d) did not stop; killing it",
                               slot.index, slot.pid)
                self._signal(slot, signal.SIGKILL)
                self._wait_dead(slot, 5.0)

    # -- in a worker -------------------------------------------------------------

    def _worker_main(self, index, ready_fd=None):
        """The body of a worker process; returns its exit status."""
        pending = []
        state = {"poller": None}

        def on_stop(signum, frame):
            pending.append(signum)
            poller = state["poller"]
            if poller is not None:
                poller.call_soon_threadsafe(graceful)

        for signum in _STOP_SIGNALS:
            signal.signal(signum, on_stop)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for name in ("SIGHUP", "SIGUSR1", "SIGUSR2"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)

        if self._poller is not None:
            self._poller.close()  # the parent's: only our copies of its fds go
            self._poller = None
        parent_end, child_end = self._lifeline
        parent_end.close()
        for slot in self._slots:  # the parent's pidfds of the other workers
            if slot.watch is not None:
                os.close(slot.watch.fileno())  # (the poller is the parent's: leave it)
                slot.watch = None
        poller = make_poller(self.poller_name)
        if self.reuse_port:
            self._sock.close()  # the parent's reservation
            listener = Listener(
                self.factory,
                self.address,
                family=self.family,
                poller=poller,
                backlog=self.backlog,
                max_connections=self.max_connections,
                reuse_port=True,
            )
        else:
            listener = Listener(
                self.factory,
                sock=self._sock,
                poller=poller,
                max_connections=self.max_connections,
            )

        def graceful():
            listener.shutdown(self.grace)

        state["poller"] = poller
        if ready_fd is not None:
            os.write(ready_fd, b"1")  # listening: start() may return
            os.close(ready_fd)
        _Lifeline(poller, child_end, graceful)
        listener.add_done_callback(lambda _: poller.stop())
        if self.on_worker_start is not None:
            self.on_worker_start(index, listener)
        if pending:
            graceful()
        poller.loop()
        for channel in poller.channels():
            channel.close()
        poller.close()
        return 0
