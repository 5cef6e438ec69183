"""The Poller API, run over every poller this platform has.

Covers choosing and owning pollers (make_poller, PIKE_POLLER, get_poller /
set_poller, no kernel object at import), the loop's ways of ending, closing,
fd bookkeeping, and the rule that kernel interest changes only when it
really changes (counted with spies on the backend's _register / _modify /
_unregister).
"""

import fcntl
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import pike
from pike import Transport
from pike import poller as poller_mod

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Recorder(Transport):
    """A transport that records its events and reads what arrives."""

    def __init__(self, poller, sock, consume=True):
        self.reads = 0
        self.writes = 0
        self.data = bytearray()
        self.consume = consume
        super().__init__(poller, sock)

    def handle_read(self):
        self.reads += 1
        if self.consume:
            self.data += self.recv(65536)

    def handle_write(self):
        self.writes += 1


@pytest.fixture
def pair():
    """A connected socketpair, closed at the end (Transports may own either end)."""
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


# -- choosing pollers ----------------------------------------------------------


def test_make_poller_by_name(poller_name):
    p = pike.make_poller(poller_name)
    try:
        assert p.name == poller_name
        assert isinstance(p, poller_mod.Poller)
        assert not p.closed
        assert len(p) == 0
    finally:
        p.close()


def test_make_poller_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError) as info:
        pike.make_poller("no-such-poller")
    message = str(info.value)
    assert "no-such-poller" in message
    for name in pike.available_pollers():
        assert name in message


def test_make_poller_rejects_non_names():
    with pytest.raises(ValueError):
        pike.make_poller(3)


def test_pike_poller_environment_overrides_the_default(monkeypatch, poller_name):
    monkeypatch.setenv("PIKE_POLLER", poller_name)
    p = pike.make_poller()
    try:
        assert p.name == poller_name
    finally:
        p.close()
    # ...and the default poller follows it too.
    previous = pike.set_poller(None)
    try:
        default = pike.get_poller()
        try:
            assert default.name == poller_name
        finally:
            default.close()
    finally:
        pike.set_poller(previous)


def test_pike_poller_environment_unknown_name_is_an_error(monkeypatch):
    monkeypatch.setenv("PIKE_POLLER", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        pike.make_poller()


def test_explicit_name_beats_the_environment(monkeypatch):
    monkeypatch.setenv("PIKE_POLLER", "bogus")
    p = pike.make_poller("select")
    try:
        assert p.name == "select"
    finally:
        p.close()


def test_available_pollers_best_first(monkeypatch):
    monkeypatch.delenv("PIKE_POLLER", raising=False)
    names = pike.available_pollers()
    preference = ["epoll", "kqueue", "poll", "select"]
    assert names, "at least select must exist"
    assert names[-1] == "select"
    assert len(set(names)) == len(names)
    assert set(names) <= set(preference)
    # Best first: the order is the preference order, restricted.
    assert names == [n for n in preference if n in names]
    if sys.platform.startswith("linux"):
        assert names[:2] == ["epoll", "poll"]
    # The default is the best one.
    p = pike.make_poller()
    try:
        assert p.name == names[0]
    finally:
        p.close()


def test_get_poller_is_made_lazily_once_and_reused():
    previous = pike.set_poller(None)
    try:
        assert poller_mod.default._default_poller is None
        first = pike.get_poller()
        try:
            assert pike.get_poller() is first
            assert pike.get_poller() is first
            # A Transport without alternate_poller lands on it.
            t = Transport()
            assert t.poller is first
        finally:
            first.close()
        # A closed default is replaced on the next use.
        second = pike.get_poller()
        try:
            assert second is not first and not second.closed
        finally:
            second.close()
    finally:
        pike.set_poller(previous)


def test_set_poller_returns_the_previous_one(poller):
    other = pike.make_poller("select")
    try:
        assert pike.get_poller() is poller  # the fixture installed it
        assert pike.set_poller(other) is poller
        assert pike.get_poller() is other
        assert pike.set_poller(poller) is other
        assert pike.get_poller() is poller
    finally:
        other.close()


def test_get_poller_is_thread_safe():
    previous = pike.set_poller(None)
    try:
        seen = []
        barrier = threading.Barrier(8)

        def worker():
            barrier.wait(timeout=10)
            seen.append(pike.get_poller())

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(seen) == 8
        assert all(p is seen[0] for p in seen)
        seen[0].close()
    finally:
        pike.set_poller(previous)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_importing_pike_creates_no_kernel_object():
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("PIKE_POLLER", None)
    probe = (
        "import os; fds = sorted(os.listdir('/proc/self/fd')); "
        "print(len(fds)); "
        "print(','.join(os.readlink('/proc/self/fd/' + f) for f in fds "
        "if os.path.exists('/proc/self/fd/' + f)))"
    )
    bare = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=30
    )
    with_pike = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pike, pike.poller, pike.transport; "
            "assert pike.poller.default._default_poller is None; " + probe,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bare.returncode == 0, bare.stderr
    assert with_pike.returncode == 0, with_pike.stderr
    bare_count, bare_links = bare.stdout.split("\n")[:2]
    pike_count, pike_links = with_pike.stdout.split("\n")[:2]
    assert pike_count == bare_count, (bare_links, pike_links)

    def kinds(links):  # "pipe:[1234]" -> "pipe:", "anon_inode:[eventpoll]" kept
        return sorted(link.split("[")[0] if link[:5] in ("pipe:", "socke") else link
                      for link in links.split(",") if link)

    assert kinds(pike_links) == kinds(bare_links)
    assert "eventpoll" not in pike_links


