"""KQueuePoller against the pure-Python kqueue stand-in (tests/kqueue_standin.py).

What this proves: pike.poller.kqueue_backend.KQueuePoller's own logic is right when it
talks to an object that behaves like CPython's ``select.kqueue`` as documented
for FreeBSD: it builds the right kevents (one filter per direction, added and
deleted separately), merges a read and a write kevent of one fd into one
event, keeps write notifications one-shot, survives fds closed behind its back
(registrations dropped by the "kernel", deletes failing with EBADF/ENOENT), fd
numbers reused by new sockets, more ready fds than its event buffer, and that
real Transports (socketpair and TCP over 127.0.0.1, connect and accept
included), timers, stop() and call_soon_threadsafe() all work on top of it.

What it does NOT prove: anything about a real kernel kqueue. The stand-in is
built on Linux poll(); wake-up latency, EV_EOF/fflags details per socket type,
fork behaviour of a real kqueue, and the exact errno the BSD kernel returns are
only as right as the stand-in's model of them (see its docstring). Run the
normal test suite on a BSD or macOS machine for those: there the ``poller``
fixture includes the real "kqueue" poller.
"""

import gc
import os
import socket
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kqueue_standin import KQ_FILTER_READ, KQ_FILTER_WRITE, kqueue_module  # noqa: E402

from pike import Transport  # noqa: E402
from pike import poller as poller_mod  # noqa: E402
from pike.poller.kqueue_backend import KQueuePoller  # noqa: E402

READ, WRITE = poller_mod.READ, poller_mod.WRITE


def open_fds():
    return {int(n) for n in os.listdir("/proc/self/fd")} if os.path.isdir("/proc/self/fd") else set()