# -- the loop ---------------------------------------------------------------------


def test_pike_loop_drives_the_default_poller(poller):
    ran = []
    poller.call_later(0, ran.append, "timer")
    iterations = pike.loop(timeout=5)
    assert ran == ["timer"]
    assert iterations >= 1
    # Nothing is left: it returns at once, without iterating.
    assert pike.loop() == 0


def test_poll_returns_the_number_of_callbacks_run(poller, pair):
    a, b = pair
    reader = Recorder(poller, a)
    writer = Recorder(poller, b)
    poller.poll(0)  # settle registrations
    b.send(b"ping")  # a becomes readable
    poller.defer_write(writer)  # b gets one write notification
    poller.call_later(0, lambda: None)
    poller.call_later(0, lambda: None)
    poller.call_soon_threadsafe(lambda: None)
    assert poller.poll(5) == 5
    assert reader.reads == 1 and bytes(reader.data) == b"ping"
    assert writer.writes == 1
    # Nothing more is pending: a short poll dispatches nothing.
    assert poller.poll(0) == 0


def test_loop_timeout_ends_the_loop(poller, pair):
    Recorder(poller, pair[0])  # an idle channel keeps the loop alive
    start = time.monotonic()
    iterations = poller.loop(timeout=0.3)
    elapsed = time.monotonic() - start
    assert elapsed >= 0.3 - 0.005
    assert elapsed < 5.0
    assert 1 <= iterations <= 5  # it blocked: no spinning until the deadline


def test_loop_count_makes_that_many_iterations(poller, pair):
    a, b = pair
    reader = Recorder(poller, a, consume=False)  # stays readable: one event per iteration
    b.send(b"x")
    assert poller.loop(timeout=10, count=5) == 5
    assert reader.reads == 5
    assert poller.loop(timeout=10, count=0) == 0
    assert reader.reads == 5


@pytest.mark.timeout(10)
def test_loop_returns_at_once_when_nothing_is_left(poller):
    assert poller.loop() == 0
    assert poller.loop(timeout=100) == 0
    # A cancelled timer is not something to wait for.
    poller.call_later(100, lambda: None).cancel()
    assert poller.loop() == 0


@pytest.mark.timeout(10)
def test_loop_returns_when_its_last_channel_closes(poller, pair):
    a, b = pair

    class Closer(Recorder):
        def handle_read(self):
            self.close()

    Closer(poller, a)
    b.send(b"bye")
    assert poller.loop() == 1


@pytest.mark.timeout(10)
def test_stop_from_a_callback(poller, pair):
    Recorder(poller, pair[0])
    later = []
    poller.call_later(0.05, poller.stop)
    poller.call_later(30, later.append, "too late")
    iterations = poller.loop()
    assert iterations >= 1
    assert later == []
    # The stop was consumed: the next loop runs again.
    assert poller.loop(timeout=0.05) >= 1


@pytest.mark.timeout(10)
def test_stop_from_another_thread(poller, pair):
    Recorder(poller, pair[0])  # idle: the loop blocks in poll(None)
    timer = threading.Timer(0.1, poller.stop)
    timer.start()
    try:
        start = time.monotonic()
        poller.loop()
        assert time.monotonic() - start < 5.0
    finally:
        timer.cancel()
        timer.join(5)


def test_stop_before_loop_makes_loop_return_at_once(poller, pair):
    Recorder(poller, pair[0])
    poller.call_later(0, lambda: None)
    poller.stop()
    assert poller.loop() == 0
    assert len(poller._timers) == 1  # nothing ran
    # ...once: the next loop iterates.
    assert poller.loop(timeout=0.05) >= 1


def test_loop_keeps_running_after_a_channel_callback_fails(poller, pair, caplog):
    a, b = pair
    errors = []

    class Broken(Recorder):
        def handle_read(self):
            self.recv(100)
            raise RuntimeError("boom")

        def handle_error(self):
            errors.append(True)  # and keep the channel

    Broken(poller, a)
    b.send(b"1")
    assert poller.poll(5) == 1
    b.send(b"2")
    assert poller.poll(5) == 1
    assert errors == [True, True]


def test_bad_timeouts(poller, pair):
    import math

    Recorder(poller, pair[0])
    # NaN is refused clearly, never a hang or a spin.
    with pytest.raises(ValueError):
        poller.poll(math.nan)
    with pytest.raises(ValueError):
        poller.loop(timeout=math.nan)
    # A negative timeout is "do not wait".
    start = time.monotonic()
    assert poller.poll(-1) == 0
    assert time.monotonic() - start < 1.0


@pytest.mark.timeout(10)
def test_infinite_poll_timeout_blocks_until_woken(poller, pair):
    Recorder(poller, pair[0])
    waker = threading.Timer(0.1, poller.call_soon_threadsafe, (lambda: None,))
    waker.start()
    try:
        assert poller.poll(float("inf")) == 1  # not OverflowError
    finally:
        waker.cancel()
        waker.join(5)


# -- closing ------------------------------------------------------------------


def test_close_is_idempotent(poller_name):
    p = pike.make_poller(poller_name)
    p.close()
    p.close()
    assert p.closed
    assert "closed" in repr(p)


def test_closed_poller_refuses_use(poller, pair):
    t = Recorder(poller, pair[0])
    poller.close()
    with pytest.raises(RuntimeError):
        poller.poll(0)
    with pytest.raises(RuntimeError):
        poller.call_later(0, lambda: None)
    with pytest.raises(RuntimeError):
        poller.call_soon_threadsafe(lambda: None)
    with pytest.raises(RuntimeError):
        poller.add_channel(t)
    with pytest.raises(RuntimeError):
        poller.loop(timeout=0.1)
    # Closing a channel of a closed poller is fine (close() is used in teardown).
    t.close()
    poller.stop()  # harmless


def test_close_leaves_channels_open(poller_name, pair):
    p = pike.make_poller(poller_name)
    t = Recorder(p, pair[0])
    p.close()
    try:
        assert not t.closed
        assert t.socket.fileno() >= 0
    finally:
        t.close()


# -- fd bookkeeping -------------------------------------------------------------


class StubChannel:
    """The smallest object a poller accepts as a channel."""

    _reading = True
    _write_armed = False
    _plain_read_event = False

    def __init__(self, fd):
        self._fileno = fd
        self.events = []

    def handle_read_event(self):
        self.events.append("read")

    def handle_write_event(self):
        self.events.append("write")

    def handle_close(self):
        self.events.append("close")

    def handle_error(self):
        self.events.append("error")

    def close(self):
        pass


def test_fd_watched_by_another_channel_is_refused(poller, pair):
    t = Recorder(poller, pair[0])
    intruder = StubChannel(pair[0].fileno())
    with pytest.raises(ValueError, match=str(pair[0].fileno())):
        poller.add_channel(intruder)
    assert poller.channels() == [t]
    # The same channel again is fine.
    poller.add_channel(t)
    assert poller.channels() == [t]