@pytest.fixture
def kq(implementation):
    """A KQueuePoller on the stand-in; channels closed and no fd leaked at the end."""
    before = open_fds()
    p = KQueuePoller(select_module=kqueue_module)
    try:
        yield p
    finally:
        for channel in p.channels():
            channel.close()
        p.close()
    if open_fds() - before:
        gc.collect()  # perhaps only garbage: collect before judging
    leaked = {fd for fd in open_fds() - before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"fds leaked by the test: {sorted(leaked)}"


@pytest.fixture
def sockets():
    """Raw sockets to close at the end, whoever owns them by then."""
    opened = []
    yield opened
    for s in opened:
        s.close()


def pair(sockets):
    a, b = socket.socketpair()
    sockets.extend((a, b))
    return a, b


def knotes(p):
    """The (fd, filter) registrations the stand-in 'kernel' holds now."""
    return set(p._kqueue._knotes)


def run_until(p, predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        p.poll(0.5)
    return predicate()


class Recorder(Transport):
    def __init__(self, poller, sock=None, consume=True):
        self.received = bytearray()
        self.reads = 0
        self.writes = 0
        self.consume = consume
        super().__init__(poller, sock)

    def handle_read(self):
        self.reads += 1
        if self.consume:
            self.received += self.recv(65536)

    def handle_write(self):
        self.writes += 1


class Echo(Transport):
    def handle_read(self):
        data = self.recv(65536)
        if data:
            self.write(data)


def test_it_is_a_kqueue_poller_on_the_standin(kq):
    assert kq.name == "kqueue"
    assert isinstance(kq, poller_mod.Poller)
    # The waker is registered for reading, and nothing else yet.
    assert knotes(kq) == {(kq._waker_fd, KQ_FILTER_READ)}


def test_echo_round_trip_over_a_socketpair(kq, sockets):
    a, b = pair(sockets)
    server = Echo(kq, a)
    client = Recorder(kq, b)
    payload = b"kq-echo " * 50_000  # bigger than the socket buffers: partial sends
    client.write(payload)
    assert run_until(kq, lambda: len(client.received) >= len(payload))
    assert bytes(client.received) == payload
    server.close()
    client.close()


def test_tcp_connect_accept_echo(kq):
    made = []

    class Listener(Transport):
        def handle_accepted(self, sock, addr):
            made.append(Echo(kq, sock))

    class Client(Recorder):
        connected_events = 0

        def handle_connect(self):
            self.connected_events += 1
            self.write(b"hello over tcp")

    listener = Listener(kq)
    listener.create_socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    client = Client(kq)
    client.create_socket(socket.AF_INET, socket.SOCK_STREAM)
    client.connect(listener.socket.getsockname())
    assert run_until(kq, lambda: len(client.received) >= 14)
    assert bytes(client.received) == b"hello over tcp"
    assert client.connected_events == 1
    assert len(made) == 1
    for t in made + [client, listener]:
        t.close()


def test_write_notification_is_one_shot(kq, sockets):
    a, _ = pair(sockets)
    t = Recorder(kq, a)
    kq.poll(0)
    fd = t.fileno()
    assert knotes(kq) >= {(fd, KQ_FILTER_READ)}
    assert (fd, KQ_FILTER_WRITE) not in knotes(kq)
    kq.defer_write(t)
    assert kq.poll(5) == 1
    assert t.writes == 1
    # Not re-armed: the next wait deletes the write filter and reports nothing.
    assert kq.poll(0.1) == 0
    assert t.writes == 1
    assert (fd, KQ_FILTER_WRITE) not in knotes(kq)
    assert (fd, KQ_FILTER_READ) in knotes(kq)
    # Armed again: once more.
    kq.defer_write(t)
    assert kq.poll(5) == 1
    assert t.writes == 2


def test_read_and_write_of_one_fd_are_merged_into_one_event(kq, sockets, monkeypatch):
    a, b = pair(sockets)
    t = Recorder(kq, a)
    kq.poll(0)
    b.send(b"both")
    kq.defer_write(t)
    batches = []
    real_wait = kq._wait

    def spy(timeout):
        events = list(real_wait(timeout))
        batches.append(events)
        return events

    monkeypatch.setattr(kq, "_wait", spy)
    assert kq.poll(5) == 2
    assert t.reads == 1 and t.writes == 1
    assert bytes(t.received) == b"both"
    (batch,) = batches
    assert [bits for fd, bits in batch if fd == t.fileno()] == [READ | WRITE]


def test_filters_are_added_and_deleted_separately(kq, sockets):
    a, _ = pair(sockets)
    t = Recorder(kq, a)
    fd = t.fileno()
    kq.poll(0)
    assert {k for k in knotes(kq) if k[0] == fd} == {(fd, KQ_FILTER_READ)}
    t.pause_reading()
    kq.defer_write(t)
    kq.poll(5)  # fires the write notification
    assert t.writes == 1
    kq.poll(0)
    assert {k for k in knotes(kq) if k[0] == fd} == set()  # wants nothing: no filters
    t.resume_reading()
    kq.poll(0)
    assert {k for k in knotes(kq) if k[0] == fd} == {(fd, KQ_FILTER_READ)}


def test_unregister_of_an_fd_closed_behind_the_poller_is_tolerated(kq, sockets):
    a, b = pair(sockets)
    t = Recorder(kq, a)
    kq.defer_write(t)
    kq.poll(0)  # read and write filters may both be registered now
    kq.defer_write(t)
    a.close()  # the "kernel" drops its filters; pike still has the channel
    t.close()  # deletes fail with EBADF/ENOENT: tolerated
    assert t.closed and len(kq) == 0
    # The poller is fine afterwards.
    c, d = pair(sockets)
    u = Recorder(kq, c)
    d.send(b"ok")
    assert run_until(kq, lambda: bytes(u.received) == b"ok")


def test_fd_closed_before_its_registration_ends_the_channel(kq, sockets):
    a, _ = pair(sockets)
    closed = []

    class Watch(Recorder):
        def handle_close(self):
            closed.append(True)
            self.close()

    t = Watch(kq, a)
    a.close()  # before the first wait registered it
    kq.poll(0)
    assert closed == [True]
    assert t.closed and len(kq) == 0


def test_fd_number_reused_by_a_new_socket(kq, sockets):
    a, b = pair(sockets)
    old = Recorder(kq, a)
    fd = old.fileno()
    kq.poll(0)
    old.close()  # unregisters, then closes: the number is free
    c, d = socket.socketpair()
    sockets.extend((c, d))
    if c.fileno() != fd:
        os.dup2(c.fileno(), fd)
        c = socket.socket(fileno=fd)
        sockets.append(c)
    new = Recorder(kq, c)
    assert new.fileno() == fd
    b.close()  # the old peer hangs up: nothing of the old socket may reach `new`
    d.send(b"to the new one")
    assert run_until(kq, lambda: bytes(new.received) == b"to the new one")
    assert old.reads == 0


def test_fd_closed_and_reused_within_one_batch(kq, sockets):
    a1, b1 = pair(sockets)
    a2, b2 = pair(sockets)
    made = []

    class Killer(Recorder):
        other = None

        def handle_read(self):
            self.reads += 1
            self.recv(100)
            other = self.other
            if other is None or other.closed:
                return
            fd = other.fileno()
            other.close()
            c, d = socket.socketpair()
            sockets.extend((c, d))
            if c.fileno() != fd:
                os.dup2(c.fileno(), fd)
                c = socket.socket(fileno=fd)
                sockets.append(c)
            made.append(Recorder(kq, c))

    t1, t2 = Killer(kq, a1), Killer(kq, a2)
    t1.other, t2.other = t2, t1
    kq.poll(0)
    b1.send(b"x")
    b2.send(b"y")
    assert kq.poll(5) == 1
    assert t1.reads + t2.reads == 1
    assert made and made[0].reads == 0


def test_hung_up_socket_with_reading_paused_does_not_spin(kq, sockets):
    a, b = pair(sockets)
    t = Recorder(kq, a)
    kq.poll(0)
    t.pause_reading()
    b.close()
    assert kq.poll(0.2) == 0
    assert kq.loop(timeout=0.3) <= 3
    t.resume_reading()
    assert kq.poll(5) == 1
    assert t.closed  # the EOF closed it


def test_more_ready_fds_than_the_event_buffer(kq, sockets):
    transports = []
    for _ in range(100):  # 100 ready fds > the 64-event default buffer
        a, b = pair(sockets)
        transports.append(Recorder(kq, a))
        b.send(b"!")
    iterations = 0
    while any(not t.received for t in transports) and iterations < 20:
        kq.poll(1.0)
        iterations += 1
    assert all(bytes(t.received) == b"!" for t in transports)
    assert iterations <= 2


def test_timers_and_stop_on_the_kqueue_poller(kq, sockets):
    a, _ = pair(sockets)
    Recorder(kq, a)  # keeps the loop alive
    ran = []
    kq.call_later(0.02, ran.append, "b")
    kq.call_later(0.01, ran.append, "a")
    kq.call_later(0.05, kq.stop)
    kq.loop(timeout=10)
    assert ran == ["a", "b"]


@pytest.mark.timeout(30)
def test_call_soon_threadsafe_wakes_a_blocked_kqueue_poll(kq, sockets):
    a, b = pair(sockets)
    Recorder(kq, a)
    rescue = threading.Timer(8.0, b.send, (b"rescue",))
    rescue.start()
    try:
        ran = []
        called = []

        def other():
            time.sleep(0.05)
            called.append(time.monotonic())
            kq.call_soon_threadsafe(ran.append, threading.get_ident())

        thread = threading.Thread(target=other)
        thread.start()
        kq.poll(None)
        returned = time.monotonic()
        thread.join(10)
        assert ran == [thread.ident]
        assert returned - called[0] < 1.0
        # stop() from another thread ends a blocked loop too.
        stopper = threading.Timer(0.05, kq.stop)
        stopper.start()
        kq.loop()
        stopper.join(5)
    finally:
        rescue.cancel()
        rescue.join(5)


def test_close_is_idempotent_and_refuses_use(implementation):
    p = KQueuePoller(select_module=kqueue_module)
    p.close()
    p.close()
    assert p.closed and p._kqueue.closed
    with pytest.raises(RuntimeError):
        p.poll(0)