def test_object_without_the_channel_interface_is_refused(poller, pair):
    class NotAChannel:
        _fileno = pair[0].fileno()
        _reading = True
        _write_armed = False

    with pytest.raises(TypeError, match="_plain_read_event"):
        poller.add_channel(NotAChannel())
    assert len(poller) == 0


def test_overridden_handle_read_event_is_still_called(poller, pair):
    """The poller calls handle_read() itself only for Transport's own
    handle_read_event; an override (at class creation) keeps getting events."""

    class Custom(Transport):
        def handle_read_event(self):
            self.events.append("read_event")
            self.recv(100)

        def handle_read(self):
            self.events.append("read")

    class Plain(Transport):
        def handle_read(self):
            self.events.append("read")
            self.recv(100)

    custom, plain = Custom(poller, pair[0]), Plain(poller, pair[1])
    custom.events, plain.events = [], []
    assert not custom._plain_read_event and plain._plain_read_event
    pair[1].send(b"to custom")
    pair[0].send(b"to plain")
    deadline = time.monotonic() + 5
    while not (custom.events and plain.events) and time.monotonic() < deadline:
        poller.poll(0.05)
    assert custom.events == ["read_event"]
    assert plain.events == ["read"]
    custom.close()
    plain.close()


def test_channel_without_socket_is_refused(poller):
    with pytest.raises(ValueError):
        poller.add_channel(StubChannel(-1))


def test_del_channel_of_unknown_channel_is_harmless(poller, pair):
    poller.del_channel(StubChannel(pair[0].fileno()))
    assert len(poller) == 0


def test_fd_at_or_above_fd_setsize(poller, pair):
    """select refuses fd >= 1024 clearly; the others take it."""
    try:
        high_fd = fcntl.fcntl(pair[0].fileno(), fcntl.F_DUPFD_CLOEXEC, 1024)
    except OSError:
        pytest.skip("cannot open an fd above 1023 here")
    sock = socket.socket(fileno=high_fd)
    try:
        if poller.name == "select":
            with pytest.raises(ValueError) as info:
                poller.add_channel(StubChannel(high_fd))
            message = str(info.value)
            assert str(high_fd) in message and "select" in message
            assert len(poller) == 0
        else:
            t = Recorder(poller, sock)
            pair[1].send(b"hi")
            assert poller.poll(5) == 1
            assert bytes(t.data) == b"hi"
            t.close()
    finally:
        sock.close()


# -- kernel interest changes only when it changes ----------------------------------


class KernelSpy:
    """Counts the outermost calls of a poller's _register/_modify/_unregister."""

    def __init__(self, poller, monkeypatch):
        self.calls = []
        self._depth = 0
        for name in ("_register", "_modify", "_unregister"):
            monkeypatch.setattr(poller, name, self._wrap(name, getattr(poller, name)))

    def _wrap(self, name, real):
        def spy(fd, *masks):
            if self._depth == 0:
                self.calls.append((name, fd) + masks)
            self._depth += 1
            try:
                return real(fd, *masks)
            finally:
                self._depth -= 1

        return spy

    def count(self, name=None):
        return sum(1 for c in self.calls if name is None or c[0] == name)

    def reset(self):
        self.calls.clear()


def test_rearmed_write_from_its_own_callback_costs_no_syscall(poller, pair, monkeypatch):
    class Rearming(Recorder):
        rounds = 6

        def handle_write(self):
            self.writes += 1
            if self.writes < self.rounds:
                self.poller.defer_write(self)

    t = Rearming(poller, pair[0])
    poller.poll(0)  # the initial registration
    spy = KernelSpy(poller, monkeypatch)
    poller.defer_write(t)
    for _ in range(Rearming.rounds):
        assert poller.poll(5) == 1
    assert t.writes == Rearming.rounds
    # Armed once (READ -> READ|WRITE): every re-arm from the callback was free.
    assert spy.calls == [("_modify", t.fileno(), poller_mod.READ, poller_mod.READ | poller_mod.WRITE)]
    # The last callback did not re-arm: the next wait drops WRITE, once.
    assert poller.poll(0) == 0
    assert spy.count("_modify") == 2 and spy.count() == 2
    assert poller.poll(0) == 0
    assert spy.count() == 2


def test_defer_and_cancel_before_the_wait_cost_nothing(poller, pair, monkeypatch):
    t = Recorder(poller, pair[0])
    poller.poll(0)
    spy = KernelSpy(poller, monkeypatch)
    for _ in range(10):
        poller.defer_write(t)
        poller.cancel_write(t)
    assert poller.poll(0) == 0
    assert spy.count() == 0
    assert t.writes == 0


def test_pause_and_resume_reading_cost_one_call_each(poller, pair, monkeypatch):
    t = Recorder(poller, pair[0])
    poller.poll(0)
    spy = KernelSpy(poller, monkeypatch)
    for round_ in range(3):
        t.pause_reading()
        poller.poll(0)
        assert spy.count() == 2 * round_ + 1
        t.resume_reading()
        poller.poll(0)
        assert spy.count() == 2 * round_ + 2
    # Toggles that cancel out before the wait cost nothing.
    for _ in range(5):
        t.pause_reading()
        t.resume_reading()
    poller.poll(0)
    assert spy.count() == 6
    # Idle iterations cost nothing either.
    for _ in range(5):
        poller.poll(0)
    assert spy.count() == 6


def test_channel_wanting_nothing_is_removed_from_the_kernel(poller, pair, monkeypatch):
    t = Recorder(poller, pair[0])
    fd = t.fileno()
    poller.poll(0)
    assert fd in poller._registered
    spy = KernelSpy(poller, monkeypatch)
    t.pause_reading()
    poller.poll(0)
    assert spy.calls == [("_unregister", fd, poller_mod.READ)]
    assert fd not in poller._registered
    assert poller.channels() == [t]  # still watched by pike, just not by the kernel
    # Wanting something again registers it again.
    poller.defer_write(t)
    assert poller.poll(5) == 1
    assert spy.calls[1] == ("_register", fd, poller_mod.WRITE)
    assert t.writes == 1 and t.reads == 0


def test_closing_a_channel_unregisters_it_once(poller, pair, monkeypatch):
    t = Recorder(poller, pair[0])
    fd = t.fileno()
    poller.poll(0)
    spy = KernelSpy(poller, monkeypatch)
    t.close()
    t.close()
    assert spy.calls == [("_unregister", fd, poller_mod.READ)]
    assert len(poller) == 0 and fd not in poller._registered


def test_hung_up_socket_with_reading_paused_does_not_spin(poller, pair, wait_counts):
    a, b = pair
    t = Recorder(poller, a)
    poller.poll(0)
    t.pause_reading()
    b.close()  # hang-up: epoll/poll report it even for an empty mask
    waits = wait_counts(poller)
    assert poller.poll(0.2) == 0
    assert waits == [0], "the kernel woke us for a channel that wants nothing"
    waits.clear()
    iterations = poller.loop(timeout=0.3)
    assert iterations <= 3, f"spun {iterations} times in 0.3 s"
    assert all(count == 0 for count in waits)
    # Resuming delivers the EOF: the default handle_close closes it.
    t.resume_reading()
    assert poller.poll(5) == 1
    assert t.closed


def test_fd_closed_and_reused_in_one_batch_gets_no_stale_event(poller):
    """Two fds ready in one batch: the first callback closes the other channel and a
    new socket takes its fd number at once. Neither gets the old event."""
    a1, b1 = socket.socketpair()
    a2, b2 = socket.socketpair()
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
            made.extend((c, d))
            if c.fileno() != fd:
                os.dup2(c.fileno(), fd)
                c = socket.socket(fileno=fd)
                made.append(c)
            made.append(Recorder(self.poller, c))

    try:
        t1 = Killer(poller, a1)
        t2 = Killer(poller, a2)
        t1.other, t2.other = t2, t1
        poller.poll(0)
        b1.send(b"x")
        b2.send(b"y")
        assert poller.poll(5) == 1, "the closed fd (or its successor) got a stale event"
        assert t1.reads + t2.reads == 1
        fresh = made[-1]
        assert isinstance(fresh, Recorder) and fresh.reads == 0
    finally:
        for obj in made:
            obj.close()
        for s in (a1, b1, a2, b2):
            s.close()
